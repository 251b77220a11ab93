"""PMR: Prototypical Modal Rebalance (Fan, Xu, Wang, Wang, Guo, CVPR 2023).

At the start of every epoch, class prototypes per modality are the mean feature of each class over
the train split (optionally an EMA with the previous ones):  c^m_k = mean_{i: y_i = k} h^m_i.
Each modality gets a non-parametric prototypical classifier

    q^m_i = softmax_k(-d(h^m_i, c^m_k)),   d = Euclidean distance (the released code; 'squared' optional),

its prototypical cross-entropy PCE^m = mean_i -log q^m_{i, y_i} and its batch score
s^m = sum_i q^m_{i, y_i}. With two modalities the imbalance ratio is rho = s^a / s^v and

    beta^a = clip(1/rho - 1, 0, 1),  beta^v = clip(rho - 1, 0, 1)     (PCE weights: the weaker one)
    gamma^a = clip(rho - 1, 0, 1),   gamma^v = clip(1/rho - 1, 0, 1)  (PER weights: the dominant one)

    L = CE(z, y) + alpha * sum_m beta^m PCE^m - mu * sum_m gamma^m H(q^m)

PCE/PER act while ``modulation_starts <= epoch <= modulation_ends``; the entropy term (PER, which
keeps the dominant modality's prototypical distribution flat) only for epochs < ``per_epochs``.
For M modalities: beta^m = clip(s_max / s^m - 1, 0, 1), gamma^m = clip(s^m / s_min - 1, 0, 1), which
is the pair above when M = 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, closest
from .base import Losses, Method, StepContext, cross_entropy, register
from .lfm import evaluation_mode

DISTANCES = ("euclidean", "squared")


def prototype_logits(h: torch.Tensor, prototypes: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """-d(h_i, c_k), (B, C). Prototypes are constants (no gradient); the gradient reaches h only."""
    sq = (h.unsqueeze(1) - prototypes.detach().unsqueeze(0)).pow(2).sum(-1)
    if distance == "squared":
        return -sq
    return -sq.clamp_min(1e-12).sqrt()  # the clamp keeps the gradient finite at d = 0


def class_sums(features: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums (C, d) of ``features``."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    return sums.index_add_(0, y, features.double())


def rebalance_coefficients(scores: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(beta, gamma) from the prototype scores s^m: beta^m = clip(s_max/s^m - 1, 0, 1) weights the
    prototypical CE of the weaker modalities, gamma^m = clip(s^m/s_min - 1, 0, 1) the entropy
    regulariser of the dominant ones."""
    tiny = 1e-12
    s_max, s_min = max(scores.values()), max(min(scores.values()), tiny)
    beta = {m: min(max(s_max / max(s, tiny) - 1.0, 0.0), 1.0) for m, s in scores.items()}
    gamma = {m: min(max(s / s_min - 1.0, 0.0), 1.0) for m, s in scores.items()}
    return beta, gamma


@register
class PMR(Method):
    name = "pmr"
    summary = "PMR: prototypical CE for the weaker modality, prototype-entropy regulariser on the dominant one"

    @dataclass
    class Options:
        alpha: float = 1.0
        """Scale of the prototypical CE (PCE) coefficient: the released code's default (--alpha 1.0); its
        run scripts use 1.0 to 3.0 per dataset and fusion (2.0 for CREMA-D and AVE with concat)."""
        mu: float = 0.01
        """Scale of the prototypical entropy regulariser (PER) on the dominant modality. Not fixed in
        the released code (which has no PER); 0.01 as in public re-implementations."""
        per_epochs: int = 10
        """PER acts in the early epochs only: epoch < per_epochs (paper: "during the early training
        stage"; 10 as in public re-implementations)."""
        modulation_starts: int = 0
        """First epoch with PCE/PER (released run scripts: 0)."""
        modulation_ends: int = 70
        """Last epoch with PCE/PER, inclusive (released run scripts: 70 of 130 epochs)."""
        momentum: float = 0.0
        """Prototype EMA: c = (1 - momentum) c_new + momentum c_old (released run scripts: 0.0)."""
        distance: str = "euclidean"
        """euclidean (released code) or squared (prototypical networks)."""
        proto_batches: int = 0
        """Train batches used for the prototypes (0: the whole train split; the released code uses
        the first tenth of its loader on most datasets)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.distance not in DISTANCES:
            raise ConfigError(f"unknown method.distance '{options.distance}'{closest(options.distance, DISTANCES)}")
        if not 0.0 <= options.momentum < 1.0:
            raise ConfigError("pmr: method.momentum must lie in [0, 1)")
        if options.alpha < 0 or options.mu < 0 or options.proto_batches < 0:
            raise ConfigError("pmr: method.alpha, method.mu and method.proto_batches must be >= 0")
        for m in self.modalities:
            self.register_buffer(f"proto_{m}", torch.zeros(num_classes, feature_dims[m]))
        self.register_buffer("proto_ready", torch.zeros((), dtype=torch.bool))
        self.last: dict[str, Any] = {}

    def prototypes(self, m: str) -> torch.Tensor:
        return getattr(self, f"proto_{m}")

    # ---- prototypes --------------------------------------------------------------------------
    @torch.no_grad()
    def compute_prototypes(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Class means of every modality's features over the train split (model in evaluation mode)."""
        if ctx.iterate is None:
            raise RuntimeError("pmr needs ctx.iterate to pass over the train split")
        sums: dict[str, torch.Tensor] = {}
        counts = None
        with evaluation_mode(ctx.model, self):
            for i, batch in enumerate(ctx.iterate("train")):
                if self.options.proto_batches and i >= self.options.proto_batches:
                    break
                feats = ctx.model.encode(batch.inputs)
                c = torch.bincount(batch.y, minlength=self.num_classes).double()
                counts = c if counts is None else counts + c
                for m in self.modalities:
                    s = class_sums(feats[m], batch.y, self.num_classes)
                    sums[m] = s if m not in sums else sums[m] + s
        if counts is None:
            raise RuntimeError("pmr: the train split is empty")
        counts = ctx.all_reduce_mean(counts)
        means = {}
        for m in self.modalities:
            total = ctx.all_reduce_mean(sums[m])
            seen = counts > 0
            mean = self.prototypes(m).double().clone()  # a class absent from the pass keeps its prototype
            mean[seen] = total[seen] / counts[seen].unsqueeze(1)
            means[m] = mean.to(self.prototypes(m).dtype)
        return means

    def on_epoch_start(self, ctx: StepContext) -> None:
        if not self.options.modulation_starts <= ctx.epoch <= self.options.modulation_ends:
            return  # prototypes are only used inside the modulation epochs
        means = self.compute_prototypes(ctx)
        k = self.options.momentum if bool(self.proto_ready) else 0.0
        for m in self.modalities:
            self.prototypes(m).copy_((1.0 - k) * means[m] + k * self.prototypes(m))
        self.proto_ready.fill_(True)

    # ---- the loss ----------------------------------------------------------------------------
    def scores(self, logits: dict[str, torch.Tensor], y: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        """s^m = sum_i softmax(-d)[i, y_i] over the batch (averaged over processes)."""
        s = torch.stack([F.softmax(logits[m].detach(), 1).gather(1, y[:, None]).sum() for m in self.modalities])
        s = ctx.all_reduce_mean(s)
        return {m: float(v) for m, v in zip(self.modalities, s)}

    def losses(self, out, batch, ctx) -> Losses:
        cls = cross_entropy(out.fused, batch.y)
        o = self.options
        active = bool(self.proto_ready) and o.modulation_starts <= ctx.epoch <= o.modulation_ends
        if not active:
            return Losses(cls, {"cls": cls})
        logits = {m: prototype_logits(out.features[m], self.prototypes(m), o.distance) for m in self.modalities}
        scores = self.scores(logits, batch.y, ctx)
        beta, gamma = rebalance_coefficients(scores)
        pce = sum(beta[m] * F.cross_entropy(logits[m], batch.y) for m in self.modalities)
        total = cls + o.alpha * pce
        terms = {"cls": cls, "pce": pce}
        if ctx.epoch < o.per_epochs and o.mu > 0:
            per = sum(gamma[m] * entropy(logits[m]) for m in self.modalities)
            total = total - o.mu * per
            terms["entropy"] = per
        self.last = {"scores": scores, "beta": beta, "gamma": gamma}
        return Losses(total, terms)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the entropy of softmax(logits)."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()
