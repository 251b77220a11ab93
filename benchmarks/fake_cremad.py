"""A generated raw download in CREMA-D's layout, for the input-pipeline benchmarks (not a test).

    SRC/AudioWAV/<clip>.wav               mono 16-bit PCM, ``seconds`` long at ``rate`` Hz
    SRC/Image-01-FPS/<clip>/0000k.jpg     ``frames`` JPEG frames of width x height (OGM-GE's layout)

Clip ids come from the bundled CREMA-D split lists (so `modgap prepare cremad` indexes them; the
listed clips not written here are skipped with on_error=skip). The content is a class-dependent
tone and a drifting grating with a little noise: compressible like real frames, not random noise.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

from modgap.data.prepare import bundled_split, prepare


def clip_ids(n: int) -> list[tuple[str, str]]:
    """About n (clip, label) pairs, 1 in 8 from the test list, the rest from train, classes interleaved."""
    out = []
    for name, share in (("train.csv", n - n // 8), ("test.csv", n // 8)):
        lines = bundled_split("cremad", name)[0]
        by_label: dict[str, list[str]] = {}
        for line in lines:
            clip, _, label = line.partition(",")
            by_label.setdefault(label, []).append(clip)
        labels = sorted(by_label)
        for k in range(share):
            label = labels[k % len(labels)]
            out.append((by_label[label][k // len(labels)], label))
    return out


def write_raw(src: Path, n: int = 300, seconds: float = 2.0, rate: int = 16000, frames: int = 3,
              width: int = 480, height: int = 360, quality: int = 90) -> list[str]:
    """Write n clips (wav + JPEG frames); returns their ids."""
    labels = sorted({label for _, label in clip_ids(n)})
    ids = []
    (src / "AudioWAV").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i, (clip, label) in enumerate(clip_ids(n)):
        rng = np.random.default_rng(i)
        c = labels.index(label)
        t = np.arange(int(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (c / 3) * t + rng.uniform(0, 6.3)) + 0.05 * rng.standard_normal(t.size)
        with wave.open(str(src / "AudioWAV" / f"{clip}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
        folder = src / "Image-01-FPS" / clip
        folder.mkdir(parents=True, exist_ok=True)
        angle, colour = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0, 3)
        for k in range(frames):
            phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) * (2 + c) / width + k
            img = 0.5 + 0.4 * np.sin(phase)[..., None] * colour + 0.03 * rng.standard_normal((height, width, 3))
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{k + 1:05d}.jpg",
                                                                               quality=quality)
        ids.append(clip)
    return ids


def prepared_folder(root: Path, n: int = 300, frames: int = 3, max_frames: int = 3, image_size: int = 224,
                    jobs: int = 1) -> tuple[Path, float]:
    """Raw download and `modgap prepare cremad` of it under root; returns (prepared folder, seconds)."""
    write_raw(root / "raw", n, frames=max_frames)
    report = prepare("cremad", root / "raw", root / "prepared", jobs=jobs, on_error="skip", progress=False,
                     settings={"frames": frames, "max_frames": max_frames, "image_size": image_size})
    return root / "prepared", report.seconds
