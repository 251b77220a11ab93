"""Audio preprocessing presets (numpy/scipy only; no torchaudio, no librosa).

This module reproduces the audio front-ends used by common multimodal
classification code bases so that a waveform can be turned into exactly the
tensor a given model family expects:

``ogmge_stft``
    OGM-GE (Peng et al., CVPR 2022) released code for CREMA-D style clips::

        samples, rate = librosa.load(path, sr=22050)
        resamples = np.tile(samples, 3)[:22050 * 3]
        resamples[resamples > 1.] = 1.; resamples[resamples < -1.] = -1.
        spec = librosa.stft(resamples, n_fft=512, hop_length=353)
        spec = np.log(np.abs(spec) + 1e-7)                # 257 x 188

``lfm_stft``
    The same log-magnitude STFT, but with the clip tiled to 20 s
    (441000 samples at 22050 Hz): 257 x 1250.

``vggsound_stft``
    OGM-GE / LFM VGGSound loader: 16 kHz, tile to >= 10 s, 5 s crop,
    ``librosa.stft(n_fft=256, hop_length=128)``, ``log(|S| + 1e-7)``: 129 x 626.

``ast_fbank``
    AST (Gong et al., Interspeech 2021) dataloader::

        waveform = waveform - waveform.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform, htk_compat=True, sample_frequency=sr, use_energy=False,
            window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)
        # pad with zeros / cut to target_length=1024 frames
        fbank = (fbank - norm_mean) / (norm_std * 2)

    with the ESC-50 statistics ``norm_mean=-4.503877, norm_std=5.141276``.
    :func:`kaldi_fbank` re-implements the Kaldi filterbank in numpy.

Deliberate, documented deviations from the reference implementations:

* Resampling uses :func:`scipy.signal.resample_poly` (Kaiser-windowed
  polyphase FIR).  ``librosa.load`` defaults to ``res_type='soxr_hq'``, so
  resampled waveforms differ slightly (small passband ripple / transition
  band differences near Nyquist); spectrograms agree closely but not bit-wise.
* ``librosa.stft(center=True)`` pads with ``pad_mode='constant'`` (zeros)
  since librosa 0.10 (older versions used ``'reflect'``).  We use zero
  padding, i.e. the behaviour of current librosa.
* The OGM-GE code tiles the clip exactly three times (``np.tile(x, 3)``),
  which is shorter than 3 s for clips under 1 s.  We tile *until* the target
  length is reached and then truncate, so the output shape is always fixed;
  for clips of at least 1 s both are identical.
* The VGGSound loader doubles the clip until it is >= 10 s and draws the crop
  start from ``randint(0, 5 * sr)``.  We tile to exactly 10 s (when shorter)
  and draw the start uniformly over all valid positions; for clips of at most
  10 s this is the same distribution.  With ``train=False`` the crop is
  centred (the reference code has no evaluation mode; it always crops at
  random).
* No training-time augmentation (e.g. AST's SpecAugment masking or mixup) is
  applied; ``train`` only affects the VGGSound crop position.
"""

from __future__ import annotations

import abc
import math
import os
import wave as _wave
from dataclasses import dataclass
from typing import Union

import numpy as np
import scipy.io.wavfile
import scipy.signal

from ..errors import ConfigError, DataError, closest
from ..registry import Registry

__all__ = [
    "AUDIO_PRESETS",
    "AudioPreset",
    "CroppedSTFTPreset",
    "KaldiFbankPreset",
    "TiledSTFTPreset",
    "UnknownAudioPresetError",
    "get_audio_preset",
    "kaldi_fbank",
    "read_wav",
    "resample",
    "stft_log_magnitude",
    "tile_to",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``torch.finfo(torch.float32).eps``, the floor Kaldi/torchaudio use before log.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- #
# WAV reading
# --------------------------------------------------------------------------- #
def _wav_error(path: PathLike, reason: str) -> DataError:
    """The one-line error for an unreadable WAV (a ``DataError``, hence a ``ValueError``)."""
    reason = " ".join(str(reason).split())  # guarantee a single line
    return DataError(f"{os.fspath(path)}: not a readable WAV file ({reason})")


def _pcm_bytes_to_float(raw: bytes, sampwidth: int) -> np.ndarray:
    """Decode little-endian interleaved PCM bytes to float64 in [-1, 1]."""
    if sampwidth == 1:  # unsigned 8-bit
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if sampwidth == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if sampwidth == 3:  # signed 24-bit: put the 3 bytes in the top of an int32
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        as32 = np.zeros((b.shape[0], 4), dtype=np.uint8)
        as32[:, 1:] = b
        return as32.view("<i4").reshape(-1).astype(np.float64) / 2.0**31
    if sampwidth == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2.0**31
    raise ValueError(f"unsupported sample width {sampwidth} bytes")


def _scipy_array_to_float(data: np.ndarray) -> np.ndarray:
    """Normalise an array from :func:`scipy.io.wavfile.read` to float64 in [-1, 1]."""
    if data.dtype == np.uint8:
        return (data.astype(np.float64) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.signedinteger):
        # scipy left-justifies 24-bit samples into int32, so full-scale is 2**31.
        return data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float64)
    raise ValueError(f"unsupported sample dtype {data.dtype}")


def read_wav(path: PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV file as a mono float32 waveform in [-1, 1].

    PCM files with 8 (unsigned), 16, 24 or 32-bit samples are decoded with
    Python's :mod:`wave` module; formats it does not understand (IEEE float,
    and on Python < 3.12 ``WAVE_FORMAT_EXTENSIBLE``) fall back to
    :func:`scipy.io.wavfile.read`.  Multi-channel audio is mixed down to mono
    by averaging the channels (as ``librosa.load(mono=True)`` does).

    Returns:
        ``(waveform, sample_rate)`` with ``waveform`` a 1-D float32 array.

    Raises:
        DataError: (a ``ValueError``) ``"<path>: not a readable WAV file (<reason>)"``
            for a corrupt, truncated or non-WAV file.
        OSError: if the file cannot be opened (e.g. ``FileNotFoundError``).
    """
    try:
        with _wave.open(os.fspath(path), "rb") as wf:
            nch, width, sr, nframes = (wf.getnchannels(), wf.getsampwidth(), wf.getframerate(), wf.getnframes())
            raw = wf.readframes(nframes)
        expected = nframes * nch * width
        if len(raw) < expected:
            raise _wav_error(
                path, f"truncated data: header declares {nframes} frames, file holds {len(raw) // max(nch * width, 1)}"
            )
        if nch < 1 or sr <= 0:
            raise _wav_error(path, f"invalid header: {nch} channels at {sr} Hz")
        try:
            x = _pcm_bytes_to_float(raw, width).reshape(-1, nch)
        except ValueError as exc:
            raise _wav_error(path, str(exc)) from None
    except _wave.Error as exc:
        if "unknown format" not in str(exc):
            raise _wav_error(path, str(exc)) from None
        x, sr = _read_wav_scipy(path)
    except EOFError:
        raise _wav_error(path, "unexpected end of file in the header") from None
    except RuntimeError:  # the wave module's chunk reader, on a chunk that runs past the end of the file
        raise _wav_error(path, "corrupt chunk structure") from None
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return mono.astype(np.float32), int(sr)


def _read_wav_scipy(path: PathLike) -> tuple[np.ndarray, int]:
    try:
        sr, data = scipy.io.wavfile.read(os.fspath(path))
        x = _scipy_array_to_float(np.asarray(data))
    except Exception as exc:  # scipy raises ValueError/EOFError/... on bad files
        raise _wav_error(path, str(exc) or type(exc).__name__) from None
    if x.ndim == 1:
        x = x[:, None]
    if sr <= 0:
        raise _wav_error(path, f"invalid sample rate {sr}")
    return x, int(sr)


# --------------------------------------------------------------------------- #
# Signal helpers
# --------------------------------------------------------------------------- #
def _check_rate(sr: object, what: str = "sample rate") -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer, float, np.floating)) or sr <= 0 or int(sr) != sr:
        raise ValueError(f"{what} must be a positive integer, got {sr!r}")
    return int(sr)


def _as_mono(x: object) -> np.ndarray:
    """Validate a waveform: non-empty, 1-D, finite; returned as float64."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(
            f"expected a mono 1-D waveform, got shape {arr.shape}; mix channels to mono first (e.g. wave.mean(axis=0))"
        )
    if arr.size == 0:
        raise ValueError("empty waveform: cannot compute audio features from 0 samples")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"waveform must be real-valued, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("waveform contains NaN or infinite samples")
    return arr


def tile_to(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat ``x`` end to end until it has at least ``n`` samples, then truncate to ``n``."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"tile_to expects a 1-D array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("empty waveform: cannot tile 0 samples")
    if n < 0:
        raise ValueError(f"target length must be >= 0, got {n}")
    return np.tile(x, math.ceil(n / x.size))[:n]


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D waveform from ``sr_in`` to ``sr_out`` Hz.

    Uses polyphase filtering, :func:`scipy.signal.resample_poly`, with the
    up/down factors ``sr_out/g`` and ``sr_in/g`` where ``g = gcd(sr_in, sr_out)``
    (default Kaiser window, beta 5).  The output has ``ceil(len(x) * up / down)``
    samples.  Note that librosa's default resampler (``res_type='soxr_hq'``)
    uses a different filter, so values differ slightly from ``librosa.load``.
    Returns a copy when the rates are equal.
    """
    sr_in, sr_out = _check_rate(sr_in, "sr_in"), _check_rate(sr_out, "sr_out")
    x = np.asarray(x)
    dtype = np.result_type(x.dtype, np.float32)
    if sr_in == sr_out:
        return x.astype(dtype, copy=True)
    g = math.gcd(sr_in, sr_out)
    return scipy.signal.resample_poly(x.astype(np.float64), sr_out // g, sr_in // g, axis=-1).astype(dtype)


def stft_log_magnitude(x: np.ndarray, n_fft: int, hop: int, eps: float = 1e-7) -> np.ndarray:
    """``log(|STFT(x)| + eps)`` matching ``librosa.stft(x, n_fft, hop_length=hop)``.

    librosa defaults: periodic Hann window of length ``n_fft``
    (``scipy.signal.get_window('hann', n_fft)``), ``center=True`` with
    ``n_fft // 2`` zeros on each side (``pad_mode='constant'``, librosa >= 0.10).

    Returns:
        float32 array of shape ``(1 + n_fft // 2, 1 + len(x) // hop)``
        (frequency x time).
    """
    x = _as_mono(x)
    if n_fft < 2 or hop < 1:
        raise ValueError(f"need n_fft >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}")
    window = scipy.signal.get_window("hann", n_fft)  # periodic (fftbins=True)
    padded = np.pad(x, n_fft // 2, mode="constant")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    spec = np.fft.rfft(frames * window, axis=-1).T
    return np.log(np.abs(spec) + eps).astype(np.float32)


# --------------------------------------------------------------------------- #
# Kaldi filterbank
# --------------------------------------------------------------------------- #
def _mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale used by Kaldi: ``1127 * ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def _kaldi_window(kind: str, n: int) -> np.ndarray:
    """Kaldi window functions (``feature-window.cc``), symmetric over ``n`` samples."""
    a = 2.0 * np.pi / (n - 1)
    i = np.arange(n, dtype=np.float64)
    if kind == "hanning":
        return 0.5 - 0.5 * np.cos(a * i)
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(a * i)
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    if kind == "rectangular":
        return np.ones(n)
    if kind == "blackman":
        return 0.42 - 0.5 * np.cos(a * i) + 0.08 * np.cos(2.0 * a * i)
    raise ValueError(f"unknown window {kind!r}; choose from 'hanning', 'hamming', 'povey', 'rectangular', 'blackman'")


def kaldi_mel_banks(num_bins: int, padded_window_size: int, sr: int, low_freq: float, high_freq: float) -> np.ndarray:
    """Kaldi triangular mel filters, shape ``(num_bins, padded_window_size // 2 + 1)``.

    Filter ``m`` rises linearly *in mel* from ``mel_low + m * d`` to its centre
    ``mel_low + (m + 1) * d`` and falls to ``mel_low + (m + 2) * d``, with
    ``d = (mel_high - mel_low) / (num_bins + 1)``.  It is evaluated on FFT bins
    ``0 .. padded/2 - 1`` (the Nyquist bin excluded, as in Kaldi); a zero column
    is appended for the Nyquist bin so it can multiply a full ``rfft`` power spectrum.
    """
    num_fft_bins = padded_window_size // 2
    bin_width = sr / padded_window_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    m = np.arange(num_bins, dtype=np.float64)[:, None]
    left, centre, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    mel = _mel(bin_width * np.arange(num_fft_bins))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(
    wave: np.ndarray,
    sr: int,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemph: float = 0.97,
    window: str = "hanning",
) -> np.ndarray:
    """Kaldi-compatible log mel filterbank (``torchaudio.compliance.kaldi.fbank``).

    Settings are those used by AST: ``dither=0``, ``use_energy=False``,
    ``remove_dc_offset=True``, ``round_to_power_of_two=True``,
    ``snip_edges=True``, ``use_log_fbank=True``, ``use_power=True``.
    (``htk_compat`` only moves the energy coefficient, which is not computed.)

    Per frame of ``int(sr * frame_length_ms / 1000)`` samples, shifted by
    ``int(sr * frame_shift_ms / 1000)`` samples, with
    ``1 + (N - win) // shift`` frames (a waveform shorter than one frame is a
    ``ValueError``, as in torchaudio):

    1. subtract the frame mean (DC offset);
    2. pre-emphasis ``x[i] -= preemph * x[i-1]`` with ``x[-1] := x[0]``;
    3. multiply by the window (Kaldi ``'hanning'``: ``0.5 - 0.5 cos(2 pi n / (N-1))``);
    4. zero-pad to the next power of two and take the power spectrum ``|FFT|^2``;
    5. apply ``num_mel_bins`` HTK-mel triangular filters between ``low_freq``
       and ``high_freq`` (``<= 0`` means offset from Nyquist; see
       :func:`kaldi_mel_banks`);
    6. ``log(max(energy, float32 eps))``.

    The waveform is used as given (no int16 scaling, no mean removal: AST
    subtracts the global mean before calling this).

    Returns:
        float32 array of shape ``(frames, num_mel_bins)``.
    """
    x = _as_mono(wave)
    sr = _check_rate(sr)
    win = int(sr * frame_length_ms * 0.001)
    shift = int(sr * frame_shift_ms * 0.001)
    if win < 2 or shift < 1:
        raise ValueError(f"frame length/shift too small at {sr} Hz: {win} and {shift} samples")
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be > 3, got {num_mel_bins}")
    nyquist = 0.5 * sr
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad frequency range: low_freq={low_freq}, high_freq={high_freq} (Nyquist {nyquist})")
    padded_size = 1 << (win - 1).bit_length()  # round_to_power_of_two
    window_fn = _kaldi_window(window, win)
    banks = kaldi_mel_banks(num_mel_bins, padded_size, sr, low_freq, high_freq)

    if x.size < win:  # torchaudio asserts the same
        raise ValueError(
            f"waveform of {x.size} samples is shorter than one {frame_length_ms:g} ms frame ({win} samples at {sr} Hz)"
        )
    n_frames = 1 + (x.size - win) // shift
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::shift][:n_frames].copy()
    frames -= frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - preemph * previous) * window_fn
    power = np.abs(np.fft.rfft(frames, n=padded_size, axis=1)) ** 2
    energies = power @ banks.T
    return np.log(np.maximum(energies, FLOAT32_EPS)).astype(np.float32)


# --------------------------------------------------------------------------- #
# Presets
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class AudioPreset(abc.ABC):
    """A named waveform -> feature-matrix transform with a fixed output shape."""

    name: str

    @property
    @abc.abstractmethod
    def output_shape(self) -> tuple[int, int]:
        """Shape of the float32 matrix returned by :meth:`__call__`."""

    @abc.abstractmethod
    def __call__(
        self, wave: np.ndarray, sr: int, *, train: bool = False, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Transform a mono waveform sampled at ``sr`` Hz into features."""

    # The prepared cache stores the deterministic part; ``online`` does the rest per batch.
    @property
    def cache_shape(self) -> tuple[int, int]:
        """Shape of what :meth:`cache` returns (what ``modgap prepare`` stores)."""
        return self.output_shape

    def cache(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """The deterministic part of the transform (default: all of it, evaluation mode)."""
        return self(wave, sr, train=False)

    def online(self, cached: np.ndarray, *, train: bool, rng: np.random.Generator) -> np.ndarray:
        """From cached arrays (..., *cache_shape) to features (..., *output_shape)."""
        return cached


@dataclass(frozen=True)
class TiledSTFTPreset(AudioPreset):
    """Resample, tile to a fixed duration, clip to [-1, 1], ``log(|STFT| + eps)``.

    OGM-GE / LFM convention (``librosa.stft(n_fft, hop_length)`` on a clip
    tiled to ``num_samples``).  Output: ``(1 + n_fft//2) x (1 + num_samples//hop)``.
    ``train`` and ``rng`` are accepted for API uniformity and ignored.
    """

    sample_rate: int = 22050
    num_samples: int = 66150
    n_fft: int = 512
    hop_length: int = 353
    eps: float = 1e-7

    @property
    def output_shape(self) -> tuple[int, int]:
        return 1 + self.n_fft // 2, 1 + self.num_samples // self.hop_length

    def __call__(self, wave, sr, *, train=False, rng=None):
        x = resample(_as_mono(wave), sr, self.sample_rate)
        x = np.clip(tile_to(x, self.num_samples), -1.0, 1.0)
        return stft_log_magnitude(x, self.n_fft, self.hop_length, self.eps)


@dataclass(frozen=True)
class CroppedSTFTPreset(AudioPreset):
    """Resample, tile to at least ``min_samples``, crop ``crop_samples``, log |STFT|.

    OGM-GE / LFM VGGSound convention.  The crop starts uniformly at random in
    ``[0, len - crop_samples]`` when ``train=True`` (drawn from ``rng``, a fresh
    unseeded generator if ``None``) and at ``(len - crop_samples) // 2`` otherwise.
    The crop is clipped to [-1, 1].  Output: ``(1 + n_fft//2) x (1 + crop_samples//hop)``.
    """

    sample_rate: int = 16000
    min_samples: int = 160000
    crop_samples: int = 80000
    n_fft: int = 256
    hop_length: int = 128
    eps: float = 1e-7

    @property
    def output_shape(self) -> tuple[int, int]:
        return 1 + self.n_fft // 2, 1 + self.crop_samples // self.hop_length

    def crop_start(self, length: int, *, train: bool = False, rng: np.random.Generator | None = None) -> int:
        """Start index of the crop in a (tiled) waveform of ``length`` samples."""
        slack = length - self.crop_samples
        if slack < 0:
            raise ValueError(f"waveform of {length} samples is shorter than the {self.crop_samples}-sample crop")
        if not train:
            return slack // 2
        rng = np.random.default_rng() if rng is None else rng
        return int(rng.integers(0, slack, endpoint=True))

    def __call__(self, wave, sr, *, train=False, rng=None):
        x = resample(_as_mono(wave), sr, self.sample_rate)
        x = tile_to(x, max(x.size, self.min_samples, self.crop_samples))
        start = self.crop_start(x.size, train=train, rng=rng)
        x = np.clip(x[start : start + self.crop_samples], -1.0, 1.0)
        return stft_log_magnitude(x, self.n_fft, self.hop_length, self.eps)

    # Cached form: the log-STFT of the whole clip tiled (or cut) to ``min_samples``; the crop is
    # taken online in the frame domain, at hop-aligned starts. Against cropping the waveform this
    # differs only in the first and last frame (centre padding vs the neighbouring samples).
    @property
    def cache_shape(self) -> tuple[int, int]:
        return 1 + self.n_fft // 2, 1 + self.min_samples // self.hop_length

    def cache(self, wave: np.ndarray, sr: int) -> np.ndarray:
        x = resample(_as_mono(wave), sr, self.sample_rate)
        x = np.clip(tile_to(x, max(x.size, self.min_samples))[: self.min_samples], -1.0, 1.0)
        return stft_log_magnitude(x, self.n_fft, self.hop_length, self.eps)

    def online(self, cached: np.ndarray, *, train: bool, rng: np.random.Generator) -> np.ndarray:
        width = self.output_shape[1]
        slack = cached.shape[-1] - width
        starts = (
            rng.integers(0, slack, size=cached.shape[:-2], endpoint=True)
            if train
            else np.full(cached.shape[:-2], slack // 2)
        )
        out = np.empty((*cached.shape[:-1], width), dtype=cached.dtype)
        for index in np.ndindex(*cached.shape[:-2]):
            out[index] = cached[index][:, starts[index] : starts[index] + width]
        return out


@dataclass(frozen=True)
class KaldiFbankPreset(AudioPreset):
    """AST convention: Kaldi log-mel fbank at the native rate, fixed length, normalised.

    ``wave - wave.mean()`` -> :func:`kaldi_fbank` -> zero-pad or cut to
    ``target_length`` frames -> ``(fbank - norm_mean) / (2 * norm_std)``.
    Defaults are AST's ESC-50 recipe (128 mel bins, 1024 frames,
    mean -4.503877, std 5.141276).  Output: ``target_length x num_mel_bins``.
    ``train``/``rng`` are ignored (AST's SpecAugment masking is not applied).
    """

    num_mel_bins: int = 128
    target_length: int = 1024
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    high_freq: float = 0.0
    preemph: float = 0.97
    window: str = "hanning"
    norm_mean: float = -4.503877
    norm_std: float = 5.141276

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.target_length, self.num_mel_bins

    def __call__(self, wave, sr, *, train=False, rng=None):
        x = _as_mono(wave)
        fbank = kaldi_fbank(
            x - x.mean(),
            sr,
            self.num_mel_bins,
            self.frame_length_ms,
            self.frame_shift_ms,
            self.low_freq,
            self.high_freq,
            self.preemph,
            self.window,
        )
        out = np.zeros(self.output_shape, dtype=np.float32)
        n = min(fbank.shape[0], self.target_length)
        out[:n] = fbank[:n]
        return ((out - self.norm_mean) / (self.norm_std * 2.0)).astype(np.float32)


AUDIO_PRESETS: Registry[AudioPreset] = Registry("audio preset")
for _preset in (
    TiledSTFTPreset("ogmge_stft", sample_rate=22050, num_samples=3 * 22050, n_fft=512, hop_length=353),
    TiledSTFTPreset("lfm_stft", sample_rate=22050, num_samples=20 * 22050, n_fft=512, hop_length=353),
    KaldiFbankPreset("ast_fbank"),
    CroppedSTFTPreset(
        "vggsound_stft", sample_rate=16000, min_samples=10 * 16000, crop_samples=5 * 16000, n_fft=256, hop_length=128
    ),
):
    AUDIO_PRESETS.register(_preset.name)(_preset)
del _preset


class UnknownAudioPresetError(ConfigError, KeyError):
    """Unknown preset name: a ``KeyError`` for dict-style callers and a
    :class:`~modgap.errors.ConfigError` so the CLI reports it as one line."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


def get_audio_preset(name: str) -> AudioPreset:
    """Return the preset registered under ``name`` in :data:`AUDIO_PRESETS`.

    Raises:
        UnknownAudioPresetError: (a ``KeyError``) listing the valid names and
            the closest match.
    """
    if isinstance(name, str) and name in AUDIO_PRESETS:
        return AUDIO_PRESETS.get(name)
    hint = closest(str(name), AUDIO_PRESETS)
    hint = hint if "did you mean" in hint else ""  # every name is listed after it anyway
    raise UnknownAudioPresetError(f"unknown audio preset {name!r}{hint}; valid names: {', '.join(AUDIO_PRESETS)}")
