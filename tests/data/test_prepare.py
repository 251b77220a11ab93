"""The audio-visual raw formats (cremad, kinetics-sounds, vggsound, ave) end to end, on tiny fake
downloads in the real layouts: prepare -> manifest -> load -> batches -> one training epoch; the
bad-input rules (stop with one line, or skip and record); and every config in configs/.

The standard split lists are the real bundled ones, so most listed ids have no raw files here and
prepare runs with on_error='skip' (vggsound uses a small csv of its own). No ffmpeg needed: the one
test that reads sound from a video skips without it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from modgap.cli import main  # noqa: E402
from modgap.config import DataConfig, make_config  # noqa: E402
from modgap.data import load_dataset  # noqa: E402
from modgap.data.base import IMAGENET_MEAN, IMAGENET_STD, pixels_to_model  # noqa: E402
from modgap.data.prepare import bundled_split, prepare  # noqa: E402
from modgap.errors import DataError  # noqa: E402

from conftest import REPO, read_samples, read_skipped

SIZE = 32
SMALL = {"image_size": SIZE, "preset": "ogmge_stft"}
OGM_SHAPE = [257, 188]


# ------------------------------------------------------------------------------ fake raw files
def write_wav(path: Path, seconds: float = 0.5, rate: int = 8000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * (seed % 7)) * t) + 0.05 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())


def write_frames(folder: Path, n: int = 3, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        cv2.imwrite(str(folder / f"{k + 1:05d}.jpg"), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))


def second_value(k: int) -> int:
    """Grey level of every frame in second k of a fake video."""
    return 40 * (k + 1)


def write_video(path: Path, seconds: int, fps: int = 4) -> None:
    """A silent video whose frames in second k are solid grey ``second_value(k)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (40, 32))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4 videos")
    for i in range(seconds * fps):
        writer.write(np.full((32, 40, 3), second_value(i // fps), dtype=np.uint8))
    writer.release()


def pick(lines: list[str], parse, per_class: int, classes=None) -> list[tuple[str, str]]:
    """The first ``per_class`` (id, label) pairs of each class (optionally of some classes only)."""
    chosen: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        clip, label = parse(line)
        if (classes is None or label in classes) and len(chosen[label]) < per_class:
            chosen[label].append(clip)
    return [(c, label) for label, clips in chosen.items() for c in clips]


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def unnormalise_grey(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) frames as the loader gives them (uint8) -> the mean grey level of each frame
    (0-255), through the normalisation the model's device applies and back."""
    x = pixels_to_model(x)
    assert x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x * std + mean) * 255).mean(dim=(-3, -2, -1))


# ------------------------------------------------------------------------------ raw downloads
def cremad_ids() -> dict[str, list[tuple[str, str]]]:
    def parse(line):
        clip, _, label = line.partition(",")
        return clip, label
    return {"train": pick(bundled_split("cremad", "train.csv")[0], parse, 2),
            "test": pick(bundled_split("cremad", "test.csv")[0], parse, 1)}


def make_cremad(src: Path) -> dict[str, list[tuple[str, str]]]:
    ids = cremad_ids()
    for i, (clip, _) in enumerate(ids["train"] + ids["test"]):
        write_wav(src / "AudioWAV" / f"{clip}.wav", seed=i)
        write_frames(src / "Image-01-FPS" / clip, 2, seed=i)
    return ids


def ks_ids() -> dict[str, list[tuple[str, str]]]:
    def parse(line):
        clip, _, label = line.split(",")
        return clip, label
    return {"train": pick(bundled_split("kinetics-sounds", "train.txt")[0], parse, 2, {"0", "1", "2"}),
            "test": pick(bundled_split("kinetics-sounds", "test.txt")[0], parse, 1, {"0", "1", "2"})}


def make_ks(src: Path) -> dict[str, list[tuple[str, str]]]:
    ids = ks_ids()
    for i, (clip, _) in enumerate(ids["train"] + ids["test"]):
        write_wav(src / "audio" / f"{clip}.wav", seed=i)
        write_frames(src / "visual" / clip, 4, seed=i)
    return ids


VGG_ROWS = [  # ytid, start, label, split, has media
    ("vggA0000000", 0, "dog barking", "train", True),
    ("vggA0000001", 30, "dog barking", "train", True),
    ("vggA0000002", 100, "dog barking", "train", True),
    ("vggA0000003", 5, "dog barking", "test", True),
    ("vggB0000000", 1, "people, crowd", "train", True),
    ("vggB0000001", 2, "people, crowd", "train", True),
    ("vggB0000002", 3, "people, crowd", "train", True),
    ("vggB0000003", 4, "people, crowd", "test", True),
    ("vggC0000000", 10, "car horn", "train", False),  # listed, offline -> the class has no train clip
    ("vggC0000001", 20, "car horn", "test", True),    # -> dropped with its class
    ("vggA0000009", 7, "dog barking", "test", False),  # offline
]


def make_vggsound(src: Path, rows=VGG_ROWS, video_for: str | None = "vggB0000003_000004") -> None:
    src.mkdir(parents=True, exist_ok=True)
    with (src / "vggsound.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for ytid, start, label, split, _ in rows:
            writer.writerow([ytid, start, label, split])
        writer.writerow(list(rows[0][:4]))  # a repeated row
    for i, (ytid, start, _, _, media) in enumerate(rows):
        clip = f"{ytid}_{start:06d}"
        if media:
            write_wav(src / "audio" / f"{clip}.wav", seconds=0.4, seed=i)
            if clip == video_for:
                write_video(src / "video" / f"{clip}.mp4", 3)
            else:
                write_frames(src / "frames" / clip, 3, seed=i)


AVE_DUPLICATE = "-ccciEuH9FE"  # listed twice in trainSet.txt, as Male and as Female speech


def ave_ids() -> dict[str, list[tuple[str, str]]]:
    def parse(line):
        fields = line.split("&")
        return fields[1], fields[0]
    keep = {"Church bell", "Bark"}
    return {"train": pick(bundled_split("ave", "trainSet.txt")[0], parse, 2, keep),
            "val": pick(bundled_split("ave", "valSet.txt")[0], parse, 1, keep),
            "test": pick(bundled_split("ave", "testSet.txt")[0], parse, 1, keep)}


def make_ave(src: Path) -> dict[str, int]:
    """AVE/<ytid>.mp4 videos of 2-5 s (frames at 1 fps from them) + audio/<ytid>.wav; returns seconds per id."""
    ids = ave_ids()
    seconds = {}
    for i, (ytid, _) in enumerate(ids["train"] + ids["val"] + ids["test"] + [(AVE_DUPLICATE, "")]):
        seconds[ytid] = 2 + i % 4
        write_video(src / "AVE" / f"{ytid}.mp4", seconds[ytid])
        write_wav(src / "audio" / f"{ytid}.wav", seed=i)
    return seconds


# ------------------------------------------------------------------------------ prepared folders
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Raw download and prepared folder of each dataset, made once for the module."""
    base = tmp_path_factory.mktemp("av")
    out = {}
    makers = {"cremad": make_cremad, "kinetics-sounds": make_ks, "vggsound": make_vggsound, "ave": make_ave}
    for name, make in makers.items():
        src = base / f"raw-{name}"
        info = make(src)
        settings = {"image_size": SIZE} if name == "vggsound" else SMALL
        report = prepare(name, src, base / f"prep-{name}", settings=settings, on_error="skip", progress=False)
        out[name] = {"src": src, "out": report.out, "info": info, "report": report}
    return out


def test_cremad_prepared(prepared):
    p = prepared["cremad"]
    ids, out = p["info"], p["out"]
    m = manifest_of(out)
    n = len(ids["train"]) + len(ids["test"])
    assert m["dataset"] == "cremad" and m["num_samples"] == n == 18
    assert m["classes"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert m["modalities"]["audio"]["preset"] == "ogmge_stft"
    assert m["modalities"]["audio"]["shape"] == OGM_SHAPE and m["modalities"]["audio"]["dtype"] == "float16"
    assert m["modalities"]["visual"]["shape"] == [3, SIZE, SIZE, 3] and m["modalities"]["visual"]["dtype"] == "uint8"
    assert m["val_carved"] is True
    assert sum(m["counts"]["test"].values()) == 6 and sum(m["counts"]["train"].values()) + sum(m["counts"]["val"].values()) == 12
    audio = np.load(out / "audio.npy", mmap_mode="r")
    assert audio.shape == (n, 257, 188) and audio.dtype == np.float16 and np.isfinite(audio).all()
    assert np.load(out / "visual.npy", mmap_mode="r").shape == (n, 3, SIZE, SIZE, 3)
    assert (np.load(out / "visual.count.npy") == 2).all()
    for row in read_samples(out):  # label = third token of the clip id
        assert row["id"].split("_")[2] == row["label"]
    assert dict((c, l) for c, l in ids["test"]) == {r["id"]: r["label"] for r in read_samples(out) if r["split"] == "test"}
    skipped = read_skipped(out)
    assert len(skipped) == 7442 - n == m["skipped"]
    some = next(iter(skipped.items()))
    assert "AudioWAV" in some[1] and "missing" in some[1]


def test_kinetics_sounds_prepared(prepared):
    p = prepared["kinetics-sounds"]
    ids, out = p["info"], p["out"]
    m = manifest_of(out)
    assert m["classes"] == [str(i) for i in range(31)]
    assert "label indices" in m["notes"]["class_list"] and "31 classes" in m["notes"]["class_convention"]
    assert m["modalities"]["visual"]["frames"] == 3 and m["modalities"]["visual"]["max_frames"] == 10
    rows = {r["id"]: r for r in read_samples(out)}
    assert {c for c, _ in ids["test"]} == {i for i, r in rows.items() if r["split"] == "test"}
    assert all(re.fullmatch(r".{11}_\d{1,5}", c) for c, _ in ids["test"])  # short-form ids, kept as listed
    assert all(re.fullmatch(r".{11}_\d{6}_\d{6}", c) for c, _ in ids["train"])
    assert all(rows[c]["label"] == label for c, label in ids["train"] + ids["test"])
    assert (np.load(out / "visual.count.npy") == 4).all()
    skipped = read_skipped(out)
    assert len(skipped) == 14799 + 2597 - 9 == m["notes"]["missing_ids"]
    assert all("missing" in why for why in skipped.values())


def test_kinetics_sounds_default_preset_is_ast_fbank(prepared, tmp_path):
    report = prepare("kinetics-sounds", prepared["kinetics-sounds"]["src"], tmp_path / "ks-ast",
                     settings={"image_size": 16, "max_frames": 2}, on_error="skip", progress=False)
    m = manifest_of(report.out)
    assert m["modalities"]["audio"]["preset"] == "ast_fbank"
    assert m["modalities"]["audio"]["shape"] == [1024, 128]
    audio = np.load(report.out / "audio.npy", mmap_mode="r")
    assert audio.shape == (9, 1024, 128) and audio.dtype == np.float16
    assert (np.load(report.out / "visual.count.npy") == 2).all()  # 4 frames spread over max_frames 2


def test_kinetics_sounds_class_names(prepared, tmp_path):
    src = tmp_path / "ks"
    shutil.copytree(prepared["kinetics-sounds"]["src"], src)
    names = [f"class {i:02d}" for i in range(31)]
    (src / "classes.txt").write_text("\n".join(names) + "\n")
    report = prepare("kinetics-sounds", src, tmp_path / "named", settings=SMALL, on_error="skip", progress=False)
    m = manifest_of(report.out)
    assert m["classes"] == names and "classes.txt" in m["notes"]["class_list"]
    assert {r["label"] for r in read_samples(report.out)} == {"class 00", "class 01", "class 02"}
    (src / "classes.txt").write_text("\n".join(names[:30]) + "\n")
    with pytest.raises(DataError, match="30 class names"):
        prepare("kinetics-sounds", src, tmp_path / "bad", settings=SMALL, on_error="skip", progress=False)


def test_kinetics_sounds_cli_stop_names_first_missing_file(prepared, tmp_path, capsys):
    code = main(["prepare", "kinetics-sounds", "--src", str(prepared["kinetics-sounds"]["src"]),
                 "--out", str(tmp_path / "ks"), "--quiet", "--image-size", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    first = bundled_split("kinetics-sounds", "train.txt")[0][0].split(",")[0]
    assert f"{first}.wav: missing" in err and "--on-error skip" in err
    assert not (tmp_path / "ks").exists()


def test_vggsound_prepared(prepared):
    out = prepared["vggsound"]["out"]
    m = manifest_of(out)
    assert m["classes"] == ["dog barking", "people, crowd"]
    assert m["notes"]["dropped_classes"] == ["car horn"] and m["notes"]["labels_in_csv"] == 3
    assert m["notes"]["repeated_ids"] == 1
    assert m["modalities"]["audio"]["preset"] == "vggsound_stft" and m["modalities"]["audio"]["shape"] == [129, 1251]
    rows = {r["id"]: r for r in read_samples(out)}
    assert sorted(r["id"] for r in rows.values() if r["split"] == "test") == ["vggA0000003_000005", "vggB0000003_000004"]
    assert len(rows) == 8
    skipped = read_skipped(out)
    assert set(skipped) == {"vggC0000000_000010", "vggC0000001_000020", "vggA0000009_000007", "vggA0000000_000000"}
    assert "missing" in skipped["vggA0000009_000007"]
    assert "no usable train clip" in skipped["vggC0000001_000020"]
    assert "listed again" in skipped["vggA0000000_000000"]
    counts = dict(zip([r["id"] for r in read_samples(out)], np.load(out / "visual.count.npy")))
    assert counts["vggB0000003_000004"] == 3  # 3 s video at 1 fps
    assert m["skipped"] == 4


def test_ave_prepared_official_split_duplicates_and_video_frames(prepared):
    p = prepared["ave"]
    out, seconds = p["out"], p["info"]
    m = manifest_of(out)
    assert len(m["classes"]) == 28 and m["val_carved"] is False
    assert m["notes"]["duplicated_ids"] == 45 and m["notes"]["duplicate_lines_dropped"] == 91
    ids = ave_ids()
    rows = read_samples(out)
    for split in ("train", "val", "test"):
        assert sorted(r["id"] for r in rows if r["split"] == split) == sorted(c for c, _ in ids[split])
    skipped = read_skipped(out)
    assert AVE_DUPLICATE not in {r["id"] for r in rows}
    assert "duplicated id" in skipped[AVE_DUPLICATE] and "Female speech" in skipped[AVE_DUPLICATE]
    # every listed line that is not one of the 8 prepared clips, once; a duplicated id has one line per listing
    assert m["skipped"] == 4143 - 8 and len(skipped) == 4143 - 8 - 91 + 45
    assert "AVE/" in skipped[next(iter(skipped))] and ".mp4: missing" in skipped[next(iter(skipped))]
    counts = np.load(out / "visual.count.npy")
    assert [int(c) for c in counts] == [seconds[r["id"]] for r in rows]  # 1 fps: one frame per second


def test_ave_frames_sampled_per_segment(prepared):
    ds = load_dataset(DataConfig(name="ave", path=str(prepared["ave"]["out"])))
    seconds = prepared["ave"]["info"]
    rows = np.arange(len(ds.ids))
    batch = ds.batch(rows, train=False)
    assert batch.inputs["visual"].shape == (len(rows), 3, 3, SIZE, SIZE)
    grey = unnormalise_grey(batch.inputs["visual"])
    for i, sid in enumerate(ds.ids):  # evaluation: the centre frame of each of 3 equal segments
        c = seconds[sid]
        expect = [min(int((2 * k + 1) * c / 6), c - 1) for k in range(3)]
        assert torch.allclose(grey[i], torch.tensor([float(second_value(e)) for e in expect]), atol=12), (sid, grey[i])
    torch.manual_seed(0)
    for _ in range(3):  # training: a frame inside each segment
        grey = unnormalise_grey(ds.batch(rows, train=True).inputs["visual"])
        for i, sid in enumerate(ds.ids):
            c = seconds[sid]
            k = torch.round(grey[i] / 40 - 1).long().tolist()
            assert all(int(j * c / 3) <= k[j] <= min(int(np.ceil((j + 1) * c / 3)) - 1, c - 1) for j in range(3)), (sid, k)


@pytest.mark.parametrize("name", ["cremad", "kinetics-sounds", "vggsound", "ave"])
def test_load_batches(prepared, name):
    ds = load_dataset(DataConfig(name=name, path=str(prepared[name]["out"])))
    m = manifest_of(prepared[name]["out"])
    audio_shape = {"cremad": (257, 188), "kinetics-sounds": (257, 188), "vggsound": (129, 626), "ave": (257, 188)}[name]
    frames = m["modalities"]["visual"]["frames"]
    assert frames == (1 if name == "cremad" else 3)
    assert ds.classes == m["classes"] and len(ds.ids) == m["num_samples"]
    for split, train in (("train", True), ("test", False)):
        rows = ds.splits[split][:4]
        b = ds.batch(rows, train=train)
        assert b.inputs["audio"].shape == (len(rows), *audio_shape) and b.inputs["audio"].dtype == torch.float32
        assert b.inputs["visual"].shape == (len(rows), frames, 3, SIZE, SIZE)
        assert torch.isfinite(b.inputs["audio"]).all() and torch.isfinite(b.inputs["visual"]).all()
        assert b.y.tolist() == ds.labels[rows].tolist()
    eval_a, eval_b = ds.batch(ds.splits["test"], False), ds.batch(ds.splits["test"], False)
    assert torch.equal(eval_a.inputs["visual"], eval_b.inputs["visual"])  # evaluation is deterministic
    assert torch.equal(eval_a.inputs["audio"], eval_b.inputs["audio"])
    two = load_dataset(DataConfig(name=name, path=str(prepared[name]["out"]), frames=2))
    assert two.batch(ds.splits["train"][:2], train=True).inputs["visual"].shape[1] == 2


@pytest.mark.parametrize("name", ["cremad", "kinetics-sounds", "vggsound", "ave"])
def test_train_one_epoch(prepared, name, tmp_path, capsys):
    code = main(["train", "--data", f"{name}:{prepared[name]['out']}", "--method", "joint", "--epochs", "1",
                 "--set", "model.width=4", "--set", "data.batch_size=4", "--quiet", "--set", "train.probe=false",
                 "--set", "train.threads=1", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == name and summary["modalities"] == ["audio", "visual"]


# ------------------------------------------------------------------------------ refusing to load
def test_load_refuses_other_preset_and_edited_split(prepared, tmp_path):
    out = prepared["cremad"]["out"]
    with pytest.raises(DataError, match="prepared with preset ogmge_stft .* asks for lfm_stft"):
        load_dataset(DataConfig(name="cremad", path=str(out), options={"preset": "lfm_stft"}))
    assert load_dataset(DataConfig(name="cremad", path=str(out), options={"preset": "ogmge_stft"})).num_classes == 6
    with pytest.raises(DataError, match="holds a prepared 'cremad' dataset, not 'ave'"):
        load_dataset(DataConfig(name="ave", path=str(out)))
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    splits = json.loads((copy / "splits.json").read_text())
    splits["test"].append(splits["train"].pop())
    (copy / "splits.json").write_text(json.dumps(splits, sort_keys=True))
    with pytest.raises(DataError, match="splits.json: changed since the folder was prepared"):
        load_dataset(DataConfig(name="cremad", path=str(copy)))


# ------------------------------------------------------------------------------ bad input
CLEAN_ROWS = [r for r in VGG_ROWS if r[4] and r[2] != "car horn"]  # 8 clips, every file present


def clean_vggsound(src: Path) -> None:
    make_vggsound(src, CLEAN_ROWS, video_for=None)
    lines = (src / "vggsound.csv").read_text().splitlines()
    (src / "vggsound.csv").write_text("\n".join(lines[:-1]) + "\n")  # no repeated row


def break_corrupt_wav(src):
    (src / "audio" / "vggA0000001_000030.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    return "vggA0000001_000030", {}, ["vggA0000001_000030.wav", "not a readable WAV"]


def break_empty_jpg(src):
    (src / "frames" / "vggB0000001_000002" / "00002.jpg").write_bytes(b"")
    return "vggB0000001_000002", {}, ["00002.jpg", "not a readable image"]


def break_missing_frame_folder(src):
    shutil.rmtree(src / "frames" / "vggA0000002_000100")
    return "vggA0000002_000100", {}, ["frames/vggA0000002_000100", "frame folder missing"]


def break_unknown_label(src):
    with (src / "vggsound.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["vggZ0000000", 3, "zebra braying", "train"])
    write_wav(src / "audio" / "vggZ0000000_000003.wav")
    write_frames(src / "frames" / "vggZ0000000_000003")
    classes = src.parent / "classes.txt"
    classes.write_text("dog barking\npeople, crowd\n")
    return "vggZ0000000_000003", {"classes": str(classes)}, ["vggsound.csv line 9", "label 'zebra braying' is not in the class list"]


def break_no_raw_files(src):
    with (src / "vggsound.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["vggY0000000", 12, "dog barking", "test"])
    return "vggY0000000_000012", {}, ["audio/vggY0000000_000012.wav: missing", "vggsound.csv line 9"]


@pytest.mark.parametrize("breaker", [break_corrupt_wav, break_empty_jpg, break_missing_frame_folder,
                                     break_unknown_label, break_no_raw_files], ids=lambda f: f.__name__[6:])
def test_bad_input_stops_or_is_recorded(tmp_path, breaker):
    src = tmp_path / "raw"
    clean_vggsound(src)
    bad_id, options, words = breaker(src)
    with pytest.raises(DataError) as info:
        prepare("vggsound", src, tmp_path / "stop", settings=SMALL, options=options, progress=False)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not (tmp_path / "stop").exists() and not list(tmp_path.glob(".stop.partial-*"))

    report = prepare("vggsound", src, tmp_path / "skip", settings=SMALL, options=options, on_error="skip",
                     progress=False)
    skipped = read_skipped(report.out)
    assert list(skipped) == [bad_id] and all(w in skipped[bad_id] for w in words[1:]), skipped
    m = manifest_of(report.out)
    listed = len((src / "vggsound.csv").read_text().splitlines())
    assert m["skipped"] == 1 and m["num_samples"] == listed - 1
    assert bad_id not in {r["id"] for r in read_samples(report.out)}
    assert "skipped 1 ids" in report.format()


def test_failed_prepare_leaves_existing_folder_intact(tmp_path):
    src = tmp_path / "raw"
    clean_vggsound(src)
    out = prepare("vggsound", src, tmp_path / "prep", settings=SMALL, progress=False).out
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="already a prepared folder"):
        prepare("vggsound", src, out, settings=SMALL, progress=False)
    break_corrupt_wav(src)
    with pytest.raises(DataError, match="not a readable WAV"):
        prepare("vggsound", src, out, settings=SMALL, force=True, progress=False)
    assert (out / "manifest.json").read_bytes() == manifest
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", "raw"]  # no partial folder left


# ------------------------------------------------------------------------------ sound from videos
def test_sound_from_video_needs_ffmpeg(tmp_path, monkeypatch):
    src = tmp_path / "raw"
    clean_vggsound(src)
    clip = "vggA0000003_000005"
    (src / "audio" / f"{clip}.wav").unlink()
    write_video(src / "video" / f"{clip}.mp4", 2)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    report = prepare("vggsound", src, tmp_path / "prep", settings=SMALL, on_error="skip", progress=False)
    assert "needs ffmpeg" in read_skipped(report.out)[clip]


def test_sound_from_video_with_ffmpeg(tmp_path):
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed")
    src = tmp_path / "raw"
    clean_vggsound(src)
    clip = "vggA0000003_000005"
    wav = src / "audio" / f"{clip}.wav"
    write_video(tmp_path / "silent.mp4", 2)
    (src / "video").mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(tmp_path / "silent.mp4"), "-i", str(wav), "-c:v", "copy",
                    "-c:a", "aac", "-shortest", str(src / "video" / f"{clip}.mp4")], check=True)
    wav.unlink()
    report = prepare("vggsound", src, tmp_path / "prep", settings=SMALL, progress=False)
    rows = [r["id"] for r in read_samples(report.out)]
    audio = np.load(report.out / "audio.npy")[rows.index(clip)].astype(np.float32)
    assert np.isfinite(audio).all() and audio.std() > 0.1  # a real spectrogram, not silence


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_loads(path):
    from modgap.methods import build_method

    config = make_config(path)
    method = build_method(config.method, ("audio", "visual"), 6, {"audio": 8, "visual": 8})  # checks method options
    options = {k: v for k, v in config.method.items() if k != "name"}
    assert method.name == config.method["name"] and options
    assert {k: getattr(method.options, k) for k in options} == options  # the file's settings are the ones used
    for name in config.methods:  # every method's settings for this dataset build, with --method NAME
        chosen = make_config(path, {"method": {"name": name}})
        assert chosen.method == {"name": name, **config.methods[name]}
        build_method(chosen.method, ("audio", "visual"), 6, {"audio": 8, "visual": 8})


def test_dataset_configs_exist():
    names = {p.stem for p in (REPO / "configs").glob("*.yaml")}
    assert {"cremad", "cremad-lfm-released", "kinetics-sounds", "vggsound", "ave"} <= names
