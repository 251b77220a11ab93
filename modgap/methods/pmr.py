"""PMR: Prototypical Modal Rebalance (Fan, Xu, Wang, Wang, Guo, CVPR 2023).

Class prototypes per modality are the mean feature of each class, computed at the start of every
modulation epoch (released code: over the first tenth of a shuffled pass of the train split, model in
evaluation mode; optionally an EMA with the previous ones):  c^m_k = mean_{i: y_i = k} h^m_i.
Each modality gets a non-parametric prototypical classifier

    q^m_i = softmax_k(-d(h^m_i, c^m_k)),   d = Euclidean distance (the released code; 'squared' optional),

its prototypical cross-entropy PCE^m = mean_i -log q^m_{i, y_i} and its batch score
s^m = sum_i q^m_{i, y_i}. With two modalities the imbalance ratio is rho = s^a / s^v.

rule = "released" (default; main_Prototype_grad.py: train_epoch): a hard switch, no entropy term,

    L = CE(z, y) + alpha * PCE^slower          (the modality with the smaller score; none on a tie)

rule = "paper" (the paper's clipped coefficients and its entropy regulariser PER):

    beta^a = clip(1/rho - 1, 0, 1),  beta^v = clip(rho - 1, 0, 1)     (PCE weights: the weaker one)
    gamma^a = clip(rho - 1, 0, 1),   gamma^v = clip(1/rho - 1, 0, 1)  (PER weights: the dominant one)
    L = CE(z, y) + alpha * sum_m beta^m PCE^m - mu * sum_m gamma^m H(q^m)   (H only for epoch < per_epochs)

PCE/PER act while ``modulation_starts <= epoch <= modulation_ends``. For M modalities: released,
alpha on every modality scoring below the best; paper, beta^m = clip(s_max / s^m - 1, 0, 1),
gamma^m = clip(s^m / s_min - 1, 0, 1). Both are the pair above when M = 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Losses, Method, StepContext, check_choice, cross_entropy, evaluation_mode, register, tensor_sum

DISTANCES = ("euclidean", "squared")
RULES = ("released", "paper")
PROTO_PASSES = ("shuffled", "ordered")


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


def released_coefficients(scores: dict[str, float]) -> dict[str, float]:
    """PCE weight (before alpha) of the released code's hard switch: 1 for every modality whose score
    is below the best one, 0 for the best (and for all on a tie). With two modalities: rho > 1 gives
    the PCE to v only, rho < 1 to a only, rho = 1 to none (main_Prototype_grad.py: train_epoch)."""
    s_max = max(scores.values())
    return {m: 1.0 if s < s_max else 0.0 for m, s in scores.items()}


@register
class PMR(Method):
    name = "pmr"
    summary = "PMR: prototypical CE for the weaker modality, prototype-entropy regulariser on the dominant one"

    @dataclass
    class Options:
        rule: str = "released"
        """released: the released code's hard switch (PCE weight alpha on the modality with the lower
        prototype score, 0 on the other, no entropy term; main_Prototype_grad.py: train_epoch).
        paper: the paper's clipped coefficients beta = clip(1/rho - 1, 0, 1) on PCE and the entropy
        regulariser PER (mu, per_epochs) on the dominant modality (modgap's earlier default)."""
        alpha: float = 1.0
        """Scale of the prototypical CE (PCE): the released code's default (--alpha 1.0); its run
        scripts (bash.sh) use 1.0 to 5.0 per dataset and fusion (2.0 for CREMA-D / AVE with concat)."""
        mu: float = 0.01
        """rule=paper only: scale of the prototypical entropy regulariser (PER) on the dominant
        modality. Not in the released code (no PER); 0.01 as in public re-implementations."""
        per_epochs: int = 10
        """rule=paper only: PER acts in the early epochs only, epoch < per_epochs (paper: "during the
        early training stage"; 10 as in public re-implementations)."""
        modulation_starts: int = 0
        """First epoch with PCE/PER (released run scripts: 0)."""
        modulation_ends: int = 70
        """Last epoch with PCE/PER, inclusive (released run scripts: 70 of 130 epochs; argparse 100)."""
        momentum: float = 0.0
        """Prototype EMA: c = (1 - momentum) c_new + momentum c_old (released run scripts: 0.0;
        argparse default 0.2)."""
        distance: str = "euclidean"
        """euclidean (released code, EU_dist) or squared (prototypical networks)."""
        proto_pass: str = "shuffled"
        """shuffled: prototypes from the epoch's shuffled train batches with training transforms, as
        the released code's train loader (calculate_prototype); ordered: the train split in order with
        evaluation transforms (modgap's earlier choice; always the whole split). The model is in
        evaluation mode in both."""
        proto_fraction: float = 0.1
        """shuffled pass only: fraction of the train batches used, at least one batch (released code:
        the first tenth, all_num // 10 batches). 1.0: the whole train split."""

    proto_ready: torch.Tensor  # a buffer (register_buffer in __init__), declared for the type checker

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        check_choice(options, "distance", DISTANCES)
        check_choice(options, "rule", RULES)
        check_choice(options, "proto_pass", PROTO_PASSES)
        if not 0.0 < options.proto_fraction <= 1.0:
            raise ConfigError("pmr: method.proto_fraction must lie in (0, 1]")
        if not 0.0 <= options.momentum < 1.0:
            raise ConfigError("pmr: method.momentum must lie in [0, 1)")
        if options.alpha < 0 or options.mu < 0:
            raise ConfigError("pmr: method.alpha and method.mu must be >= 0")
        for m in self.modalities:
            self.register_buffer(f"proto_{m}", torch.zeros(num_classes, feature_dims[m]))
        self.register_buffer("proto_ready", torch.zeros((), dtype=torch.bool))
        self.last: dict[str, Any] = {}

    def prototypes(self, m: str) -> torch.Tensor:
        return getattr(self, f"proto_{m}")

    # ---- prototypes --------------------------------------------------------------------------
    def _proto_batches(self, ctx: StepContext):
        """(batches, how many to use or None for all)."""
        o = self.options
        if o.proto_pass == "shuffled" and ctx.train_batches is not None:
            n = int(o.proto_fraction * ctx.steps_per_epoch + 1e-9)
            return ctx.train_batches(ctx.epoch), (None if o.proto_fraction >= 1.0 else max(1, n))
        if ctx.iterate is None:
            raise RuntimeError("pmr needs ctx.iterate or ctx.train_batches to pass over the train split")
        return ctx.iterate("train"), None

    @torch.no_grad()
    def compute_prototypes(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Class means of every modality's features over (part of) the train split, model in evaluation mode."""
        sums: dict[str, torch.Tensor] = {}
        counts = None
        batches, limit = self._proto_batches(ctx)
        with evaluation_mode(ctx.model, self):
            for i, batch in enumerate(batches):
                if limit is not None and i >= limit:
                    break
                feats = ctx.model.encode(batch.inputs)
                c = torch.bincount(batch.y, minlength=self.num_classes).double()
                counts = c if counts is None else counts + c
                for m in self.modalities:
                    s = class_sums(feats[m], batch.y, self.num_classes)
                    sums[m] = s if m not in sums else sums[m] + s
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a pass stopped early releases its loader
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
        return {m: float(v) for m, v in zip(self.modalities, s, strict=True)}

    def losses(self, out, batch, ctx) -> Losses:
        cls = cross_entropy(out.fused, batch.y)
        o = self.options
        active = bool(self.proto_ready) and o.modulation_starts <= ctx.epoch <= o.modulation_ends
        if not active:
            self.last = {}
            return Losses(cls, {"cls": cls})
        logits = {m: prototype_logits(out.features[m], self.prototypes(m), o.distance) for m in self.modalities}
        scores = self.scores(logits, batch.y, ctx)
        if o.rule == "released":
            beta, gamma = released_coefficients(scores), {m: 0.0 for m in self.modalities}
        else:
            beta, gamma = rebalance_coefficients(scores)
        pce = tensor_sum(beta[m] * F.cross_entropy(logits[m], batch.y) for m in self.modalities)
        total = cls + o.alpha * pce
        terms = {"cls": cls, "pce": pce}
        if o.rule == "paper" and ctx.epoch < o.per_epochs and o.mu > 0:
            per = tensor_sum(gamma[m] * entropy(logits[m]) for m in self.modalities)
            total = total - o.mu * per
            terms["entropy"] = per
        self.last = {"scores": scores, "beta": beta, "gamma": gamma}
        return Losses(total, terms)

    def scalars(self) -> dict[str, float]:
        """beta/<modality>: the weight of that modality's prototype loss (while it is applied)."""
        return {f"beta/{m}": b for m, b in self.last.get("beta", {}).items()}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the entropy of softmax(logits)."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()
