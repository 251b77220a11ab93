"""NVGesture (three modalities, optical flow computed at prepare time) and the generic file manifest
(``--data manifest:PATH``: kinds inferred per column, auto-prepare into a cache beside the manifest).
Tiny fake downloads in the real layouts; one training epoch each through the CLI."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from modgap.cli import main  # noqa: E402
from modgap.config import make_config  # noqa: E402
from modgap.data import load_dataset, parse_data_spec  # noqa: E402
from modgap.data.nvgesture import FlowKind, quantise_flow  # noqa: E402
from modgap.data.prepare import prepare  # noqa: E402
from modgap.errors import ConfigError, DataError  # noqa: E402

from conftest import read_samples, read_skipped, save_tiny_bert

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

TRAIN_ARGS = ["--epochs", "1", "--set", "model.width=4", "--set", "data.batch_size=4", "--quiet",
              "--set", "train.probe=false", "--set", "train.threads=1"]

# ------------------------------------------------------------------------------------- nvgesture
def write_video(path: Path, frames: int, colour: bool, shift: int, step: int = 2) -> None:
    """A 40 x 30 MJPG .avi: a bright square moving right by ``step`` px a frame on a textured ground."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (40, 30))
    assert writer.isOpened()
    rng = np.random.default_rng(shift)
    ground = rng.integers(0, 80, (30, 40, 3), dtype=np.uint8)
    for t in range(frames):
        frame = ground.copy()
        x = 2 + shift + step * t
        frame[8:20, x:x + 10] = (60, 200, 250) if colour else 220
        if not colour:
            frame[:] = frame.mean(2, keepdims=True).astype(np.uint8)
        writer.write(frame)
    writer.release()


# (class, subject/rep) per split; ranges as in the release: frames start..end-1 of each sensor's video
CLIPS = {"train": [(1, "subject1_r0"), (1, "subject1_r1"), (1, "subject2_r0"), (2, "subject1_r0"),
                   (2, "subject1_r1"), (2, "subject2_r0")],
         "test": [(1, "subject3_r0"), (2, "subject3_r0")]}


def lst_line(cls: int, clip: str, label: int | None = None) -> str:
    return (f"path:./Video_data/class_{cls:02d}/{clip} depth:sk_depth:2:12 color:sk_color:1:11 "
            f"duo_left:duo_left:3:14 label:{label or cls}")


def make_nvgesture(root: Path, lines: dict[str, list[str]] | None = None) -> Path:
    for split, clips in CLIPS.items():
        for k, (cls, clip) in enumerate(clips):
            folder = root / "Video_data" / f"class_{cls:02d}" / clip
            if not folder.exists():
                write_video(folder / "sk_color.avi", 14, True, shift=k + cls)
                write_video(folder / "sk_depth.avi", 14, False, shift=k + cls)
    lines = lines or {s: [lst_line(c, clip) for c, clip in clips] for s, clips in CLIPS.items()}
    for split, rows in lines.items():
        (root / f"nvgesture_{split}_correct_cvpr2016_v2.lst").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def nvgesture(tmp_path_factory) -> tuple[Path, Path]:
    """(raw download, prepared folder at image size 32, 4 stored frames, 2 sampled)."""
    root = tmp_path_factory.mktemp("nvgesture")
    src, out = make_nvgesture(root / "raw"), root / "prep"
    assert main(["prepare", "nvgesture", "--src", str(src), "--out", str(out), "--image-size", "32",
                 "--max-frames", "4", "--frames", "2", "--quiet"]) == 0
    return src, out


def test_quantise_flow_range():
    flow = np.array([[[0.0, 20.0], [-20.0, 50.0], [-90.0, 10.0]]], dtype=np.float32)
    q = quantise_flow(flow, 20.0)
    assert q.dtype == np.uint8 and q.tolist() == [[[128, 255], [0, 255], [0, 191]]]


def test_nvgesture_prepared_arrays(nvgesture):
    _, out = nvgesture
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [f"class_{i:02d}" for i in range(1, 26)]
    assert list(manifest["modalities"]) == ["rgb", "depth", "flow"]
    mods = manifest["modalities"]
    assert mods["flow"]["kind"] == "flow" and mods["flow"]["bound"] == 20.0
    assert not mods["rgb"]["flip"] and not mods["depth"]["flip"] and not mods["flow"]["flip"]
    shapes = {m: np.load(out / f"{m}.npy").shape for m in mods}
    assert shapes == {"rgb": (8, 4, 32, 32, 3), "depth": (8, 4, 32, 32, 1), "flow": (8, 4, 32, 32, 2)}
    assert all(np.load(out / f"{m}.npy").dtype == np.uint8 for m in mods)
    # ranges of 10 frames: 4 stored frames each, 4 flow fields of the 9 consecutive pairs
    for m in mods:
        assert np.load(out / f"{m}.count.npy").tolist() == [4] * 8
    rows = read_samples(out)
    assert rows[0]["id"] == "class_01/subject1_r0" and rows[0]["label"] == "class_01"
    assert sorted(r["split"] for r in rows) == ["test"] * 2 + ["train"] * 4 + ["val"] * 2
    # the square moves right (about 1.6 px a frame at 32 px): x flow above 128, y flow about 128
    flow = np.load(out / "flow.npy")[0].astype(np.float32) - 128
    assert flow[..., 0].mean() > 2 and abs(flow[..., 1].mean()) < flow[..., 0].mean() / 3
    depth = np.load(out / "depth.npy")[0]
    assert depth.std() > 0


def test_nvgesture_trains_three_modalities(nvgesture, tmp_path):
    _, out = nvgesture
    for method in ("joint", "lfm-lb"):
        run = tmp_path / method
        assert main(["train", "--data", f"nvgesture:{out}", "--method", method, "--out", str(run), *TRAIN_ARGS]) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["modalities"] == ["rgb", "depth", "flow"]


def test_nvgesture_bad_input(tmp_path):
    lines = {s: [lst_line(c, clip) for c, clip in clips] for s, clips in CLIPS.items()}
    lines["train"][1] = lst_line(1, "subject1_r1", label=26)                 # label outside 1..25
    lines["test"][0] = lst_line(1, "subject9_r0")                            # no such clip
    src = make_nvgesture(tmp_path / "raw", lines)
    lst = src / "nvgesture_train_correct_cvpr2016_v2.lst"
    with pytest.raises(DataError) as err:
        prepare("nvgesture", src, tmp_path / "a", settings={"image_size": 16, "max_frames": 2}, progress=False)
    assert "\n" not in str(err.value) and f"{lst}: line 2: label '26' is not one of 1..25" in str(err.value)
    prepare("nvgesture", src, tmp_path / "b", settings={"image_size": 16, "max_frames": 2}, progress=False,
            on_error="skip")
    skipped = read_skipped(tmp_path / "b")
    assert set(skipped) == {"class_01/subject1_r1", "class_01/subject9_r0"}
    assert "subject9_r0/sk_color.avi: listed in nvgesture_test_correct_cvpr2016_v2.lst line 1 but missing" in \
        skipped["class_01/subject9_r0"]
    # an unreadable video fails in processing and is named
    (src / "Video_data" / "class_02" / "subject3_r0" / "sk_depth.avi").write_bytes(b"not a video")
    make_nvgesture(src)
    with pytest.raises(DataError, match=r"subject3_r0/sk_depth\.avi: not a readable video|"
                                        r"subject3_r0/sk_depth\.avi: no frames") as err:
        prepare("nvgesture", src, tmp_path / "c", settings={"image_size": 16, "max_frames": 2}, progress=False)
    assert "\n" not in str(err.value)
    # a malformed line is a format error
    lst.write_text("path:./Video_data/class_01/subject1_r0 color:sk_color:1:11 label:1\n")
    with pytest.raises(DataError, match=r"line 1: no 'depth:' field"):
        prepare("nvgesture", src, tmp_path / "d", progress=False, on_error="skip")


def test_flow_kind_refuses_flips():
    with pytest.raises(ConfigError, match="cannot flip"):
        FlowKind(flip=True)
    assert FlowKind(image_size=16).input_shape() == (3, 2, 16, 16)


# -------------------------------------------------------------------------------------- manifest
WORDS = ["a", "red", "blue", "cat", "dog", "photo", "of", "the"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_m"), WORDS, max_positions=80)


def make_files(root: Path, n: int = 8) -> list[list[str]]:
    """n samples with an image, a caption .txt file and a 3-frame folder; rows id,label,photo,caption,clip."""
    from PIL import Image

    rows = []
    for i in range(n):
        label = "cat" if i % 2 else "dog"
        rng = np.random.default_rng(i)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
        (root / "txt").mkdir(exist_ok=True)
        (root / "txt" / f"{i}.txt").write_text(f"a photo of the {'red' if i % 3 else 'blue'} {label}", encoding="utf-8")
        for t in range(3):
            (root / "clips" / f"c{i}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "clips" / f"c{i}" / f"{t:05d}.jpg")
        rows.append([f"s{i}", label, f"img/{i}.jpg", f"txt/{i}.txt", f"clips/c{i}"])
    return rows


def write_manifest(root: Path, header: list[str], rows: list[list[str]]) -> Path:
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return root / "manifest.csv"


HEADER = ["id", "label", "photo", "caption", "clip"]


def data_config(spec: str, *sets: str):
    return make_config(None, {"data": parse_data_spec(spec)}, list(sets)).data


def test_manifest_auto_prepare_train_and_cache(tmp_path, tiny_bert, capsys):
    rows = make_files(tmp_path)
    split_rows = [r[:2] + [s] + r[2:] for r, s in zip(rows, ["train"] * 4 + ["val", "val", "test", "test"])]
    csv_path = write_manifest(tmp_path, ["id", "label", "split", "photo", "caption", "clip"], split_rows)
    run = tmp_path / "run"
    code = main(["train", "--data", f"manifest:{csv_path}", "--method", "joint", "--out", str(run), *TRAIN_ARGS,
                 "--set", f"model.text_model={tiny_bert}", "--set", f"data.options.text_model={tiny_bert}",
                 "--set", "data.options.image_size=32", "--set", "data.options.max_len=12"])
    assert code == 0, capsys.readouterr().err
    assert "preparing" in capsys.readouterr().err
    caches = list((tmp_path / ".modgap-cache").iterdir())
    assert len(caches) == 1
    manifest = json.loads((caches[0] / "manifest.json").read_text())
    kinds = {m: e["kind"] for m, e in manifest["modalities"].items()}
    assert kinds == {"photo": "image", "caption": "text", "clip": "frames"}
    assert manifest["modalities"]["photo"]["image_size"] == 32 and manifest["modalities"]["caption"]["max_len"] == 12
    assert manifest["classes"] == ["cat", "dog"] and not manifest["val_carved"]
    assert np.load(caches[0] / "clip.npy").shape == (8, 10, 32, 32, 3)
    assert np.load(caches[0] / "clip.count.npy").tolist() == [3] * 8
    # the same manifest and settings: the cache is reused, nothing is prepared again
    sets = (f"data.options.text_model={tiny_bert}", "data.options.image_size=32", "data.options.max_len=12")
    data = load_dataset(data_config(f"manifest:{csv_path}", *sets))
    assert "preparing" not in capsys.readouterr().err
    assert data.modalities == ("photo", "caption", "clip") and {s: len(v) for s, v in data.splits.items()} == \
        {"train": 4, "val": 2, "test": 2}
    assert tuple(data.batch(np.arange(3), train=True).inputs["clip"].shape) == (3, 3, 3, 32, 32)
    # a changed file (or setting) gives a new cache folder
    os.utime(tmp_path / "img" / "0.jpg", ns=(1, 1))
    load_dataset(data_config(f"manifest:{tmp_path}", *sets))
    assert "preparing" in capsys.readouterr().err and len(list((tmp_path / ".modgap-cache").iterdir())) == 2


def test_manifest_prepare_command_and_carved_test(tmp_path, tiny_bert):
    rows = make_files(tmp_path, n=10)
    rows = [r[:3] + [f"the {r[1]}"] for r in rows]  # text given in the cell itself
    csv_path = write_manifest(tmp_path, ["id", "label", "photo", "note"], rows)
    out = tmp_path / "prepared"
    assert main(["prepare", "manifest", "--src", str(csv_path), "--out", str(out), "--image-size", "16",
                 "--text-model", tiny_bert, "--max-len", "8", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "manifest" and manifest["notes"]["test_carved"]
    assert {m: e["kind"] for m, e in manifest["modalities"].items()} == {"photo": "image", "note": "text"}
    splits = [r["split"] for r in read_samples(out)]
    assert splits.count("test") == 2 and splits.count("val") == 2 and splits.count("train") == 6
    data = load_dataset(data_config(f"manifest:{out}"))
    assert data.input_shape("photo") == (3, 16, 16) and data.input_shape("note") == (2, 8)


def test_manifest_structure_errors(tmp_path):
    rows = make_files(tmp_path, n=4)
    path = tmp_path / "manifest.csv"
    cases = [
        (["id", "photo", "caption", "clip"], [r[:1] + r[2:] for r in rows], r"missing column 'label'"),
        (HEADER, rows[:2] + [["s0"] + rows[2][1:]] + rows[3:], r"line 4: duplicate id 's0' \(first on line 2\)"),
        (HEADER, rows[:2] + [rows[2][:2] + ["txt/2.txt"] + rows[2][3:]] + rows[3:],
         r"line 4, column 'photo': 'txt/2.txt' is a \.txt file, but the column holds an image file \(from line 2\)"),
        (HEADER + ["split"], [r + ["later"] for r in rows], r"line 2: split 'later' is not one of"),
    ]
    for header, body, message in cases:
        write_manifest(tmp_path, header, body)
        with pytest.raises(DataError, match=message) as err:
            load_dataset(data_config(f"manifest:{path}", "data.on_error=skip"))
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    # a .txt file in a column of text strings is a kind clash too
    write_manifest(tmp_path, ["id", "label", "note"], [["a", "x", "hello there"], ["b", "y", "notes/b.txt"]])
    with pytest.raises(DataError, match=r"line 3, column 'note': 'notes/b.txt' is a \.txt file, but the column holds text"):
        load_dataset(data_config(f"manifest:{path}"))
    with pytest.raises(DataError, match=r"unknown data.options key 'imagesize'.*image_size"):
        load_dataset(data_config(f"manifest:{path}", "data.options.imagesize=3"))


def test_manifest_bad_samples_stop_or_skip(tmp_path, tiny_bert, capsys):
    rows = make_files(tmp_path, n=10)
    (tmp_path / "txt" / "3.txt").write_bytes("a caf\xe9 photo".encode("latin-1"))   # not UTF-8
    rows[5][2] = "img/missing.jpg"                                                  # no such file
    (tmp_path / "img" / "7.jpg").write_bytes(b"")                                   # empty jpg
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    rows[8][1] = "bird"                                                             # outside classes.txt
    path = write_manifest(tmp_path, HEADER, rows)
    sets = (f"data.options.text_model={tiny_bert}", "data.options.image_size=16", "data.options.max_len=8")
    with pytest.raises(DataError) as err:
        load_dataset(data_config(f"manifest:{path}", *sets))
    assert "\n" not in str(err.value) and f"{path}: line 7, column 'photo'" in str(err.value)
    assert not (tmp_path / ".modgap-cache").exists() or not any((tmp_path / ".modgap-cache").iterdir())
    data = load_dataset(data_config(f"manifest:{path}", *sets, "data.on_error=skip"))
    assert "skipped 4 row(s)" in capsys.readouterr().err
    assert len(data.ids) == 6 and data.classes == ["cat", "dog"]
    skipped = read_skipped(data.root)
    assert set(skipped) == {"s3", "s5", "s7", "s8"}
    assert f"{tmp_path / 'txt' / '3.txt'}: not UTF-8 text" in skipped["s3"]
    assert f"{path}: line 7, column 'photo': {tmp_path / 'img' / 'missing.jpg'}: file not found" == skipped["s5"]
    assert "7.jpg: not a readable image" in skipped["s7"]
    assert "label 'bird' is not in" in skipped["s8"]
    # the stop run on the CLI: exit 2 and one line naming the text file
    rows[5][2], rows[8][1] = "img/5.jpg", "cat"
    (tmp_path / "img" / "7.jpg").unlink()
    rows[7][2] = "img/0.jpg"
    write_manifest(tmp_path, HEADER, rows)
    code = main(["train", "--data", f"manifest:{path}", "--method", "joint", "--out", str(tmp_path / "run"),
                 *TRAIN_ARGS, "--set", f"model.text_model={tiny_bert}", *[a for s in sets for a in ("--set", s)]])
    err_text = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err_text[-1].startswith("modgap: error: ") and "3.txt: not UTF-8 text" in err_text[-1]


# ----------------------------------------------------------------------------------- upscaling
def small_images(root: Path, n: int, photo: int, scan: int) -> Path:
    """n rows of two image columns: photo (photo x photo .jpg) and scan (scan x scan .png)."""
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (photo, photo, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (scan, scan, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        rows.append([f"s{i}", "cat" if i % 2 else "dog", f"img/{i}.jpg", f"img/{i}.png"])
    return write_manifest(root, ["id", "label", "photo", "scan"], rows)


def test_upscaled_images_warn_once_and_are_recorded(tmp_path, capsys):
    """32 x 32 photos at the default 224: one warning naming the option; 112 x 112 scans (2x) none."""
    csv_path = small_images(tmp_path, 8, photo=32, scan=112)
    run = tmp_path / "run"
    code = main(["train", "--data", f"manifest:{csv_path}", "--method", "joint", "--out", str(run), *TRAIN_ARGS])
    err = capsys.readouterr().err
    assert code == 0, err
    text = ("photo: images of 32x32 are upscaled to 224x224 (49x the pixels); set data.options.image_size=32 "
            "(or prepare with --image-size 32) to train at their size")
    assert err.count("warning") == 1 and err.count(f"modgap: warning: {text}\n") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["warnings"] == [text]
    assert main(["report", str(run), "--no-model", "--out", str(tmp_path / "rep")]) == 0  # and the report shows it
    assert f"Warning: {text}." in (tmp_path / "rep" / "report.html").read_text()
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["warnings"] == [text]
    # the sizes were recorded at prepare time, from the files' headers
    cache = next((tmp_path / ".modgap-cache").iterdir())
    entries = json.loads((cache / "manifest.json").read_text())["modalities"]
    assert entries["photo"]["source_sizes"] == [[32, 32]] * 8 and entries["scan"]["source_sizes"] == [[112, 112]] * 8
    # at their size: no warning
    run2 = tmp_path / "run2"
    code = main(["train", "--data", f"manifest:{csv_path}", "--method", "joint", "--out", str(run2), *TRAIN_ARGS,
                 "--set", "data.options.image_size=32"])
    err = capsys.readouterr().err
    assert code == 0 and "warning" not in err
    assert json.loads((run2 / "summary.json").read_text())["warnings"] == []


def test_prepare_warns_and_a_prepared_folder_warns_again_at_train(tmp_path, capsys, monkeypatch):
    """`modgap prepare` reads a few headers (never every image) and warns; training on the folder
    warns again, naming what changes a prepared folder."""
    from modgap.data import kinds

    csv_path = small_images(tmp_path, 20, photo=32, scan=224)
    reads = []
    original = kinds.image_size_of
    monkeypatch.setattr(kinds, "image_size_of", lambda path: reads.append(path) or original(path))
    out = tmp_path / "prepared"
    assert main(["prepare", "manifest", "--src", str(csv_path), "--out", str(out), "--image-size", "112",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert len(reads) == 2 * kinds.SIZE_SAMPLES < 2 * 20
    text = "photo: images of 32x32 are upscaled to 112x112 (12x the pixels); {} to train at their size"
    assert err.count("warning") == 1 and f"modgap: warning: {text.format('prepare with --image-size 32')}\n" in err
    entries = json.loads((out / "manifest.json").read_text())["modalities"]
    assert entries["photo"]["source_sizes"] == [[32, 32]] * kinds.SIZE_SAMPLES
    run = tmp_path / "run"
    assert main(["train", "--data", f"manifest:{out}", "--method", "joint", "--out", str(run), *TRAIN_ARGS]) == 0
    err = capsys.readouterr().err
    again = text.format("prepare the folder again with --image-size 32")
    assert err.count("warning") == 1 and f"modgap: warning: {again}\n" in err
    assert json.loads((run / "summary.json").read_text())["warnings"] == [again]
