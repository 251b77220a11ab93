"""MMPareto: the combined encoder gradient is the min-norm (MGDA) direction when the fused and the
unimodal gradients conflict, the plain sum otherwise, and has the norm of the plain sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modgap.data.base import Batch
from modgap.methods.base import METHODS, StepContext, build_method
from modgap.methods.mmpareto import min_norm_weight, pareto_combine
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusion import FUSIONS

C = 3


def brute_force_min_norm(g1: np.ndarray, g2: np.ndarray) -> float:
    grid = np.linspace(0.0, 1.0, 100001)
    norms = [np.linalg.norm(a * g1 + (1 - a) * g2) for a in grid]
    return float(grid[int(np.argmin(norms))])


def test_conflicting_gradients_get_the_min_norm_direction_and_the_plain_sum_norm():
    g_f = np.array([1.0, 0.2, 0.0])
    g_u = np.array([-2.0, 1.0, 0.5])
    assert g_f @ g_u < 0
    a = brute_force_min_norm(g_f, g_u)
    assert min_norm_weight(torch.tensor(g_f), torch.tensor(g_u)) == pytest.approx(a, abs=1e-4)
    direction = a * g_f + (1 - a) * g_u
    expected = direction / np.linalg.norm(direction) * np.linalg.norm(g_f + g_u)
    g, weight, cos = pareto_combine(torch.tensor(g_f), torch.tensor(g_u))
    assert cos < 0 and weight == pytest.approx(a, abs=1e-4)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-4, atol=1e-6)
    # the min-norm direction does not conflict with either gradient
    assert float(g @ torch.tensor(g_f)) >= -1e-9 and float(g @ torch.tensor(g_u)) >= -1e-9
    g15, _, _ = pareto_combine(torch.tensor(g_f), torch.tensor(g_u), magnitude=1.5)
    np.testing.assert_allclose(g15.numpy(), 1.5 * expected, rtol=1e-4, atol=1e-6)


def test_agreeing_gradients_are_summed():
    g_f = torch.tensor([1.0, 0.5, -0.2])
    g_u = torch.tensor([3.0, -0.5, 0.1])
    assert float(g_f @ g_u) > 0
    g, weight, _ = pareto_combine(g_f, g_u)
    assert weight == 0.5
    torch.testing.assert_close(g, g_f + g_u)


def test_min_norm_weight_of_parallel_and_equal_gradients():
    # the smaller of two aligned gradients is the min-norm point of the segment; equal ones: 1/2
    assert min_norm_weight(torch.tensor([5.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0
    assert min_norm_weight(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.5


class Enc(nn.Linear):
    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.out_dim = o


def test_backward_integrates_per_encoder_and_sums_for_heads():
    assert METHODS.get("mmpareto").fusion == "concat-heads"
    torch.manual_seed(0)
    dims = {"a": 4, "v": 3}
    model = MultimodalClassifier({"a": Enc(6, 4), "v": Enc(5, 3)}, FUSIONS.get("concat-heads")(dims, C))
    method = build_method({"name": "mmpareto"}, ("a", "v"), C, dims)
    params = list(model.parameters())
    ctx = StepContext(model, torch.optim.SGD(params, lr=0.1), params)
    batch = Batch({"a": torch.randn(16, 6), "v": torch.randn(16, 5)}, torch.randint(0, C, (16,)), torch.arange(16))
    losses = method.losses(model(batch.inputs), batch, ctx)
    assert set(losses.terms) == {"cls", "cls_a", "cls_v"}
    grads = {k: torch.autograd.grad(v, params, retain_graph=True, allow_unused=True) for k, v in losses.terms.items()}
    method.backward(losses, ctx)
    index = {id(p): i for i, p in enumerate(params)}
    for m in dims:
        enc = list(model.encoders[m].parameters())
        flat = {k: torch.cat([grads[k][index[id(p)]].reshape(-1) for p in enc]) for k in ("cls", f"cls_{m}")}
        expected, _, cos = pareto_combine(flat["cls"], flat[f"cls_{m}"])
        got = torch.cat([p.grad.reshape(-1) for p in enc])
        torch.testing.assert_close(got, expected)
        assert method.last[m]["cos"] == pytest.approx(cos)
    for name, p in model.fusion.named_parameters():
        i = index[id(p)]
        plain = sum(g[i] for g in grads.values() if g[i] is not None)
        torch.testing.assert_close(p.grad, plain, msg=name)


def test_end_to_end(cli, tmp_path):
    summary = cli.train(tmp_path / "r", "--method", "mmpareto")
    assert all(math.isfinite(v) for part in summary["test"].values() for v in part.values())


def test_three_modalities(cli, tmp_path):
    summary = cli.train(tmp_path / "r3", "--method", "mmpareto", "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert all(math.isfinite(v) for part in summary["test"].values() for v in part.values())
