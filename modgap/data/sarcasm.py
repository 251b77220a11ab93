"""Multimodal Twitter sarcasm (Cai, Cai & Wan, ACL 2019, "HFM"): 2 classes, image + text.

Raw layout (https://github.com/headacheboy/data-of-multimodal-sarcasm-detection):
    SRC/text/train.txt     one Python list literal per line: ['<tweet id>', '<text>', <label>]
    SRC/text/valid2.txt    ['<tweet id>', '<text>', <hashtag label>, <label>]
    SRC/text/test2.txt     same as valid2.txt
    SRC/dataset_image/<tweet id>.jpg
The label is the last element (0 not sarcastic, 1 sarcastic); in valid2/test2 the last but one is
the hashtag-derived label and the last the second annotator's, which the HFM code reads.
Filtering: the HFM loader (codes/loadData.py) drops every tweet whose whitespace-split text holds
one of the words in FILTER_WORDS (sarcasm, sarcastic, <url>, ...). The released train.txt has about
29k lines; the filter leaves the 19816 / 2410 / 2409 tweets every paper reports. prepare applies
the same filter and records how many tweets it dropped per split in the manifest's notes.
Split: official train / valid2 (= val) / test2. Text is used as released (already lower-cased,
with <user>, <num> and emoji_<n> placeholders).
Defaults: image_size 224, text_model bert-base-uncased, max_len 64 (as for Twitter-2015).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from ..errors import DataError
from .prepare import RawFormat, RawIndex, RawSample, register_raw
from .prepared_format import file_sha256
from .twitter2015 import read_lines

CLASSES = ["not_sarcastic", "sarcastic"]
"""Raw labels 0, 1 in this order."""
FILES = (("train", "train.txt"), ("val", "valid2.txt"), ("test", "test2.txt"))
FILTER_WORDS = frozenset(
    {"sarcasm", "sarcastic", "reposting", "<url>", "joke", "humour", "humor", "jokes", "irony", "ironic", "exgag"}
)
"""Tweets holding any of these tokens are dropped, as in the HFM release's loadData.py."""


def parse_line(path: Path, lineno: int, line: str) -> tuple[str, str, Any]:
    """(id, text, label) of one line; a malformed line is a one-line DataError naming file and line."""
    try:
        item = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        reason = type(exc).__name__ + (f": {exc.msg}" if isinstance(exc, SyntaxError) and exc.msg else "")
        raise DataError(f"{path}: line {lineno} is not a Python list literal ({reason})") from None
    if not isinstance(item, (list, tuple)) or len(item) not in (3, 4):
        raise DataError(
            f"{path}: line {lineno}: expected [id, text, label] or [id, text, label_1, label], "
            f"got {type(item).__name__}" + (f" of {len(item)} elements" if isinstance(item, (list, tuple)) else "")
        )
    sid, text, label = item[0], item[1], item[-1]
    if not isinstance(text, str):
        raise DataError(f"{path}: line {lineno}: the text (second element) is not a string")
    return str(sid).strip(), text, label


@register_raw
class Sarcasm(RawFormat):
    name = "sarcasm"
    summary = (
        "Twitter sarcasm (Cai et al. 2019), 2 classes, image + text; modgap prepare sarcasm, then --data sarcasm:DIR"
    )
    modalities = {"image": "image", "text": "text"}
    defaults = {"image": {"image_size": 224}, "text": {"text_model": "bert-base-uncased", "max_len": 64}}
    has_val = True

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        images = src / "dataset_image"
        if not images.is_dir():
            raise DataError(f"{images}: image folder not found")
        samples, problems, sources, filtered = [], [], {}, {}
        seen: dict[str, str] = {}
        for split, filename in FILES:
            path = src / "text" / filename
            lines = read_lines(path)
            sources[f"text/{filename}"] = file_sha256(path)
            filtered[split] = 0
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                sid, text, label = parse_line(path, lineno, line)
                where = f"{path}: line {lineno}"
                if not sid:
                    raise DataError(f"{where}: empty tweet id")
                if FILTER_WORDS.intersection(text.split()):
                    filtered[split] += 1
                    continue
                if sid in seen:
                    problems.append((sid, f"{where}: id {sid} already listed ({seen[sid]})"))
                    continue
                seen[sid] = where
                if type(label) is not int or label not in (0, 1):
                    problems.append((sid, f"{where}: label {label!r} is not 0 or 1"))
                    continue
                image = images / f"{sid}.jpg"
                if not image.is_file():
                    problems.append((sid, f"{image}: listed in {filename} line {lineno} but missing"))
                    continue
                samples.append(RawSample(sid, CLASSES[label], split, {"image": image, "text": text}))
        return RawIndex(
            CLASSES,
            samples,
            problems,
            sources,
            notes={
                "filtered_by_keyword": filtered,
                "filter_words": sorted(FILTER_WORDS),
                "label": "last element of each line (the second annotator's in valid2/test2)",
            },
        )
