"""The learned alpha: the analytic one-step hypergradient against central finite differences.

Each case builds a small float64 model, puts the optimiser in a realistic state (fresh, or after a
few steps so that momentum / Adam moments are non-zero), and compares

    analytic  dL_val(theta'(alpha))/dalpha      (AlphaLearner, as lfm-lb uses it)
    numeric   (L_val(theta'(alpha + e)) - L_val(theta'(alpha - e))) / 2e

where theta'(alpha) is one real optimiser step on L = s (alpha L_cls + (1 - alpha) L_match).
"""

from __future__ import annotations

import copy

import pytest
import torch

from modgap.methods.hypergrad import AlphaLearner, lfm_objective, official_matching_gradient

from conftest import SCALE, float64_toy as toy, lfm_losses as losses, make_optimizer, warm


def make_problem(num_modalities: int, matching: str, seed: int = 0):
    modules, batch = toy(num_modalities, matching, seed)
    return modules, batch(16, 1), batch(12, 2), batch(16, 3)


def val_loss(modules, batch):
    model = modules[0]
    model.eval()
    x, y = batch
    loss = torch.nn.functional.cross_entropy(model(x).fused, y)
    model.train()
    return loss


def lookahead(modules, opt_kind, opt_state, train, val, alpha: float) -> float:
    """L_val after one real step at ``alpha``, from deep copies (load_state_dict aliases tensors)."""
    modules = copy.deepcopy(modules)
    params = list(modules.parameters())
    optimizer = make_optimizer(opt_kind, params)
    optimizer.load_state_dict(copy.deepcopy(opt_state))
    optimizer.zero_grad()
    cls, match = losses(modules, train)
    lfm_objective(cls, match, alpha, SCALE).backward()
    optimizer.step()
    return float(val_loss(modules, val).detach())


def analytic(modules, opt_kind, opt_state, train, val, alpha: float) -> float:
    modules = copy.deepcopy(modules)
    params = list(modules.parameters())
    optimizer = make_optimizer(opt_kind, params)
    optimizer.load_state_dict(copy.deepcopy(opt_state))
    optimizer.zero_grad()
    learner = AlphaLearner(alpha, lr=0.0, bounds=(0.0, 1.0))
    cls, match = losses(modules, train)
    learner.backward(cls, match, params, SCALE, optimizer)
    optimizer.step()
    return float(learner.hypergradient(val_loss(modules, val), optimizer, params))


@pytest.mark.parametrize("opt_kind", ["sgd", "sgd-nesterov", "sgd-plain", "adam", "adamw"])
@pytest.mark.parametrize("matching", ["js", "infonce"])
@pytest.mark.parametrize("num_modalities", [2, 3])
@pytest.mark.parametrize("warm_steps", [0, 3])
def test_hypergradient_matches_central_difference(opt_kind, matching, num_modalities, warm_steps):
    modules, train, val, warm_batch = make_problem(num_modalities, matching)
    optimizer = make_optimizer(opt_kind, list(modules.parameters()))
    warm(modules, optimizer, warm_batch, warm_steps)
    state = copy.deepcopy(optimizer.state_dict())
    alpha, eps = 0.37, 1e-5
    numeric = (lookahead(modules, opt_kind, state, train, val, alpha + eps)
               - lookahead(modules, opt_kind, state, train, val, alpha - eps)) / (2 * eps)
    exact = analytic(modules, opt_kind, state, train, val, alpha)
    assert abs(numeric) > 1e-6, "degenerate case: the check would be vacuous"
    assert abs(exact - numeric) / abs(numeric) < 1e-4, (exact, numeric)


@pytest.mark.parametrize("opt_kind", ["sgd", "sgd-nesterov", "adam", "adamw"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_dot_equals_the_formed_direction(opt_kind, dtype):
    """hypergradient() takes <g, d theta'/d alpha> from the optimiser state in place (no direction
    tensor); it must equal the dot with direction(), the formula the finite differences check."""
    modules, train, val, warm_batch = make_problem(2, "js")
    modules = modules.to(dtype)
    cast = lambda b: ({k: v.to(dtype) for k, v in b[0].items()}, b[1])  # noqa: E731
    train, val, warm_batch = cast(train), cast(val), cast(warm_batch)
    params = list(modules.parameters())
    optimizer = make_optimizer(opt_kind, params)
    warm(modules, optimizer, warm_batch, 3)
    learner = AlphaLearner(0.37, lr=0.0, bounds=(0.0, 1.0))
    cls, match = losses(modules, train)
    optimizer.zero_grad()
    learner.backward(cls, match, params, SCALE, optimizer)
    optimizer.step()
    d_kept, pre_kept = list(learner._d), list(learner._pre)
    grads = torch.autograd.grad(val_loss(modules, val), params, allow_unused=True)
    reference = sum(float((g.double() * v.double()).sum())
                    for g, v in zip(grads, learner.direction(optimizer, params)) if g is not None)
    learner._d, learner._pre = d_kept, pre_kept
    fast = float(learner.hypergradient(val_loss(modules, val), optimizer, params))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(reference) > 1e-8
    assert fast == pytest.approx(reference, rel=tol), (fast, reference)


def test_sgd_hypergradient_is_wrong_for_adam_without_its_own_rule():
    """The SGD formula applied to an Adam step is far off: the optimiser-aware rule matters."""
    modules, train, val, warm_batch = make_problem(2, "js")
    optimizer = make_optimizer("adam", list(modules.parameters()))
    warm(modules, optimizer, warm_batch, 3)
    state = copy.deepcopy(optimizer.state_dict())
    eps = 1e-5
    numeric = (lookahead(modules, "adam", state, train, val, 0.5 + eps)
               - lookahead(modules, "adam", state, train, val, 0.5 - eps)) / (2 * eps)
    m2 = copy.deepcopy(modules)
    params = list(m2.parameters())
    opt = make_optimizer("adam", params)
    opt.load_state_dict(copy.deepcopy(state))
    cls, match = losses(m2, train)
    g_cls = torch.autograd.grad(cls, params, retain_graph=True)
    g_match = torch.autograd.grad(match, params)
    for p, a, b in zip(params, g_cls, g_match):
        p.grad = SCALE * (0.5 * a + 0.5 * b)
    opt.step()
    g_val = torch.autograd.grad(val_loss(m2, val), params, allow_unused=True)
    sgd_formula = sum(float((-0.01 * SCALE * (a - b) * g).sum()) for a, b, g in zip(g_cls, g_match, g_val) if g is not None)
    assert abs(sgd_formula - numeric) / abs(numeric) > 0.1


def test_update_respects_bounds_and_ignores_non_finite():
    learner = AlphaLearner(0.5, lr=10.0, bounds=(0.05, 0.9))
    assert learner.update(1.0) == pytest.approx(0.05)
    assert learner.update(-1.0) == pytest.approx(0.9)
    assert learner.update(float("nan")) == pytest.approx(0.9)
    assert learner.update(float("inf")) == pytest.approx(0.9)
    sig = AlphaLearner(0.5, lr=1.0, bounds=(0.0, 1.0), parametrization="sigmoid")
    sig.update(2.0)  # logit -= 1 * 2 * 0.25
    assert sig.alpha == pytest.approx(torch.sigmoid(torch.tensor(-0.5)).item())
    for _ in range(100):
        sig.update(-1e6)
    assert 0.0 <= sig.alpha <= 1.0


def test_official_variant_matches_its_formula():
    """mean over the first parameter tensor of H_total g_cls, with the Hessian built explicitly."""
    torch.manual_seed(0)
    w1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    x1, x2 = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    alpha = 0.3
    from modgap.methods.matching import js_divergence

    def parts(flat):
        a, b = flat[:12].view(4, 3), flat[12:].view(5, 3)
        z1, z2 = torch.tanh(x1 @ a), torch.tanh(x2 @ b)
        return torch.nn.functional.cross_entropy((z1 + z2) / 2, y), js_divergence(z1, z2)

    flat = torch.cat([w1.detach().flatten(), w2.detach().flatten()])
    hessian = torch.autograd.functional.hessian(lambda f: lfm_objective(*parts(f), alpha, SCALE), flat)
    f = flat.clone().requires_grad_(True)
    g_cls = torch.autograd.grad(parts(f)[0], f)[0]
    expected = (hessian @ g_cls)[:12].mean()

    z1, z2 = torch.tanh(x1 @ w1), torch.tanh(x2 @ w2)
    cls = torch.nn.functional.cross_entropy((z1 + z2) / 2, y)
    got = official_matching_gradient(cls, js_divergence(z1, z2), alpha, SCALE, [w1, w2])
    assert float(got) == pytest.approx(float(expected), rel=1e-9)
