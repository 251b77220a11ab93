"""MLA: Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal, Yao, CVPR 2024).

Training alternates over modalities with one head shared by all of them (fusion 'shared'): the
optimiser step t trains modality m = t mod M alone, loss CE(head(h_m), y), so the modalities never
compete inside one gradient. To keep the shared head from forgetting what it learned from the
other modalities, its gradient is modified as in orthogonal weight modification (OWM, Zeng et al.
2019, which the paper builds on), with a projector P, initially the identity, and x the batch mean
of the head's input h_m. Defaults follow the released code (utils/utils.py: GSPlugin.before_update)
with its two bugs fixed (see docs/methods/mla.md):

    P <- P - (P x)(P x)^T / (alpha + x^T P x);  P <- P / ||P||_F;  G_W <- G_W P   (after backward)

i.e. the current input is stored first, P is renormalised, then the head's weight gradient (not its
bias) is projected; the first step of training is left alone. Options give the textbook OWM order
(``owm_order=project_first``: project against earlier inputs, store after the step), no
renormalisation (``owm_normalize=false``: P stays the recursive-least-squares inverse of
alpha I + sum_t x_t x_t^T, so an update is orthogonal to every stored input as alpha -> 0) and the
bias projected with the weight through x = [h; 1] (``owm_bias=true``). alpha decays within each
epoch from ``owm_alpha`` to ``owm_alpha * owm_alpha_decay``, as in the released code.

At evaluation the prediction is the uncertainty-weighted fusion of the unimodal predictions:
e_m = -sum_c p_m,c log p_m,c per sample and lambda_m = exp(max_n e_n - e_m) / sum_k exp(max_n e_n - e_k)
(= softmax(-e)_m); fused = sum_m lambda_m z_m (``combine=logits``, released code) or
log sum_m lambda_m p_m (``combine=probs``). ``test_fusion=fixed`` uses constant weights instead
(the released code without --dynamic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.classifier import ModelOutput
from ..models.fusions import SharedFusion
from .base import Losses, Method, StepContext, check_choice, cross_entropy, register

COMBINE = ("logits", "probs")
ORDERS = ("store_first", "project_first")
TEST_FUSIONS = ("entropy", "fixed")
ALTERNATE = ("batch", "step")


def owm_update(P: torch.Tensor, x: torch.Tensor, alpha: float, normalize: bool = False) -> torch.Tensor:
    """P - (P x)(P x)^T / (alpha + x^T P x): the projector after storing input direction ``x``;
    with ``normalize``, then divided by its Frobenius norm (released code)."""
    Px = P @ x
    denom = alpha + float(x @ Px)
    if denom > 1e-12 * max(float(x @ x), 1e-300):  # else x already lies in the stored subspace (alpha = 0)
        P = P - torch.outer(Px, Px) / denom
        P = 0.5 * (P + P.T)  # keep it symmetric against rounding
    if normalize:
        P = P / P.norm()
    return P


def entropy_weights(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """lambda (M, B): per sample, softmax over modalities of minus the prediction entropy."""
    ent = []
    for z in logits.values():
        logp = F.log_softmax(z.float(), 1)
        ent.append(-(logp.exp() * logp).sum(1))
    e = torch.stack(ent)  # (M, B)
    return torch.softmax(-e, 0)  # = exp(max_n e_n - e_m) / sum_k exp(max_n e_n - e_k)


def entropy_fusion(
    logits: dict[str, torch.Tensor], combine: str = "logits", weights: tuple[float, ...] | None = None
) -> torch.Tensor:
    """The test-time fusion: sum_m lambda_m z_m, or log sum_m lambda_m softmax(z_m); lambda from the
    entropies, or the constant ``weights`` (one per modality) when given."""
    z = torch.stack(list(logits.values())).float()  # (M, B, C)
    if weights is None:
        lam = entropy_weights(logits).unsqueeze(-1)  # (M, B, 1)
    else:
        lam = torch.tensor(weights, dtype=z.dtype, device=z.device)[:, None, None].expand(-1, z.shape[1], 1)
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
        alternate: str = "batch"
        """batch (released code, main.py: train_epoch): every batch trains each modality in turn, one
        optimiser step per modality (M steps per batch). step: one modality per batch, round-robin
        over the batches (modgap's earlier default; 1/M of the released updates per epoch)."""
        owm: bool = True
        """Modify the shared head's gradient. False is what the released code actually runs: its
        GSPlugin.before_update looks for a parameter named "module.weight" in the nn.Linear head, whose
        parameters are "weight" and "bias", so it never projects (a bug, not the default)."""
        owm_order: str = "store_first"
        """store_first (released code): store this step's mean input in P, then project this step's
        gradient (which also removes its own component along that input). project_first: project
        against the inputs of earlier steps only, store after the optimiser step (textbook OWM)."""
        owm_normalize: bool = True
        """Divide P by its Frobenius norm after every update (released code). False keeps the RLS
        projector, whose updates are orthogonal to the stored inputs as alpha -> 0."""
        owm_bias: bool = False
        """False (released code): project the head's weight gradient only, with x = mean h. True: weight
        and bias together through x = [mean h; 1], so the bias cannot move outputs on stored inputs."""
        owm_alpha: float = 0.1
        """alpha of the projector update at the start of each epoch (released code: 0.1 * 0.1**(b/B))."""
        owm_alpha_decay: float = 0.1
        """alpha falls to owm_alpha * owm_alpha_decay by the end of each epoch (released code: 0.1;
        1 keeps it constant)."""
        combine: str = "logits"
        """Test-time fusion of the weighted unimodal predictions: logits (released code) or probs."""
        test_fusion: str = "entropy"
        """entropy: per-sample uncertainty weights (the paper; released code with --dynamic). fixed:
        constant weights ``fixed_weights`` (released code without --dynamic)."""
        fixed_weights: tuple[float, ...] = ()
        """Weights per modality, in the order of the data's modalities, for test_fusion=fixed; empty:
        1/M each (released code: --av_alpha 0.5; three modalities --a_alpha 0.35 --v_alpha 0.25
        --t_alpha 0.4)."""

    projector: torch.Tensor  # a buffer (register_buffer in __init__), declared for the type checker

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        check_choice(options, "combine", COMBINE)
        check_choice(options, "alternate", ALTERNATE)
        check_choice(options, "owm_order", ORDERS)
        check_choice(options, "test_fusion", TEST_FUSIONS)
        if options.fixed_weights and len(options.fixed_weights) != len(modalities):
            raise ConfigError(f"mla: method.fixed_weights needs one weight per modality ({len(modalities)})")
        if options.owm_alpha < 0 or options.owm_alpha_decay <= 0:
            raise ConfigError("mla: method.owm_alpha must be >= 0 and method.owm_alpha_decay > 0")
        sizes = set(feature_dims.values())
        if len(sizes) != 1:
            raise ConfigError("mla: every modality's features must have the same size (one shared head)")
        size = sizes.pop() + (1 if options.owm_bias else 0)
        self.register_buffer("projector", torch.eye(size, dtype=torch.float64))
        self._input: torch.Tensor | None = None
        self._before: torch.Tensor | None = None  # P before a store_first update, restored if the step is skipped

    def steps_per_batch(self) -> int:
        return len(self.modalities) if self.options.alternate == "batch" else 1

    def modality_at(self, step: int) -> str:
        """The modality trained at optimiser step ``step`` (round-robin; with alternate=batch, the
        M steps on one batch take the modalities in order)."""
        return self.modalities[step % len(self.modalities)]

    def alpha_at(self, ctx: StepContext) -> float:
        """owm_alpha * owm_alpha_decay ** (b / B), b the batch's index in the epoch and B the batches."""
        per = self.steps_per_batch()
        batches = max(ctx.steps_per_epoch // per, 1)
        within = ((ctx.step % max(ctx.steps_per_epoch, 1)) // per) / batches
        return self.options.owm_alpha * self.options.owm_alpha_decay**within

    # ---- hooks -------------------------------------------------------------------------------
    def losses(self, out, batch, ctx) -> Losses:
        m = self.modality_at(ctx.step)
        loss = cross_entropy(out.logits[m], batch.y)
        x = out.features[m].detach().mean(0).double()
        self._input = torch.cat([x, x.new_ones(1)]) if self.options.owm_bias else x
        return Losses(loss, {"cls": loss})

    @staticmethod
    def shared_head(ctx: StepContext) -> torch.nn.Linear:
        if not isinstance(ctx.model.fusion, SharedFusion):
            raise RuntimeError("mla needs the 'shared' fusion (one head for every modality)")
        return ctx.model.fusion.head

    def after_backward(self, ctx: StepContext) -> None:
        head = self.shared_head(ctx)
        w, b = head.weight, head.bias
        if not self.options.owm or w.grad is None:
            return
        if self.options.owm_order == "store_first":
            if self._input is None:
                return
            x, self._input = ctx.all_reduce_mean(self._input), None
            if ctx.step == 0:
                return  # released code: the very first step stores nothing and is not projected
            self._before = self.projector.clone()
            self.projector.copy_(owm_update(self.projector, x, self.alpha_at(ctx), self.options.owm_normalize))
        P = self.projector
        if self.options.owm_bias:
            gb = (
                b.grad
                if b is not None and b.grad is not None
                else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
            )
            grad = torch.cat([w.grad, gb[:, None]], 1).double() @ P
            w.grad.copy_(grad[:, :-1].to(w.grad.dtype))
            if b is not None and b.grad is not None:
                b.grad.copy_(grad[:, -1].to(b.grad.dtype))
        else:
            w.grad.copy_((w.grad.double() @ P).to(w.grad.dtype))

    def after_step(self, ctx: StepContext) -> None:
        self._before = None
        if self._input is None or not self.options.owm or self.options.owm_order != "project_first":
            self._input = None
            return
        x = ctx.all_reduce_mean(self._input)
        self.projector.copy_(owm_update(self.projector, x, self.alpha_at(ctx), self.options.owm_normalize))
        self._input = None

    def on_skipped_step(self, ctx: StepContext) -> None:
        self._input = None  # the step was not taken: store nothing for it
        if self._before is not None:
            self.projector.copy_(self._before)
            self._before = None

    def predict(self, out: ModelOutput) -> torch.Tensor:
        if self.options.test_fusion == "fixed":
            weights = self.options.fixed_weights or (1.0 / len(self.modalities),) * len(self.modalities)
            return entropy_fusion(out.logits, self.options.combine, tuple(weights))
        return entropy_fusion(out.logits, self.options.combine)
