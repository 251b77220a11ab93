"""unimodal: the sum of per-modality CE, so that each modality's model learns from its own data only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modgap.config import ModelConfig
from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.models import build_model
from modgap.models.classifier import ModelOutput

from conftest import joint_gradients, method_gradients, train_losses


def toy():
    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 3, ModelConfig(hidden=(8,), feature_dim=4))  # mean fusion
    batch = Batch({"a": torch.randn(16, 5), "b": torch.randn(16, 3)}, torch.randint(0, 3, (16,)), torch.arange(16))
    return model, batch, StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))


def test_loss_is_the_sum_of_unimodal_ce_and_a_learns_nothing_from_b():
    """joint's gradient to modality a's encoder changes with b's inputs (CE of the fused logits);
    unimodal's does not: sum_m CE(z_m, y) gives a's model the gradient of its own CE alone."""
    model, batch, ctx = toy()
    method = build_method({"name": "unimodal"}, ("a", "b"), 3, {"a": 4, "b": 4})
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    own = {m: F.cross_entropy(out.logits[m], batch.y) for m in ("a", "b")}
    assert torch.allclose(losses.total, own["a"] + own["b"])
    assert not torch.allclose(losses.total, F.cross_entropy(out.fused, batch.y))  # joint's loss
    other = Batch({"a": batch.inputs["a"], "b": 5 * torch.randn(16, 3)}, batch.y, batch.index)
    mine, mine_other = method_gradients(method, model, batch, ctx), method_gradients(method, model, other, ctx)
    joint, joint_other = joint_gradients(model, batch), joint_gradients(model, other)
    a_params = [n for n in mine if n.startswith("encoders.a.") or n.startswith("fusion.heads.a.")]
    assert a_params and all(torch.equal(mine[n], mine_other[n]) for n in a_params)
    assert any(not torch.allclose(joint[n], joint_other[n]) for n in a_params)


def test_label_mix_on_fixed_logits_by_hand():
    """mix = 0.3, C = 3, z = [0, ln 2, 0], y = 0: t = [0.8, 0.1, 0.1], softmax = [1/4, 1/2, 1/4]."""
    method = build_method({"name": "unimodal", "label_mix": 0.3}, ("a",), 3, {"a": 4})
    z = torch.tensor([[0.0, math.log(2.0), 0.0]])
    out = ModelOutput({}, {"a": z}, z)
    loss = method.losses(out, Batch({}, torch.tensor([0]), torch.arange(1)), None).total
    assert float(loss) == pytest.approx(-(0.8 * math.log(0.25) + 0.1 * math.log(0.5) + 0.1 * math.log(0.25)))


def test_end_to_end(cli, tmp_path, joint_twin):
    cli.train(tmp_path / "r", "--method", "unimodal")
    losses = train_losses(tmp_path / "r")
    assert set(losses[0]) == {"cls_pix", "cls_fou", "total"}  # one CE a modality, no fused CE
    assert set(joint_twin()[0]) == {"cls", "total"}
