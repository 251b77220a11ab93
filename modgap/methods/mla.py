"""MLA: Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal, Yao, CVPR 2024).

Training alternates over modalities with one head shared by all of them (fusion 'shared'): the
optimiser step t trains modality m = t mod M alone, loss CE(head(h_m), y), so the modalities never
compete inside one gradient. To keep the shared head from forgetting what it learned from the
other modalities, its gradient is modified as in orthogonal weight modification (OWM, Zeng et al.
2019, which the paper builds on). With the head's input augmented by a constant 1 (weight and bias
together, x = [h; 1]) and P a running projector, initially the identity:

    G_head <- G_head P                                   (before the step)
    P <- P - (P x)(P x)^T / (alpha + x^T P x),  x = batch mean of [h_m; 1]   (after the step)

P is the recursive-least-squares inverse of alpha I + sum_t x_t x_t^T, so each update of the head
is (nearly, exactly as alpha -> 0) orthogonal to every stored mean input: the head's outputs on
what it has already fitted do not move. alpha decays within each epoch from ``owm_alpha`` to
``owm_alpha * owm_alpha_decay``, as in the released code.

At evaluation the prediction is the uncertainty-weighted fusion of the unimodal predictions:
e_m = -sum_c p_m,c log p_m,c per sample and lambda_m = exp(max_n e_n - e_m) / sum_k exp(max_n e_n - e_k)
(= softmax(-e)_m); fused = sum_m lambda_m z_m (``combine=logits``, released code) or
log sum_m lambda_m p_m (``combine=probs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, closest
from ..models.classifier import ModelOutput
from ..models.fusion_shared import SharedFusion
from .base import Losses, Method, StepContext, cross_entropy, register

COMBINE = ("logits", "probs")


def owm_update(P: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """P - (P x)(P x)^T / (alpha + x^T P x): the projector after storing input direction ``x``."""
    Px = P @ x
    denom = alpha + float(x @ Px)
    if denom <= 1e-12 * max(float(x @ x), 1e-300):
        return P  # x already lies in the stored subspace (alpha = 0): nothing to add
    P = P - torch.outer(Px, Px) / denom
    return 0.5 * (P + P.T)  # keep it symmetric against rounding


def entropy_weights(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """lambda (M, B): per sample, softmax over modalities of minus the prediction entropy."""
    ent = []
    for z in logits.values():
        logp = F.log_softmax(z.float(), 1)
        ent.append(-(logp.exp() * logp).sum(1))
    e = torch.stack(ent)  # (M, B)
    return torch.softmax(-e, 0)  # = exp(max_n e_n - e_m) / sum_k exp(max_n e_n - e_k)


def entropy_fusion(logits: dict[str, torch.Tensor], combine: str = "logits") -> torch.Tensor:
    """The test-time fusion: sum_m lambda_m z_m, or log sum_m lambda_m softmax(z_m)."""
    lam = entropy_weights(logits).unsqueeze(-1)  # (M, B, 1)
    z = torch.stack(list(logits.values())).float()  # (M, B, C)
    if combine == "probs":
        return torch.logsumexp(torch.log(lam.clamp_min(1e-30)) + F.log_softmax(z, -1), 0)
    return (lam * z).sum(0)


@register
class MLA(Method):
    name = "mla"
    summary = "MLA: alternating unimodal steps on a shared head (OWM-projected), entropy-weighted fusion"
    fusion = "shared"
    leaves_parameters_unused = True  # one modality's encoder per step

    @dataclass
    class Options:
        owm_alpha: float = 0.1
        """alpha of the projector update at the start of each epoch (released code: 0.1 * 0.1**(b/B))."""
        owm_alpha_decay: float = 0.1
        """alpha falls to owm_alpha * owm_alpha_decay by the end of each epoch (released code: 0.1;
        1 keeps it constant)."""
        combine: str = "logits"
        """Test-time fusion of the weighted unimodal predictions: logits (released code) or probs."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.combine not in COMBINE:
            raise ConfigError(f"unknown method.combine '{options.combine}'{closest(options.combine, COMBINE)}")
        if options.owm_alpha < 0 or options.owm_alpha_decay <= 0:
            raise ConfigError("mla: method.owm_alpha must be >= 0 and method.owm_alpha_decay > 0")
        sizes = set(feature_dims.values())
        if len(sizes) != 1:
            raise ConfigError("mla: every modality's features must have the same size (one shared head)")
        self.register_buffer("projector", torch.eye(sizes.pop() + 1, dtype=torch.float64))
        self._input: torch.Tensor | None = None

    def modality_at(self, step: int) -> str:
        """The modality trained at optimiser step ``step`` (round-robin)."""
        return self.modalities[step % len(self.modalities)]

    def alpha_at(self, ctx: StepContext) -> float:
        within = (ctx.step % max(ctx.steps_per_epoch, 1)) / max(ctx.steps_per_epoch, 1)
        return self.options.owm_alpha * self.options.owm_alpha_decay ** within

    # ---- hooks -------------------------------------------------------------------------------
    def losses(self, out, batch, ctx) -> Losses:
        m = self.modality_at(ctx.step)
        loss = cross_entropy(out.logits[m], batch.y)
        h = out.features[m].detach()
        self._input = torch.cat([h.mean(0).double(), h.new_ones(1, dtype=torch.float64)])
        return Losses(loss, {"cls": loss})

    @staticmethod
    def shared_head(ctx: StepContext) -> torch.nn.Linear:
        if not isinstance(ctx.model.fusion, SharedFusion):
            raise RuntimeError("mla needs the 'shared' fusion (one head for every modality)")
        return ctx.model.fusion.head

    def after_backward(self, ctx: StepContext) -> None:
        head = self.shared_head(ctx)
        w, b = head.weight, head.bias
        if w.grad is None:
            return
        gb = b.grad if b is not None and b.grad is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
        grad = torch.cat([w.grad, gb[:, None]], 1).double() @ self.projector
        w.grad.copy_(grad[:, :-1].to(w.grad.dtype))
        if b is not None and b.grad is not None:
            b.grad.copy_(grad[:, -1].to(b.grad.dtype))

    def after_step(self, ctx: StepContext) -> None:
        if self._input is None:
            return
        x = ctx.all_reduce_mean(self._input)
        self.projector.copy_(owm_update(self.projector, x, self.alpha_at(ctx)))
        self._input = None

    def on_skipped_step(self, ctx: StepContext) -> None:
        self._input = None  # the step was not taken: store nothing for it

    def predict(self, out: ModelOutput) -> torch.Tensor:
        return entropy_fusion(out.logits, self.options.combine)
