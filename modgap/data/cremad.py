"""CREMA-D (Cao et al., IEEE TAC 2014): 7442 clips of 91 actors, 6 emotions, audio + visual.

Raw layout (from the CREMA-D release, https://github.com/CheyneyComputerScience/CREMA-D):
    SRC/AudioWAV/<clip>.wav
    SRC/VideoFlash/<clip>.flv              videos; frames are taken at 1 fps
    or SRC/Image-01-FPS/<clip>/*.jpg       frames already extracted (the OGM-GE layout)
Clip ids look like 1001_DFA_ANG_XX; the label is the third token (NEU HAP SAD FEA DIS ANG).
Split: the standard 6698 train / 744 test lists (splits/cremad), no official val (10 % carved).
Defaults: audio preset ogmge_stft (lfm_stft reproduces the released LFM code), up to 3 frames,
1 sampled per clip as in the released LFM code (`--frames` changes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .prepare import RawFormat, RawIndex, RawSample, bundled_split, register_raw

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def frames_source(src: Path, clip: str) -> Path | None:
    for folder in (src / "Image-01-FPS" / clip, src / "frames" / clip):
        if folder.is_dir():
            return folder
    video = src / "VideoFlash" / f"{clip}.flv"
    return video if video.exists() else None


@register_raw
class CremaD(RawFormat):
    name = "cremad"
    summary = "CREMA-D, 6 emotions, audio + visual; modgap prepare cremad, then --data cremad:DIR"
    modalities = {"audio": "audio", "visual": "frames"}
    defaults = {"audio": {"preset": "ogmge_stft"}, "visual": {"frames": 1, "max_frames": 3}}

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        samples, problems, sources = [], [], {}
        for split, filename in (("train", "train.csv"), ("test", "test.csv")):
            lines, digest = bundled_split("cremad", filename)
            sources[f"cremad/{filename}"] = digest
            for line in lines:
                clip, _, label = line.partition(",")
                if clip.split("_")[2] != label:
                    problems.append((clip, f"split list label {label} differs from the clip id's"))
                    continue
                wav = src / "AudioWAV" / f"{clip}.wav"
                frames = frames_source(src, clip)
                if not wav.exists():
                    problems.append((clip, f"{wav}: listed in {filename} but missing"))
                elif frames is None:
                    problems.append(
                        (
                            clip,
                            f"{src / 'VideoFlash' / (clip + '.flv')}: listed in {filename} but "
                            f"missing (nor a frame folder in Image-01-FPS/)",
                        )
                    )
                else:
                    samples.append(RawSample(clip, label, split, {"audio": wav, "visual": frames}))
        return RawIndex(CLASSES, samples, problems, sources)
