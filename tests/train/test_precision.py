"""train.precision, train.channels_last and train.compile on CPU (modgap/train/precision.py).

fp16 cannot run here (CUDA only), but its loss scaling can: the tests set the loss scale on an fp32
trainer, which exercises the same code (scaled losses, per-parameter unscaling hooks, the skip-and-
back-off rule). CUDA itself is covered by scripts/gpu_check.sh.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from modgap.config import Config, build, make_config
from modgap.errors import ConfigError
from modgap.methods.hypergrad import AlphaLearner
from modgap.train.precision import LossScale, Precision, channels_last
from modgap.runs import load_checkpoint
from modgap.train.trainer import Trainer

MLP = {"hidden": [16], "feature_dim": 8}
QUIET = {"threads": 1, "probe": False, "progress": False}


def trainer(tmp_path, name="r", method="joint", precision="fp32", data=None, model=None, **train) -> Trainer:
    spec = {"name": method, **({"every": 2} if method == "lfm-lb" else {})}
    cfg = make_config(overrides={"data": data or {"name": "mfeat"}, "method": spec, "model": model or MLP,
                                 "train": {"epochs": 1, "precision": precision, **QUIET, **train}})
    return Trainer(cfg, tmp_path / name)


@pytest.mark.parametrize("method", ["joint", "lfm-lb"])
def test_bf16_trains_an_epoch_and_its_first_loss_matches_fp32(tmp_path, method):
    first = {}
    for precision in ("fp32", "bf16"):
        t = trainer(tmp_path, precision, method, precision)
        first[precision] = t.train_step(next(t.batches("train", True, 0)))
    for term, value in first["fp32"].items():  # encoders in bf16, heads and losses in fp32
        assert first["bf16"][term] == pytest.approx(value, rel=1e-2, abs=1e-4), term
    runs = {}
    for precision in ("fp32", "bf16"):
        t = trainer(tmp_path, f"run-{precision}", method, precision)
        summary = t.fit()
        record = json.loads((tmp_path / f"run-{precision}" / "metrics.jsonl").read_text().splitlines()[0])
        runs[precision] = summary, record
    (s32, r32), (s16, r16) = runs["fp32"], runs["bf16"]
    assert all(math.isfinite(v) for v in r16["train"].values())
    assert r16["train"]["total"] == pytest.approx(r32["train"]["total"], rel=2e-2)
    assert s16["test"]["fused"]["acc"] == pytest.approx(s32["test"]["fused"]["acc"], abs=0.05)
    assert s16["skipped_steps"] == 0 and "amp_skipped_steps" not in s16
    if method == "lfm-lb":  # alpha learned in bf16 follows fp32's
        assert s16["alpha_final"] != pytest.approx(0.05)
        assert s16["alpha_final"] == pytest.approx(s32["alpha_final"], rel=2e-2)
    assert all(p.dtype == torch.float32 for p in t.params)  # weights stay fp32


def test_bf16_autocast_covers_the_encoders_only(tmp_path):
    t = trainer(tmp_path, precision="bf16")
    batch = next(t.batches("train", True, 0))
    seen = {}
    enc = next(iter(t.model.encoders.values()))
    enc.net[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("encoder", out.dtype))
    t.model.fusion.register_forward_hook(lambda mod, args, out: seen.__setitem__("fusion", out[1].dtype))
    with t.precision.autocast():
        out = t.model(batch.inputs)
    assert seen == {"encoder": torch.bfloat16, "fusion": torch.float32}
    assert all(f.dtype == torch.float32 for f in out.features.values())
    t.model(batch.inputs)  # outside the step (evaluation, method hooks): fp32
    assert seen == {"encoder": torch.float32, "fusion": torch.float32}


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    from modgap.cli import main

    code = main(["train", "--out", str(tmp_path / "r"), "--quiet", "--set", "train.precision=fp16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "fp16" in err and "CUDA" in err and "bf16" in err
    config = build(Config, {"train": {"precision": "fp16"}})  # past make_config's check: the trainer refuses
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        Trainer(config, tmp_path / "r2")
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        make_config(assignments=["train.precision=bf61"])
    for key in ("channels_last", "compile"):
        with pytest.raises(ConfigError, match=f"train.{key}: expected true or false"):
            make_config(assignments=[f"train.{key}=sometimes"])


def test_loss_scaling_hands_every_method_true_scale_gradients(tmp_path):
    """The scaled backward gives the same p.grad and the same lfm-lb direction g_cls - g_match as an
    unscaled one (S is a power of two: exact), which GradScaler.unscale_ alone would not."""
    t = trainer(tmp_path, method="lfm-lb")
    batch = next(t.batches("train", True, 0))

    def plain_grads():
        t.optimizer.zero_grad(set_to_none=True)
        t.method.losses(t.model(batch.inputs), batch, t.ctx).total.backward()
        return [p.grad.clone() for p in t.params]

    before = plain_grads()
    results = []
    for scale in (None, 2.0**16):
        t.precision.loss_scale = LossScale(scale) if scale else None
        losses = t.method.losses(t.model(batch.inputs), batch, t.ctx)
        learner = AlphaLearner(0.3)
        t.optimizer.zero_grad(set_to_none=True)
        with t.precision.scaled(losses, t.params) as scaled:
            if scale:
                assert float(scaled.total.detach()) == pytest.approx(float(losses.total.detach()) * scale)
            learner.backward(scaled.terms["cls"], scaled.terms["match"], t.params, 2.0)
        results.append(([p.grad.clone() for p in t.params], [d.clone() for d in learner._d]))
    (g0, d0), (g1, d1) = results
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(g0, g1))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(d0, d1))
    assert any(float(d.abs().max()) > 0 for d in d1)
    after = plain_grads()  # the unscaling hooks are gone once the step's backward is over
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_an_overflowing_loss_scale_skips_steps_without_failing(tmp_path):
    """fp16's rule on CPU: a scale so large the scaled loss overflows skips the step, halves the
    scale, and is not counted as a failure; training then goes on (and lfm-lb's alpha stays finite)."""
    t = trainer(tmp_path, method="lfm-lb", on_nonfinite="stop")
    t.precision.loss_scale = LossScale(init=2.0**140)  # loss * 2**140 is inf in fp32
    summary = t.fit()
    assert summary["skipped_steps"] == 0
    assert 10 <= summary["amp_skipped_steps"] <= 20 and t.precision.loss_scale.scale < 2.0**128
    assert math.isfinite(summary["alpha_final"])
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["loss_scale"]["skipped"] == summary["amp_skipped_steps"]  # checkpointed for resume
    scale = LossScale(init=8.0, interval=2)
    for finite in (True, True, False, True):
        scale.update(finite)
    assert (scale.scale, scale.skipped, scale.good_steps) == (8.0, 1, 1)


def test_a_second_order_backward_is_refused_where_it_cannot_be_right(tmp_path, monkeypatch):
    """lfm-lb horizon > 1 differentiates its gradients in the step: with loss scaling the leaf
    unscaling would also divide the Hessian-vector part, and compiled graphs have no double backward."""
    cfg = make_config(overrides={"method": {"name": "lfm-lb", "every": 2, "horizon": 2}, "model": MLP,
                                 "train": {"epochs": 1, **QUIET}})
    t = Trainer(cfg, tmp_path / "fp16")
    t.precision.loss_scale = LossScale()  # fp16's scaling, on CPU
    with pytest.raises(ConfigError, match="fp16.*horizon > 1.*bf16"):
        t.fit()
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="aot_eager"))
    compiled = Trainer(make_config(overrides={**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "compile": True}}),
                       tmp_path / "compiled")
    with pytest.raises(ConfigError, match="train.compile.*train.compile=false"):
        compiled.fit()


SYNTH = {"name": "synth-av", "options": {"n": 4, "size": 32, "frames": 2}}


def test_channels_last_layout_and_its_cpu_refusal(tmp_path):
    """CUDA only (oneDNN's NHWC 1x1 stride-2 convolution backward crashes on this CPU for narrow
    ResNets); the layout itself, the model preparation and the forward pass are checked here,
    training in scripts/gpu_check.sh. Without the option, inputs are made contiguous whatever the
    dataset produced (prepared frames come back C-innermost from their augmentation)."""
    x = torch.randn(2, 3, 4, 5, 6)
    y = channels_last(x)
    assert torch.equal(x, y) and y.stride()[2] == 1  # C innermost
    assert y.reshape(6, 4, 5, 6).is_contiguous(memory_format=torch.channels_last)  # frames folded: NHWC
    assert channels_last(torch.randn(2, 3, 4)).is_contiguous()
    with pytest.raises(ConfigError, match="train.channels_last is for CUDA"):
        make_config(assignments=["train.channels_last=true"])
    with pytest.raises(ConfigError, match="train.channels_last is for CUDA"):
        Trainer(build(Config, {"train": {"channels_last": True}}), tmp_path / "refused")
    t = trainer(tmp_path, "plain", "joint", data=SYNTH, model={**MLP, "width": 4})
    batch = next(t.batches("train", True, 0))
    assert batch.inputs["visual"].is_contiguous()
    assert t.assembly.on_device(type(batch)({"visual": y}, batch.y, batch.index)).inputs["visual"].is_contiguous()
    cuda_like = Precision(build(Config, {"train": {"channels_last": True}}).train, torch.device("cuda"))
    reference = t.model.encoders["visual"]
    reference.eval()
    expected = reference(batch.inputs["visual"])
    cuda_like.prepare_model(t.model)
    assert reference.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    inputs = cuda_like.inputs(batch.inputs)
    assert inputs["visual"].stride()[2] == 1 and inputs["audio"].is_contiguous()
    assert torch.allclose(reference(inputs["visual"]), expected, rtol=1e-4, atol=1e-5)


def test_bf16_on_resnets(tmp_path):
    t = trainer(tmp_path, "r", "lfm-lb", "bf16", data=SYNTH, model={**MLP, "width": 4})
    summary = t.fit()
    assert summary["epochs"] == 1 and math.isfinite(summary["alpha_final"])


def test_compile_validates_and_keeps_checkpoints_interchangeable(tmp_path, monkeypatch):
    """train.compile: encoders compiled in place (same state_dict keys), lfm-lb's autograd.grad
    through the compiled graphs, official lfm-lb's double backward in the (eager) epoch hook.

    Inductor (the default backend) needs about two minutes per small ResNet on this 2-core CPU, so the
    test swaps in the aot_eager backend: the same AOTAutograd graphs and backward, no code generation.
    CUDA with inductor runs in scripts/gpu_check.sh."""
    if not hasattr(torch.nn.Module, "compile") or not hasattr(torch, "compile"):
        pytest.skip("torch.compile unavailable")
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="aot_eager"))
    plain = trainer(tmp_path, "plain", "lfm-lb")
    keys = list(plain.model.state_dict())
    plain_summary = plain.fit()
    compiled = trainer(tmp_path, "compiled", "lfm-lb", compile=True)
    assert list(compiled.model.state_dict()) == keys
    assert all(e._compiled_call_impl is not None for e in compiled.model.encoders.values())
    summary = compiled.fit()
    assert summary["alpha_final"] == pytest.approx(plain_summary["alpha_final"], rel=1e-3)
    assert summary["test"]["fused"]["acc"] == pytest.approx(plain_summary["test"]["fused"]["acc"], abs=0.02)
    official = Trainer(make_config(overrides={"method": {"name": "lfm-lb", "variant": "official"}, "model": MLP,
                                              "train": {"epochs": 1, "compile": True, **QUIET}}), tmp_path / "official")
    assert math.isfinite(official.fit()["alpha_final"])
    both = trainer(tmp_path, "bf16-compiled", "lfm-lb", "bf16", compile=True)  # autocast inside compiled encoders
    eager = trainer(tmp_path, "bf16-eager", "lfm-lb", "bf16")
    first = [t.train_step(next(t.batches("train", True, 0)))["total"] for t in (both, eager)]
    assert first[0] == pytest.approx(first[1], rel=1e-3)


def test_precision_object_without_options_is_inert():
    p = Precision(build(Config, {}).train, torch.device("cpu"))
    assert p.dtype is None and p.loss_scale is None and p.state_dict() is None
    x = {"a": torch.randn(2, 3, 4, 5), "b": torch.randn(2, 3)}
    out = p.inputs(x)
    assert all(out[k] is x[k] for k in x)  # already contiguous: the same tensors, no copy
