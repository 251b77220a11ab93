"""Matching losses (modgap.methods.matching) and the LFM-H schedules (matching_weight)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from modgap.errors import ConfigError
from modgap.methods.schedules import POLY, SCHEDULES, matching_weight
from modgap.methods.matching import MATCHING, InfoNCEMatching, JSMatching, info_nce, js_divergence
from modgap.models.classifier import ModelOutput


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_js(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p, q = np_softmax(p_logits), np_softmax(q_logits)
    r = (p + q) / 2
    kl = lambda a, b: (a * np.log(a / b)).sum(1)  # noqa: E731
    return float((0.5 * kl(p, r) + 0.5 * kl(q, r)).mean())


# --------------------------------------------------------------------------------- JS divergence
@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_js_matches_direct_formula(scale):
    rng = np.random.default_rng(int(scale * 10))
    p, q = rng.normal(scale=scale, size=(2, 16, 7))
    got = js_divergence(torch.from_numpy(p), torch.from_numpy(q)).item()
    assert got == pytest.approx(np_js(p, q), rel=1e-10, abs=1e-14)
    assert got > 0


def test_js_symmetric_zero_and_bounded():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randn(32, 5, generator=g, dtype=torch.float64)
    assert js_divergence(p, q).item() == pytest.approx(js_divergence(q, p).item(), rel=1e-12)
    assert js_divergence(p, p.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # equal softmax, different logits (shift invariance)
    assert js_divergence(p, p + 3.0).item() == pytest.approx(0.0, abs=1e-12)
    # nearly disjoint distributions approach ln 2 but never exceed it
    a = torch.tensor([[60.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    b = torch.tensor([[0.0, 60.0, 0.0]] * 4, dtype=torch.float64)
    far = js_divergence(a, b).item()
    assert far <= math.log(2) + 1e-12
    assert far == pytest.approx(math.log(2), abs=1e-6)
    big = torch.randn(64, 10, generator=g) * 50
    assert js_divergence(big, torch.randn(64, 10, generator=g) * 50).item() <= math.log(2) + 1e-6


# ------------------------------------------------------------------------------------- InfoNCE
def loop_info_nce(u: np.ndarray, v: np.ndarray, tau: float) -> float:
    """Symmetric InfoNCE written out sample by sample."""
    n = len(u)
    total_uv = total_vu = 0.0
    for i in range(n):
        row = [float(u[i] @ v[j]) / tau for j in range(n)]
        col = [float(u[j] @ v[i]) / tau for j in range(n)]
        total_uv += -row[i] + math.log(sum(math.exp(s) for s in row))
        total_vu += -col[i] + math.log(sum(math.exp(s) for s in col))
    return 0.5 * (total_uv / n + total_vu / n)


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_info_nce_matches_loop(tau):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, 9, 4))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = info_nce(torch.from_numpy(u), torch.from_numpy(v), tau).item()
    assert got == pytest.approx(loop_info_nce(u, v, tau), rel=1e-10)


def test_info_nce_prefers_aligned_pairs():
    rng = np.random.default_rng(2)
    u = rng.normal(size=(8, 4))
    u = torch.from_numpy(u / np.linalg.norm(u, axis=1, keepdims=True))
    aligned = info_nce(u, u, 0.1).item()
    shuffled = info_nce(u, u[torch.randperm(8, generator=torch.Generator().manual_seed(0))], 0.1).item()
    assert aligned < shuffled


# ----------------------------------------------------------------- pairwise mean over modalities
def three_modal_output(seed: int = 0) -> ModelOutput:
    g = torch.Generator().manual_seed(seed)
    mods = ("a", "b", "c")
    features = {m: torch.randn(10, 6, generator=g, dtype=torch.float64) for m in mods}
    logits = {m: torch.randn(10, 4, generator=g, dtype=torch.float64) for m in mods}
    return ModelOutput(features, logits, torch.stack(list(logits.values())).mean(0))


def test_registry_has_both_matchings():
    assert MATCHING.get("js") is JSMatching and MATCHING.get("infonce") is InfoNCEMatching
    with pytest.raises(ConfigError, match="did you mean 'js'"):
        MATCHING.get("jss")


def test_js_matching_is_mean_over_pairs():
    out = three_modal_output()
    module = JSMatching({"a": 6, "b": 6, "c": 6}, 4, 16, 0.07)
    pair_values = [js_divergence(out.logits[m], out.logits[n]).item()
                   for m, n in itertools.combinations("abc", 2)]
    assert len(pair_values) == 3 and len(set(pair_values)) == 3
    assert module(out).item() == pytest.approx(np.mean(pair_values), rel=1e-12)
    assert module.project(out) is None


def test_infonce_matching_is_mean_over_pairs():
    torch.manual_seed(0)
    out = three_modal_output(1)
    module = InfoNCEMatching({"a": 6, "b": 6, "c": 6}, 4, 5, 0.2).double()
    # projections written out by hand: linear map, then L2 normalisation
    u = {}
    for m in "abc":
        lin = module.proj[m]
        z = out.features[m] @ lin.weight.t() + lin.bias
        u[m] = z / z.norm(dim=1, keepdim=True)
        torch.testing.assert_close(module.project(out)[m], u[m])
        assert u[m].shape == (10, 5)
    pair_values = [loop_info_nce(u[m].detach().numpy(), u[n].detach().numpy(), 0.2)
                   for m, n in itertools.combinations("abc", 2)]
    assert module(out).item() == pytest.approx(np.mean(pair_values), rel=1e-10)


# -------------------------------------------------------------------------------------- schedules
def test_paper_schedule():
    assert matching_weight("paper", 0, 30) == pytest.approx(1 - math.exp(-1), abs=1e-12)
    assert matching_weight("paper", 0, 30) == pytest.approx(0.632, abs=5e-4)
    assert matching_weight("paper", 1, 30) == pytest.approx(0.393, abs=5e-4)
    assert matching_weight("paper", 2, 30) == pytest.approx(0.283, abs=5e-4)
    assert matching_weight("paper", 3, 30) == pytest.approx(0.221, abs=5e-4)
    values = [matching_weight("paper", t, 100) for t in range(100)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_exp_schedule():
    assert matching_weight("exp", 0, 30) == pytest.approx(0.95)
    assert matching_weight("exp", 1, 30) == pytest.approx(0.741, abs=5e-4)
    assert matching_weight("exp", 20, 30) == pytest.approx(0.05)
    assert all(0.05 <= matching_weight("exp", t, 200) <= 0.95 for t in range(200))


def test_poly_schedule():
    values = [matching_weight("poly", t, 200) for t in range(201)]
    assert all(0.0 <= w <= 1.0 for w in values)
    alpha10 = sum(c * 10**k for k, c in enumerate(POLY))
    assert matching_weight("poly", 10, 200) == pytest.approx(1.0 - min(max(alpha10, 0.0), 1.0), rel=1e-12)
    assert matching_weight("poly", 0, 200) == pytest.approx(1 - 0.204623704, rel=1e-12)
    # near t = 180 the fitted alpha exceeds 1 (w = 1 - alpha slightly negative): clipped to w = 0
    raw = [sum(c * t**k for k, c in enumerate(POLY)) for t in range(201)]
    assert max(raw) > 1.0 and min(values) == 0.0
    assert any(b > a for a, b in zip(values, values[1:]))  # not monotone (method.md)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("total", [5, 11, 30])
def test_linear_cosine_endpoints(name, total):
    w0, w1 = 0.8, 0.1
    assert matching_weight(name, 0, total, w0, w1) == pytest.approx(w0)
    assert matching_weight(name, total - 1, total, w0, w1) == pytest.approx(w1)
    values = [matching_weight(name, t, total, w0, w1) for t in range(total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_and_linear_midpoint():
    assert matching_weight("cosine", 5, 11, 0.8, 0.1) == pytest.approx(0.45)
    assert matching_weight("linear", 5, 11, 0.8, 0.1) == pytest.approx(0.45)
    # cosine lingers near w0 early: above the linear value in the first half
    assert matching_weight("cosine", 2, 11, 0.8, 0.1) > matching_weight("linear", 2, 11, 0.8, 0.1)


def test_constant_and_defaults():
    assert all(matching_weight("constant", t, 50, 0.3, 0.9) == 0.3 for t in range(50))
    assert matching_weight("linear", 0, 10) == pytest.approx(0.9)  # default w0
    assert matching_weight("linear", 9, 10) == pytest.approx(0.05)  # default w1
    assert set(SCHEDULES) == {"paper", "exp", "poly", "linear", "cosine", "constant"}


def test_unknown_schedule_names_closest():
    with pytest.raises(ConfigError) as info:
        matching_weight("cosin", 0, 10)
    assert "did you mean 'cosine'" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        matching_weight("papr", 0, 10)
