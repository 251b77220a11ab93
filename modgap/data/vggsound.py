"""VGGSound (Chen, Xie, Vedaldi & Zisserman, ICASSP 2020): ~200k 10 s YouTube clips, audio + visual.

Split and labels: SRC/vggsound.csv from the release (https://www.robots.ox.ac.uk/~vgg/data/vggsound/),
rows ``ytid,start_seconds,label,split`` without a header, split ``train`` or ``test`` (the official
split; no val: 10 % carved from train). Clip id: ``f"{ytid}_{start:06d}"`` (the release's file names).

Raw layout (per id; the first that exists is used):
    sound:  SRC/audio/<id>.wav, else the sound track of SRC/video/<id>.<mp4|mkv|webm|avi> (ffmpeg)
    frames: SRC/frames/<id>/*.jpg (or SRC/visual/<id>/), else SRC/video/<id>.* at 1 fps (OpenCV)
    (SRC/videos/ is read like SRC/video/.)

Classes: the csv has 310 labels (the paper's count); OGM-GE-family code builds its class list from
the clips it found and trains with 309. Option ``drop_empty_classes`` (default true) drops every
class with no usable train clip in this download, and its test clips (recorded in skipped.csv and
in the manifest notes, which name the dropped classes). Option ``classes`` (a file, one label per
line) fixes the class list instead; a csv label outside it is then a problem. Many videos are
offline: listed ids without raw files are problems (``--on-error skip`` records them).
Defaults: audio preset vggsound_stft (16 kHz, 5 s crop; OGM-GE's VGGSound loader), 3 frames
(OGM-GE's ``use_video_frames`` default), up to 10 stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError
from .kinetics_sounds import MediaFinder, read_class_file
from .prepare import RawFormat, RawIndex, RawSample, register_raw

CSV_NAME = "vggsound.csv"


@register_raw
class VGGSound(RawFormat):
    name = "vggsound"
    summary = "VGGSound, 309/310 classes, audio + visual; modgap prepare vggsound, then --data vggsound:DIR"
    modalities = {"audio": "audio", "visual": "frames"}
    defaults = {"audio": {"preset": "vggsound_stft"}, "visual": {"frames": 3, "max_frames": 10}}

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        unknown = set(options) - {"classes", "drop_empty_classes"}
        if unknown:
            raise DataError(
                f"vggsound: unknown option(s) {', '.join(sorted(unknown))} (known: classes, drop_empty_classes)"
            )
        drop_empty = bool(options.get("drop_empty_classes", True))
        path = src / CSV_NAME
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: not found (the VGGSound release's csv: ytid,start_seconds,label,split)") from None
        try:
            text = blob.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        sources = {CSV_NAME: hashlib.sha256(blob).hexdigest()}

        rows, problems, dropped = [], [], []
        seen: dict[str, int] = {}  # clip -> its first line
        for n, fields in enumerate(csv.reader(io.StringIO(text)), 1):
            if not fields or not "".join(fields).strip():
                continue
            fields = [f.strip() for f in fields]
            if len(fields) != 4 or not fields[1].isdigit() or fields[3] not in ("train", "test"):
                if n == 1 and len(fields) == 4 and not fields[1].isdigit():
                    continue  # a header row
                problems.append(
                    (
                        fields[0] if fields else f"line {n}",
                        f"{path} line {n}: expected 'ytid,start_seconds,label,train|test', got '{','.join(fields)}'",
                    )
                )
                continue
            ytid, start, label, split = fields
            clip = f"{ytid}_{int(start):06d}"
            if clip in seen:
                dropped.append(
                    (clip, f"{path} line {n}: id listed again (first at line {seen[clip]}); the repeat is dropped")
                )
                continue
            seen[clip] = n
            rows.append((n, clip, label, split))

        fixed = options.get("classes")
        if fixed:
            classes, digest = read_class_file(Path(fixed))
            sources[f"classes:{Path(fixed).name}"] = digest
            class_note = f"class list from {fixed}"
        else:
            classes = sorted({label for _, _, label, _ in rows})
            class_note = f"every label of {CSV_NAME}, sorted"
        known = set(classes)
        found = []
        media = MediaFinder(src, ("audio",), ("frames", "visual"), ("video", "videos"))
        for n, clip, label, split in rows:
            if label not in known:
                problems.append((clip, f"{path} line {n}: label '{label}' is not in the class list ({fixed})"))
                continue
            audio, frames, problem = media.find(clip)
            if problem:
                problems.append((clip, f"{problem}; listed in {CSV_NAME} line {n}"))
            else:
                found.append(RawSample(clip, label, split, {"audio": audio, "visual": frames}))

        train_counts = Counter(s.label for s in found if s.split == "train")
        empty = [c for c in classes if train_counts[c] == 0] if drop_empty else []
        if empty:
            gone = set(empty)
            classes = [c for c in classes if c not in gone]
            for s in found:
                if s.label in gone:
                    dropped.append((s.id, f"class '{s.label}' has no usable train clip: dropped (drop_empty_classes)"))
            found = [s for s in found if s.label not in gone]
        notes = {
            "class_list": class_note,
            "labels_in_csv": len({label for _, _, label, _ in rows}),
            "num_classes": len(classes),
            "drop_empty_classes": drop_empty,
            "dropped_classes": empty,
            "class_convention": (
                "the csv and the VGGSound paper have 310 classes; OGM-GE-family code trains "
                "with 309, the classes found in its download"
            ),
            "missing_ids": len(problems),
            "repeated_ids": sum(1 for _, why in dropped if "listed again" in why),
        }
        return RawIndex(classes, found, problems, sources, notes, dropped=dropped)
