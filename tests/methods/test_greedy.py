"""Greedy: conditional learning speeds from accumulated relative gradient norms, the switch to
re-balancing steps, the re-balancing step itself, and the conditional utilisation rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modgap.config import ModelConfig
from modgap.data.base import Batch
from modgap.methods.base import StepContext
from modgap.methods.greedy import (Greedy, RebalanceSwitch, conditional_speeds, conditional_utilization,
                                   imbalance, mean_features, relative_gradient_norm)
from modgap.models import build_model
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import MeanFusion
from modgap.runs import load_checkpoint

from conftest import Ident, train_losses


def test_relative_gradient_norm_by_hand():
    p1 = torch.tensor([3.0, 4.0], requires_grad=True)       # ||w||^2 = 25
    p2 = torch.eye(2, requires_grad=True)                      # ||w||^2 = 2
    p3 = torch.tensor([2.0], requires_grad=True)               # ||w||^2 = 4, no gradient
    p1.grad = torch.tensor([1.0, 2.0])                         # ||g||^2 = 5
    p2.grad = torch.tensor([[0.0, 1.0], [1.0, 0.0]])           # ||g||^2 = 2
    assert float(relative_gradient_norm([p1, p2, p3])) == pytest.approx(7 / 31)


def test_conditional_speeds_and_imbalance_by_hand():
    # two modalities: s(m1|m0) = log10(0.4 / 4) = -1, s(m0|m1) = +1; the paper's d_speed = s0 - s1 = -2,
    # and its rule re-balances m1 when d_speed < 0: the modality learned more slowly
    speeds = conditional_speeds([4.0, 0.4])
    assert speeds == pytest.approx([-1.0, 1.0])
    assert imbalance(speeds) == (pytest.approx(2.0), 1)
    # three: log10 mu = 0, 1, 2 -> s = (1+2)/2 - 0, (0+2)/2 - 1, (0+1)/2 - 2
    speeds = conditional_speeds([1.0, 10.0, 100.0])
    assert speeds == pytest.approx([1.5, 0.0, -1.5])
    assert imbalance(speeds) == (pytest.approx(3.0), 0)


def test_switch_rule_by_hand():
    switch = RebalanceSwitch(threshold=0.5, window=3)
    assert switch.decide(conditional_speeds([1.0, 1.0 / 10**0.2])) is None  # d = 0.4 <= 0.5
    assert not switch.rebalancing
    assert switch.decide(conditional_speeds([4.0, 0.4])) == 1  # d = 2 > 0.5: Q = 3 steps for m1
    for left in (2, 1):
        switch.count()
        assert switch.rebalancing and switch.target == 1 and switch.left == left
    switch.count()
    assert not switch.rebalancing and switch.target is None


def toy():
    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 3, ModelConfig(hidden=(8,), feature_dim=4))
    x = {"a": torch.randn(32, 5), "b": torch.randn(32, 3)}
    batch = Batch(x, (x["a"][:, 0] > 0).long() + (x["a"][:, 1] > 0).long(), torch.arange(32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, batch, StepContext(model, optimizer, list(model.parameters()), epochs=3)


def step(method, model, batch, ctx):
    ctx.optimizer.zero_grad(set_to_none=True)
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    losses.total.backward()
    ratios = [float(relative_gradient_norm(model.encoders[m].parameters())) for m in "ab"]
    method.after_backward(ctx)
    grads = {name: p.grad for name, p in model.named_parameters()}
    ctx.optimizer.step()
    return out, losses, ratios, grads


def test_method_accumulates_speeds_switches_and_rebalances_only_the_slow_branch():
    model, batch, ctx = toy()
    method = Greedy(Greedy.Options(threshold=0.01, window=2, warmup_epochs=1), ("a", "b"), 3, {"a": 4, "b": 4})
    ctx.epoch = 0  # warm-up: speeds accumulate, no switching
    expected = [0.0, 0.0]
    for _ in range(2):
        out, losses, ratios, _ = step(method, model, batch, ctx)
        assert torch.allclose(losses.total, F.cross_entropy(out.fused, batch.y))
        expected = [e + r for e, r in zip(expected, ratios)]
        assert method.cumulative == pytest.approx(expected)
        assert not method.switch.rebalancing
    ctx.epoch = 1
    _, _, ratios, _ = step(method, model, batch, ctx)
    expected = [e + r for e, r in zip(expected, ratios)]
    assert method.cumulative == pytest.approx(expected)
    assert method.speeds == pytest.approx(conditional_speeds(expected))
    assert min(expected) > 0
    d = abs(math.log10(expected[0] / expected[1])) * 2
    assert d > 0.01
    slow = 0 if expected[0] < expected[1] else 1
    assert method.switch.target == slow and method.switch.left == 2
    kept, dropped = "ab"[slow], "ab"[1 - slow]
    for _ in range(2):  # the window: own CE of the slow modality, other branch frozen, speeds untouched
        out, losses, _, grads = step(method, model, batch, ctx)
        assert torch.allclose(losses.total, F.cross_entropy(out.logits[kept], batch.y))
        assert all(g is None for n, g in grads.items() if f".{dropped}." in n)
        assert all(g is not None for n, g in grads.items() if f".{kept}." in n)
        assert method.cumulative == pytest.approx(expected)
    assert method.rebalanced[slow] == 2 and not method.switch.rebalancing
    # a step the trainer skips (non-finite loss or gradient) neither counts nor adds to the speeds
    before = method.get_extra_state()
    ctx.optimizer.zero_grad(set_to_none=True)
    method.losses(model(batch.inputs), batch, ctx).total.backward()
    method.after_backward(ctx)
    assert method.cumulative != before["cumulative"]
    method.on_skipped_step(ctx)
    assert method.get_extra_state() == before
    # the state goes through the checkpoint
    restored = Greedy(Greedy.Options(), ("a", "b"), 3, {"a": 4, "b": 4})
    restored.load_state_dict(method.state_dict())
    assert restored.cumulative == method.cumulative and restored.rebalanced == method.rebalanced


def test_conditional_utilization_by_hand():
    fusion = MeanFusion({"a": 2, "b": 2}, 2)
    with torch.no_grad():
        fusion.heads["a"].weight.copy_(torch.eye(2))
        fusion.heads["a"].bias.zero_()
        fusion.heads["b"].weight.zero_()
        fusion.heads["b"].bias.zero_()
    model = MultimodalClassifier({"a": Ident(2), "b": Ident(2)}, fusion)
    y = torch.tensor([0, 1, 1, 1])
    batch = Batch({"a": F.one_hot(y, 2).float() * 10, "b": torch.randn(4, 2)}, y, torch.arange(4))
    means = mean_features(model, [batch])
    assert torch.allclose(means["a"], torch.tensor([2.5, 7.5]))
    # all: accuracy 1. Without a (mean input [2.5, 7.5]): always class 1 -> 3/4. Without b: b adds nothing.
    u = conditional_utilization(model, [batch], means)
    assert u == pytest.approx({"a": 0.25, "b": 0.0})


def test_end_to_end_resume_and_composition(cli, tmp_path, metrics_of, joint_twin):
    args = ["--method", "greedy", "--set", "method.warmup_epochs=0"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    cli.train(full, *args, epochs=3)
    assert train_losses(full) != joint_twin(epochs=3)  # the re-balancing steps train another model
    state = load_checkpoint(full / "checkpoints" / "last.pt")["method"]["_extra_state"]
    assert sum(state["rebalanced"]) > 0
    cli.train(parts, *args, epochs=2)
    cli.resume(parts, epochs=3)
    assert metrics_of(parts) == metrics_of(full)
    cli.train(tmp_path / "lfm", "--method", "lfm-lb+greedy", "--set", "method.warmup_epochs=0", epochs=1)
    cli.train(tmp_path / "lfm-lb", "--method", "lfm-lb", epochs=1)
    assert train_losses(tmp_path / "lfm") != train_losses(tmp_path / "lfm-lb")  # greedy changes lfm-lb's steps


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r", "--data", "mfeat:pix+fou+mor", "--method", "greedy", "--set", "method.warmup_epochs=0")
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert train_losses(tmp_path / "r") != joint_twin("--data", "mfeat:pix+fou+mor")


def test_decisions_match_the_authors_rule_in_plain_algebra():
    """Independent of modgap's helpers: mu_m = sum over normal steps of ||g||^2 / ||w||^2 over encoder
    m's parameters; the authors' d_BDR = log10(bypass_0 / main_0) - log10(bypass_1 / main_1), with
    (late-fusion mapping) bypass_0 = mu_1, main_0 = mu_0 and vice versa; |d_BDR| > epsilon starts
    `window` re-balancing steps for modality 0 when d_BDR > 0, else modality 1 (callbacks.py:
    Bias_Mitigation_Strong.on_backward_end)."""
    model, batch, ctx = toy()
    eps, window = 0.01, 3
    method = Greedy(Greedy.Options(threshold=eps, window=window, warmup_epochs=0), ("a", "b"), 3, {"a": 4, "b": 4})
    ctx.epoch = 0
    mu = [0.0, 0.0]
    left, target, seen_rebalance = 0, None, False
    for _ in range(12):
        ctx.optimizer.zero_grad(set_to_none=True)
        method.losses(model(batch.inputs), batch, ctx).total.backward()
        rebalancing = left > 0
        if not rebalancing:
            for i, m in enumerate("ab"):
                ps = list(model.encoders[m].parameters())
                g2 = sum(float((p.grad ** 2).sum()) for p in ps if p.grad is not None)
                w2 = sum(float((p.detach() ** 2).sum()) for p in ps)
                mu[i] += g2 / w2
        method.after_backward(ctx)
        ctx.optimizer.step()
        if rebalancing:
            seen_rebalance = True
            left -= 1
            target = None if left == 0 else target
        else:
            bdr = [math.log10(mu[1] / mu[0]), math.log10(mu[0] / mu[1])]  # bypass / main per branch
            assert method.speeds == pytest.approx(bdr, rel=1e-5)
            d_bdr = bdr[0] - bdr[1]
            if abs(d_bdr) > eps:
                left, target = window, (0 if d_bdr > 0 else 1)
        assert method.cumulative == pytest.approx(mu, rel=1e-5)
        assert (method.switch.target, method.switch.left) == (target, left)
    assert seen_rebalance


def test_branches_loss_is_the_authors_sum_of_branch_ce():
    model, batch, ctx = toy()
    method = Greedy(Greedy.Options(normal_loss="branches"), ("a", "b"), 3, {"a": 4, "b": 4})
    out = model(batch.inputs)
    by_hand = 0.0
    for m in "ab":
        z = out.logits[m].detach()
        by_hand += float((torch.logsumexp(z, 1) - z.gather(1, batch.y[:, None])[:, 0]).mean())
    assert float(method.losses(out, batch, ctx).total.detach()) == pytest.approx(by_hand, rel=1e-6)
