"""NVGesture (Molchanov et al., CVPR 2016): 25 in-car hand gestures; RGB, depth and optical flow.

Raw layout (the nvGesture_v1 release,
https://research.nvidia.com/publication/2016-06_online-detection-and-classification-dynamic-hand-gestures-recurrent-3d):
    SRC/nvgesture_train_correct_cvpr2016_v2.lst   1050 lines
    SRC/nvgesture_test_correct_cvpr2016_v2.lst    482 lines, each like (one line, wrapped here)
        path:./Video_data/class_01/subject13_r0 depth:sk_depth:138:218 color:sk_color:138:218
        duo_left:duo_left:161:254 label:1
    SRC/Video_data/class_XX/subjectYY_rZ/sk_color.avi, sk_depth.avi   (320 x 240, 30 fps)
A sensor field is ``<sensor>:<video name>:<start>:<end>``: the gesture is frames start..end-1 of
``<video name>.avi`` (80 frames), as the release's own reader (nvgesture_readdata.py) takes them.
Labels 1..25 become class_01..class_25 (the class folder names; the line's folder must agree).
Split: official train / test; no val, so 10 % of train is carved out (stratified).

Modalities
    rgb     frames of sk_color.avi in the range, 3 channels
    depth   frames of sk_depth.avi in the range, 1 channel (grey)
    flow    optical flow of the rgb frames (the ``flow`` kind below): OpenCV Farneback between
            consecutive grey frames at the stored resolution, x and y displacement clipped to
            +-20 px and mapped linearly to 0..255 (128 = no motion), 2 channels
Defaults: image_size 112, max_frames 16 stored per clip (spread evenly over its range), 8 sampled
per clip at training time (one per segment), no horizontal flips: several classes are mirror
images of each other (move hand left / right, rotate clockwise / anticlockwise).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .kinds import KINDS, FramesKind, folder_frames, video_frames_1fps
from .prepare import RawFormat, RawIndex, RawSample, register_raw
from .prepared_format import file_sha256

CLASSES = [f"class_{i:02d}" for i in range(1, 26)]
FILES = (("train", "nvgesture_train_correct_cvpr2016_v2.lst"), ("test", "nvgesture_test_correct_cvpr2016_v2.lst"))
FARNEBACK: dict[str, Any] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
"""cv2.calcOpticalFlowFarneback parameters (OpenCV's own example values)."""


def quantise_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """Displacements (H, W, 2) in pixels -> uint8: clip to [-bound, bound], map linearly to 0..255."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.round(scaled).astype(np.uint8)


@KINDS.register("flow")
class FlowKind(FramesKind):
    """Optical flow: a frame kind with 2 channels (x, y displacement) computed from grey frames.

    Sources as for ``frames``: (video, start, end) or a frame folder (consecutive frames), or a video
    (all its frames, not 1 per second). Up to ``max_frames`` flow fields between consecutive frames
    (``every`` apart) are stored, spread evenly over the clip; sampling, crops and normalisation
    (to [-1, 1]) are the frame kind's. Flips are refused: a mirrored flow field needs its x negated.
    """

    name = "flow"

    def __init__(
        self,
        image_size: int = 224,
        max_frames: int = 10,
        frames: int = 3,
        channels: int = 2,
        every: int = 1,
        flip: bool = False,
        bound: float = 20.0,
    ) -> None:
        if channels != 2:
            raise ConfigError(f"the flow kind has 2 channels (x, y), got channels={channels}")
        if flip:
            raise ConfigError("the flow kind cannot flip horizontally (the x displacement would need negating)")
        if bound <= 0:
            raise ConfigError(f"flow bound must be > 0 pixels, got {bound}")
        super().__init__(
            image_size=image_size, max_frames=max_frames, frames=frames, channels=2, every=every, flip=False
        )
        self.params["bound"] = float(bound)

    def process(self, source: Any) -> tuple[np.ndarray, int]:
        import cv2

        video, start, end = source if isinstance(source, tuple) else (source, 0, None)
        path = Path(video)
        if path.is_dir():
            grey = folder_frames(path, self.size, 1)[int(start) : None if end is None else int(end)]
        else:
            grey = video_frames_1fps(
                path, self.size, 1, (int(start), sys.maxsize if end is None else int(end)), self.params["every"]
            )
        if len(grey) < 2:
            raise DataError(f"{path}: optical flow needs at least 2 frames, got {len(grey)}")
        pairs = np.linspace(0, len(grey) - 2, min(self.max_frames, len(grey) - 1)).round().astype(int)
        out = np.zeros(self.cache_shape, dtype=np.uint8)
        for j, k in enumerate(pairs):
            flow = cv2.calcOpticalFlowFarneback(grey[k][..., 0], grey[k + 1][..., 0], None, **FARNEBACK)
            out[j] = quantise_flow(flow, self.params["bound"])
        return out, len(pairs)


def parse_sensor(value: str) -> tuple[str, int, int]:
    """``sk_color:138:218`` -> ('sk_color', 138, 218)."""
    name, start, end = value.split(":")
    start_i, end_i = int(start), int(end)
    if not name or start_i < 0 or end_i <= start_i:
        raise ValueError(value)
    return name, start_i, end_i


@register_raw
class NVGesture(RawFormat):
    name = "nvgesture"
    summary = "NVGesture, 25 hand gestures, rgb + depth + flow; modgap prepare nvgesture, then --data nvgesture:DIR"
    modalities = {"rgb": "frames", "depth": "frames", "flow": "flow"}
    defaults = {
        "rgb": {"image_size": 112, "max_frames": 16, "frames": 8, "channels": 3, "flip": False},
        "depth": {"image_size": 112, "max_frames": 16, "frames": 8, "channels": 1, "flip": False},
        "flow": {"image_size": 112, "max_frames": 16, "frames": 8},
    }
    has_val = False

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        samples, problems, sources = [], [], {}
        seen: dict[str, str] = {}
        for split, filename in FILES:
            path = src / filename
            if not path.is_file():
                raise DataError(f"{path}: split list not found (part of the nvGesture_v1 release)")
            sources[filename] = file_sha256(path)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: cannot read ({type(exc).__name__})") from None
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {lineno}"
                fields = dict(token.partition(":")[::2] for token in line.split())
                missing = [k for k in ("path", "color", "depth", "label") if k not in fields]
                if missing:
                    raise DataError(f"{where}: no '{missing[0]}:' field (expected path:, depth:, color:, label:)")
                try:
                    color_name, color_start, color_end = parse_sensor(fields["color"])
                    depth_name, depth_start, depth_end = parse_sensor(fields["depth"])
                except ValueError:
                    raise DataError(f"{where}: a sensor field is not <name>:<start>:<end> with start < end") from None
                relative = fields["path"].strip()
                while relative.startswith("./"):
                    relative = relative[2:]
                relative = relative.rstrip("/")
                clip = src / relative
                sid = relative.removeprefix("Video_data/")
                if sid in seen:
                    problems.append((sid, f"{where}: clip already listed ({seen[sid]})"))
                    continue
                seen[sid] = where
                label = fields["label"].strip()
                if not label.isdigit() or not 1 <= int(label) <= 25:
                    problems.append((sid, f"{where}: label '{label}' is not one of 1..25"))
                    continue
                name = CLASSES[int(label) - 1]
                folder_class = next((part for part in Path(relative).parts if part.startswith("class_")), None)
                if folder_class is not None and folder_class != name:
                    problems.append((sid, f"{where}: label {label} but the clip lies in {folder_class}/"))
                    continue
                color, depth = clip / f"{color_name}.avi", clip / f"{depth_name}.avi"
                absent = next((v for v in (color, depth) if not v.is_file()), None)
                if absent is not None:
                    problems.append((sid, f"{absent}: listed in {filename} line {lineno} but missing"))
                    continue
                samples.append(
                    RawSample(
                        sid,
                        name,
                        split,
                        {
                            "rgb": (color, color_start, color_end),
                            "depth": (depth, depth_start, depth_end),
                            "flow": (color, color_start, color_end),
                        },
                    )
                )
        return RawIndex(
            CLASSES,
            samples,
            problems,
            sources,
            notes={
                "flow": {
                    "method": "cv2.calcOpticalFlowFarneback",
                    **FARNEBACK,
                    "computed_at": "stored resolution (image_size)",
                    "uint8": "clip to +-bound px, (d + bound) * 255 / (2 * bound)",
                }
            },
        )
