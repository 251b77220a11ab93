"""Kinetics-Sounds (Arandjelovic & Zisserman, ICCV 2017): Kinetics clips of classes one can hear.

Split: the bundled OGM-GE lists (splits/kinetics-sounds, 14799 train / 2597 test lines
``<id>,10,<label_index>``, label indices 0-30: 31 classes), no official val (10 % carved). Ids are
``<ytid>_<start6>_<end6>`` in train.txt and the short ``<ytid>_<n>`` in test.txt; both are kept
exactly as listed and name the raw files. 31 classes is the OGM-GE convention; the original list
has 34 and other repositories use 32 or 33, so numbers across papers differ.

Class names are not in the lists. The class list is the label indices as strings ("0" .. "30")
unless a class-name file (31 lines, line i = name of label index i) is given as
``options={"classes": PATH}`` or found as SRC/classes.txt; the manifest notes record which.

Raw layout (per id; the first that exists is used):
    sound:  SRC/audio/<id>.wav, else the sound track of SRC/videos/<id>.<mp4|mkv|webm|avi> (ffmpeg)
    frames: SRC/visual/<id>/*.jpg (or SRC/frames/<id>/), else SRC/videos/<id>.* at 1 fps (OpenCV)
Many YouTube videos are no longer online: listed ids without raw files are problems (the first one
stops `prepare`; ``--on-error skip`` records every one in skipped.csv and goes on).
Defaults: audio preset ast_fbank (the 2024+ papers on KS; ogmge_stft is the 2022-era choice),
3 frames sampled per clip, up to 10 stored (1 fps over a 10 s clip).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from .prepare import RawFormat, RawIndex, RawSample, bundled_split, register_raw

NUM_CLASSES = 31
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")
LONG_ID = re.compile(r"^.{11}_\d{6}_\d{6}$")
SHORT_ID = re.compile(r"^.{11}_\d+$")


class Listing:
    """The names in one folder, read once (a stat per listed id is slow on large lists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    (self.dirs if entry.is_dir() else self.files).add(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            pass


class MediaFinder:
    """Per clip id: the sound (a wav, else a video's sound track) and the frames (a frame folder,
    else the video), looked up in the given sub-folders of SRC in order."""

    def __init__(
        self,
        src: Path,
        audio_dirs: tuple[str, ...],
        frame_dirs: tuple[str, ...],
        video_dirs: tuple[str, ...],
        video_first: bool = False,
    ) -> None:
        self.src, self.video_first = src, video_first
        self.audio = [Listing(src / d) for d in audio_dirs]
        self.frames = [Listing(src / d) for d in frame_dirs]
        self.videos = [Listing(src / d) for d in video_dirs]

    def video(self, clip: str) -> Path | None:
        for folder in self.videos:
            for suffix in VIDEO_SUFFIXES:
                if clip + suffix in folder.files:
                    return folder.path / (clip + suffix)
        return None

    def find(self, clip: str) -> tuple[Path | None, Path | None, str | None]:
        """(audio source, frames source, problem); the problem, when a modality has no source, names
        the files looked for (the video first where it is the dataset's main raw file)."""
        video = self.video(clip)
        audio = next((f.path / f"{clip}.wav" for f in self.audio if f"{clip}.wav" in f.files), video)
        frames = next((f.path / clip for f in self.frames if clip in f.dirs), video)
        video_path = self.videos[0].path / f"{clip}.mp4"
        if audio is None:
            wav = self.audio[0].path / f"{clip}.wav"
            return (
                None,
                None,
                (
                    f"{video_path}: missing (nor a sound file {wav})"
                    if self.video_first
                    else f"{wav}: missing (nor a video {video_path})"
                ),
            )
        if frames is None:
            folder = self.frames[0].path / clip
            return (
                None,
                None,
                (
                    f"{video_path}: missing (nor a frame folder {folder})"
                    if self.video_first
                    else f"{folder}: frame folder missing (nor a video {video_path})"
                ),
            )
        return audio, frames, None


def read_class_file(path: Path, expected: int | None = None) -> tuple[list[str], str]:
    """A class-name file, one name per line (blank lines and surrounding spaces ignored)."""
    try:
        blob = path.read_bytes()
        names = [line.strip() for line in blob.decode("utf-8-sig").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: class-name file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class '{dup}' listed twice")
    if expected is not None and len(names) != expected:
        raise DataError(
            f"{path}: {len(names)} class names, but the split lists use {expected} label "
            f"indices (0-{expected - 1}); give one name per index, in index order"
        )
    if not names:
        raise DataError(f"{path}: no class names")
    return names, hashlib.sha256(blob).hexdigest()


@register_raw
class KineticsSounds(RawFormat):
    name = "kinetics-sounds"
    summary = (
        "Kinetics-Sounds, 31 classes (OGM-GE split), audio + visual; modgap prepare kinetics-sounds, "
        "then --data kinetics-sounds:DIR"
    )
    modalities = {"audio": "audio", "visual": "frames"}
    defaults = {"audio": {"preset": "ast_fbank"}, "visual": {"frames": 3, "max_frames": 10}}

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        unknown = set(options) - {"classes"}
        if unknown:
            raise DataError(f"kinetics-sounds: unknown option(s) {', '.join(sorted(unknown))} (known: classes)")
        sources: dict[str, str] = {}
        class_file = Path(options["classes"]) if options.get("classes") else None
        if class_file is None and (src / "classes.txt").is_file():
            class_file = src / "classes.txt"
        if class_file is not None:
            classes, digest = read_class_file(class_file, NUM_CLASSES)
            sources[f"classes:{class_file.name}"] = digest
            class_note = f"class names from {class_file} (line i = label index i)"
        else:
            classes = [str(i) for i in range(NUM_CLASSES)]
            class_note = (
                "label indices 0-30 as strings: no class-name file given "
                "(put one in SRC/classes.txt or pass options={'classes': PATH})"
            )
        samples, problems = [], []
        media = MediaFinder(src, ("audio",), ("visual", "frames"), ("videos", "video"))
        for split, filename in (("train", "train.txt"), ("test", "test.txt")):
            lines, digest = bundled_split("kinetics-sounds", filename)
            sources[f"kinetics-sounds/{filename}"] = digest
            for n, line in enumerate(lines, 1):
                fields = [f.strip() for f in line.split(",")]
                clip = fields[0]
                if len(fields) != 3 or not fields[2].isdigit() or not int(fields[2]) < NUM_CLASSES:
                    problems.append((clip, f"{filename} line {n}: expected '<id>,10,<label index 0-30>', got '{line}'"))
                    continue
                if not (LONG_ID.match(clip) or SHORT_ID.match(clip)):
                    problems.append(
                        (clip, f"{filename} line {n}: id '{clip}' is neither <ytid>_<start6>_<end6> nor <ytid>_<n>")
                    )
                    continue
                audio, frames, problem = media.find(clip)
                if problem:
                    problems.append((clip, f"{problem}; listed in {filename}"))
                else:
                    samples.append(RawSample(clip, classes[int(fields[2])], split, {"audio": audio, "visual": frames}))
        notes = {
            "class_list": class_note,
            "num_classes": NUM_CLASSES,
            "class_convention": (
                "31 classes: the OGM-GE split (GeWu-Lab/OGM-GE_CVPR2022, data/KineticSound); "
                "the original Kinetics-Sounds list has 34 and other repositories use 32 or 33"
            ),
            "missing_ids": len(problems),
        }
        return RawIndex(classes, samples, problems, sources, notes)
