"""UME: independent uni-modal models (no gradient crosses modalities), prediction = their ensemble."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modgap.config import ModelConfig
from modgap.data.base import Batch
from modgap.methods.base import METHODS, StepContext
from modgap.methods.ume import UniModalEnsemble
from modgap.models import build_model
from modgap.runs import load_checkpoint

from conftest import NO_PROBE, TINY, joint_gradients, train_losses

MODS = ("a", "b")


def toy():
    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 4, ModelConfig(hidden=(8,), feature_dim=4, fusion=METHODS.get("ume").fusion))
    x = {"a": torch.randn(16, 5), "b": torch.randn(16, 3)}
    batch = Batch(x, torch.randint(0, 4, (16,)), torch.arange(16))
    ctx = StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    return model, batch, ctx


def ume(combine: str = "logits") -> UniModalEnsemble:
    return UniModalEnsemble(UniModalEnsemble.Options(combine=combine), MODS, 4, {m: 4 for m in MODS})


def branch_grads(model, m: str) -> list[torch.Tensor]:
    return [p.grad.clone() for p in (*model.encoders[m].parameters(), *model.fusion.heads[m].parameters())]


def test_loss_is_the_sum_of_unimodal_ce_and_no_gradient_crosses_modalities():
    model, batch, ctx = toy()
    method = ume()
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    expected = F.cross_entropy(out.logits["a"], batch.y) + F.cross_entropy(out.logits["b"], batch.y)
    assert torch.allclose(losses.total, expected)
    losses.total.backward()
    method.after_backward(ctx)
    grads_a = branch_grads(model, "a")

    # change modality b's inputs completely: modality a's model gets exactly the same gradient
    model.zero_grad(set_to_none=True)
    other = Batch({"a": batch.inputs["a"], "b": torch.randn(16, 3) * 5}, batch.y, batch.index)
    method.losses(model(other.inputs), other, ctx).total.backward()
    assert all(torch.equal(g, h) for g, h in zip(grads_a, branch_grads(model, "a")))
    # joint (CE of the fused logits) is another loss, and its gradient to a's model depends on b
    assert not torch.allclose(losses.total, F.cross_entropy(out.fused, batch.y))
    joint, joint_other = joint_gradients(model, batch), joint_gradients(model, other)
    assert any(not torch.allclose(g, joint_other[n]) for n, g in joint.items() if n.startswith("encoders.a."))


def test_prediction_is_the_ensemble_of_the_unimodal_outputs():
    model, batch, _ = toy()
    with torch.no_grad():
        out = model(batch.inputs)
    za, zb = out.logits["a"], out.logits["b"]
    assert torch.allclose(ume("logits").predict(out), (za + zb) / 2)
    probs = ume("probs").predict(out).exp()
    assert torch.allclose(probs, (za.softmax(-1) + zb.softmax(-1)) / 2, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(16))


def test_end_to_end_requires_the_mean_fusion(cli, tmp_path):
    run = tmp_path / "r"
    cli.train(run, "--method", "ume", "--set", "model.fusion=concat", "--set", "method.combine=probs")
    assert set(train_losses(run)[0]) == {"cls_pix", "cls_fou", "total"}  # one CE a modality, no fused CE
    model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert {"fusion.heads.pix.weight", "fusion.heads.fou.weight"} <= set(model)  # separate heads: uni-modal models


def test_three_modalities(cli, tmp_path):
    summary = cli.train(tmp_path / "r", "--data", "mfeat:pix+fou+mor", "--method", "ume")
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert set(train_losses(tmp_path / "r")[0]) == {"cls_pix", "cls_fou", "cls_mor", "total"}


def test_ume_after_another_method_is_refused(cli, tmp_path):
    code, _, err = cli("train", "--method", "joint+ume", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY, *NO_PROBE)
    assert code == 2 and "method 'ume'" in err and "must come first" in err


def test_formula_on_fixed_numbers_worked_out_by_hand():
    """train: sum_m CE(z_m, y); predict: mean of logits, or log of the mean of the softmaxes.

    z_a = [0, ln 3, 0] -> softmax [1/5, 3/5, 1/5];  z_b = [ln 2, ln 2, 0] -> softmax [2/5, 2/5, 1/5]
    y = 0: loss = -ln(1/5) - ln(2/5); probs ensemble = [3/10, 5/10, 2/10];
    logits ensemble = [ln 2 / 2, (ln 3 + ln 2) / 2, 0].
    """
    from modgap.models.classifier import ModelOutput

    za = torch.tensor([[0.0, math.log(3.0), 0.0]])
    zb = torch.tensor([[math.log(2.0), math.log(2.0), 0.0]])
    out = ModelOutput({}, {"a": za, "b": zb}, (za + zb) / 2)
    batch = Batch({"a": torch.zeros(1, 1), "b": torch.zeros(1, 1)}, torch.tensor([0]), torch.arange(1))
    method = UniModalEnsemble(UniModalEnsemble.Options(), MODS, 3, {m: 4 for m in MODS})
    loss = method.losses(out, batch, StepContext(None, None, [])).total
    assert loss.item() == pytest.approx(-math.log(1 / 5) - math.log(2 / 5), rel=1e-6)
    assert torch.allclose(ume("probs").predict(out).exp(), torch.tensor([[0.3, 0.5, 0.2]]), atol=1e-6)
    want = torch.tensor([[math.log(2.0) / 2, (math.log(3.0) + math.log(2.0)) / 2, 0.0]])
    assert torch.allclose(ume("logits").predict(out), want, atol=1e-6)
