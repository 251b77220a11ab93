"""Image + text benchmarks (twitter2015, sarcasm, food101): a tiny fake raw download in the real
layout of each, `modgap prepare` with a tiny local tokenizer, the cached arrays, one training epoch
through the CLI, and bad input (stop with a one-line error naming the file, or skip and record)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from modgap.cli import main  # noqa: E402
from modgap.data.prepare import prepare  # noqa: E402
from modgap.errors import DataError  # noqa: E402

from conftest import REPO, read_samples, read_skipped, save_tiny_bert

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

WORDS = ["i", "love", "the", "a", "pizza", "cake", "day", "great", "bad", "game", "rt", "new", "what", "so",
         "apple", "pie", "ribs", "recipe", "with", "and", "fun", "#", ":", "!", ".", "@", "tyga", "pedro", "today"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), WORDS, max_positions=160)


def jpg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def cli_prepare(name: str, src: Path, out: Path, tiny_bert: str, *extra: str) -> int:
    return main(["prepare", name, "--src", str(src), "--out", str(out), "--image-size", "32",
                 "--text-model", tiny_bert, "--max-len", "16", "--quiet", *extra])


def train_once(name: str, folder: Path, run: Path, tiny_bert: str) -> dict:
    code = main(["train", "--data", f"{name}:{folder}", "--method", "joint", "--epochs", "1",
                 "--set", "model.width=4", "--set", f"model.text_model={tiny_bert}", "--set", "data.batch_size=4",
                 "--quiet", "--set", "train.probe=false", "--set", "train.threads=1", "--out", str(run)])
    assert code == 0
    return json.loads((run / "summary.json").read_text())


def api_prepare(name: str, src: Path, out: Path, tiny_bert: str, on_error: str = "stop"):
    return prepare(name, src, out, settings={"image_size": 32, "text_model": tiny_bert, "max_len": 16},
                   on_error=on_error, progress=False)


def decode(tiny_bert: str, ids: np.ndarray) -> str:
    from transformers import AutoTokenizer

    return " ".join(AutoTokenizer.from_pretrained(tiny_bert).convert_ids_to_tokens([int(i) for i in ids if i != 0]))


def check_arrays(folder: Path, n: int, max_len: int = 16) -> None:
    image = np.load(folder / "image.npy")
    text = np.load(folder / "text.npy")
    assert image.shape == (n, 32, 32, 3) and image.dtype == np.uint8
    assert text.shape == (n, 2, max_len) and text.dtype == np.int32
    assert (text[:, 1].sum(1) > 0).all()  # every text has tokens
    assert image.reshape(n, -1).std(1).min() > 0  # real pixels, not zero padding


# ------------------------------------------------------------------------------------ twitter2015
TWEETS = {  # split file -> rows (label, image id, tweet, target)
    "train.tsv": [("0", "1.jpg", "RT @ tyga : $T$ went so bad today", "Tyga"),
                  ("1", "2.jpg", "$T$ , a new game", "Pedro"),
                  ("2", "2.jpg", "i love $T$ !", "pizza"),
                  ("2", "3.jpg", "what a great day with $T$", "cake")],
    "dev.tsv": [("1", "4.jpg", "the $T$ game", "new"), ("0", "5.jpg", "$T$ so bad", "ribs"),
                ("2", "4.jpg", "love $T$", "cake")],
    "test.tsv": [("2", "6.jpg", "great $T$", "pie"), ("0", "7.jpg", "bad $T$", "game"), ("1", "6.jpg", "$T$", "day")],
}


def make_twitter(root: Path, rows: dict | None = None) -> Path:
    rows = rows or TWEETS
    root.mkdir(parents=True, exist_ok=True)
    for filename, lines in rows.items():
        text = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"
        text += "".join(f"{i}\t{label}\t{img}\t{tweet}\t{target}\n" for i, (label, img, tweet, target) in enumerate(lines, 1))
        (root / filename).write_text(text, encoding="utf-8")
        for _, img, _, _ in lines:
            if not (root / "twitter2015_images" / img).exists():
                jpg(root / "twitter2015_images" / img, seed=int(img.split(".")[0]))
    return root


def test_twitter2015_prepare_and_train(tmp_path, tiny_bert):
    src, out = make_twitter(tmp_path / "raw"), tmp_path / "prep"
    assert cli_prepare("twitter2015", src, out, tiny_bert) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["negative", "neutral", "positive"]
    assert manifest["modalities"]["text"]["text_model"] == tiny_bert
    assert manifest["modalities"]["image"]["image_size"] == 32
    assert not manifest["val_carved"] and set(manifest["source_files"]) == {"train.tsv", "dev.tsv", "test.tsv"}
    rows = read_samples(out)
    assert [(r["id"], r["label"], r["split"]) for r in rows][:4] == [
        ("train-1", "negative", "train"), ("train-2", "neutral", "train"), ("train-3", "positive", "train"),
        ("train-4", "positive", "train")]
    assert [r["split"] for r in rows].count("val") == 3 and [r["split"] for r in rows].count("test") == 3
    check_arrays(out, 10)
    # $T$ replaced by the target, then [SEP] target (TomBERT's sentence pair)
    text = decode(tiny_bert, np.load(out / "text.npy")[2, 0])
    assert text == "[CLS] i love pizza ! [SEP] pizza [SEP]", text
    summary = train_once("twitter2015", out, tmp_path / "run", tiny_bert)
    assert summary["modalities"] == ["image", "text"] and summary["epochs"] == 1


def test_twitter2015_bad_input(tmp_path, tiny_bert):
    rows = {k: list(v) for k, v in TWEETS.items()}
    rows["train.tsv"][1] = ("3", "2.jpg", "$T$ , a new game", "Pedro")          # label outside 0, 1, 2
    rows["dev.tsv"][0] = ("1", "404.jpg", "the $T$ game", "new")                 # image missing
    src = make_twitter(tmp_path / "raw", rows)
    (src / "twitter2015_images" / "404.jpg").unlink()
    with pytest.raises(DataError) as err:
        api_prepare("twitter2015", src, tmp_path / "a", tiny_bert)
    message = str(err.value)
    assert "\n" not in message and f"{src / 'train.tsv'}: line 3: label '3'" in message
    report = api_prepare("twitter2015", src, tmp_path / "b", tiny_bert, on_error="skip")
    skipped = read_skipped(tmp_path / "b")
    assert set(skipped) == {"train-2", "val-1"} and "404.jpg" in skipped["val-1"]
    assert len(report.skipped) == 2 and len(read_samples(tmp_path / "b")) == 8
    # an empty jpg fails in processing: stop names it, skip records it
    make_twitter(src)
    (src / "twitter2015_images" / "3.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"3\.jpg: not a readable image") as err:
        api_prepare("twitter2015", src, tmp_path / "c", tiny_bert)
    assert "\n" not in str(err.value)
    api_prepare("twitter2015", src, tmp_path / "d", tiny_bert, on_error="skip")
    assert "not a readable image" in read_skipped(tmp_path / "d")["train-4"]
    # a malformed row is a format error whatever on_error says
    (src / "test.tsv").write_text("index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n1\t0\t6.jpg\tno target\n")
    with pytest.raises(DataError, match=r"test\.tsv: line 2 has 4 tab-separated fields"):
        api_prepare("twitter2015", src, tmp_path / "e", tiny_bert, on_error="skip")


# ---------------------------------------------------------------------------------------- sarcasm
SARCASM = {
    "train.txt": ["['101', 'i love the rain today # fun', 1]", "['102', 'great day with pizza', 0]",
                  "['103', \"what a game ! so fun\", 1]", "['104', 'new cake recipe', 0]",
                  "['105', 'love this # sarcasm', 1]"],                      # dropped by the HFM word filter
    "valid2.txt": ["['201', 'so bad', 1, 1]", "['202', 'the new game', 0, 0]", "['203', 'love it <user>', 1, 0]"],
    "test2.txt": ["['301', 'great !', 1, 1]", "['302', 'apple pie', 0, 0]", "['303', 'i love mondays', 0, 1]"],
}


def make_sarcasm(root: Path, files: dict | None = None) -> Path:
    for filename, lines in (files or SARCASM).items():
        (root / "text").mkdir(parents=True, exist_ok=True)
        (root / "text" / filename).write_text("\n".join(lines) + "\n", encoding="utf-8")
        for line in lines:
            sid = line.split("'")[1]
            jpg(root / "dataset_image" / f"{sid}.jpg", seed=int(sid))
    return root


def test_sarcasm_prepare_and_train(tmp_path, tiny_bert):
    src, out = make_sarcasm(tmp_path / "raw"), tmp_path / "prep"
    assert cli_prepare("sarcasm", src, out, tiny_bert) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["not_sarcastic", "sarcastic"]
    assert manifest["notes"]["filtered_by_keyword"] == {"train": 1, "val": 0, "test": 0}
    rows = {r["id"]: r for r in read_samples(out)}
    assert "105" not in rows and len(rows) == 10
    # val/test take the last element (the second annotator's label)
    assert rows["203"]["label"] == "not_sarcastic" and rows["303"]["label"] == "sarcastic"
    assert rows["203"]["split"] == "val" and rows["301"]["split"] == "test"
    check_arrays(out, 10)
    train_once("sarcasm", out, tmp_path / "run", tiny_bert)


def test_sarcasm_bad_input(tmp_path, tiny_bert):
    files = {k: list(v) for k, v in SARCASM.items()}
    files["train.txt"][1] = "['102', 'great day with pizza', 2]"                 # label outside 0, 1
    src = make_sarcasm(tmp_path / "raw", files)
    with pytest.raises(DataError) as err:
        api_prepare("sarcasm", src, tmp_path / "a", tiny_bert)
    assert "\n" not in str(err.value) and f"{src / 'text' / 'train.txt'}: line 2: label 2 is not 0 or 1" in str(err.value)
    api_prepare("sarcasm", src, tmp_path / "b", tiny_bert, on_error="skip")
    assert set(read_skipped(tmp_path / "b")) == {"102"}
    # a missing image: stop names it
    make_sarcasm(src)
    (src / "dataset_image" / "302.jpg").unlink()
    with pytest.raises(DataError, match=r"302\.jpg: listed in test2\.txt line 2 but missing"):
        api_prepare("sarcasm", src, tmp_path / "c", tiny_bert, on_error="stop")
    # a line that is no Python literal names the file and the line
    (src / "text" / "valid2.txt").write_text("['201', 'so bad', 1, 1]\n['202', 'unclosed, 0, 0]\n")
    with pytest.raises(DataError, match=r"valid2\.txt: line 2 is not a Python list literal"):
        api_prepare("sarcasm", src, tmp_path / "d", tiny_bert, on_error="skip")


# ---------------------------------------------------------------------------------------- food101
FOOD = {
    "train": [("apple_pie", "apple_pie_0.jpg", "Apple pie recipe , with apple"),
              ("apple_pie", "apple_pie_1.jpg", "The apple pie"), ("apple_pie", "apple_pie_2.jpg", "new pie"),
              ("baby_back_ribs", "baby_back_ribs_0.jpg", "ribs recipe"),
              ("baby_back_ribs", "baby_back_ribs_1.jpg", "bbq ribs, \"so\" great"),
              ("baby_back_ribs", "baby_back_ribs_2.jpg", "ribs and cake")],
    "test": [("apple_pie", "apple_pie_3.jpg", "apple pie ."), ("baby_back_ribs", "baby_back_ribs_3.jpg", "ribs !")],
}


def make_food(root: Path, rows: dict | None = None, header: bool = False) -> Path:
    (root / "texts").mkdir(parents=True, exist_ok=True)
    for split, items in (rows or FOOD).items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if header:
                writer.writerow(["image_path", "text", "food"])
            writer.writerows([(name, text, label) for label, name, text in items])
        for label, name, _ in items:
            if label in ("apple_pie", "baby_back_ribs"):
                jpg(root / "images" / split / label / name, seed=sum(name.encode()))
    return root


def test_food101_prepare_and_train(tmp_path, tiny_bert):
    src, out = make_food(tmp_path / "raw"), tmp_path / "prep"
    assert cli_prepare("food101", src, out, tiny_bert) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["classes"]) == 101 and manifest["classes"][:2] == ["apple_pie", "baby_back_ribs"]
    assert manifest["val_carved"]
    rows = read_samples(out)
    splits = [r["split"] for r in rows]
    assert splits.count("test") == 2 and splits.count("val") == 2 and splits.count("train") == 4
    assert {r["id"] for r in rows if r["split"] == "test"} == {"test/apple_pie_3.jpg", "test/baby_back_ribs_3.jpg"}
    check_arrays(out, 8)
    assert "apple pie recipe" in decode(tiny_bert, np.load(out / "text.npy")[0, 0])
    summary = train_once("food101", out, tmp_path / "run", tiny_bert)
    assert summary["epochs"] == 1


def test_food101_bad_input_and_header(tmp_path, tiny_bert):
    rows = {k: list(v) for k, v in FOOD.items()}
    rows["train"].append(("not_a_food", "mystery_0.jpg", "what"))
    src = make_food(tmp_path / "raw", rows)
    train_csv = src / "texts" / "train_titles.csv"
    with pytest.raises(DataError) as err:
        api_prepare("food101", src, tmp_path / "a", tiny_bert)
    assert "\n" not in str(err.value)
    assert f"{train_csv}: line 7: label 'not_a_food' is not one of the 101 Food-101 classes" in str(err.value)
    # a header row is recognised; an unreadable jpg is named (stop) or recorded (skip)
    make_food(src, header=True)
    bad = src / "images" / "train" / "apple_pie" / "apple_pie_1.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"apple_pie_1\.jpg: not a readable image") as err:
        api_prepare("food101", src, tmp_path / "b", tiny_bert)
    assert "\n" not in str(err.value)
    api_prepare("food101", src, tmp_path / "c", tiny_bert, on_error="skip")
    assert set(read_skipped(tmp_path / "c")) == {"train/apple_pie_1.jpg"}
    assert len(read_samples(tmp_path / "c")) == 7


def test_configs_load():
    from modgap.config import make_config
    from modgap.methods import build_method

    root = REPO / "configs"
    for name, modalities in (("twitter2015", ("image", "text")), ("sarcasm", ("image", "text")),
                             ("food101", ("image", "text")), ("nvgesture", ("rgb", "depth", "flow"))):
        config = make_config(root / f"{name}.yaml")
        assert config.data.name == name and config.train.epochs >= 1
        build_method(config.method, modalities, 3, {m: 8 for m in modalities})  # method options are valid
    assert make_config(root / "twitter2015.yaml").optim.name == "adam"


# ------------------------------------------------------------------------------------ upscaling
CSV_FIX = "set data.options.image_size={size} (or prepare with --image-size {size})"


def test_upscale_warning_more_than_twice_a_side():
    from modgap.data.kinds import FramesKind, ImageKind, TextKind, upscale_warning

    image = ImageKind(image_size=224)
    assert upscale_warning("photo", image, [[32, 32]], CSV_FIX) == (
        "photo: images of 32x32 are upscaled to 224x224 (49x the pixels); set data.options.image_size=32 "
        "(or prepare with --image-size 32) to train at their size")
    assert upscale_warning("photo", image, [[224, 224]], CSV_FIX) is None          # trained at their size
    assert upscale_warning("photo", image, [[112, 112]], CSV_FIX) is None          # exactly 2x: not more
    assert upscale_warning("photo", image, [[112, 300]], CSV_FIX) is None
    assert upscale_warning("photo", image, [[640, 480]], CSV_FIX) is None          # downscaled
    assert "images of 111x111 are upscaled to 224x224 (4.1x the pixels)" in upscale_warning(
        "photo", image, [[111, 111]], CSV_FIX)
    # one side stretched more than 2x is enough; the suggested size is the larger side
    assert upscale_warning("photo", image, [[300, 100]], "prepare with --image-size {size}").endswith(
        "images of 300x100 are upscaled to 224x224 (1.7x the pixels); prepare with --image-size 300 to train at "
        "their size")
    # the typical (median by area) sampled image decides, not one odd thumbnail
    assert upscale_warning("photo", image, [[500, 400], [32, 32], [600, 400]], CSV_FIX) is None
    assert "images of 40x30" in upscale_warning("photo", image, [[40, 30], [32, 32], [600, 400]], CSV_FIX)
    # frames say frames; kinds without images and folders without recorded sizes never warn
    frames = FramesKind(image_size=112)
    assert upscale_warning("clip", frames, [[40, 30]], CSV_FIX).startswith("clip: frames of 40x30 are upscaled "
                                                                            "to 112x112 (10x the pixels)")
    assert upscale_warning("photo", image, [], CSV_FIX) is None
    assert upscale_warning("caption", TextKind(), [[32, 32]], CSV_FIX) is None


def test_source_size_reads_headers(tmp_path):
    from modgap.data.kinds import AudioKind, FramesKind, ImageKind

    assert ImageKind().source_size(jpg(tmp_path / "a.jpg", 0, (40, 30))) == (40, 30)
    assert ImageKind().source_size(tmp_path / "missing.jpg") is None
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert ImageKind().source_size(tmp_path / "bad.jpg") is None
    jpg(tmp_path / "clip" / "00001.jpg", 1, (50, 20))
    jpg(tmp_path / "clip" / "00000.jpg", 2, (64, 48))
    assert FramesKind().source_size(tmp_path / "clip") == (64, 48)  # the first frame in name order
    assert FramesKind().source_size((str(tmp_path / "clip"), 0, 1)) == (64, 48)  # a frame range's video
    assert AudioKind().source_size(tmp_path / "a.jpg") is None
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 24))
    for _ in range(3):
        writer.write(np.zeros((24, 40, 3), dtype=np.uint8))
    writer.release()
    assert FramesKind().source_size(tmp_path / "v.avi") == (40, 24)
