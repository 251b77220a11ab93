"""Tests for modgap.data.audio (CPU only, no network, no torchaudio/librosa).

The STFT and Kaldi-fbank checks compare against reference computations written
here from the formulas (direct DFT matrices built with np.exp, explicit frame
loops, hand-built mel filters) rather than re-using the library's helpers.
"""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import scipy.io.wavfile

from modgap.data.audio import (
    AUDIO_PRESETS,
    AudioPreset,
    get_audio_preset,
    kaldi_fbank,
    read_wav,
    resample,
    stft_log_magnitude,
    tile_to,
)
from modgap.errors import ConfigError, DataError

EPS = 1e-7
F32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def write_pcm(path, samples: np.ndarray, sr: int, sampwidth: int) -> None:
    """Write integer PCM with the stdlib ``wave`` module; samples (frames, channels) in [-1, 1)."""
    samples = np.atleast_2d(samples.T).T  # (frames, channels)
    if sampwidth == 1:
        raw = np.clip(np.round(samples * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif sampwidth == 2:
        raw = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    elif sampwidth == 3:
        q = np.clip(np.round(samples * 2**23), -(2**23), 2**23 - 1).astype("<i4")
        raw = q.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raise AssertionError(sampwidth)
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(samples.shape[1])
        wf.setsampwidth(sampwidth)
        wf.setframerate(sr)
        wf.writeframes(raw)


def ref_stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| by a direct DFT per frame: periodic Hann, n_fft//2 zeros each side."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    padded = np.concatenate([np.zeros(n_fft // 2), np.asarray(x, np.float64), np.zeros(n_fft // 2)])
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, n) / n_fft)
    columns = []
    start = 0
    while start + n_fft <= padded.size:
        columns.append(np.abs(dft @ (padded[start:start + n_fft] * window)))
        start += hop
    return np.stack(columns, axis=1)


def assert_log_mag_matches(out: np.ndarray, ref_mag: np.ndarray) -> None:
    assert out.dtype == np.float32
    assert out.shape == ref_mag.shape
    mag = np.exp(out.astype(np.float64)) - EPS
    rel = np.max(np.abs(mag - ref_mag)) / np.max(ref_mag)
    assert rel < 1e-4, rel
    np.testing.assert_allclose(mag, ref_mag, rtol=1e-4, atol=1e-4 * ref_mag.max())


def htk_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def ref_mel_filters(n_mels: int, n_fft: int, sr: int, low: float, high: float) -> np.ndarray:
    """Triangles linear in HTK mel, on FFT bins 0..n_fft/2-1, Nyquist column = 0."""
    lo, hi = htk_mel(low), htk_mel(high)
    delta = (hi - lo) / (n_mels + 1)
    filters = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            mk = htk_mel(k * sr / n_fft)
            if left < mk <= centre:
                filters[m, k] = (mk - left) / (centre - left)
            elif centre < mk < right:
                filters[m, k] = (right - mk) / (right - centre)
    return filters


def ref_kaldi_fbank(x: np.ndarray, sr: int, n_mels: int = 128) -> np.ndarray:
    """Direct per-frame Kaldi fbank (25 ms / 10 ms, snip_edges, hanning, preemph 0.97)."""
    win, shift = int(sr * 0.025), int(sr * 0.010)
    n_fft = 1
    while n_fft < win:
        n_fft *= 2
    filters = ref_mel_filters(n_mels, n_fft, sr, 20.0, sr / 2)
    i = np.arange(win)
    hanning = 0.5 - 0.5 * np.cos(2 * np.pi * i / (win - 1))
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, np.arange(n_fft)) / n_fft)
    rows = []
    for t in range(1 + (len(x) - win) // shift):
        frame = np.asarray(x[t * shift:t * shift + win], dtype=np.float64)
        frame = frame - frame.mean()
        emphasised = np.empty(win)
        emphasised[0] = frame[0] - 0.97 * frame[0]
        emphasised[1:] = frame[1:] - 0.97 * frame[:-1]
        buf = np.zeros(n_fft)
        buf[:win] = emphasised * hanning
        power = np.abs(dft @ buf) ** 2
        rows.append(np.log(np.maximum(filters @ power, F32_EPS)))
    return np.array(rows)


# --------------------------------------------------------------------------- #
# read_wav / resample / tile_to
# --------------------------------------------------------------------------- #
def test_read_wav_16bit_stereo_mixes_to_mono(tmp_path):
    sr = 16000
    t = np.arange(4000) / sr
    rng = np.random.default_rng(0)
    left = 0.8 * np.sin(2 * np.pi * 440 * t)
    right = rng.uniform(-0.9, 0.9, t.size)
    path = tmp_path / "stereo.wav"
    write_pcm(path, np.stack([left, right], axis=1), sr, 2)

    x, rate = read_wav(path)
    assert rate == sr
    assert x.dtype == np.float32 and x.shape == (t.size,)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1 / 32768, rtol=0)


@pytest.mark.parametrize("sampwidth, tol", [(1, 1 / 128), (3, 1 / 2**23 + 1e-7)])
def test_read_wav_other_pcm_widths(tmp_path, sampwidth, tol):
    x0 = np.random.default_rng(1).uniform(-0.9, 0.9, 1000)
    path = tmp_path / f"w{sampwidth}.wav"
    write_pcm(path, x0, 8000, sampwidth)
    x, rate = read_wav(path)
    assert rate == 8000
    np.testing.assert_allclose(x, x0, atol=tol, rtol=0)


def test_read_wav_float_falls_back_to_scipy(tmp_path):
    x0 = np.random.default_rng(2).uniform(-1, 1, (500, 2)).astype(np.float32)
    path = tmp_path / "float.wav"
    scipy.io.wavfile.write(path, 22050, x0)
    x, rate = read_wav(path)
    assert rate == 22050
    np.testing.assert_allclose(x, x0.mean(axis=1), atol=1e-7)


def _valid_wav_bytes(tmp_path) -> bytes:
    path = tmp_path / "valid.wav"
    write_pcm(path, np.zeros(2000), 16000, 2)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["truncated_data", "truncated_header", "garbage", "empty"])
def test_read_wav_bad_file_raises_one_line_value_error(tmp_path, kind):
    good = _valid_wav_bytes(tmp_path)
    content = {
        "truncated_data": good[: len(good) // 2],
        "truncated_header": good[:20],
        "garbage": np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "empty": b"",
    }[kind]
    path = tmp_path / f"bad_{kind}.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_wav(path)
    assert isinstance(info.value, DataError)  # one-line CLI error, still a ValueError
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable WAV file (")
    assert "\n" not in message


def test_resample_uses_reduced_polyphase_factors():
    sr_in, sr_out = 16000, 22050  # gcd 50 -> up 441, down 320
    t = np.arange(8000) / sr_in
    x = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32
    assert y.size == math.ceil(x.size * 441 / 320)
    t_out = np.arange(y.size) / sr_out
    middle = slice(500, y.size - 500)  # away from filter edge effects
    np.testing.assert_allclose(y[middle], np.sin(2 * np.pi * 300 * t_out)[middle], atol=2e-3)
    np.testing.assert_array_equal(resample(x, 8000, 8000), x)


def test_tile_to_and_input_validation():
    np.testing.assert_array_equal(tile_to(np.array([1, 2, 3]), 7), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(tile_to(np.arange(10), 4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        tile_to(np.array([]), 5)
    for _, preset in AUDIO_PRESETS.items():
        with pytest.raises(ValueError, match="empty waveform"):
            preset(np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="mono"):
        AUDIO_PRESETS.get("ogmge_stft")(np.zeros((2, 100)), 16000)
    with pytest.raises(ValueError, match="sample rate|sr_in"):
        AUDIO_PRESETS.get("ogmge_stft")(np.zeros(100), 0)


# --------------------------------------------------------------------------- #
# shapes
# --------------------------------------------------------------------------- #
EXPECTED_SHAPES = {
    "ogmge_stft": (257, 188),
    "lfm_stft": (257, 1250),
    "ast_fbank": (1024, 128),
    "vggsound_stft": (129, 626),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
@pytest.mark.parametrize("seconds, sr", [(0.7, 16000), (21.0, 16000), (12.0, 44100)])
def test_preset_output_shapes(name, seconds, sr):
    preset = get_audio_preset(name)
    assert isinstance(preset, AudioPreset) and preset.name == name
    assert preset.output_shape == EXPECTED_SHAPES[name]
    x = np.random.default_rng(4).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    out = preset(x, sr)
    assert out.shape == EXPECTED_SHAPES[name]
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))


def test_registry_contains_exactly_the_presets():
    assert set(AUDIO_PRESETS) == set(EXPECTED_SHAPES)


# --------------------------------------------------------------------------- #
# STFT presets vs. direct DFT
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n_fft, hop", [(512, 353), (256, 128), (64, 17)])
def test_stft_log_magnitude_matches_direct_dft(n_fft, hop):
    x = np.random.default_rng(5).standard_normal(1500).astype(np.float32)
    out = stft_log_magnitude(x, n_fft, hop)
    assert out.shape == (1 + n_fft // 2, 1 + x.size // hop)
    assert_log_mag_matches(out, ref_stft_magnitude(x, n_fft, hop))
    np.testing.assert_allclose(out, np.log(ref_stft_magnitude(x, n_fft, hop) + EPS), atol=1e-4)


@pytest.mark.parametrize("name, n_samples", [("ogmge_stft", 66150), ("lfm_stft", 441000)])
def test_tiled_stft_presets_match_direct_dft(name, n_samples):
    sr = 22050  # native rate: resampling is the identity
    x = np.random.default_rng(6).uniform(-1.3, 1.3, 7000).astype(np.float32)
    expected_input = np.clip(np.tile(x, math.ceil(n_samples / x.size))[:n_samples], -1, 1)
    out = get_audio_preset(name)(x, sr)
    assert_log_mag_matches(out, ref_stft_magnitude(expected_input, 512, 353))


def test_vggsound_preset_matches_direct_dft_on_centred_crop():
    x = np.random.default_rng(7).uniform(-1.2, 1.2, 100000).astype(np.float32)
    tiled = np.concatenate([x, x[:60000]])  # 10 s at 16 kHz
    expected_input = np.clip(tiled[40000:120000], -1, 1)  # centred 5 s crop
    out = get_audio_preset("vggsound_stft")(x, 16000)
    assert_log_mag_matches(out, ref_stft_magnitude(expected_input, 256, 128))


# --------------------------------------------------------------------------- #
# Kaldi fbank
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("sr, n", [(16000, 8000), (8000, 3000), (44100, 9000)])
def test_kaldi_fbank_matches_reference(sr, n):
    x = np.random.default_rng(8).uniform(-0.5, 0.5, n).astype(np.float32)
    out = kaldi_fbank(x, sr)
    ref = ref_kaldi_fbank(x, sr)
    assert out.dtype == np.float32
    assert out.shape == ref.shape == (1 + (n - int(sr * 0.025)) // int(sr * 0.010), 128)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0)


def test_kaldi_fbank_pure_tone_peaks_at_nearest_mel_centre():
    sr, f0 = 16000, 1000.0
    x = 0.5 * np.sin(2 * np.pi * f0 * np.arange(sr) / sr)
    out = kaldi_fbank(x, sr)
    lo, hi = htk_mel(20.0), htk_mel(sr / 2)
    delta = (hi - lo) / 129
    centres_hz = 700.0 * (np.exp((lo + (np.arange(128) + 1) * delta) / 1127.0) - 1.0)
    expected_bin = int(np.argmin(np.abs(centres_hz - f0)))
    assert np.all(np.argmax(out, axis=1) == expected_bin)


def test_kaldi_fbank_shorter_than_one_frame_raises():
    with pytest.raises(ValueError, match="shorter than one 25 ms frame"):
        kaldi_fbank(np.ones(100), 16000)
    with pytest.raises(ValueError, match="shorter than one"):
        get_audio_preset("ast_fbank")(np.ones(100), 16000)


def test_ast_fbank_preset_pads_cuts_and_normalises():
    preset = get_audio_preset("ast_fbank")
    rng = np.random.default_rng(9)
    short = rng.uniform(-0.5, 0.5, 16000).astype(np.float32) + 0.1  # DC offset removed by preset
    out = preset(short, 16000)
    n = 1 + (16000 - 400) // 160  # 98 frames
    ref = (ref_kaldi_fbank(short - short.mean(), 16000) + 4.503877) / (5.141276 * 2)
    np.testing.assert_allclose(out[:n], ref, atol=1e-3 / (5.141276 * 2))
    np.testing.assert_allclose(out[n:], 4.503877 / (5.141276 * 2), rtol=1e-6)

    long = rng.uniform(-0.5, 0.5, 16000 * 11).astype(np.float32)
    out = preset(long, 16000)
    expected = (kaldi_fbank(long - long.mean(), 16000)[:1024] + 4.503877) / (5.141276 * 2)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------- #
# VGGSound crop
# --------------------------------------------------------------------------- #
def test_vggsound_crop_eval_is_centred_and_train_is_random():
    preset = get_audio_preset("vggsound_stft")
    x = np.random.default_rng(10).uniform(-0.5, 0.5, 16000 * 12).astype(np.float32)
    a = preset(x, 16000)
    b = preset(x, 16000, train=False, rng=np.random.default_rng(123))
    np.testing.assert_array_equal(a, b)
    start = (x.size - 80000) // 2
    np.testing.assert_array_equal(a, stft_log_magnitude(x[start:start + 80000], 256, 128))

    t0 = preset(x, 16000, train=True, rng=np.random.default_rng(0))
    t1 = preset(x, 16000, train=True, rng=np.random.default_rng(1))
    t0_again = preset(x, 16000, train=True, rng=np.random.default_rng(0))
    assert t0.shape == t1.shape == (129, 626)
    assert not np.array_equal(t0, t1)
    np.testing.assert_array_equal(t0, t0_again)

    starts = {preset.crop_start(x.size, train=True, rng=np.random.default_rng(seed))
              for seed in range(50)}
    assert len(starts) > 1 and min(starts) >= 0 and max(starts) <= x.size - 80000


# --------------------------------------------------------------------------- #
# registry lookup
# --------------------------------------------------------------------------- #
def test_get_audio_preset_typo_suggests_closest_name():
    assert get_audio_preset("ast_fbank") is AUDIO_PRESETS.get("ast_fbank")
    with pytest.raises(KeyError) as info:
        get_audio_preset("ogmge_sftf")
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "'ogmge_stft'" in message and "did you mean" in message
    for name in AUDIO_PRESETS:
        assert name in message
