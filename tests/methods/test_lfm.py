"""lfm-h and lfm-lb (modgap/methods/lfm.py): what they change against joint, the remedies for the
short horizon of lfm-lb, and lfm-lb's variant=official against the released formula.

Remedies (issue 8), each checked against an exact reference:

- ``horizon=K``: the forward-mode hypergradient through K optimiser steps equals the central finite
  difference of L_val after re-running the same K real optimiser steps at alpha +- e (float64),
  for SGD (momentum, Nesterov, dampening, plain, maximize), Adam and AdamW, fresh and warmed-up
  state, both matching losses, 2 and 3 modalities; also through LFMLearned's own hooks in a loop
  shaped like Trainer.train_step, and across a checkpoint taken in the middle of a window.
- ``val_objective=fused+modalities``: the same finite-difference check with the new outer loss.
- ``hyper_momentum`` and ``warmup``: against a hand computation.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgap.data.base import Batch
from modgap.errors import ConfigError
from modgap.methods import StepContext, build_method
from modgap.methods.base import evaluation_mode
from modgap.methods.hypergrad import AlphaLearner, lfm_objective, official_matching_gradient, validation_loss
from modgap.methods.lfm import LFMLearned
from modgap.models.classifier import ModelOutput

from conftest import (SCALE, lfm_losses as losses, make_optimizer, make_problem, method_problem, trainer_step,
                      warm)

EPS = 1e-5


def outer_loss(modules, batch, objective="fused", weight=1.0):
    model = modules[0]
    x, y = batch
    with evaluation_mode(model):
        return validation_loss(model(x), y, objective, weight)


def fresh(modules, opt_kind, opt_state):
    """Deep copies (Optimizer.load_state_dict aliases the tensors it is given)."""
    modules = copy.deepcopy(modules)
    params = list(modules.parameters())
    optimizer = make_optimizer(opt_kind, params)
    optimizer.load_state_dict(copy.deepcopy(opt_state))
    return modules, params, optimizer


def unrolled_val(modules, opt_kind, opt_state, train, val, alpha, objective="fused", weight=1.0, lr_after=None):
    """L_val after len(train) real optimiser steps at ``alpha`` (the reference)."""
    modules, _, optimizer = fresh(modules, opt_kind, opt_state)
    for i, b in enumerate(train):
        optimizer.zero_grad()
        lfm_objective(*losses(modules, b), alpha, SCALE).backward()
        optimizer.step()
        if lr_after is not None and i == 0:
            for g in optimizer.param_groups:
                g["lr"] *= lr_after
    return float(outer_loss(modules, val, objective, weight).detach())


def central_difference(modules, opt_kind, opt_state, train, val, alpha, **kw) -> float:
    plus = unrolled_val(modules, opt_kind, opt_state, train, val, alpha + EPS, **kw)
    minus = unrolled_val(modules, opt_kind, opt_state, train, val, alpha - EPS, **kw)
    return (plus - minus) / (2 * EPS)


def analytic(modules, opt_kind, opt_state, train, val, alpha, horizon, objective="fused", weight=1.0,
             lr_after=None) -> float:
    """AlphaLearner through the same steps: backward / step / advance, the last one ending in step()."""
    modules, params, optimizer = fresh(modules, opt_kind, opt_state)
    learner = AlphaLearner(alpha, lr=0.0, bounds=(0.0, 1.0), horizon=horizon)
    for i, b in enumerate(train):
        optimizer.zero_grad()
        learner.backward(*losses(modules, b), params, SCALE, optimizer)
        optimizer.step()
        if i < len(train) - 1:
            learner.advance(optimizer, params)
        if lr_after is not None and i == 0:
            for g in optimizer.param_groups:
                g["lr"] *= lr_after
    return float(learner.hypergradient(outer_loss(modules, val, objective, weight), optimizer, params))


def setup(num_modalities, matching, opt_kind, warm_steps, steps):
    modules, train, val, warm_batch = make_problem(num_modalities, matching, steps)
    optimizer = make_optimizer(opt_kind, list(modules.parameters()))
    warm(modules, optimizer, warm_batch, warm_steps)
    return modules, train, val, copy.deepcopy(optimizer.state_dict())


def assert_close(exact: float, numeric: float) -> None:
    assert abs(numeric) > 1e-6, "degenerate case: the check would be vacuous"
    assert abs(exact - numeric) / abs(numeric) < 1e-4, (exact, numeric)


# ------------------------------------------------------------------------ a. horizon = K steps
@pytest.mark.parametrize("opt_kind", ["sgd", "sgd-nesterov", "sgd-dampening", "sgd-plain", "sgd-maximize",
                                      "adam", "adam-maximize", "adamw"])
@pytest.mark.parametrize("horizon", [1, 2, 5])
@pytest.mark.parametrize("warm_steps", [0, 3])
def test_k_step_hypergradient_matches_central_difference(opt_kind, horizon, warm_steps):
    modules, train, val, state = setup(2, "js", opt_kind, warm_steps, horizon)
    numeric = central_difference(modules, opt_kind, state, train, val, 0.37)
    assert_close(analytic(modules, opt_kind, state, train, val, 0.37, horizon), numeric)


@pytest.mark.parametrize("matching", ["js", "infonce"])
@pytest.mark.parametrize("num_modalities", [2, 3])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_k_step_hypergradient_both_matchings_and_three_modalities(matching, num_modalities, opt_kind):
    modules, train, val, state = setup(num_modalities, matching, opt_kind, 2, 4)
    numeric = central_difference(modules, opt_kind, state, train, val, 0.6)
    assert_close(analytic(modules, opt_kind, state, train, val, 0.6, 4), numeric)


def test_k_step_hypergradient_follows_a_learning_rate_change_inside_the_window():
    modules, train, val, state = setup(2, "js", "sgd", 3, 3)
    numeric = central_difference(modules, "sgd", state, train, val, 0.5, lr_after=0.3)
    assert_close(analytic(modules, "sgd", state, train, val, 0.5, 3, lr_after=0.3), numeric)


def test_k_step_differs_from_one_step_and_reduces_to_it_for_one_step():
    """Non-vacuous: the unrolled value is not the one-step value; a window of one step is the
    one-step formula (the tangent code and AlphaLearner's closed form agree)."""
    modules, train, val, state = setup(2, "js", "sgd", 3, 5)
    k_step = analytic(modules, "sgd", state, train, val, 0.37, 5)
    one_step_last = analytic(modules, "sgd", state, train[:1], val, 0.37, 1)
    window_of_one = analytic(modules, "sgd", state, train[:1], val, 0.37, 5)
    assert window_of_one == pytest.approx(one_step_last, rel=1e-10)
    assert abs(k_step - one_step_last) > 1e-3 * abs(k_step)


# ------------------------------------------------------- b. validation objective with modalities
def test_validation_loss_by_hand():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (8,))
    z1, z2 = torch.randn(8, 3), torch.randn(8, 3)

    Out = SimpleNamespace(logits={"a": z1, "b": z2}, fused=(z1 + z2) / 2)

    expected = F.cross_entropy(Out.fused, y) + 0.7 * (F.cross_entropy(z1, y) + F.cross_entropy(z2, y)) / 2
    assert float(validation_loss(Out, y, "fused+modalities", 0.7)) == pytest.approx(float(expected), rel=1e-6)
    assert float(validation_loss(Out, y)) == pytest.approx(float(F.cross_entropy(Out.fused, y)), rel=1e-6)
    worst = max(float(F.cross_entropy(z1, y)), float(F.cross_entropy(z2, y)))
    assert float(validation_loss(Out, y, "fused+weakest", 0.7)) == pytest.approx(
        float(F.cross_entropy(Out.fused, y)) + 0.7 * worst, rel=1e-6)
    with pytest.raises(ConfigError, match="fused\\+modalities"):
        validation_loss(Out, y, "fused+modality")


@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("num_modalities", [2, 3])
def test_modalities_objective_matches_central_difference(opt_kind, horizon, num_modalities):
    modules, train, val, state = setup(num_modalities, "js", opt_kind, 3, horizon)
    kw = {"objective": "fused+modalities", "weight": 0.7}
    numeric = central_difference(modules, opt_kind, state, train, val, 0.37, **kw)
    exact = analytic(modules, opt_kind, state, train, val, 0.37, horizon, **kw)
    assert_close(exact, numeric)
    fused_only = analytic(modules, opt_kind, state, train, val, 0.37, horizon)
    assert abs(exact - fused_only) > 1e-3 * abs(exact)  # the modality terms change the signal


# ------------------------------------------------------------- c. momentum and warm-up by hand
def test_hypergradient_momentum_by_hand():
    learner = AlphaLearner(0.5, lr=0.1, bounds=(0.0, 1.0), momentum=0.5)
    # a1 = 0.5 * 1 = 0.5, corrected 0.5 / (1 - 0.5) = 1 -> alpha 0.5 - 0.1
    assert learner.update(1.0) == pytest.approx(0.4)
    # a2 = 0.25 + 0.5 * 2 = 1.25, corrected 1.25 / 0.75 -> alpha 0.4 - 0.1 * 5/3
    assert learner.update(2.0) == pytest.approx(0.4 - 0.1 * 5 / 3)
    assert learner.update(float("nan")) == pytest.approx(0.4 - 0.1 * 5 / 3)  # ignored, average untouched
    # a3 = 0.625 - 0.5 * 4 = -1.375, corrected -1.375 / 0.875
    assert learner.update(-4.0) == pytest.approx(0.4 - 0.1 * 5 / 3 + 0.1 * 1.375 / 0.875)
    assert learner.last_hypergradient == -4.0
    plain = AlphaLearner(0.5, lr=0.1, bounds=(0.0, 1.0))
    assert plain.update(1.0) == pytest.approx(0.4) and plain.update(2.0) == pytest.approx(0.2)
    with pytest.raises(ConfigError):
        AlphaLearner(momentum=1.0)
    with pytest.raises(ConfigError):
        AlphaLearner(horizon=0)


# ------------------------------------------- LFMLearned's own hooks, in a loop like the trainer
@pytest.mark.parametrize("objective", ["fused", "fused+modalities"])
def test_lfm_lb_hooks_give_the_k_step_hypergradient(objective):
    """every=4, horizon=3: the update after step 8 differentiates through steps 6, 7, 8."""
    opts = {"horizon": 3, "every": 4, "lr_alpha": 0.0, "alpha0": 0.4, "val_objective": objective,
            "val_modality_weight": 0.5}
    model, method, optimizer, _, ctx, train, val = method_problem(opts)
    for step in range(6):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    snapshot = copy.deepcopy((model, method, optimizer.state_dict()))
    for step in range(6, 9):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    exact = method.learner.last_hypergradient

    def rerun(alpha):
        m, meth, opt_state = copy.deepcopy(snapshot)
        ps = [*m.parameters(), *meth.parameters()]
        opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3)
        opt.load_state_dict(opt_state)
        for b in train[6:9]:
            opt.zero_grad()
            out = m(b.inputs)
            lfm_objective(F.cross_entropy(out.fused, b.y), meth.matching(out), alpha, SCALE).backward()
            opt.step()
        with evaluation_mode(m):
            return float(validation_loss(m(val.inputs), val.y, objective, 0.5).detach())

    assert_close(exact, (rerun(0.4 + EPS) - rerun(0.4 - EPS)) / (2 * EPS))


def test_window_survives_a_checkpoint():
    """A state_dict taken inside a window resumes it exactly (same hypergradient)."""
    opts = {"horizon": 4, "every": 4, "lr_alpha": 0.5}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts)
    for step in range(3):  # step 0 is an update; steps 1, 2 open the next window
        trainer_step(model, method, optimizer, ctx, train[step], step)
    assert method.learner.window_steps == 2
    saved = copy.deepcopy({"model": model.state_dict(), "method": method.state_dict(),
                           "optimizer": optimizer.state_dict()})
    for step in range(3, 9):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    reference = (method.learner.alpha, method.learner.last_hypergradient)

    model2, method2, optimizer2, _, ctx2, _, _ = method_problem(opts)
    model2.load_state_dict(saved["model"])
    method2.load_state_dict(saved["method"])
    optimizer2.load_state_dict(saved["optimizer"])
    assert method2.learner.window_steps == 2
    for step in range(3, 9):
        trainer_step(model2, method2, optimizer2, ctx2, train[step], step)
    assert (method2.learner.alpha, method2.learner.last_hypergradient) == reference


def test_warmup_keeps_alpha_fixed_then_learns():
    """warmup=1 epoch of 3 steps: alpha stays alpha0 and no hypergradient is taken in steps 0-2;
    from step 3 (epoch 1) updates happen every `every` steps."""
    opts = {"warmup": 1, "every": 2, "lr_alpha": 5.0, "alpha0": 0.3, "alpha_min": 0.0}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts, steps_per_epoch=3)
    seen = []
    for step in range(8):
        trainer_step(model, method, optimizer, ctx, train[step], step)
        seen.append((method.alpha, method.learner.last_hypergradient))
    assert all(a == 0.3 and h == 0.0 for a, h in seen[:3])
    # step 3 is not due (3 % 2); step 4 is the first update
    assert seen[3] == (0.3, 0.0) and seen[4][1] != 0.0
    assert seen[4][0] == pytest.approx(min(max(0.3 - 5.0 * seen[4][1], 0.0), 1.0))
    assert seen[6][1] != seen[4][1]


def test_momentum_through_the_method():
    opts = {"every": 1, "lr_alpha": 0.2, "alpha0": 0.5, "alpha_min": 0.0, "hyper_momentum": 0.9}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts)
    alpha, avg, hs = 0.5, 0.0, []
    for step in range(4):
        trainer_step(model, method, optimizer, ctx, train[step], step)
        hs.append(method.learner.last_hypergradient)
        avg = 0.9 * avg + 0.1 * hs[-1]
        alpha = min(max(alpha - 0.2 * avg / (1 - 0.9 ** (step + 1)), 0.0), 1.0)
        assert method.alpha == pytest.approx(alpha, rel=1e-12)


@pytest.mark.parametrize("options, message", [
    ({"variant": "official", "horizon": 3}, "method.horizon applies to variant=exact"),
    ({"variant": "official", "warmup": 2}, "method.warmup applies to variant=exact"),
    ({"val_objective": "modalities"}, "did you mean"),
    ({"horizon": 0}, "method.horizon must be >= 1"),
    ({"hyper_momentum": 1.5}, "momentum"),
])
def test_bad_remedy_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method({"name": "lfm-lb", **options}, ("a", "b"), 3, {"a": 4, "b": 4})


def test_horizon_is_capped_at_every():
    method = build_method({"name": "lfm-lb", "horizon": 50, "every": 4}, ("a", "b"), 3, {"a": 4, "b": 4})
    assert method.learner.horizon == 4


# ---------------------------------------------------------------- two processes give the same run
def test_remedies_on_two_processes_match_one(tmp_path):
    """The window's Hessian term and the hypergradient are reduced like the gradients: torchrun with
    two processes (gloo) learns the same alpha as one process with the same global batch."""
    import csv
    import subprocess
    import sys

    import numpy as np

    args = ["--method", "lfm-lb", "--epochs", "2", "--quiet", "--set", "model.hidden=[32]", "--set", "model.feature_dim=16",
            "--set", "train.probe=false", "--set", "train.threads=1", "--set", "data.batch_size=50",
            "--set", "method.every=3", "--set", "method.horizon=3", "--set", "method.val_objective=fused+modalities",
            "--set", "method.hyper_momentum=0.5", "--set", "method.alpha0=0.3"]
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        launcher = ["-m", "modgap", "train"] if procs == 1 else [
            "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "modgap", "train"]
        proc = subprocess.run([sys.executable, *launcher, "--out", str(out), *args], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[procs] = np.array([float(r["alpha"]) for r in csv.DictReader((out / "alpha.csv").open())])
    a, b = runs[1], runs[2]
    assert len(a) == len(b) and np.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert a.max() > a.min(), "alpha moved (the check is not vacuous)"


# ------------------------------------------------------------ lfm-lb, variant=official
# The released code's update of the matching weight, against the released formula.
#
# Released code (njustkmg/NeurIPS24-LFM, Crema_epoch_learnable.py: getAlpha_Learnable), on a fixed batch of 8
# held-out samples, once per epoch:
#
#     L = alpha_cls * L_cls + w * L_match                      (no factor 2 here; training uses 2 * (...))
#     hvp = grad_theta < grad_theta L, stopgrad(grad_theta L_cls) >
#     g = mean of hvp over the entries of the FIRST parameter tensor
#     w <- clip(w - lr_e * g, 0.05, 0.95),  lr_e = 1e-4 * 0.5 ** (e // 20) before the training of epoch e
#
# The expected numbers here are built from an explicit Hessian of a flat parameter vector and a
# Jensen-Shannon divergence written out in plain tensor algebra, not from modgap's helpers.

DT = torch.float64
SHAPES = {"enc_a": (3, 4), "enc_b": (3, 5), "head_a": (2, 3), "head_b": (2, 3)}  # the first tensor: enc_a


class Tiny(nn.Module):
    """Two modalities, tanh encoders, linear heads, mean fusion (the released model's fusion)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for name, shape in SHAPES.items():
            self.register_parameter(name, nn.Parameter(torch.randn(*shape, generator=g, dtype=DT)))

    def forward(self, inputs):
        h = {"a": torch.tanh(inputs["a"] @ self.enc_a.t()), "b": torch.tanh(inputs["b"] @ self.enc_b.t())}
        z = {"a": h["a"] @ self.head_a.t(), "b": h["b"] @ self.head_b.t()}
        return ModelOutput(h, z, (z["a"] + z["b"]) / 2)


def data():
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.randn(8, 4, generator=g, dtype=DT), "b": torch.randn(8, 5, generator=g, dtype=DT)}
    return Batch(x, torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]), torch.arange(8))


def released_signal(model: Tiny, batch: Batch, alpha_cls: float) -> float:
    """mean over enc_a of (H g_cls), H the Hessian of alpha_cls * CE + (1 - alpha_cls) * JS (no scale)."""
    sizes = [math.prod(s) for s in SHAPES.values()]

    def unflat(f):
        parts = torch.split(f, sizes)
        return {n: p.view(*SHAPES[n]) for n, p in zip(SHAPES, parts)}

    def losses(f):
        w = unflat(f)
        za = torch.tanh(batch.inputs["a"] @ w["enc_a"].t()) @ w["head_a"].t()
        zb = torch.tanh(batch.inputs["b"] @ w["enc_b"].t()) @ w["head_b"].t()
        fused = (za + zb) / 2
        logp = fused - torch.logsumexp(fused, 1, keepdim=True)
        ce = -logp[torch.arange(len(batch.y)), batch.y].mean()
        p, q = torch.exp(za) / torch.exp(za).sum(1, keepdim=True), torch.exp(zb) / torch.exp(zb).sum(1, keepdim=True)
        m = (p + q) / 2
        js = (0.5 * (p * torch.log(p / m)).sum(1) + 0.5 * (q * torch.log(q / m)).sum(1)).mean()
        return ce, js

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(lambda f: alpha_cls * losses(f)[0] + (1 - alpha_cls) * losses(f)[1], flat)
    f = flat.clone().requires_grad_(True)
    g_cls = torch.autograd.grad(losses(f)[0], f)[0]
    return float((hessian @ g_cls)[: sizes[0]].mean())


def context(model: Tiny, batch: Batch, epoch: int) -> StepContext:
    return StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()),
                       epoch=epoch, epochs=200, fixed_val_batch=lambda n: Batch(
                           {m: v[:n] for m, v in batch.inputs.items()}, batch.y[:n], batch.index[:n]))


def official(**options) -> LFMLearned:
    options = {"variant": "official", **options}
    return LFMLearned(LFMLearned.Options(**options), ("a", "b"), 2, {"a": 3, "b": 3})


def test_signal_is_the_released_hessian_vector_product_on_the_first_tensor():
    model, batch = Tiny(), data()
    out = model(batch.inputs)
    cls = F.cross_entropy(out.fused, batch.y)
    match = official().matching(out)
    got = official_matching_gradient(cls, match, 0.05, 1.0, list(model.parameters()))  # scale 1: the released L
    want = released_signal(model, batch, 0.05)
    assert abs(want) > 1e-3  # a signal worth comparing
    assert float(got) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("epoch, halvings", [(0, 0), (19, 0), (20, 1), (45, 2)])
def test_update_of_the_matching_weight_at_loss_scale_one(epoch, halvings):
    """w <- clip(w - lr * 0.5^k * g, 0.05, 0.95), from 0.95; k = epoch // 20 (epoch = modgap's hook epoch)."""
    model, batch = Tiny(), data()
    method = official(loss_scale=1.0, official_lr=0.01)
    g = released_signal(model, batch, 0.05)
    method.on_epoch_start(context(model, batch, epoch))
    w = min(max(0.95 - 0.01 * 0.5**halvings * g, 0.05), 0.95)
    assert 1.0 - method.alpha == pytest.approx(w, rel=1e-9)
    assert method.learner.last_hypergradient == pytest.approx(g, rel=1e-9)


def test_the_matching_weight_is_clipped_to_the_released_bounds():
    model, batch = Tiny(), data()
    g = released_signal(model, batch, 0.05)
    for lr, bound in ((1e6, 0.05 if g > 0 else 0.95), (-1e6, 0.95 if g > 0 else 0.05)):
        method = official(loss_scale=1.0, official_lr=lr)
        method.on_epoch_start(context(model, batch, 0))
        assert 1.0 - method.alpha == pytest.approx(bound)


def test_default_update_uses_the_unscaled_objective_as_released():
    model, batch = Tiny(), data()
    method = official(official_lr=0.01)  # loss_scale 2, the released training scale
    g = released_signal(model, batch, 0.05)
    method.on_epoch_start(context(model, batch, 0))
    assert 1.0 - method.alpha == pytest.approx(0.95 - 0.01 * g, rel=1e-9)


def test_an_update_precedes_the_first_epoch_as_released():
    model, batch = Tiny(), data()
    method = official(loss_scale=1.0, official_lr=0.01)
    g = released_signal(model, batch, 0.05)
    method.on_epoch_start(context(model, batch, 0))
    assert 1.0 - method.alpha == pytest.approx(0.95 - 0.01 * g, rel=1e-9)


def test_modgap_js_is_the_true_divergence_not_the_released_alignment():
    """Released Alignment: F.kl_div(p.log(), m) is KL(m || p), so it computes 0.5 (KL(m||p) + KL(m||q)),
    not JS = 0.5 (KL(p||m) + KL(q||m)); modgap's js is the true JS (the released form is not reproduced)."""
    za = torch.tensor([[2.0, 0.0, -1.0]], dtype=DT)
    zb = torch.tensor([[0.0, 1.0, 0.0]], dtype=DT)
    p, q = torch.softmax(za, 1), torch.softmax(zb, 1)
    m = (p + q) / 2
    true_js = float(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    released = float(0.5 * (m * (m / p).log()).sum() + 0.5 * (m * (m / q).log()).sum())
    got = float(official().matching(ModelOutput({}, {"a": za, "b": zb}, (za + zb) / 2)))
    assert got == pytest.approx(true_js, rel=1e-12)
    assert abs(released - true_js) > 1e-2


# ------------------------------------------------------ what lfm-h and lfm-lb change against joint
def js_by_hand(za: torch.Tensor, zb: torch.Tensor) -> float:
    """Jensen-Shannon divergence of the two modalities' softmaxes, batch mean, in plain tensor algebra."""
    p, q = torch.softmax(za, 1), torch.softmax(zb, 1)
    m = (p + q) / 2
    return float((0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean())


def test_lfm_h_weighs_matching_by_its_schedule_where_joint_has_classification_alone():
    """L = 2 (alpha CE + (1 - alpha) JS), alpha = 1 - w(epoch) of the paper's schedule; joint: CE."""
    from modgap.config import ModelConfig
    from modgap.methods.schedules import matching_weight
    from modgap.models import build_model

    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 3, ModelConfig(hidden=(8,), feature_dim=4))
    batch = Batch({"a": torch.randn(16, 5), "b": torch.randn(16, 3)}, torch.randint(0, 3, (16,)), torch.arange(16))
    method = build_method({"name": "lfm-h"}, ("a", "b"), 3, {"a": 4, "b": 4})
    ctx = StepContext(model, None, list(model.parameters()), epoch=3, epochs=10)
    method.on_epoch_start(ctx)
    w = matching_weight("paper", 3, 10)
    assert 0 < w < 1 and method.alpha == pytest.approx(1 - w)
    out = model(batch.inputs)
    cls = float(F.cross_entropy(out.fused, batch.y).detach())
    js = js_by_hand(out.logits["a"].detach(), out.logits["b"].detach())
    total = float(method.losses(out, batch, ctx).total.detach())
    assert total == pytest.approx(2 * ((1 - w) * cls + w * js), rel=1e-5)
    assert abs(total - cls) > 1e-3


def test_lfm_lb_moves_alpha_from_its_start_and_weighs_matching_by_it():
    """After a few steps the learned alpha is no longer alpha0, and the loss is s (alpha CE + (1 - alpha) JS)."""
    model, method, optimizer, _, ctx, train, _ = method_problem({"every": 1, "lr_alpha": 1.0})
    assert method.alpha == 0.5
    for step in range(3):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    alpha = method.alpha
    assert abs(alpha - 0.5) > 1e-4
    out = model(train[3].inputs)
    cls = float(F.cross_entropy(out.fused, train[3].y).detach())
    js = js_by_hand(out.logits["m0"].detach(), out.logits["m1"].detach())
    total = float(method.losses(out, train[3], ctx).total.detach())
    assert total == pytest.approx(SCALE * (alpha * cls + (1 - alpha) * js), rel=1e-9)
    assert abs(total - cls) > 1e-3  # joint's loss
