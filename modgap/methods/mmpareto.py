"""mmpareto: MMPareto, innocent unimodal assistance (Wei & Hu, ICML 2024).

Losses: the fused CE L_f plus each modality's unimodal CE L_m (on its own head). Encoder m's
parameters theta_m get gradients from two losses, g_f = dL_f/dtheta_m and g_u = dL_m/dtheta_m.
The weights come from the whole encoder (one flattened vector over all its parameter tensors):

    cos(g_f, g_u) >= 0:  a = 1/2                       (no conflict: uniform weights)
    cos(g_f, g_u) <  0:  a = argmin_{a in [0,1]} ||a g_f + (1-a) g_u||^2     (MGDA, two vectors)
                           = clip(<g_u - g_f, g_u> / ||g_f - g_u||^2, 0, 1)

and the magnitude is set per block b (``rescale``: each parameter tensor, the released code's
rule, or the whole encoder as one block), with s_b = g_f,b + g_u,b:

    h_b = 2 (a g_f,b + (1 - a) g_u,b)
    g_b = magnitude * max(1, ||s_b|| / ||h_b||) * h_b

so g_b has the direction of h_b and at least the norm of the plain sum s_b, times ``magnitude``
(1.5 in the released code). For the whole encoder ||h|| <= ||s|| always (the min-norm point is
never longer than s/2), so there the max is the ratio. Without conflict h_b = s_b and
g_b = magnitude * s_b. Heads (and any parameter outside the encoders) get the plain sum of all
the losses' gradients.

Implemented in ``backward`` with one ``torch.autograd.grad`` per loss; the gradients are averaged
over processes (``ctx.all_reduce_mean``) before the cosine and the weights are computed.
The model is the MMPareto architecture, fusion ``concat-heads``: a fused head on the concatenated
features and a unimodal head per modality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import Losses, Method, StepContext, cross_entropy, register, tensor_sum


def min_norm_weight(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """a in [0, 1] minimising ||a g1 + (1 - a) g2|| (the closed-form two-task MGDA solution)."""
    diff = g1 - g2
    denom = float(diff.pow(2).sum())
    if denom <= 0.0:
        return 0.5
    return min(max(float((-diff * g2).sum()) / denom, 0.0), 1.0)


def pareto_combine(
    g_f: torch.Tensor, g_u: torch.Tensor, magnitude: float = 1.0, spans: list[tuple[int, int]] | None = None
) -> tuple[torch.Tensor, float, float]:
    """MMPareto's integration of the fused and the unimodal gradient of one encoder.

    g_f, g_u: the encoder's flattened gradients. The weights use the whole vectors; the magnitude
    is set per block ``spans`` (start, end) of the vector (None: one block, the whole encoder):
    g_b = magnitude * max(1, ||s_b|| / ||h_b||) * h_b with h = 2 (a g_f + (1 - a) g_u), s = g_f + g_u.
    A block with h_b = 0 gets 0. Returns (gradient, a, cos): a is the weight on g_f (1/2 without conflict).
    """
    n_f, n_u = float(g_f.norm()), float(g_u.norm())
    cos = float((g_f * g_u).sum()) / (n_f * n_u) if n_f > 0 and n_u > 0 else 0.0
    a = min_norm_weight(g_f, g_u) if cos < 0 else 0.5
    h = 2.0 * (a * g_f + (1.0 - a) * g_u)
    s = g_f + g_u
    out = torch.zeros_like(h)
    for start, end in spans if spans is not None else [(0, h.numel())]:
        h_norm = float(h[start:end].norm())
        if h_norm == 0.0:
            continue
        out[start:end] = h[start:end] * (magnitude * max(1.0, float(s[start:end].norm()) / h_norm))
    return out, a, cos


def _flat(grads, params) -> torch.Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


@register
class MMPareto(Method):
    name = "mmpareto"
    summary = "MMPareto: fused + unimodal CE; per encoder, MGDA weights when the two gradients conflict, plain-sum norm"
    fusion = "concat-heads"

    @dataclass
    class Options:
        magnitude: float = 1.5
        """Factor gamma on the integrated encoder gradient: the released code multiplies by
        gamma = 1.5 (code/MMPareto.py: train_epoch, ``gamma=1.5``), also without conflict; 1 keeps
        the norm of the plain sum (modgap's earlier default)."""
        rescale: str = "tensor"
        """Blocks whose norm is set to max(||g_f + g_u||, ||h||): "tensor", each parameter tensor
        of the encoder (the released code: the loop over ``model.named_parameters()``, ``diff > 1``);
        "encoder", the whole encoder as one vector (modgap's earlier rule). The weights always use
        the whole encoder."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.magnitude <= 0:
            raise ConfigError(f"method.magnitude of mmpareto must be positive, got {options.magnitude}")
        if options.rescale not in ("tensor", "encoder"):
            raise ConfigError(f"method.rescale of mmpareto must be 'tensor' or 'encoder', got {options.rescale!r}")
        self.last: dict[str, dict[str, float]] = {}

    def losses(self, out, batch, ctx) -> Losses:
        fused = cross_entropy(out.fused, batch.y)
        terms = {"cls": fused, **{f"cls_{m}": cross_entropy(out.logits[m], batch.y) for m in self.modalities}}
        return Losses(tensor_sum(terms.values()), terms)

    def takes_own_gradients(self, ctx: StepContext) -> bool:
        return True

    def backward(self, losses: Losses, ctx: StepContext) -> None:
        params = list(ctx.params)
        names = ["cls", *(f"cls_{m}" for m in self.modalities)]
        flat: dict[str, torch.Tensor] = {}
        used: set[int] = set()
        for k, name in enumerate(names):
            grads = torch.autograd.grad(losses.terms[name], params, retain_graph=k < len(names) - 1, allow_unused=True)
            used.update(id(p) for p, g in zip(params, grads, strict=True) if g is not None)
            flat[name] = ctx.all_reduce_mean(_flat(grads, params))
        combined = tensor_sum(flat.values())  # the plain sum, kept for every parameter outside the encoders
        offsets, start = {}, 0
        for p in params:
            offsets[id(p)] = (start, start + p.numel())
            start += p.numel()
        for m in self.modalities:
            spans = [offsets[id(p)] for p in ctx.model.encoders[m].parameters() if id(p) in offsets]
            if not spans:
                continue
            index = torch.cat([torch.arange(a, b, device=combined.device) for a, b in spans])
            blocks, at = [], 0  # the encoder's tensors as blocks of its flattened vector
            for a, b in spans:
                blocks.append((at, at + b - a))
                at += b - a
            g, weight, cos = pareto_combine(
                flat["cls"][index],
                flat[f"cls_{m}"][index],
                self.options.magnitude,
                blocks if self.options.rescale == "tensor" else None,
            )
            combined[index] = g
            self.last[m] = {"weight_fused": weight, "cos": cos}
        for p in params:
            if id(p) not in used:
                continue  # no loss reaches it: leave its gradient as it is (None)
            a, b = offsets[id(p)]
            grad = combined[a:b].view_as(p)
            p.grad = grad.clone() if p.grad is None else p.grad + grad
