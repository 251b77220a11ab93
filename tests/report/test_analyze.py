"""`modgap analyze`: Shapley contributions (exact, efficient, zero for an ignored modality), the
label-fitting experiment (and unimodal's label_mix), Grad-CAM on ResNet frame and image encoders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modgap.cli import main
from modgap.config import ModelConfig
from modgap.errors import ConfigError
from modgap.methods.unimodal import soft_cross_entropy
from modgap.models import build_model
from modgap.report import plots
from modgap.report.analyze import target_entropy
from modgap.report.checkpoint import load_trained
from modgap.report.gradcam import gradcam_maps
from modgap.report.shapley import modality_shapley, shapley_values, subsets

from conftest import NO_PROBE, TINY

@pytest.fixture(scope="module")
def mfeat_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("analyze") / "joint"
    assert main(["train", "--method", "joint", "--epochs", "3", "--out", str(run), *TINY, *NO_PROBE]) == 0
    return run


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("analyze") / "sav"
    assert main(["train", "--data", "synth-av:n=6,size=32,frames=2", "--method", "joint", "--epochs", "1",
                 "--out", str(run), "--set", "model.width=4", *TINY, *NO_PROBE]) == 0
    return run


# ------------------------------------------------------------------------------- Shapley
def test_shapley_of_known_games():
    players = ["a", "b", "c"]
    weights = {"a": 0.5, "b": -0.25, "c": 2.0}
    assert shapley_values(lambda s: sum(weights[p] for p in s), players) == pytest.approx(weights)  # additive
    # unanimity game of {a, b}: split equally, c is a null player
    assert shapley_values(lambda s: float({"a", "b"} <= s), players) == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})
    rng = np.random.default_rng(0)
    for m in (1, 2, 4, 6):
        ps = [f"m{i}" for i in range(m)]
        v = {s: float(rng.normal()) for s in subsets(ps)}
        phi = shapley_values(v, ps)
        assert sum(phi.values()) == pytest.approx(v[frozenset(ps)] - v[frozenset()], abs=1e-12)  # efficiency
    with pytest.raises(ConfigError, match="at most 6"):
        shapley_values(lambda s: 0.0, [str(i) for i in range(7)])


@pytest.mark.parametrize("replace", ["zero", "mean"])
def test_shapley_of_a_trained_run_and_of_an_ignored_modality(mfeat_run, replace):
    summary = json.loads((mfeat_run / "summary.json").read_text())
    trainer = load_trained(mfeat_run, threads=1)
    result = modality_shapley(trainer, "test", replace)
    assert result["full"]["acc"] == pytest.approx(summary["test"]["fused"]["acc"], abs=1e-12)
    for key in ("acc", "true_logit"):
        total = sum(result["shapley"][key].values())
        assert total == pytest.approx(result["full"][key] - result["empty"][key], abs=1e-9)
    assert len(result["subsets"]) == 4
    # the mean fusion with fou's head weights zeroed: fou's inputs no longer reach the fused logits
    with torch.no_grad():
        trainer.model.fusion.heads["fou"].weight.zero_()
    ignored = modality_shapley(trainer, "test", replace)
    assert ignored["shapley"]["acc"]["fou"] == 0.0
    assert ignored["shapley"]["true_logit"]["fou"] == 0.0
    assert ignored["shapley"]["acc"]["pix"] == pytest.approx(ignored["full"]["acc"] - ignored["empty"]["acc"], abs=1e-12)


def test_analyze_shapley_cli_writes_table_json_and_plot(mfeat_run, tmp_path, capsys):
    out = tmp_path / "sh"
    assert main(["analyze", "shapley", str(mfeat_run), "--replace", "mean", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| pix |" in printed and "| fou |" in printed and "mean-replaced" in printed
    result = json.loads((out / "shapley.json").read_text())
    assert result["replace"] == "mean" and set(result["shapley"]["acc"]) == {"pix", "fou"}
    fig = json.loads(plots.sidecar_path(out / "shapley.png").read_text())
    heights = {tuple(b["height"]) for ax in fig["axes"] for b in ax["bars"]}
    assert tuple(result["shapley"]["acc"][m] for m in ("pix", "fou")) in heights
    assert main(["analyze"]) == 2
    assert main(["analyze", "shapley", str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------------- label fitting
def test_label_mix_targets():
    z, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    assert soft_cross_entropy(z, y, 0.0) == F.cross_entropy(z, y)  # the one-hot case is unchanged
    assert soft_cross_entropy(z, y, 0.3) == pytest.approx(float(F.cross_entropy(z, y, label_smoothing=0.3)), abs=1e-6)
    assert soft_cross_entropy(z, y, 1.0) == pytest.approx(float(-F.log_softmax(z, 1).mean(1).mean()), abs=1e-6)
    assert target_entropy(1.0, 5) == pytest.approx(np.log(5))
    assert target_entropy(0.0, 5) == 0.0
    # the minimum of the soft CE over logits is the entropy of the targets
    t = 0.7 * F.one_hot(y, 5) + 0.3 / 5
    assert soft_cross_entropy(t.log(), y, 0.3) == pytest.approx(target_entropy(0.3, 5), abs=1e-6)


def test_label_mix_is_checked(tmp_path, capsys):
    code = main(["train", "--method", "unimodal", "--set", "method.label_mix=1.5", "--out", str(tmp_path / "r"), *TINY, *NO_PROBE])
    assert code == 2 and "label_mix must be in [0, 1]" in capsys.readouterr().err


def test_label_fitting_on_mfeat_writes_the_three_settings(tmp_path, capsys):
    out = tmp_path / "lf"
    assert main(["analyze", "label-fitting", "--data", "mfeat", "--modalities", "pix,fou", "--epochs", "2",
                 "--seeds", "0", "--out", str(out), *TINY, *NO_PROBE]) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert printed.startswith(table.splitlines()[0])
    for name in ("one-hot", "mixed (0.7 one-hot + 0.3 uniform)", "uniform"):
        assert table.count(f"| {name} |") == 3  # pix, fou and the gap
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["labels"].split()[0], r["modality"]) for r in rows] == [
        (s, m) for s in ("one-hot", "mixed", "uniform") for m in ("pix", "fou", "gap (max - min)")]
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert {(r["label_mix"], r["modality"]) for r in runs} == {(m, mod) for m in ("0.0", "0.3", "1.0") for mod in ("pix", "fou")}
    for r in runs:  # the table's numbers come from the runs
        metrics = [json.loads(line) for line in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()]
        assert float(r["train_loss"]) == pytest.approx(metrics[-1]["train"][f"cls_{r['modality']}"])
        assert float(r["test_acc"]) == pytest.approx(metrics[-1]["test"][r["modality"]]["acc"])
        assert float(r["train_fit_kl"]) >= -1e-6  # a KL
        config = (Path(r["run"]) / "config.yaml").read_text()
        assert "name: unimodal" in config and f"label_mix: {r['label_mix']}" in config
    gap = [r for r in rows if r["labels"] == "one-hot" and r["modality"].startswith("gap")][0]
    accs = {r["modality"]: float(r["test_acc"]) for r in rows if r["labels"] == "one-hot" and not r["modality"].startswith("gap")}
    assert float(gap["test_acc"]) == pytest.approx(max(accs.values()) - min(accs.values()))
    side = json.loads(plots.sidecar_path(out / "label_fitting.png").read_text())
    kl_lines = [line for ax in side["axes"] for line in ax["lines"] if line["gid"] and line["gid"].endswith("train_fit_kl")]
    assert len(kl_lines) == 6
    for line in kl_lines:
        name, mod, _ = line["gid"].split("::")
        run = [r for r in runs if r["labels"] == name and r["modality"] == mod][0]
        metrics = [json.loads(x) for x in (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()]
        h = target_entropy(float(run["label_mix"]), 10)
        np.testing.assert_allclose(line["y"], [m["train"][f"cls_{mod}"] - h for m in metrics], rtol=1e-12)
    # a second call reuses the finished runs
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert main(["analyze", "label-fitting", "--data", "mfeat", "--modalities", "pix,fou", "--epochs", "2",
                 "--seeds", "0", "--out", str(out), *TINY, *NO_PROBE]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == stamp


# ------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_of_a_synth_av_run_shows_every_frame(synth_run, tmp_path, capsys):
    out = tmp_path / "gc"
    assert main(["analyze", "gradcam", str(synth_run), "--samples", "2", "--checkpoint", "last", "--out", str(out),
                 "--threads", "1"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["gradcam_audio_00.png", "gradcam_audio_01.png", "gradcam_visual_00.png", "gradcam_visual_01.png"]
    visual = json.loads(plots.sidecar_path(out / "gradcam_visual_00.png").read_text())
    cam = np.asarray(visual["data"]["cam"], dtype=float)
    assert cam.shape == (2, 32, 32)  # one map per frame, at the frame's size
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert len([ax for ax in visual["axes"] if ax["title"].startswith("Grad-CAM, frame")]) == 2
    audio = json.loads(plots.sidecar_path(out / "gradcam_audio_00.png").read_text())
    assert np.asarray(audio["data"]["cam"]).shape == (1, 257, 188)
    # an earlier stage has finer maps
    assert main(["analyze", "gradcam", str(synth_run), "--samples", "1", "--stage", "2", "--modality", "visual",
                 "--out", str(tmp_path / "gc2"), "--threads", "1"]) == 0
    coarse = json.loads(plots.sidecar_path(tmp_path / "gc2" / "gradcam_visual_00.png").read_text())["data"]["coarse"]
    assert np.asarray(coarse).shape == (2, 4, 4)
    capsys.readouterr()
    assert main(["analyze", "gradcam", str(synth_run), "--modality", "visul", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'visual'" in capsys.readouterr().err


def test_gradcam_maps_of_an_image_encoder_are_per_sample():
    torch.manual_seed(0)
    model = build_model({"img": (3, 64, 64), "tab": (5,)}, 4, ModelConfig(width=4, hidden=(8,), feature_dim=4),
                        {"img": "resnet18_image", "tab": "mlp"}).eval()
    inputs = {"img": torch.randn(3, 3, 64, 64), "tab": torch.randn(3, 5)}
    y = torch.tensor([0, 2, 3])
    both = gradcam_maps(model, lambda out: out.fused, inputs, y, "img")
    assert both["cam"].shape == (3, 1, 64, 64) and both["coarse"].shape == (3, 1, 2, 2)
    with torch.no_grad():
        fused = model(inputs).fused
    np.testing.assert_allclose(both["score"], fused[torch.arange(3), y].numpy(), rtol=1e-5, atol=1e-6)
    one = gradcam_maps(model, lambda out: out.fused, {k: v[1:2] for k, v in inputs.items()}, y[1:2], "img")
    np.testing.assert_allclose(one["coarse"][0], both["coarse"][1], rtol=1e-4, atol=1e-6)  # no mixing across samples
    assert all(p.grad is None for p in model.parameters())  # gradients are not left behind
    with pytest.raises(ConfigError, match="ResNet encoder"):
        gradcam_maps(model, lambda out: out.fused, inputs, y, "tab")


def test_report_of_a_synth_av_run_has_gradcam(synth_run, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(synth_run), "--out", str(out), "--gradcam-samples", "1", "--threads", "1"]) == 0
    html = (out / "report.html").read_text()
    assert "Grad-CAM" in html and html.count("<img") == len(list(out.glob("*.png")))
    assert {"gradcam_audio_00", "gradcam_visual_00", "gap", "per_class", "shapley"} <= {p.stem for p in out.glob("*.png")}


def test_mean_replacement_uses_the_train_mean_of_each_modality(synth_run):
    from modgap.report.shapley import train_means

    trainer = load_trained(synth_run, "last", threads=1)
    means = train_means(trainer.batches("train", train=False), trainer.data.modalities)
    rows = trainer.data.splits["train"]
    full = trainer.data.batch(rows, train=False).to("cpu")  # as the model sees it (frames normalised)
    for m in trainer.data.modalities:
        torch.testing.assert_close(means[m], full.inputs[m].double().mean(0).float())
    result = modality_shapley(trainer, "test", "mean")
    for key in ("acc", "true_logit"):
        assert sum(result["shapley"][key].values()) == pytest.approx(result["full"][key] - result["empty"][key], abs=1e-9)
    zero = modality_shapley(trainer, "test", "zero")
    assert zero["full"] == result["full"]  # nothing replaced: the same model output
    assert zero["empty"]["true_logit"] != result["empty"]["true_logit"]  # frames' mean is not zero
