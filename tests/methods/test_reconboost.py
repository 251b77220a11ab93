"""ReconBoost: the reconcilement loss on fixed logits by hand (the released boosting loss, with its
mean over classes and the boost rate rho); the alternation schedule; frozen learners; the learnable
rho in rectification; a fresh optimiser state per phase."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.reconboost import phase_at, reconcilement_loss
from modgap.models.classifier import ModelOutput, MultimodalClassifier
from modgap.models.fusions import MeanFusion

from conftest import train_losses

def test_reconcilement_loss_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 0.4]], requires_grad=True)
    others = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    w_ce, w_kl = 5.0, 1.0
    # sample 0: p_y = e^1 / (e^1 + e^0 + e^-1); the others' ensemble gives the true class q = 1 / (1 + e^2 + 1)
    p0 = math.e / (math.e + 1 + math.exp(-1))
    q0 = 1 / (2 + math.exp(2))
    # sample 1: p_y = e^0.4 / (e^0.2 + e^0.1 + e^0.4); q = e^3 / (2 + e^3)
    p1 = math.exp(0.4) / (math.exp(0.2) + math.exp(0.1) + math.exp(0.4))
    q1 = math.exp(3) / (2 + math.exp(3))
    ce = -(math.log(p0) + math.log(p1)) / 2
    kl = (q0 * (math.log(q0) - math.log(p0)) + q1 * (math.log(q1) - math.log(p1))) / 2
    total, ce_t, kl_t = reconcilement_loss(z, others, y, w_ce, w_kl, class_mean=False)
    assert float(ce_t.detach()) == pytest.approx(ce, rel=1e-6)
    assert float(kl_t.detach()) == pytest.approx(kl, rel=1e-6)
    assert float(total.detach()) == pytest.approx(w_ce * ce - w_kl * kl, rel=1e-6)
    # = mean of -(w_ce - w_kl q) log p_y - w_kl q log q: samples the others get right weigh less
    reweighted = (-(w_ce - w_kl * q0) * math.log(p0) - w_kl * q0 * math.log(q0)
                  - (w_ce - w_kl * q1) * math.log(p1) - w_kl * q1 * math.log(q1)) / 2
    assert float(total.detach()) == pytest.approx(reweighted, rel=1e-6)
    # gradient wrt the learner's logits: (w_ce - w_kl q_i) (softmax(z_i) - e_y) / B; none to the others
    total.backward()
    p = torch.softmax(z.detach(), 1)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    weight = torch.tensor([w_ce - w_kl * q0, w_ce - w_kl * q1])[:, None]
    assert torch.allclose(z.grad, weight * (p - onehot) / 2, atol=1e-6)


def test_alternation_schedule():
    mods = ("a", "b", "c")
    got = [phase_at(e, mods, stage_epochs=2, rectify_epochs=1) for e in range(10)]
    assert got == [("stage", "a"), ("stage", "a"), ("rectify", "a"),
                   ("stage", "b"), ("stage", "b"), ("rectify", "b"),
                   ("stage", "c"), ("stage", "c"), ("rectify", "c"),
                   ("stage", "a")]
    assert [phase_at(e, ("a", "b"), 1, 0) for e in range(3)] == [("stage", "a"), ("stage", "b"), ("stage", "a")]


class Lin(nn.Linear):
    def __init__(self):
        super().__init__(3, 4)
        self.out_dim = 4


def test_stage_updates_one_learner_and_rectification_all():
    torch.manual_seed(0)
    model = MultimodalClassifier({"a": Lin(), "b": Lin()}, MeanFusion({"a": 4, "b": 4}, 3))
    method = build_method({"name": "reconboost", "stage_epochs": 1, "rectify_epochs": 1}, ("a", "b"), 3,
                          {"a": 4, "b": 4})
    batch = Batch({"a": torch.randn(5, 3), "b": torch.randn(5, 3)}, torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    ctx = StepContext(model, None, list(model.parameters()), epoch=0, epochs=4)

    def grads(epoch):
        ctx.epoch = epoch
        model.zero_grad(set_to_none=True)
        out = model(batch.inputs)
        method.losses(out, batch, ctx).total.backward()
        return {m: model.encoders[m].weight.grad is not None and model.fusion.heads[m].weight.grad is not None
                for m in ("a", "b")}

    assert grads(0) == {"a": True, "b": False}  # stage of a: b is frozen (no gradient at all)
    assert grads(1) == {"a": True, "b": True}   # global rectification: everything
    assert grads(2) == {"a": False, "b": True}  # stage of b
    out = model(batch.inputs)
    assert torch.allclose(method.predict(out), out.logits["a"] + out.logits["b"])  # the additive ensemble


def test_stage_loss_is_the_released_boosting_loss_by_hand():
    """Default options: per sample -(w1/C) log p_y + (w2/C) q_y log p_y (train.py's boosting_loss,
    ``.mean(-1)`` over C classes), q = softmax(rho * z_other)_y, rho = 1.5 here; batch mean."""
    method = build_method({"name": "reconboost", "boost_rate": 1.5}, ("a", "b"), 3, {"a": 4, "b": 4})
    za = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.1, 0.4]], requires_grad=True)
    zb = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    out = ModelOutput({}, {"a": za, "b": zb}, za + zb)
    batch = Batch({}, y, torch.arange(2))
    ctx = StepContext(None, None, [], epoch=0, epochs=8)  # epoch 0: stage of "a"
    p0 = math.e / (math.e + 1 + math.exp(-1))
    p1 = math.exp(0.4) / (math.exp(0.2) + math.exp(0.1) + math.exp(0.4))
    q0 = 1 / (2 + math.exp(3.0))  # softmax(1.5 * [0, 2, 0])_0
    q1 = math.exp(4.5) / (2 + math.exp(4.5))  # softmax(1.5 * [0, 0, 3])_2
    w1, w2, c = 5.0, 1.0, 3
    expected = ((-w1 * math.log(p0) + w2 * q0 * math.log(p0)) / c + (-w1 * math.log(p1) + w2 * q1 * math.log(p1)) / c) / 2
    losses = method.losses(out, batch, ctx)
    # the released loss has no q log q constant: add it back (it has no gradient)
    constant = -w2 * (q0 * math.log(q0) + q1 * math.log(q1)) / 2 / c
    assert float(losses.total.detach()) == pytest.approx(expected + constant, rel=1e-6)
    losses.total.backward()
    assert zb.grad is None and method.rho.grad is None  # the others and rho are constants in a stage
    p = torch.softmax(za.detach(), 1)
    weight = torch.tensor([w1 - w2 * q0, w1 - w2 * q1])[:, None] / c
    assert torch.allclose(za.grad, weight * (p - torch.nn.functional.one_hot(y, 3).float()) / 2, atol=1e-6)


def test_rectification_learns_the_boost_rate():
    method = build_method({"name": "reconboost", "stage_epochs": 1, "rectify_epochs": 1}, ("a", "b"), 3,
                          {"a": 4, "b": 4})
    assert float(method.rho.detach()) == 1.0 and method.rho.requires_grad
    za = torch.tensor([[1.0, 0.0, -1.0]])
    zb = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([0])
    out = ModelOutput({}, {"a": za, "b": zb}, za + zb)
    ctx = StepContext(None, None, [], epoch=1, epochs=4)  # epoch 1: rectification
    loss = method.losses(out, Batch({}, y, torch.arange(1)), ctx).total
    s = [1.0, 2.0, -1.0]  # z_a + z_b
    logsum = math.log(sum(math.exp(v) for v in s))
    assert float(loss.detach()) == pytest.approx(logsum - s[0], rel=1e-6)
    loss.backward()
    # dCE/drho = sum_c (softmax(rho s)_c - e_y,c) s_c at rho = 1
    grad = sum(math.exp(v - logsum) * v for v in s) - s[0]
    assert float(method.rho.grad) == pytest.approx(grad, rel=1e-6)
    fixed = build_method({"name": "reconboost", "learn_boost_rate": False, "boost_rate": 2.0}, ("a", "b"), 3,
                         {"a": 4, "b": 4})
    assert not any(True for _ in fixed.parameters())
    assert torch.allclose(fixed.predict(out), 2.0 * (za + zb))


def test_optimizer_state_is_cleared_when_a_phase_starts():
    model = MultimodalClassifier({"a": Lin(), "b": Lin()}, MeanFusion({"a": 4, "b": 4}, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = build_method({"name": "reconboost", "stage_epochs": 2, "rectify_epochs": 1}, ("a", "b"), 3,
                          {"a": 4, "b": 4})
    ctx = StepContext(model, opt, list(model.parameters()), epoch=0, epochs=6)
    cleared = []
    for epoch in range(6):
        for p in model.parameters():
            opt.state[p]["momentum_buffer"] = torch.ones_like(p)
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        cleared.append(len(opt.state) == 0)
    assert cleared == [True, False, True, True, False, True]  # stage, stage, rectify, stage, stage, rectify
    keep = build_method({"name": "reconboost", "reset_optimizer": False}, ("a", "b"), 3, {"a": 4, "b": 4})
    opt.state[next(model.parameters())]["momentum_buffer"] = torch.ones(1)
    ctx.epoch = 0
    keep.on_epoch_start(ctx)
    assert len(opt.state) > 0


def test_end_to_end(cli, tmp_path, joint_twin):
    cli.train(tmp_path / "r", "--method", "reconboost", "--set", "method.stage_epochs=1", "--set", "method.rectify_epochs=1")
    assert train_losses(tmp_path / "r") != joint_twin()


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "reconboost", "--data", "mfeat:pix+fou+mor")
    assert set(summary["modalities"]) == {"pix", "fou", "mor"}
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor")
