"""synth-av: the generated audio-visual dataset (shapes, determinism, frame choice, options, a CLI run)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from modgap.config import DataConfig
from modgap.data import DATASETS, parse_data_spec
from modgap.data.base import IMAGENET_MEAN, IMAGENET_STD
from modgap.data.synth_av import SynthAVLoader, _visual_key, generate_visual, parse_options, segment_frames
from modgap.errors import ConfigError

HAS_OPTIONS = "options" in {f.name for f in dataclasses.fields(DataConfig)}
needs_options = pytest.mark.skipif(not HAS_OPTIONS, reason="DataConfig has no 'options' field yet")

TINY = {"classes": 3, "n": 6, "size": 32, "frames": 2}


def load(**options) -> object:
    cfg = DataConfig(name="synth-av")
    object.__setattr__(cfg, "options", {**TINY, **options})
    return SynthAVLoader.load(cfg)


def test_registered_and_arg_parsing():
    assert "synth-av" in DATASETS
    assert parse_data_spec("synth-av:n=40,size=64,frames=2,audio_snr_db=-3.5") == {
        "name": "synth-av", "options": {"n": 40, "size": 64, "frames": 2, "audio_snr_db": -3.5}}
    assert parse_data_spec("synth-av") == {"name": "synth-av"}


@pytest.mark.parametrize("arg, message", [
    ("sise=64", "did you mean 'size'"),
    ("n=forty", "expected a number"),
    ("n40", "KEY=VALUE"),
    ("size=32.5", "expected an integer"),
    ("frames=2,use_frames=3", "use_frames"),
    ("classes=1", "classes"),
    ("size=inf", "finite"),
])
def test_bad_options_are_one_line_config_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_data_spec(f"synth-av:{arg}")


def test_unknown_option_from_a_config_file_is_named():
    with pytest.raises(ConfigError, match="no option 'noise'"):
        parse_options({"noise": 0.1})


def test_shapes_dtypes_and_classes():
    ds = load()
    assert ds.name == "synth-av" and ds.modalities == ("audio", "visual")
    assert ds.num_classes == 3 and len(ds.labels) == 18
    assert np.bincount(ds.labels).tolist() == [6, 6, 6]
    assert sorted(np.concatenate([ds.splits[s] for s in ("train", "val", "test")]).tolist()) == list(range(18))
    assert ds.input_shape("audio") == (257, 188)
    assert ds.input_shape("visual") == (2, 3, 32, 32)
    assert ds.encoder_for("audio") == "resnet18_audio" and ds.encoder_for("visual") == "resnet18_frames"
    rows = ds.splits["train"][:4]
    for train in (False, True):
        b = ds.batch(rows, train=train)
        assert b.inputs["audio"].dtype == torch.float32 and b.inputs["audio"].shape == (4, 257, 188)
        assert b.inputs["visual"].dtype == torch.uint8 and b.inputs["visual"].shape == (4, 2, 3, 32, 32)
        assert b.to("cpu").inputs["visual"].dtype == torch.float32
        assert b.y.tolist() == ds.labels[rows].tolist() and b.index.tolist() == rows.tolist()
        assert torch.isfinite(b.inputs["audio"]).all() and torch.isfinite(b.inputs["visual"]).all()


def test_visual_is_imagenet_normalised_frames():
    ds = load()
    raw = generate_visual(_visual_key(ds.options))
    x = ds.batch(np.array([0, 1]), train=False).to("cpu").inputs["visual"]  # normalised where it lands
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 1, 3, 1, 1)
    expected = (torch.from_numpy(np.array(raw[:2])).permute(0, 1, 4, 2, 3).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)


def test_deterministic_across_loads_and_cache_free_regeneration():
    a = load()
    b_audio = a.batch(np.arange(5), train=False).inputs
    from modgap.data import synth_av

    synth_av.generate_audio.cache_clear()
    synth_av.generate_visual.cache_clear()
    b = load()
    again = b.batch(np.arange(5), train=False).inputs
    for m in ("audio", "visual"):
        assert torch.equal(b_audio[m], again[m])
    assert a.split_checksum() == b.split_checksum()
    other = load(seed=1).batch(np.arange(5), train=False).inputs
    assert not torch.equal(other["visual"], again["visual"])


def test_modalities_can_be_chosen():
    cfg = DataConfig(name="synth-av", modalities=("visual",))
    object.__setattr__(cfg, "options", TINY)
    ds = SynthAVLoader.load(cfg)
    assert ds.modalities == ("visual",) and set(ds.batch(np.arange(2), train=False).inputs) == {"visual"}


def test_segment_frames():
    # eval: the centre frame of each of `used` equal segments
    assert segment_frames(6, 3, train=False).tolist() == [[1, 3, 5]]
    assert segment_frames(9, 3, train=False).tolist() == [[1, 4, 7]]
    assert segment_frames(3, 3, train=False, count=2).tolist() == [[0, 1, 2]] * 2
    assert segment_frames(5, 1, train=False).tolist() == [[2]]
    torch.manual_seed(0)
    drawn = segment_frames(9, 3, train=True, count=500)
    assert drawn.shape == (500, 3)
    for i in range(3):  # train: anywhere inside its own segment, every position reached
        assert set(drawn[:, i].tolist()) == {3 * i, 3 * i + 1, 3 * i + 2}
    torch.manual_seed(0)
    assert np.array_equal(segment_frames(9, 3, train=True, count=500), drawn)  # global torch RNG


def test_visual_eval_frames_are_the_centre_ones():
    ds = load(frames=6, use_frames=3)
    assert ds.input_shape("visual") == (3, 3, 32, 32)
    every = load(frames=6)  # the same stored clips, all 6 frames used
    rows = np.array([0, 4])
    picked = ds.batch(rows, train=False).inputs["visual"]
    full = every.batch(rows, train=False).inputs["visual"]
    assert full.shape[1] == 6
    torch.testing.assert_close(picked, full[:, [1, 3, 5]])  # segments {0,1} {2,3} {4,5}: centres 1, 3, 5
    torch.manual_seed(0)
    trained = ds.batch(rows, train=True).inputs["visual"]
    assert trained.shape == picked.shape
    for i in range(len(rows)):  # each training frame comes from its own segment (maybe flipped)
        for k in range(3):
            options = [full[i, j] for j in (2 * k, 2 * k + 1)]
            assert any(torch.equal(trained[i, k], f) or torch.equal(trained[i, k], f.flip(-1)) for f in options)


def test_train_batches_are_flipped_sometimes_and_reproducibly():
    ds = load(frames=1)
    rows = np.arange(12)
    plain = ds.batch(rows, train=False).inputs["visual"]
    torch.manual_seed(3)
    x = ds.batch(rows, train=True).inputs["visual"]
    flipped = [torch.equal(x[i], plain[i].flip(-1)) for i in range(len(rows))]
    kept = [torch.equal(x[i], plain[i]) for i in range(len(rows))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    torch.manual_seed(3)
    assert torch.equal(ds.batch(rows, train=True).inputs["visual"], x)


def test_difficulty_options_change_the_data():
    clean = load(visual_noise=0.0).batch(np.arange(3), train=False).inputs
    noisy = load(visual_noise=1.0).batch(np.arange(3), train=False).inputs
    assert clean["visual"].float().std() < noisy["visual"].float().std()
    loud = load(audio_snr_db=20.0).batch(np.arange(3), train=False).inputs["audio"]
    assert not torch.equal(loud, clean["audio"])


@needs_options
def test_cli_training_run(tmp_path, capsys):
    from modgap.cli import main

    out = tmp_path / "r"
    code = main(["train", "--data", "synth-av:n=6,size=32,frames=2", "--method", "joint", "--epochs", "1",
                 "--set", "model.width=4", "--set", "data.batch_size=8", "--quiet", "--set", "train.probe=false",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "synth-av" and summary["modalities"] == ["audio", "visual"]
    assert set(summary["test"]) == {"fused", "audio", "visual"}
