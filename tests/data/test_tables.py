"""Datasets: the bundled mfeat views, stratified splits, and user feature tables (tables:PATH)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modgap.config import DataConfig, make_config
from modgap.data import load_dataset, parse_data_spec
from modgap.data.mfeat import VIEWS, load_arrays
from modgap.data.splits import make_splits
from modgap.errors import ConfigError, DataError, ModgapError


# ------------------------------------------------------------------------------------- mfeat
def test_mfeat_shapes_and_labels():
    arrays = load_arrays()
    dims = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    assert set(arrays) == {*VIEWS, "labels"}
    for view, dim in dims.items():
        assert arrays[view].shape == (2000, dim), view
        assert np.isfinite(arrays[view]).all()
    labels = arrays["labels"]
    assert labels.shape == (2000,)
    assert np.bincount(labels).tolist() == [200] * 10
    assert (np.diff(labels) >= 0).all()  # sorted by class
    assert (labels == np.arange(2000) // 200).all()


def test_mfeat_known_values_from_original_csv():
    arrays = load_arrays()
    # mfeat-mor, first row of the original file (a digit 0)
    np.testing.assert_allclose(arrays["mor"][0], [1, 0, 0, 133.15, 1.3117, 1620.2], rtol=1e-3, atol=1e-6)
    assert arrays["labels"][0] == 0
    # mfeat-pix holds pixel counts 0..6 in a 15 x 16 grid
    pix = arrays["pix"]
    assert pix.min() == 0 and pix.max() == 6 and np.all(pix == np.round(pix))


@pytest.mark.parametrize("view", VIEWS)
def test_mfeat_views_aligned_with_labels(view):
    """Each view, grouped by label, has distinct class centroids that classify its own rows:
    a view whose rows were shifted or reordered against the labels would fall to chance (0.1)."""
    arrays = load_arrays()
    x = arrays[view].astype(np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    y = arrays["labels"]
    centroids = np.stack([x[y == c].mean(0) for c in range(10)])
    # (mor cannot tell 6 from 9 well: it is rotation invariant, so its closest centroids are close)
    closest_pair = min(np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:])
    assert closest_pair > (0.5 if view == "pix" else 0.01)
    pred = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() > 0.6
    shifted = np.roll(x, 100, axis=0)  # the same check detects a misalignment of half a class
    assert (((shifted[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1) == y).mean() < 0.6


def test_mfeat_dataset_through_config():
    ds = load_dataset(make_config(overrides={"data": parse_data_spec("mfeat:kar+mor")}).data)
    assert ds.modalities == ("kar", "mor")
    assert ds.num_classes == 10 and ds.input_shape("kar") == (64,) and ds.input_shape("mor") == (6,)
    assert sum(len(v) for v in ds.splits.values()) == 2000
    with pytest.raises(ConfigError, match="did you mean 'pix'"):
        load_dataset(make_config(overrides={"data": parse_data_spec("mfeat:pixx+fou")}).data)


# ------------------------------------------------------------------------------------ splits
def check_partition(splits: dict[str, np.ndarray], n: int) -> None:
    assert set(splits) == {"train", "val", "test"}
    allrows = np.concatenate(list(splits.values()))
    assert len(allrows) == n and len(np.unique(allrows)) == n  # disjoint, covering
    assert set(allrows.tolist()) == set(range(n))
    for rows in splits.values():
        assert (np.diff(rows) > 0).all()


def test_mfeat_splits_stratified_disjoint_covering():
    labels = load_arrays()["labels"]
    splits = make_splits(labels, None, 0.1, 0.2, seed=0)
    check_partition(splits, 2000)
    for c in range(10):
        n_test = (labels[splits["test"]] == c).sum()
        n_val = (labels[splits["val"]] == c).sum()
        assert abs(n_test - 0.2 * 200) <= 1
        assert abs(n_val - 0.1 * (200 - n_test)) <= 1
    assert len(splits["test"]) == 400 and len(splits["val"]) == 160 and len(splits["train"]) == 1440


def test_splits_stratified_uneven_classes():
    labels = np.repeat(np.arange(5), [1, 2, 7, 13, 50])
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    splits = make_splits(labels, None, 0.25, 0.3, seed=4)
    check_partition(splits, len(labels))
    for c, size in enumerate([1, 2, 7, 13, 50]):
        n_test = (labels[splits["test"]] == c).sum()
        n_val = (labels[splits["val"]] == c).sum()
        assert abs(n_test - 0.3 * size) <= 1, c
        assert abs(n_val - 0.25 * (size - n_test)) <= 1, c
        assert (labels[splits["train"]] == c).sum() >= 1  # every class keeps a training row


def test_splits_deterministic_and_seeded():
    labels = load_arrays()["labels"]
    a = make_splits(labels, None, 0.1, 0.2, seed=3)
    b = make_splits(labels, None, 0.1, 0.2, seed=3)
    c = make_splits(labels, None, 0.1, 0.2, seed=4)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a[s], b[s])
    assert not np.array_equal(a["test"], c["test"]) and not np.array_equal(a["val"], c["val"])


def test_splits_independent_of_training_seed():
    ds = [load_dataset(make_config(assignments=[f"train.seed={s}"]).data) for s in (0, 7)]
    other = load_dataset(make_config(assignments=["data.split_seed=1"]).data)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(ds[0].splits[s], ds[1].splits[s])
    assert ds[0].split_checksum() == ds[1].split_checksum() != other.split_checksum()


def test_splits_official_test_given():
    labels = np.repeat(np.arange(3), 20)
    test = np.arange(0, 60, 6)
    splits = make_splits(labels, {"test": test}, 0.1, 0.2, seed=0)
    check_partition(splits, 60)
    np.testing.assert_array_equal(splits["test"], test)


# ------------------------------------------------------------------------------ feature tables
def write_tables(root: Path, n_per_class: int = 10, split: bool = False, shuffle_csv: bool = True,
                 seed: int = 0) -> dict:
    """labels.csv (3 named classes) + a.csv (3 columns, rows shuffled) + b.npy (2 columns)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = ["owl", "cat", "dog"]
    n = 3 * n_per_class
    ids = [f"s{i:03d}" for i in range(n)]
    labels = [names[i % 3] for i in range(n)]
    splits = ["train"] * n
    for i in range(n):
        splits[i] = "test" if i % 5 == 0 else "val" if i % 5 == 1 else "train"
    a = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [5.0, -2.0, 0.0]
    b = rng.normal(size=(n, 2)) + 3.0
    head = "id,label,split\n" if split else "id,label\n"
    rows = [f"{i},{y},{s}" if split else f"{i},{y}" for i, y, s in zip(ids, labels, splits)]
    (root / "labels.csv").write_text(head + "\n".join(rows) + "\n")
    order = rng.permutation(n) if shuffle_csv else np.arange(n)
    (root / "a.csv").write_text("id,f1,f2,f3\n" + "".join(
        f"{ids[i]},{float(a[i, 0])!r},{float(a[i, 1])!r},{float(a[i, 2])!r}\n" for i in order))
    np.save(root / "b.npy", b)
    return {"ids": ids, "labels": labels, "splits": splits, "a": a, "b": b}


def load_tables(root: Path, *sets: str):
    return load_dataset(make_config(overrides={"data": parse_data_spec(f"tables:{root}")}, assignments=list(sets)).data)


def features(ds, m: str) -> np.ndarray:
    return ds.batch(np.arange(len(ds.labels)), train=False).inputs[m].numpy().astype(np.float64)


def test_tables_load_shapes_classes_alignment(tmp_path):
    info = write_tables(tmp_path / "t")
    ds = load_tables(tmp_path / "t", "data.standardize=false")
    assert ds.name == "tables:t"
    assert ds.modalities == ("a", "b")
    assert ds.input_shape("a") == (3,) and ds.input_shape("b") == (2,)
    assert ds.classes == ["cat", "dog", "owl"]  # sorted names
    assert ds.ids == info["ids"]
    assert [ds.classes[y] for y in ds.labels] == info["labels"]
    # a.csv rows were written in shuffled order: they must be matched by id
    np.testing.assert_allclose(features(ds, "a"), info["a"], rtol=1e-6)
    np.testing.assert_allclose(features(ds, "b"), info["b"], rtol=1e-6)
    check_partition(ds.splits, 30)
    only_b = load_tables(tmp_path / "t", "data.modalities=[b]")
    assert only_b.modalities == ("b",)


def test_tables_integer_classes_sorted_numerically(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    text = (root / "labels.csv").read_text().replace(",owl", ",10").replace(",cat", ",2").replace(",dog", ",1")
    (root / "labels.csv").write_text(text)
    assert load_tables(root).classes == ["1", "2", "10"]


def test_tables_split_column_honoured(tmp_path):
    info = write_tables(tmp_path / "t", split=True)
    ds = load_tables(tmp_path / "t")
    for s in ("train", "val", "test"):
        expected = [i for i, v in enumerate(info["splits"]) if v == s]
        assert ds.splits[s].tolist() == expected
    # a split column without val: val is carved from train, test stays as given
    root = tmp_path / "noval"
    info = write_tables(root, split=True)
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace(",val\n", ",train\n"))
    ds = load_tables(root)
    check_partition(ds.splits, 30)
    assert ds.splits["test"].tolist() == [i for i, v in enumerate(info["splits"]) if v == "test"]
    assert len(ds.splits["val"]) > 0


def test_tables_standardisation_uses_train_statistics_only(tmp_path):
    info = write_tables(tmp_path / "t", split=True)
    ds = load_tables(tmp_path / "t")
    train = ds.splits["train"]
    for m in ("a", "b"):
        raw = info[m]
        mean, std = raw[train].mean(0), raw[train].std(0)
        got = features(ds, m)
        np.testing.assert_allclose(got, (raw - mean) / std, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[train].mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(got[train].std(0), 1.0, rtol=1e-4)
        assert np.abs(got[ds.splits["test"]].mean(0)).max() > 1e-3  # not re-centred on test
    # changing only val/test values leaves the standardised train rows untouched
    other = tmp_path / "u"
    write_tables(other, split=True)
    b = np.load(other / "b.npy")
    held_out = np.concatenate([ds.splits["val"], ds.splits["test"]])
    b[held_out] = b[held_out] * 100 + 50
    np.save(other / "b.npy", b)
    ds2 = load_tables(other)
    np.testing.assert_array_equal(features(ds2, "b")[train], features(ds, "b")[train])
    assert not np.allclose(features(ds2, "b")[held_out], features(ds, "b")[held_out])


# ------------------------------------------------------------------------------------- errors
def one_line_error(root: Path, *names: str) -> str:
    with pytest.raises(ModgapError) as info:
        load_tables(root)
    assert isinstance(info.value, (DataError, ConfigError))
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def test_error_missing_labels(tmp_path):
    write_tables(tmp_path / "t")
    (tmp_path / "t" / "labels.csv").unlink()
    one_line_error(tmp_path / "t", str(tmp_path / "t" / "labels.csv"), "missing")


def test_error_missing_folder(tmp_path):
    one_line_error(tmp_path / "nowhere", str(tmp_path / "nowhere"))


def test_error_missing_label_column(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    text = (root / "labels.csv").read_text().replace("id,label", "id,lable", 1)
    (root / "labels.csv").write_text(text)
    one_line_error(root, str(root / "labels.csv"), "'label'")


def test_error_duplicate_id(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[5] = lines[2]  # line 6 repeats the id of line 3
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    msg = one_line_error(root, str(root / "labels.csv"), "duplicate", "line 6", "s001")
    assert "line 3" in msg


def test_error_duplicate_id_in_modality(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    lines = (root / "a.csv").read_text().splitlines()
    lines[4] = lines[1]
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    one_line_error(root, str(root / "a.csv"), "duplicate", "line 5")


def test_error_id_missing_in_modality(tmp_path):
    root = tmp_path / "t"
    write_tables(root, shuffle_csv=False)
    lines = (root / "a.csv").read_text().splitlines()
    del lines[8]  # the row of s007
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    one_line_error(root, str(root / "a.csv"), "s007")


def test_error_non_number_cell(tmp_path):
    root = tmp_path / "t"
    write_tables(root, shuffle_csv=False)
    lines = (root / "a.csv").read_text().splitlines()
    cells = lines[3].split(",")
    cells[2] = "abc"  # line 4, column f2
    lines[3] = ",".join(cells)
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    one_line_error(root, str(root / "a.csv"), "line 4", "'f2'", "abc")


@pytest.mark.parametrize("which", ["a.csv", "labels.csv"])
def test_error_empty_file(tmp_path, which):
    root = tmp_path / "t"
    write_tables(root)
    (root / which).write_bytes(b"")
    one_line_error(root, str(root / which), "empty")


def test_error_npy_wrong_rows(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    np.save(root / "b.npy", np.zeros((29, 2)))
    one_line_error(root, str(root / "b.npy"), "30", "29")


def test_error_npy_not_an_array(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    (root / "b.npy").write_bytes(b"this is not numpy")
    msg = one_line_error(root, str(root / "b.npy"), "not a .npy")
    assert "pickle" not in msg and "readable" not in msg  # numpy's own message suggests pickled data


@pytest.mark.parametrize("which", ["a.csv", "labels.csv"])
def test_error_not_utf8(tmp_path, which):
    root = tmp_path / "t"
    write_tables(root)
    data = (root / which).read_bytes()
    (root / which).write_bytes(data[:40] + b"\xff\xfe\x80" + data[40:])
    one_line_error(root, str(root / which), "UTF-8")


def test_error_unknown_split_value(tmp_path):
    root = tmp_path / "t"
    write_tables(root, split=True)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",tset"
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    one_line_error(root, str(root / "labels.csv"), "line 4", "'tset'")


def test_error_both_csv_and_npy(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    np.save(root / "a.npy", np.zeros((30, 3)))
    one_line_error(root, str(root), "'a'", "both")


def test_error_non_finite(tmp_path):
    root = tmp_path / "t"
    write_tables(root)
    b = np.load(root / "b.npy")
    b[4, 1] = np.nan
    np.save(root / "b.npy", b)
    one_line_error(root, str(root / "b.npy"), "s004")


def test_error_tables_without_path():
    with pytest.raises(DataError, match="tables"):
        load_dataset(DataConfig(name="tables"))
