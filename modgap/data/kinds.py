"""Modality kinds: how one raw source becomes a cached array, and a cached batch a tensor.

A kind has two halves. ``process`` runs once, in ``modgap prepare``: raw file -> fixed-shape array
(the deterministic part: decoding, resampling, spectrogram, resizing, tokenising). ``online`` runs
per batch at training time: frame choice, random crops and flips. Pixels leave ``online`` as uint8
and are normalised on the device (``Batch.to``, data/base.py). Every random
draw comes from torch's global generator, which the trainer seeds and checkpoints, so a resumed
run sees the same augmentation.

    audio    wav (or a video's sound track, with ffmpeg) -> an audio preset (data/audio.py)
    frames   video (1 frame per second, OpenCV) or a folder of images -> T frames per clip
    image    jpg/png -> one image
    text     a string or a UTF-8 .txt file -> token ids and attention mask
"""

from __future__ import annotations

import abc
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..registry import Registry
from .audio import get_audio_preset, read_wav

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

UPSCALE_LIMIT = 2.0
"""Stretching a side more than this (target / source) is worth a warning: the model then trains on
interpolated pixels, at (target / source)^2 times the pixels and compute of the source size."""
SIZE_SAMPLES = 8
"""How many raw sources `modgap prepare` reads the image size of (from their headers) to check that."""

KINDS: Registry[type[ModalityKind]] = Registry("modality kind")


def torch_seeded_numpy() -> np.random.Generator:
    """A numpy generator drawn from torch's global RNG (so one checkpointed state covers both)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class ModalityKind(abc.ABC):
    """One modality's processing. Settings go in ``params`` and are recorded in the manifest."""

    name: str = ""
    encoder: str = "mlp"
    dtype: str = "float16"
    has_count: bool = False
    """Whether each sample has a count of valid entries (frames per clip)."""
    pixels_noun: str = "images"
    """What the upscaling warning calls this kind's pictures."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, **self.params}

    def source_size(self, source: Any) -> tuple[int, int] | None:
        """(width, height) of a raw source's images, from the file header only (no decoding), for the
        upscaling check; None for kinds without images or a source that cannot be read."""
        return None

    @property
    @abc.abstractmethod
    def cache_shape(self) -> tuple[int, ...]: ...

    @abc.abstractmethod
    def process(self, source: Any) -> tuple[np.ndarray, int]:
        """Raw source -> (array of cache_shape, count). Raises DataError naming the file."""

    @abc.abstractmethod
    def online(self, cached: np.ndarray, counts: np.ndarray, train: bool) -> torch.Tensor: ...

    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample as ``online`` returns it (what the encoder is built for)."""


# ------------------------------------------------------------------------------------ audio
def read_audio(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A wav file, or the sound track of a video through ffmpeg (mono float32)."""
    if path.suffix.lower() == ".wav":
        return read_wav(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DataError(
            f"{path}: reading sound from a video needs ffmpeg on PATH (apt-get install ffmpeg), "
            f"or give the audio as .wav files"
        )
    rate = sample_rate or 16000
    proc = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(f"{path}: no readable sound track ({reason[-1] if reason else 'empty'})")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy(), rate


@KINDS.register("audio")
class AudioKind(ModalityKind):
    name = "audio"
    encoder = "resnet18_audio"

    def __init__(self, preset: str = "ogmge_stft") -> None:
        self.preset = get_audio_preset(preset)
        super().__init__(preset=preset)

    def describe(self) -> dict[str, Any]:
        import dataclasses

        return {
            "kind": self.name,
            "preset": self.preset.name,
            "preset_params": {k: v for k, v in dataclasses.asdict(self.preset).items() if k != "name"},
        }

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return tuple(self.preset.cache_shape)

    def process(self, source: Any) -> tuple[np.ndarray, int]:
        path = Path(source)
        wave, sr = read_audio(path, getattr(self.preset, "sample_rate", None))
        if wave.size == 0:
            raise DataError(f"{path}: empty audio")
        try:
            return self.preset.cache(wave, sr), 1
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None

    def online(self, cached, counts, train):
        out = self.preset.online(np.asarray(cached, dtype=np.float32), train=train, rng=torch_seeded_numpy())
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.preset.output_shape)


# ----------------------------------------------------------------------------------- images
def load_image(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """An image file resized to size x size (Resize(224, 224) of the usual evaluation transform)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L").resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__})") from None
    return array.reshape(size, size, channels)


def image_size_of(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header (PIL decodes nothing until asked)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception:  # missing, unreadable, too large: the processing reports it, naming the file
        return None


def video_size_of(path: Path) -> tuple[int, int] | None:
    """(width, height) of a video's frames (the container's header), or of a frame folder's first image."""
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError:
            return None
        return image_size_of(files[0]) if files else None
    try:
        import cv2
    except ImportError:
        return None
    if not path.is_file():
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    return size if min(size) > 0 else None


def upscale_warning(modality: str, kind: ModalityKind, sizes: list[list[int]], fix: str) -> str | None:
    """One line when the typical one of ``sizes`` ((width, height) of a sample of the raw sources, as
    `modgap prepare` records them; the median by area) has a side stretched more than UPSCALE_LIMIT
    to the kind's ``image_size``, else None. ``fix`` says how to train at their size ({size}: the
    larger side of that typical image)."""
    target = kind.params.get("image_size")
    if not target or not sizes:
        return None
    by_area = sorted(((int(w), int(h)) for w, h in sizes), key=lambda s: (s[0] * s[1], s))
    width, height = by_area[(len(by_area) - 1) // 2]
    if target / min(width, height) <= UPSCALE_LIMIT:
        return None
    pixels = target * target / (width * height)
    times = f"{pixels:.0f}" if pixels >= 10 else f"{pixels:.1f}"
    return (
        f"{modality}: {kind.pixels_noun} of {width}x{height} are upscaled to {target}x{target} ({times}x the "
        f"pixels); {fix.format(size=max(width, height))} to train at their size"
    )


def random_resized_crop_boxes(n: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """torchvision's RandomResizedCrop box choice (scale 0.08-1, ratio 3/4-4/3, 10 tries, centre fallback)."""
    boxes = []
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(n):
        for _attempt in range(10):
            target = area * float(torch.empty(1).uniform_(0.08, 1.0))
            ratio = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                boxes.append((top, left, h, w))
                break
        else:
            side = min(height, width)
            boxes.append(((height - side) // 2, (width - side) // 2, side, side))
    return boxes


def augment(images: torch.Tensor, train: bool, flip: bool = True) -> torch.Tensor:
    """uint8 (N, K, H, W, C) -> uint8 (N, K, C, H, W). Training: one RandomResizedCrop and (unless
    ``flip`` is off) one horizontal flip per sample, shared by its K frames; crop, flip and resize all
    in uint8 (about 2x faster than in float; within one grey level). Evaluation: the stored (resized)
    frames. Normalisation happens on the device (``Batch.to``)."""
    n, k, h, w, c = images.shape
    x = images.permute(0, 1, 4, 2, 3)  # uint8 (N, K, C, H, W), channels-last in memory
    if not train:
        return x.contiguous()
    out = torch.empty((n, k, c, h, w), dtype=torch.uint8)
    boxes = random_resized_crop_boxes(n, h, w)
    flipped = (torch.rand(n) < 0.5).tolist() if flip else [False] * n
    for i, (top, left, bh, bw) in enumerate(boxes):
        crop = x[i, :, :, top : top + bh, left : left + bw]
        if flipped[i]:  # flip the (smaller) crop: resizing commutes with a horizontal flip
            crop = crop.flip(-1)
        crop = crop.contiguous(memory_format=torch.channels_last)
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out


@KINDS.register("image")
class ImageKind(ModalityKind):
    name = "image"
    encoder = "resnet18_image"
    dtype = "uint8"

    def __init__(self, image_size: int = 224) -> None:
        super().__init__(image_size=image_size)
        self.size = image_size

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)

    def process(self, source: Any) -> tuple[np.ndarray, int]:
        return load_image(Path(source), self.size), 1

    def source_size(self, source: Any) -> tuple[int, int] | None:
        return image_size_of(Path(source))

    def online(self, cached, counts, train):
        x = torch.from_numpy(np.ascontiguousarray(cached))[:, None]
        return augment(x, train)[:, 0]

    def input_shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size)


# ----------------------------------------------------------------------------------- frames
def video_frames_1fps(
    path: Path, size: int, channels: int = 3, frame_range: tuple[int, int] | None = None, every: int | None = None
) -> list[np.ndarray]:
    """Frames of a video: one per second (the frame nearest each whole second + 0.5 s), or, with
    ``frame_range``, frames start..end-1 taken every ``every`` frames. Resized to size x size."""
    try:
        import cv2
    except ImportError:
        raise ConfigError("reading videos needs OpenCV: pip install 'modgap[video]'") from None
    if not path.exists():
        raise DataError(f"{path}: file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: not a readable video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if frame_range is None and fps <= 0:
        cap.release()
        raise DataError(f"{path}: unknown frame rate")

    def wanted(i: int) -> bool:  # decided while streaming: only the kept frames stay in memory
        if frame_range is not None:
            return frame_range[0] <= i < frame_range[1] and (i - frame_range[0]) % (every or 1) == 0
        k = int(i / fps)  # the second this frame lies in; keep the frame at its middle
        return i == int((k + 0.5) * fps)

    def convert(frame: np.ndarray) -> np.ndarray:
        if channels == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        elif frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR).reshape(size, size, channels)

    kept: dict[int, np.ndarray] = {}
    total, last = 0, None
    try:
        while frame_range is None or total < frame_range[1]:
            ok, frame = cap.read()
            if not ok:
                break
            if wanted(total):
                kept[total] = convert(frame)
            last = frame
            total += 1
    finally:
        cap.release()
    if total == 0 or last is None:
        raise DataError(f"{path}: no frames could be decoded")
    if frame_range is not None:
        if frame_range[0] >= total:
            raise DataError(f"{path}: frame range {frame_range[0]}-{frame_range[1]} beyond the video's {total} frames")
        return [kept[i] for i in sorted(kept)]
    seconds = max(1, int(total / fps))
    picks = [min(int((k + 0.5) * fps), total - 1) for k in range(seconds)]
    return [kept[i] if i in kept else convert(last) for i in picks]


def folder_frames(path: Path, size: int, channels: int = 3) -> list[np.ndarray]:
    """Every image in a frame folder, in sorted file-name order."""
    if not path.is_dir():
        raise DataError(f"{path}: frame folder not found")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: frame folder has no images")
    return [load_image(p, size, channels) for p in files]


def segment_indices(counts: np.ndarray, t: int, train: bool) -> np.ndarray:
    """Per clip, T frame indices: one per equal segment of its frames; a random frame of each
    segment in training, the centre frame in evaluation (clips with fewer frames repeat some)."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    edges = counts[:, None] * np.arange(t + 1)[None, :] / t
    lo, hi = edges[:, :-1], edges[:, 1:]
    if train:
        u = torch.rand(len(counts), t, dtype=torch.float64).numpy()
        pos = lo + u * (hi - lo)
    else:
        pos = (lo + hi) / 2
    return np.minimum(np.floor(pos), counts[:, None] - 1).astype(np.int64)


@KINDS.register("frames")
class FramesKind(ModalityKind):
    name = "frames"
    encoder = "resnet18_frames"
    dtype = "uint8"
    has_count = True
    pixels_noun = "frames"

    def __init__(
        self,
        image_size: int = 224,
        max_frames: int = 10,
        frames: int = 3,
        channels: int = 3,
        every: int = 1,
        flip: bool = True,
    ) -> None:
        # flip: horizontal flips in training; off for data whose classes are mirror images (gestures)
        super().__init__(
            image_size=image_size, max_frames=max_frames, frames=frames, channels=channels, every=every, flip=flip
        )
        self.size, self.max_frames, self.frames, self.channels = image_size, max_frames, frames, channels

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return (self.max_frames, self.size, self.size, self.channels)

    def process(self, source: Any) -> tuple[np.ndarray, int]:
        if isinstance(source, tuple):  # (video, start, end): a frame range (NVGesture)
            video, start, end = source
            frames = video_frames_1fps(
                Path(video), self.size, self.channels, (int(start), int(end)), self.params["every"]
            )
        else:
            path = Path(source)
            frames = (
                folder_frames(path, self.size, self.channels)
                if path.is_dir() or not path.suffix
                else video_frames_1fps(path, self.size, self.channels)
            )
        if len(frames) > self.max_frames:  # keep max_frames spread evenly over the clip
            keep = np.linspace(0, len(frames) - 1, self.max_frames).round().astype(int)
            frames = [frames[i] for i in keep]
        out = np.zeros(self.cache_shape, dtype=np.uint8)
        out[: len(frames)] = np.stack(frames)
        return out, len(frames)

    def source_size(self, source: Any) -> tuple[int, int] | None:
        video = source[0] if isinstance(source, tuple) else source  # (video, start, end): a frame range
        return video_size_of(Path(video))

    def online(self, cached, counts, train, frames: int | None = None):
        t = frames or self.frames
        idx = segment_indices(counts, t, train)
        chosen = np.stack([cached[i][idx[i]] for i in range(len(idx))])
        return augment(torch.from_numpy(chosen), train, flip=self.params.get("flip", True))

    def input_shape(self, frames: int | None = None) -> tuple[int, ...]:
        return (frames or self.frames, self.channels, self.size, self.size)


# ------------------------------------------------------------------------------------- text
@KINDS.register("text")
class TextKind(ModalityKind):
    name = "text"
    encoder = "text"
    dtype = "int32"

    def __init__(self, text_model: str = "bert-base-uncased", max_len: int = 64) -> None:
        super().__init__(text_model=text_model, max_len=max_len)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..models.text import build_tokenizer

            self._tokenizer = build_tokenizer(self.params["text_model"])
        return self._tokenizer

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return (2, self.params["max_len"])

    def process(self, source: Any) -> tuple[np.ndarray, int]:
        text = source
        if isinstance(source, Path):
            try:
                text = source.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{source}: not UTF-8 text (byte {exc.start})") from None
            except OSError as exc:
                raise DataError(f"{source}: cannot read ({exc.strerror})") from None
        from ..models.text import tokenize

        return tokenize(self.tokenizer, [str(text)], self.params["max_len"])[0].astype(np.int32), 1

    def online(self, cached, counts, train):
        return torch.from_numpy(np.asarray(cached, dtype=np.int64))

    def input_shape(self) -> tuple[int, ...]:
        return self.cache_shape
