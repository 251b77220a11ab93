"""synth-av: a generated audio-visual dataset at real input shapes, with a difficulty knob per modality.

Built in memory, deterministically from a generation seed (option ``seed``, default 0; independent of
``data.split_seed``), and cached per option set, so a second load is instant.

Audio: per sample a 3 s waveform at 22050 Hz holding the tone of its class (base frequency f_c, log-spaced
over 200-3200 Hz, with harmonics k = 2..8 of amplitude 1/k below 10 kHz; per sample a pitch jitter of up
to a quarter of the step between classes, a random onset and length of at least 1.5 s, and a random
tremolo) plus white noise at ``audio_snr_db`` (the power of the tone over that of the noise, over the
whole clip). It is turned into the ``ogmge_stft`` log-magnitude spectrogram (257 x 188, as OGM-GE
feeds CREMA-D audio) and stored as float16.

Visual: per sample ``frames`` RGB frames of ``size`` x ``size`` (uint8). Each shows a sinusoidal
grating inside a soft window: its spatial frequency (cycles across the frame, log-spaced over
2-9 cycles) carries the class; its orientation, colour, contrast and window position are drawn per
sample and carry nothing, and each frame shifts the grating phase and the window a little. Gaussian
pixel noise of standard deviation ``visual_noise`` (in units of the 0-1 intensity range) is added.
The class cue is invariant under horizontal flips, so flip augmentation keeps labels true.

The defaults make audio clearly the easier modality (as in CREMA-D), so that in joint training the
visual encoder is the one that learns less.

``--data synth-av:KEY=VALUE,...`` sets options (the fields of ``Options``), e.g. ``synth-av:n=40,size=64,frames=2``;
they land in ``data.options``. There is no official split: test and val are stratified carve-outs
with ``data.split_seed``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import ConfigError, closest
from .audio import get_audio_preset
from .base import Batch, MultimodalDataset, check_labels, select_modalities
from .kinds import segment_indices
from .registry import DATASETS
from .splits import make_splits

MODALITIES = ("audio", "visual")
AUDIO_PRESET = "ogmge_stft"
SAMPLE_RATE = 22050
HARMONICS = 8


@dataclass(frozen=True)
class Options:
    classes: int = 6
    """Number of classes."""
    n: int = 100
    """Samples per class."""
    frames: int = 3
    """Frames stored per sample."""
    use_frames: int = 0
    """Frames per sample in a batch, one per equal segment of the stored ones (0: all stored frames)."""
    size: int = 224
    """Frame height and width in pixels."""
    audio_snr_db: float = 0.0
    """Tone-to-noise power ratio of the audio, in dB (lower is harder)."""
    visual_noise: float = 0.4
    """Standard deviation of the pixel noise, intensity range 0-1 (higher is harder)."""
    seed: int = 0
    """Generation seed (independent of data.split_seed)."""

    @property
    def clip_frames(self) -> int:
        return self.use_frames or self.frames


OPTION_NAMES = tuple(f.name for f in fields(Options))
_INTS = {f.name for f in fields(Options) if f.type in ("int", int)}


def parse_options(values: dict[str, Any] | None) -> Options:
    """Check ``data.options`` against ``Options`` (names, types, ranges); one-line ConfigErrors."""
    values = dict(values or {})
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in OPTION_NAMES:
            raise ConfigError(f"synth-av has no option '{key}'{closest(str(key), OPTION_NAMES)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"synth-av option {key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"synth-av option {key}: expected a finite number, got {value!r}")
        if key in _INTS:
            if float(value) != int(value):
                raise ConfigError(f"synth-av option {key}: expected an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        kwargs[key] = value
    opts = Options(**kwargs)
    rules = [
        (opts.classes >= 2, "classes must be >= 2"),
        (opts.n >= 3, "n (samples per class) must be >= 3, to carve val and test"),
        (opts.frames >= 1, "frames must be >= 1"),
        (0 <= opts.use_frames <= opts.frames, "use_frames must be between 0 and frames"),
        (opts.size >= 16, "size must be >= 16"),
        (opts.visual_noise >= 0, "visual_noise must be >= 0"),
        (opts.seed >= 0, "seed must be >= 0"),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(f"synth-av option {message}")
    return opts


def _parse_number(key: str, text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"synth-av option {key}: expected a number, got '{text}'") from None


def parse_arg_options(arg: str) -> dict[str, int | float]:
    """``"n=40,size=64"`` -> {"n": 40, "size": 64} (keys checked, values as int or float)."""
    options: dict[str, int | float] = {}
    for item in (part.strip() for part in arg.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"synth-av expects KEY=VALUE options separated by commas, got '{item}'")
        options[key] = _parse_number(key, value.strip())
    parse_options(options)  # unknown keys and bad values fail here already, with the key named
    return options


# ---------------------------------------------------------------------------------- generation
def labels_of(opts: Options) -> np.ndarray:
    """Class of each row: classes interleaved (0, 1, ..., C-1, 0, 1, ...)."""
    return np.tile(np.arange(opts.classes, dtype=np.int64), opts.n)


def _rng(seed: int, stream: int, row: int) -> np.random.Generator:
    """One generator per (seed, modality, row): a row's sample does not depend on n or the other rows."""
    return np.random.default_rng([seed, stream, row])


def class_frequencies(classes: int) -> np.ndarray:
    """Base tone of each class in Hz, log-spaced over four octaves (200-3200 Hz)."""
    return 200.0 * 16.0 ** (np.arange(classes) / max(classes - 1, 1))


def class_cycles(classes: int) -> np.ndarray:
    """Grating frequency of each class, in cycles across the frame, log-spaced over 2-9."""
    return 2.0 * 4.5 ** (np.arange(classes) / max(classes - 1, 1))


def audio_waveform(label: int, opts: Options, rng: np.random.Generator) -> np.ndarray:
    n = 3 * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    step = 16.0 ** (1 / max(opts.classes - 1, 1))  # ratio between neighbouring classes
    f0 = class_frequencies(opts.classes)[label] * step ** rng.uniform(-0.25, 0.25)
    tone = np.zeros(n)
    for k in range(1, HARMONICS + 1):
        if k * f0 < 10000.0:  # below Nyquist (11025 Hz) with room to spare
            tone += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
    length = rng.uniform(1.5, 3.0)
    onset = rng.uniform(0.0, 3.0 - length)
    ramp = np.clip(np.minimum(t - onset, onset + length - t) / 0.05, 0.0, 1.0)  # 50 ms fades
    tremolo = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(2.0, 8.0) * t + rng.uniform(0, 2 * np.pi))
    tone *= ramp * tremolo
    tone_power = float(np.mean(tone**2))
    noise = rng.standard_normal(n) * math.sqrt(tone_power / 10 ** (opts.audio_snr_db / 10))
    x = tone + noise
    return x * (rng.uniform(0.2, 0.5) / max(float(np.abs(x).max()), 1e-12))  # peak in 0.2-0.5


def visual_clip(label: int, opts: Options, rng: np.random.Generator) -> np.ndarray:
    s = opts.size
    step = 4.5 ** (1 / max(opts.classes - 1, 1))
    cycles = class_cycles(opts.classes)[label] * step ** rng.uniform(-0.25, 0.25)
    theta = rng.uniform(0, np.pi)
    colour = rng.uniform(0.3, 1.0, size=3) * rng.choice([-1.0, 1.0], size=3)
    contrast = rng.uniform(0.25, 0.45)
    background = rng.uniform(0.35, 0.65, size=3)
    centre = rng.uniform(0.35, 0.65, size=2) * s
    radius = rng.uniform(0.25, 0.4) * s
    phase = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    along = (np.cos(theta) * xx + np.sin(theta) * yy) * np.float32(2 * np.pi * cycles / s)
    clip = np.empty((opts.frames, s, s, 3), dtype=np.uint8)
    for f in range(opts.frames):
        shift = rng.uniform(-0.05, 0.05, size=2) * s  # the object moves a little between frames
        cy, cx = centre + shift
        window = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        grating = np.sin(along + np.float32(phase + rng.uniform(-0.5, 0.5))) * window * np.float32(contrast)
        img = background[None, None, :] + grating[:, :, None] * colour[None, None, :]
        img = img + rng.standard_normal((s, s, 3), dtype=np.float32) * np.float32(opts.visual_noise)
        clip[f] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return clip


@lru_cache(maxsize=4)
def generate_audio(opts: Options) -> np.ndarray:
    """Log spectrograms of every row, float16 (N, 257, 188), read-only (shared by the cache)."""
    preset = get_audio_preset(AUDIO_PRESET)
    labels = labels_of(opts)
    out = np.empty((len(labels), *preset.output_shape), dtype=np.float16)
    for i, y in enumerate(labels):
        out[i] = preset(audio_waveform(int(y), opts, _rng(opts.seed, 0, i)), SAMPLE_RATE)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=2)
def generate_visual(opts: Options) -> np.ndarray:
    """Frames of every row, uint8 (N, T, S, S, 3), read-only (shared by the cache)."""
    labels = labels_of(opts)
    out = np.empty((len(labels), opts.frames, opts.size, opts.size, 3), dtype=np.uint8)
    for i, y in enumerate(labels):
        out[i] = visual_clip(int(y), opts, _rng(opts.seed, 1, i))
    out.setflags(write=False)
    return out


def _audio_key(opts: Options) -> Options:
    """Only the options the audio depends on (so changing the frame size keeps the audio cached)."""
    return Options(
        classes=opts.classes,
        n=opts.n,
        audio_snr_db=opts.audio_snr_db,
        seed=opts.seed,
        frames=1,
        use_frames=0,
        size=16,
        visual_noise=0.0,
    )


def _visual_key(opts: Options) -> Options:
    return Options(
        classes=opts.classes,
        n=opts.n,
        frames=opts.frames,
        size=opts.size,
        visual_noise=opts.visual_noise,
        seed=opts.seed,
        use_frames=0,
        audio_snr_db=0.0,
    )


# ---------------------------------------------------------------------------------- the dataset
def segment_frames(stored: int, used: int, train: bool, count: int = 1) -> np.ndarray:
    """Frame indices (count, used): one per equal segment of ``stored`` frames.

    The convention of the prepared video datasets (``kinds.segment_indices``): evaluation takes each
    segment's centre frame, training a uniformly random frame inside each segment, drawn from the
    global torch RNG (seeded and checkpointed by the trainer).
    """
    return segment_indices(np.full(count, stored), used, train)


class SynthAV(MultimodalDataset):
    def __init__(self, opts: Options, modalities: tuple[str, ...], splits: dict[str, np.ndarray]) -> None:
        self.name = "synth-av"
        self.options = opts
        self.modalities = modalities
        self.classes = [f"class{c}" for c in range(opts.classes)]
        self.labels = labels_of(opts)
        self.ids = [f"class{int(y)}_{i:05d}" for i, y in enumerate(self.labels)]
        self.splits = splits
        self._audio = generate_audio(_audio_key(opts)) if "audio" in modalities else None
        self._visual = generate_visual(_visual_key(opts)) if "visual" in modalities else None
        self._y = torch.from_numpy(self.labels)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        if modality == "audio":
            return tuple(get_audio_preset(AUDIO_PRESET).output_shape)
        o = self.options
        return (o.clip_frames, 3, o.size, o.size)

    def encoder_for(self, modality: str) -> str:
        return {"audio": "resnet18_audio", "visual": "resnet18_frames"}[modality]

    def frames(self, rows: np.ndarray, train: bool) -> torch.Tensor:
        """uint8 (N, T, 3, S, S) (ImageNet-normalised on the device, ``Batch.to``); train: random frame per
        segment and random h-flip."""
        o = self.options
        idx = segment_frames(o.frames, o.clip_frames, train, len(rows))
        assert self._visual is not None  # generated when the visual modality is asked for
        clips = self._visual[np.asarray(rows)[:, None], idx]  # (N, T, S, S, 3) uint8
        x = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous()
        if train:
            flip = torch.rand(len(rows)) < 0.5
            if flip.any():
                x[flip] = x[flip].flip(-1)
        return x

    def batch(self, rows: np.ndarray, train: bool) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        inputs: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m == "audio":
                assert self._audio is not None  # generated when the audio modality is asked for
                inputs[m] = torch.from_numpy(self._audio[rows].astype(np.float32))
            else:
                inputs[m] = self.frames(rows, train)
        index = torch.from_numpy(rows)
        return Batch(inputs, self._y[index], index)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "options": asdict(self.options)}


@DATASETS.register("synth-av")
class SynthAVLoader:
    summary = "generated audio-visual clips at real shapes (audio easy, visual hard); --data synth-av[:n=40,size=64]"

    @staticmethod
    def parse_arg(arg: str) -> dict[str, Any]:
        return {"options": parse_arg_options(arg)}

    @staticmethod
    def load(cfg: DataConfig) -> MultimodalDataset:
        opts = parse_options(getattr(cfg, "options", None) or {})
        modalities = select_modalities(MODALITIES, cfg.modalities, MODALITIES, "synth-av")
        labels = labels_of(opts)
        check_labels(labels, opts.classes, "synth-av")
        splits = make_splits(labels, None, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        return SynthAV(opts, modalities, splits)
