"""Issue 12: scale-free steps on alpha, the learned schedule and the implicit hypergradient.

- ``step=sign/rms/cosine``: the first updates of alpha do not change when the learning rate, the loss
  scale or the input scale is multiplied by 10 (the plain ``raw`` step does: the check can fail).
- ``parametrization=schedule``: the chain rule to (a, b) against finite differences of alpha(t),
  and one update by hand through the method's hooks.
- ``variant=implicit``: the Neumann-series formula against explicit matrices, and, with many terms,
  against the central difference of L_val at the training loss's minimiser theta*(alpha +- e).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modgap.data.base import Batch
from modgap.errors import ConfigError
from modgap.methods import build_method
from modgap.methods.alpha_steps import AlphaParams, neumann_hypergradient
from modgap.methods.hypergrad import AlphaLearner, lfm_objective
from modgap.methods.matching import js_divergence

from conftest import method_problem, trainer_step


# ------------------------------------------------------------------------- 1. scale-free steps
def teacher_batches(count: int, n: int, seed: int):
    """Batches of the toy's inputs (m0: 5, m1: 7 features) labelled by a fixed linear teacher, so that
    classification and validation agree and the hypergradient's sign is a property of the problem."""
    g = torch.Generator().manual_seed(seed)
    teacher = {m: torch.randn(d, 3, generator=torch.Generator().manual_seed(99 + d), dtype=torch.float64)
               for m, d in (("m0", 5), ("m1", 7))}
    batches = []
    for _ in range(count):
        x = {m: torch.randn(n, w.shape[0], generator=g, dtype=torch.float64) for m, w in teacher.items()}
        y = sum(x[m] @ w for m, w in teacher.items()).argmax(1)
        batches.append(Batch(x, y, torch.arange(n)))
    return batches


def first_alphas(options: dict, lr: float = 0.001, input_scale: float = 1.0, updates: int = 3) -> list[float]:
    """alpha after each of the first ``updates`` updates (every step), SGD at ``lr``."""
    model, method, optimizer, _, ctx, _, _ = method_problem({"every": 1, "alpha_min": 0.0, **options})
    for group in optimizer.param_groups:
        group["lr"] = lr
    scale = lambda b: Batch({k: v * input_scale for k, v in b.inputs.items()}, b.y, b.index)
    train, (val,) = teacher_batches(updates, 32, 1), teacher_batches(1, 64, 2)
    ctx.next_val_batch = lambda: scale(val)
    alphas = []
    for step in range(updates):
        trainer_step(model, method, optimizer, ctx, scale(train[step]), step)
        alphas.append(method.alpha)
    return alphas


SCALINGS = ("lr x10", "loss scale x10", "inputs x10")


def run_scaled(options: dict, scaling: str, updates: int = 3) -> list[float]:
    """first_alphas of the base problem (SGD lr 0.01, loss scale 2, inputs as drawn), one thing x10."""
    if scaling == "lr x10":
        return first_alphas(options, lr=0.01, updates=updates)
    if scaling == "loss scale x10":
        return first_alphas({**options, "loss_scale": 20.0}, updates=updates)
    return first_alphas(options, input_scale=10.0, updates=updates)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_sign_step_ignores_every_scale(scaling):
    """sign: the first three updates are the same to 1e-12 whatever is multiplied by 10."""
    opts = {"step": "sign", "step_size": 0.05, "alpha0": 0.5}
    base = first_alphas(opts)
    assert base == pytest.approx([0.55, 0.6, 0.65], abs=1e-12)
    assert run_scaled(opts, scaling) == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_rms_step_ignores_the_scale(scaling):
    """rms: the first update is exactly step_size (it equals sign's); the next two are the same within
    1e-4 under the learning rate or loss scale x10 (the hypergradients scale together). Inputs x10
    are a different problem for a network that is not scale-homogeneous: the ratio of successive
    hypergradients moves, so the later moves differ, but stay the size of a step (within a factor
    of 2 of the base's; the raw step's first move grows about 400x)."""
    opts = {"step": "rms", "step_size": 0.05, "alpha0": 0.5}
    base, scaled = first_alphas(opts), run_scaled(opts, scaling)
    assert base[0] == pytest.approx(0.55, abs=1e-12) and scaled[0] == pytest.approx(0.55, abs=1e-12)
    if scaling != "inputs x10":
        assert scaled == pytest.approx(base, abs=1e-4)
    else:
        moves = lambda a: [y - x for x, y in zip([0.5, *a], a)]
        assert all(0.5 < m / b < 2.0 for m, b in zip(moves(scaled), moves(base)))


@pytest.mark.parametrize("scaling", ["lr x10", "loss scale x10"])
def test_cosine_step_ignores_the_learning_rate_and_loss_scale(scaling):
    """cosine: the first three updates move by step_size x cos, cos taken at theta' (which the
    scaling moves a little): the same within 1e-3 (2 % of step_size). The cosine is NOT invariant to
    the input scale, which reweights the layers' gradients (here its first move grows about 5x,
    the raw step's about 400x); sign and rms are."""
    opts = {"step": "cosine", "step_size": 0.05, "alpha0": 0.5}
    base = first_alphas(opts)
    assert abs(base[0] - 0.5) > 0.002
    assert run_scaled(opts, scaling) == pytest.approx(base, abs=1e-3)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_raw_step_follows_the_scale(scaling):
    """The plain step moves about 10 times further (inputs x10: about 400 times): what the
    normalised rules remove."""
    opts = {"step": "raw", "lr_alpha": 0.5, "alpha0": 0.5}
    base = first_alphas(opts, updates=1)[0] - 0.5
    scaled = run_scaled(opts, scaling, updates=1)[0] - 0.5
    assert abs(scaled) > 5 * abs(base) > 0


def test_rms_step_by_hand():
    p = AlphaParams("clip", 0.5, (0.0, 1.0), step="rms", step_size=0.1, rms_beta=0.5)
    p.move(4.0, 0.0)  # v = 0.5 * 16 = 8, corrected 16: step 0.1 * 4 / 4
    assert p.alpha_at(0.0) == pytest.approx(0.4)
    p.move(-1.0, 0.0)  # v = 4 + 0.5 = 4.5, corrected 4.5 / 0.75 = 6: step 0.1 * -1 / sqrt(6)
    assert p.alpha_at(0.0) == pytest.approx(0.4 + 0.1 / math.sqrt(6))
    s = AlphaParams("clip", 0.5, (0.0, 1.0), step="sign", step_size=0.1)
    s.move(1e-30, 0.0)
    assert s.alpha_at(0.0) == pytest.approx(0.4)
    s.move(float("nan"), 0.0)
    assert s.alpha_at(0.0) == pytest.approx(0.4)


# ---------------------------------------------------------------------- 2a. learned schedule
def test_schedule_starts_near_the_papers():
    """a = logit(0.37), b = 1.2: within 0.05 of exp(-1 / (t + 1)) over 30 epochs."""
    p = AlphaParams("schedule", 0.368, (0.0, 1.0))
    assert max(abs(p.alpha_at(t) - math.exp(-1 / (t + 1))) for t in range(30)) < 0.05


@pytest.mark.parametrize("t", [0.0, 0.5, 3.0, 17.25])
def test_schedule_jacobian_matches_finite_differences(t):
    p = AlphaParams("schedule", 0.3, (0.0, 1.0), slope=0.8)
    analytic, eps = p.jacobian(t), 1e-6
    for i in range(2):
        plus, minus = list(p.values), list(p.values)
        plus[i] += eps
        minus[i] -= eps
        p.values = plus
        hi = p.alpha_at(t)
        p.values = minus
        lo = p.alpha_at(t)
        p.values[i] += eps
        assert analytic[i] == pytest.approx((hi - lo) / (2 * eps), rel=1e-7)


def test_schedule_update_through_the_method_by_hand():
    """Step 6 (epoch 2 of 3-step epochs) updates (a, b) by -lr h alpha (1 - alpha) (1, log 3), and the
    alpha of later steps follows the moved schedule."""
    opts = {"parametrization": "schedule", "alpha0": 0.4, "schedule_slope": 0.5, "every": 6, "lr_alpha": 2.0}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts, steps_per_epoch=3)
    for step in range(6):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    a, b = method.learner.params.values
    t = 6 / 3
    alpha_used = 1 / (1 + math.exp(-(a + b * math.log1p(t))))
    trainer_step(model, method, optimizer, ctx, train[6], 6)
    h = method.learner.last_hypergradient
    assert h != 0.0
    slope = alpha_used * (1 - alpha_used)
    assert method.learner.params.values == pytest.approx([a - 2.0 * h * slope, b - 2.0 * h * slope * math.log1p(t)])
    a2, b2 = method.learner.params.values
    ctx.step = 7
    method.losses(model(train[7].inputs), train[7], ctx)
    assert method.alpha == pytest.approx(1 / (1 + math.exp(-(a2 + b2 * math.log1p(7 / 3)))))


def test_schedule_state_survives_a_checkpoint():
    opts = {"parametrization": "schedule", "alpha0": 0.37, "step": "rms", "every": 2}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts, steps_per_epoch=3)
    for step in range(5):
        trainer_step(model, method, optimizer, ctx, train[step], step)
    state = method.state_dict()
    fresh = build_method({"name": "lfm-lb", **opts}, ("m0", "m1"), 3, {"m0": 4, "m1": 4}).double()
    fresh.load_state_dict(state)
    assert fresh.learner.params.state_dict() == method.learner.params.state_dict()
    assert fresh.alpha == method.alpha


# ------------------------------------------------------------------- 2b. implicit hypergradient
def linear_problem(seed: int = 0):
    """Two linear modalities (3 and 4 inputs, 3 classes), float64: a flat parameter vector, the
    training loss s (a CE(fused) + (1 - a) JS) + wd/2 |w|^2 and the validation CE."""
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    v1, v2 = torch.randn(15, 3, generator=g, dtype=torch.float64), torch.randn(15, 4, generator=g, dtype=torch.float64)
    vy = torch.randint(0, 3, (15,), generator=g)

    def logits(w, a, b):
        return a @ w[:9].view(3, 3), b @ w[9:].view(4, 3)

    def parts(w):
        z1, z2 = logits(w, x1, x2)
        return F.cross_entropy((z1 + z2) / 2, y), js_divergence(z1, z2)

    def val(w):
        z1, z2 = logits(w, v1, v2)
        return F.cross_entropy((z1 + z2) / 2, vy)

    return parts, val, 0.1 * torch.randn(21, generator=g, dtype=torch.float64)


WD, S = 0.3, 2.0


def minimiser(parts, w0, alpha):
    """theta*(alpha) by Newton's method on the (strongly convex here) training loss."""
    w = w0.clone()
    loss = lambda v: lfm_objective(*parts(v), alpha, S) + WD / 2 * (v * v).sum()
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(loss, w)
        w = w - torch.linalg.solve(torch.autograd.functional.hessian(loss, w), grad)
    assert float(grad.norm()) < 1e-12
    return w


def implicit(parts, val, w, alpha, eta, steps):
    w = w.clone().requires_grad_(True)
    cls, match = parts(w)
    g_total = torch.autograd.grad(lfm_objective(cls, match, alpha, S), [w], create_graph=True)
    d = torch.autograd.grad(S * (cls - match), [w], retain_graph=True)
    g_val = torch.autograd.grad(val(w), [w])
    return neumann_hypergradient(g_total, [w], g_val, d, eta, steps, damping=WD)


def test_neumann_series_by_hand():
    """J = 3 terms against the explicit matrices: -eta g_val^T sum_j (I - eta (H + wd I))^j d."""
    parts, val, w = linear_problem()
    alpha, eta = 0.4, 0.2
    loss = lambda v: lfm_objective(*parts(v), alpha, S)
    H = torch.autograd.functional.hessian(loss, w) + WD * torch.eye(21, dtype=torch.float64)
    d = torch.autograd.functional.jacobian(lambda v: S * (parts(v)[0] - parts(v)[1]), w)
    g = torch.autograd.functional.jacobian(val, w)
    A = torch.eye(21, dtype=torch.float64) - eta * H
    series = sum(torch.linalg.matrix_power(A, j) for j in range(4))
    expected = float(-eta * g @ series @ d)
    h, cos = implicit(parts, val, w, alpha, eta, 3)
    assert h == pytest.approx(expected, rel=1e-10)
    p = series @ g
    assert cos == pytest.approx(float(-(p @ d) / (p.norm() * d.norm())), rel=1e-10)


def test_implicit_hypergradient_matches_the_best_response_derivative():
    """At theta*(alpha), many Neumann terms give dL_val(theta*(alpha))/dalpha (central difference of
    L_val at the re-solved minimisers theta*(alpha +- e)) to a relative error below 1e-4; the
    one-step hypergradient (J = 0) does not."""
    parts, val, w0 = linear_problem(1)
    alpha, eps = 0.45, 1e-5
    w = minimiser(parts, w0, alpha)
    numeric = (float(val(minimiser(parts, w, alpha + eps))) - float(val(minimiser(parts, w, alpha - eps)))) / (2 * eps)
    loss = lambda v: lfm_objective(*parts(v), alpha, S)
    top = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w) + WD * torch.eye(21, dtype=torch.float64))[-1])
    h, _ = implicit(parts, val, w, alpha, 1.0 / top, 3000)
    assert abs(numeric) > 1e-4
    assert h == pytest.approx(numeric, rel=1e-4)
    one_step, _ = implicit(parts, val, w, alpha, 1.0 / top, 0)
    assert abs(one_step - numeric) > 0.1 * abs(numeric)


def test_implicit_variant_through_the_method():
    """variant=implicit in the trainer's loop: alpha moves on due steps only, by the rule's step."""
    opts = {"variant": "implicit", "every": 2, "step": "sign", "step_size": 0.05, "alpha0": 0.5, "neumann_steps": 3}
    model, method, optimizer, _, ctx, train, _ = method_problem(opts)
    seen = []
    for step in range(4):
        trainer_step(model, method, optimizer, ctx, train[step], step)
        seen.append(method.alpha)
    assert abs(seen[0] - 0.5) == pytest.approx(0.05) and seen[1] == seen[0]
    assert abs(seen[2] - seen[1]) == pytest.approx(0.05) and seen[3] == seen[2]
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("options, message", [
    ({"step": "adam"}, "unknown alpha step"),
    ({"parametrization": "schedul"}, "did you mean"),
    ({"variant": "implicit", "horizon": 3}, "not to implicit"),
    ({"neumann_steps": -1}, "neumann_steps"),
    ({"step_size": -0.1}, "step_size"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method({"name": "lfm-lb", **options}, ("a", "b"), 3, {"a": 4, "b": 4})


def test_alpha_cannot_be_set_on_a_schedule():
    learner = AlphaLearner(0.4, parametrization="schedule")
    with pytest.raises(ConfigError):
        learner.alpha = 0.5


def test_weakest_objective_picks_the_globally_worst_modality():
    """fused+weakest with ``combine``: the modality whose CE is largest after combining (over
    processes) is the one differentiated, even where this process alone would pick another."""
    from types import SimpleNamespace

    from modgap.methods.hypergrad import validation_loss

    torch.manual_seed(0)
    y = torch.randint(0, 3, (8,))
    za, zb = torch.randn(8, 3), torch.randn(8, 3)
    out = SimpleNamespace(logits={"a": za, "b": zb}, fused=(za + zb) / 2)
    ce = {k: float(F.cross_entropy(z, y)) for k, z in out.logits.items()}
    local = max(ce, key=ce.get)
    other = "b" if local == "a" else "a"

    def combine(values):  # as if the other processes saw the other modality far worse
        values[0 if other == "a" else 1] += 100.0

    fused = float(F.cross_entropy(out.fused, y))
    assert float(validation_loss(out, y, "fused+weakest", 0.5)) == pytest.approx(fused + 0.5 * ce[local])
    assert float(validation_loss(out, y, "fused+weakest", 0.5, combine)) == pytest.approx(fused + 0.5 * ce[other])


def test_default_is_the_chosen_learned_schedule():
    """lfm-lb's defaults are issue 12's choice: a schedule from the paper's first weight, rms steps,
    the fused + weakest-modality objective (docs/results.md)."""
    method = build_method({"name": "lfm-lb"}, ("a", "b"), 3, {"a": 4, "b": 4})
    o = method.options
    assert (o.parametrization, o.step, o.val_objective, o.step_size) == ("schedule", "rms", "fused+weakest", 0.02)
    assert method.learner.at(0.0) == pytest.approx(0.37)
    assert method.learner.at(19.0) == pytest.approx(math.exp(-1 / 20), abs=0.01)


def test_a_checkpoint_of_the_old_learner_is_refused_by_the_schedule_in_one_line():
    old = {"learner": {"alpha": 0.56, "logit": 0.24, "lr": 1.0, "last": 0.1, "average": 0.0, "updates": 0}}
    clip = build_method({"name": "lfm-lb", "parametrization": "clip"}, ("a", "b"), 3, {"a": 4, "b": 4})
    clip.set_extra_state(old)
    assert clip.alpha == pytest.approx(0.56)
    method = build_method({"name": "lfm-lb"}, ("a", "b"), 3, {"a": 4, "b": 4})
    with pytest.raises(ConfigError, match="method.parametrization=clip") as err:
        method.set_extra_state(old)
    assert "\n" not in str(err.value)
