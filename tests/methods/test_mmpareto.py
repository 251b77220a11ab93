"""MMPareto: the combined encoder gradient is the min-norm (MGDA) direction when the fused and the
unimodal gradients conflict, the plain sum otherwise; per parameter tensor its norm is at least
that of the plain sum, times gamma = 1.5 (the released code's rule, the default)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modgap.data.base import Batch
from modgap.methods import METHODS, StepContext, build_method
from modgap.methods.mmpareto import min_norm_weight, pareto_combine
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import FUSIONS

from conftest import Enc, train_losses

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


def numpy_mmpareto(g_f: np.ndarray, g_u: np.ndarray, blocks, gamma: float) -> np.ndarray:
    """The released rule in plain numpy: weights from the whole vectors (uniform unless cos < 0,
    then the two-vector min-norm point), magnitude per block: gamma * max(1, |s_b| / |h_b|) * h_b."""
    if g_f @ g_u < 0:
        a = float(np.clip((g_u - g_f) @ g_u / ((g_f - g_u) @ (g_f - g_u)), 0.0, 1.0))
    else:
        a = 0.5
    h, s = 2 * (a * g_f + (1 - a) * g_u), g_f + g_u
    out = np.zeros_like(h)
    for lo, hi in blocks:
        out[lo:hi] = gamma * max(1.0, np.linalg.norm(s[lo:hi]) / np.linalg.norm(h[lo:hi])) * h[lo:hi]
    return out


def test_per_tensor_rescale_by_hand():
    # an encoder with two tensors: [w1, w2] and [b]; the gradients conflict (<g_f, g_u> = -1.05)
    g_f = np.array([1.0, 0.0, 0.5])
    g_u = np.array([-1.2, 0.1, 0.3])
    # a = <g_u - g_f, g_u> / |g_f - g_u|^2 = (2.64 + 0.01 - 0.06) / (4.84 + 0.01 + 0.04) = 2.59 / 4.89
    a = 2.59 / 4.89
    h = 2 * (a * g_f + (1 - a) * g_u)
    # tensor 1: |h_1| = 0.1170 < |s_1| = |(-0.2, 0.1)| = 0.2236: rescaled to 1.5 * 0.2236
    # tensor 2: |h_2| = 0.8119 > |s_2| = 0.8: kept as 1.5 * h_2 (the released `diff > 1` test)
    expected = np.concatenate([1.5 * math.sqrt(0.05) / np.linalg.norm(h[:2]) * h[:2], 1.5 * h[2:]])
    np.testing.assert_allclose(expected[2], 1.5 * 0.8118609406952965, rtol=1e-12)
    g, weight, cos = pareto_combine(torch.tensor(g_f), torch.tensor(g_u), 1.5, [(0, 2), (2, 3)])
    assert weight == pytest.approx(a, rel=1e-12) and cos < 0
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(expected, numpy_mmpareto(g_f, g_u, [(0, 2), (2, 3)], 1.5), rtol=1e-12)
    # one block (rescale="encoder"): the norm of the plain sum, times gamma
    g_enc, _, _ = pareto_combine(torch.tensor(g_f), torch.tensor(g_u), 1.5)
    np.testing.assert_allclose(g_enc.numpy(), 1.5 * np.linalg.norm(g_f + g_u) / np.linalg.norm(h) * h, rtol=1e-10)


def test_defaults_are_the_released_ones():
    options = METHODS.get("mmpareto").Options()
    assert options.magnitude == 1.5 and options.rescale == "tensor"


@pytest.mark.parametrize("rescale", ["tensor", "encoder"])
def test_backward_integrates_per_encoder_and_sums_for_heads(rescale):
    assert METHODS.get("mmpareto").fusion == "concat-heads"
    torch.manual_seed(0)
    dims = {"a": 4, "v": 3}
    model = MultimodalClassifier({"a": Enc(6, 4), "v": Enc(5, 3)}, FUSIONS.get("concat-heads")(dims, C))
    method = build_method({"name": "mmpareto", "rescale": rescale}, ("a", "v"), C, dims)
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
        flat = {k: torch.cat([grads[k][index[id(p)]].reshape(-1) for p in enc]).double().numpy() for k in ("cls", f"cls_{m}")}
        sizes = np.cumsum([0] + [p.numel() for p in enc])
        blocks = list(zip(sizes[:-1], sizes[1:])) if rescale == "tensor" else [(0, int(sizes[-1]))]
        expected = numpy_mmpareto(flat["cls"], flat[f"cls_{m}"], blocks, 1.5)
        got = torch.cat([p.grad.reshape(-1) for p in enc]).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
        assert not np.allclose(got, flat["cls"], rtol=1e-3, atol=1e-6)  # joint's encoder gradient: the fused CE's
        cos = flat["cls"] @ flat[f"cls_{m}"] / np.linalg.norm(flat["cls"]) / np.linalg.norm(flat[f"cls_{m}"])
        assert method.last[m]["cos"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
    for name, p in model.fusion.named_parameters():
        i = index[id(p)]
        plain = sum(g[i] for g in grads.values() if g[i] is not None)
        torch.testing.assert_close(p.grad, plain, msg=name)


def test_end_to_end(cli, tmp_path, joint_twin):
    cli.train(tmp_path / "r", "--method", "mmpareto")
    losses = train_losses(tmp_path / "r")
    assert set(losses[0]) == {"cls", "cls_pix", "cls_fou", "total"}  # the unimodal losses joint does not have
    assert [r["cls"] for r in losses] != [r["cls"] for r in joint_twin()]


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "mmpareto", "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor", epochs=1)
