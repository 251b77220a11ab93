"""lfm-lb, variant=official: the released code's update of the matching weight, against the released formula.

Released code (njustkmg/NeurIPS24-LFM, Crema_epoch_learnable.py: getAlpha_Learnable), on a fixed batch of 8
held-out samples, once per epoch:

    L = alpha_cls * L_cls + w * L_match                      (no factor 2 here; training uses 2 * (...))
    hvp = grad_theta < grad_theta L, stopgrad(grad_theta L_cls) >
    g = mean of hvp over the entries of the FIRST parameter tensor
    w <- clip(w - lr_e * g, 0.05, 0.95),  lr_e = 1e-4 * 0.5 ** (e // 20) before the training of epoch e

The expected numbers here are built from an explicit Hessian of a flat parameter vector and a
Jensen-Shannon divergence written out in plain tensor algebra, not from modgap's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgap.data.base import Batch
from modgap.methods.base import StepContext
from modgap.methods.hypergrad import official_matching_gradient
from modgap.methods.lfm import LFMLearned
from modgap.models.classifier import ModelOutput

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
