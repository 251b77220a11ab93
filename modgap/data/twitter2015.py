"""Twitter-2015 (Yu & Jiang, IJCAI 2019; TomBERT): target-oriented multimodal sentiment, image + text.

Raw layout (the TomBERT / IJCAI2019_data release, https://github.com/jefferyYu/TomBERT):
    SRC/train.tsv, SRC/dev.tsv, SRC/test.tsv
        header ``index  #1 Label  #2 ImageID  #3 String  #3 String``, then one tab-separated row per
        (tweet, target): index, label (0 negative, 1 neutral, 2 positive), image file name, the tweet
        with the target replaced by ``$T$``, the target
    SRC/twitter2015_images/<image file>   (``twitter15_images/`` is accepted too)
Split: the official 3179 train / 1122 dev (= val) / 1037 test rows. One image serves several rows
(one per target in the tweet).
Text: the tweet with ``$T$`` replaced by its target, then `` [SEP] `` and the target again, i.e.
TomBERT's sentence-pair input ``[CLS] tweet [SEP] target [SEP]`` (TomBERT itself leaves the literal
``$T$`` in the tweet; we put the target back so the sentence reads as written). ``[SEP]`` is BERT's
separator: a tokenizer without that special token reads it as ordinary text.
Defaults: image_size 224, text_model bert-base-uncased, max_len 64 (TomBERT's max_seq_length).
Ids are ``<split>-<index>`` (the index restarts in each file).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError
from .prepare import RawFormat, RawIndex, RawSample, register_raw
from .prepared_format import file_sha256

CLASSES = ["negative", "neutral", "positive"]
"""Raw labels 0, 1, 2 in this order."""
FILES = (("train", "train.tsv"), ("val", "dev.tsv"), ("test", "test.tsv"))
IMAGE_FOLDERS = ("twitter2015_images", "twitter15_images")
HEADER = "index, #1 Label, #2 ImageID, #3 String, #3 String"


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, with one-line errors naming it."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def tweet_text(tweet: str, target: str) -> str:
    return f"{tweet.replace('$T$', target).strip()} [SEP] {target.strip()}"


@register_raw
class Twitter2015(RawFormat):
    name = "twitter2015"
    summary = (
        "Twitter-2015 target sentiment, 3 classes, image + text; "
        "modgap prepare twitter2015, then --data twitter2015:DIR"
    )
    modalities = {"image": "image", "text": "text"}
    defaults = {"image": {"image_size": 224}, "text": {"text_model": "bert-base-uncased", "max_len": 64}}
    has_val = True

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        images = next((src / f for f in IMAGE_FOLDERS if (src / f).is_dir()), None)
        if images is None:
            raise DataError(f"{src / IMAGE_FOLDERS[0]}: image folder not found (the tweets' images)")
        samples, problems, sources = [], [], {}
        for split, filename in FILES:
            path = src / filename
            lines = read_lines(path)
            sources[filename] = file_sha256(path)
            if not lines or not lines[0].startswith("index\t"):
                raise DataError(f"{path}: line 1 is not the header ({HEADER}, tab-separated)")
            for lineno, line in enumerate(lines[1:], start=2):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != 5:
                    raise DataError(
                        f"{path}: line {lineno} has {len(fields)} tab-separated fields, expected 5 ({HEADER})"
                    )
                index, label, image_id, tweet, target = (f.strip() for f in fields)
                sid = f"{split}-{index}"
                if label not in ("0", "1", "2"):
                    problems.append((sid, f"{path}: line {lineno}: label '{label}' is not one of 0, 1, 2"))
                    continue
                image = images / image_id
                if not image_id or not image.is_file():
                    problems.append((sid, f"{image}: listed in {filename} line {lineno} but missing"))
                    continue
                samples.append(
                    RawSample(sid, CLASSES[int(label)], split, {"image": image, "text": tweet_text(tweet, target)})
                )
        repeated = [i for i, n in Counter([s.id for s in samples] + [p[0] for p in problems]).items() if n > 1]
        if repeated:
            raise DataError(f"{src}: id {repeated[0]} appears twice (an index repeated within one split file)")
        return RawIndex(
            CLASSES,
            samples,
            problems,
            sources,
            notes={"text": "tweet with $T$ replaced by the target, then ' [SEP] ' and the target"},
        )
