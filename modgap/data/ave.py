"""AVE, Audio-Visual Event dataset (Tian et al., ECCV 2018): 4143 10 s YouTube clips, 28 event classes.

Split: the official trainSet / valSet / testSet lists (bundled in splits/ave, 3339 / 402 / 402
lines ``Category&ytid&quality&start&end``); AVE is the one audio-visual set with an official val
split, so nothing is carved. Classes: the 28 Category values, sorted by name.
Duplicates: 45 ytids are listed more than once (91 lines, each time with a different category, e.g.
"Male speech" and "Female speech"; 18 of them across train/val/test). Every line of a duplicated
id is dropped (its label is ambiguous and a cross-split copy would leak test clips into training),
as OGM-GE's AVE loader does for pairs; each is recorded in skipped.csv and counted in the notes.

Raw layout (the AVE release, https://github.com/YapengTian/AVE-ECCV18):
    SRC/AVE/<ytid>.mp4                    the 10 s videos: sound via ffmpeg, frames at 1 fps via OpenCV
    optional, used first when present:
    SRC/audio/<ytid>.wav (or SRC/Audios/) pre-extracted sound
    SRC/frames/<ytid>/*.jpg (or SRC/visual/) pre-extracted frames
The whole 10 s clip is used; the start/end fields (the annotated event segment) are recorded but
not used to cut (PMR's released preprocessing cuts to them; OGM-GE's does not).
Defaults: audio preset ogmge_stft, 3 frames per clip (OGM-GE's AVE loader picks 3), up to 10 stored.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import DataError
from .kinetics_sounds import MediaFinder
from .prepare import RawFormat, RawIndex, RawSample, bundled_split, register_raw

LISTS = (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt"))


@register_raw
class AVE(RawFormat):
    name = "ave"
    summary = "AVE, 28 audio-visual events, official train/val/test; modgap prepare ave, then --data ave:DIR"
    modalities = {"audio": "audio", "visual": "frames"}
    defaults = {"audio": {"preset": "ogmge_stft"}, "visual": {"frames": 3, "max_frames": 10}}
    has_val = True

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        if options:
            raise DataError(f"ave: unknown option(s) {', '.join(sorted(options))} (AVE has none)")
        sources: dict[str, str] = {}
        entries, problems = [], []
        for split, filename in LISTS:
            lines, digest = bundled_split("ave", filename)
            sources[f"ave/{filename}"] = digest
            for n, line in enumerate(lines, 1):
                fields = line.split("&")
                if len(fields) != 5 or not fields[0] or not fields[1]:
                    problems.append(
                        (
                            fields[1] if len(fields) > 1 else f"{filename}:{n}",
                            f"{filename} line {n}: expected 'Category&ytid&quality&start&end', got '{line}'",
                        )
                    )
                    continue
                entries.append((split, filename, n, fields[0], fields[1]))
        where = defaultdict(list)
        for _split, filename, n, category, ytid in entries:
            where[ytid].append(f"{filename}:{n} {category}")
        classes = sorted({category for *_, category, _ in entries})
        samples, dropped = [], []
        media = MediaFinder(src, ("audio", "Audios"), ("frames", "visual"), ("AVE",), video_first=True)
        for split, filename, _n, category, ytid in entries:
            if len(where[ytid]) > 1:
                dropped.append(
                    (ytid, f"duplicated id, dropped: listed {len(where[ytid])} times ({'; '.join(where[ytid])})")
                )
                continue
            audio, frames, problem = media.find(ytid)
            if problem:
                problems.append((ytid, f"{problem}; listed in {filename}"))
            else:
                samples.append(RawSample(ytid, category, split, {"audio": audio, "visual": frames}))
        duplicated = sorted(y for y, w in where.items() if len(w) > 1)
        notes = {
            "class_list": "the 28 Category values of the lists, sorted",
            "num_classes": len(classes),
            "duplicated_ids": len(duplicated),
            "duplicate_lines_dropped": sum(len(where[y]) for y in duplicated),
            "segment": "whole clip used; the start/end event segment is not cut",
            "missing_ids": len(problems),
        }
        return RawIndex(classes, samples, problems, sources, notes, dropped=dropped)
