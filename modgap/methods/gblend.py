"""G-Blend: Gradient-Blending (Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification
Networks Hard?", CVPR 2020).

The loss is a weighted sum of the fused head's CE and every modality head's CE,

    L = w_fused * CE(z, y) + sum_m w_m * CE(z_m, y),

with weights from each head's overfitting-to-generalisation behaviour over a window of
``estimate_every`` epochs (the paper's super-epoch; online G-Blend re-estimates every window).
At both ends of a window each head's train loss L_T (pass over the train split) and held-out loss
L_V (pass over the VALIDATION split, which is held out of training) are measured, and

    O  = L_V - L_T,   dG = L_V(start) - L_V(end),   dO = O(end) - O(start),
    w_k  proportional to  max(dG_k, 0) / max(dO_k^2, min_overfit^2),   sum_k w_k = 1.

Until the first window closes the weights are uniform, 1 / (M + 1). docs/methods/gblend.md has the
choices the paper leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Losses, Method, StepContext, cross_entropy, register
from .lfm import evaluation_mode

FUSED = "fused"


def ogr_weights(start: Mapping[str, tuple[float, float]], end: Mapping[str, tuple[float, float]],
                min_overfit: float = 1e-2) -> dict[str, float] | None:
    """Blending weights from each head's (train loss, held-out loss) at the start and end of a window.

    w_k = g_k / sum_j g_j with g_k = max(dG_k, 0) / max(dO_k^2, min_overfit^2), where
    dG_k = L_V,k(start) - L_V,k(end) and dO_k = O_k(end) - O_k(start), O = L_V - L_T.
    A head whose held-out loss did not fall gets weight 0; |dO| is floored at ``min_overfit`` so a
    head that did not change its overfitting cannot take an unbounded share. Returns None when no
    head generalised (every dG <= 0) or a loss is not finite: the caller keeps its old weights.
    """
    raw: dict[str, float] = {}
    for k, (lt0, lv0) in start.items():
        lt1, lv1 = end[k]
        if not all(math.isfinite(v) for v in (lt0, lv0, lt1, lv1)):
            return None
        d_g = lv0 - lv1
        d_o = (lv1 - lt1) - (lv0 - lt0)
        raw[k] = max(d_g, 0.0) / max(d_o * d_o, min_overfit * min_overfit)
    total = sum(raw.values())
    if not (total > 0 and math.isfinite(total)):
        return None
    return {k: v / total for k, v in raw.items()}


@register
class GBlend(Method):
    name = "gblend"
    summary = "G-Blend: fused + per-modality CE weighted by each head's OGR, re-estimated on val every super-epoch"

    @dataclass
    class Options:
        estimate_every: int = 10
        """Epochs per window ("super-epoch") between weight estimates. The paper re-estimates once per
        super-epoch in online G-Blend; 10 is the public BalanceBenchmark setting (super_epoch: 10)."""
        min_overfit: float = 1e-2
        """Floor on |dO| (nats) in w ~ dG / dO^2: a guard of this implementation, not in the paper."""
        train_batches: int = 0
        """Batches of the train split used to measure L_T (0: the whole split; the split is iterated
        in a fixed order, so the same batches every time)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.estimate_every < 1 or options.train_batches < 0 or not options.min_overfit > 0:
            raise ConfigError("gblend: method.estimate_every must be >= 1, method.train_batches >= 0 "
                              "and method.min_overfit > 0")
        if FUSED in modalities:
            raise ConfigError(f"gblend: a modality may not be called '{FUSED}'")
        self.heads = (FUSED, *self.modalities)
        self.weights: dict[str, float] = {k: 1.0 / len(self.heads) for k in self.heads}
        self.window_start: dict[str, tuple[float, float]] | None = None
        self.last_measured = -1
        self.history: list[dict[str, Any]] = []

    # ---- the loss ----------------------------------------------------------------------------
    def losses(self, out, batch, ctx) -> Losses:
        ce = {FUSED: cross_entropy(out.fused, batch.y)}
        ce.update({m: cross_entropy(out.logits[m], batch.y) for m in self.modalities})
        total = sum(self.weights[k] * ce[k] for k in self.heads)
        terms = {"cls": ce[FUSED], **{f"cls_{m}": ce[m] for m in self.modalities}}
        terms.update({f"w_{k}": torch.tensor(self.weights[k]) for k in self.heads})
        return Losses(total, terms)

    # ---- the estimate ------------------------------------------------------------------------
    @torch.no_grad()
    def head_losses(self, ctx: StepContext, split: str, limit: int = 0) -> dict[str, float]:
        """Mean CE of every head over ``split`` ('train' or 'val'), model in evaluation mode."""
        if ctx.iterate is None:
            raise RuntimeError("gblend needs ctx.iterate to measure losses over the train and val splits")
        sums = [0.0] * (len(self.heads) + 1)
        with evaluation_mode(ctx.model, self):
            for i, batch in enumerate(ctx.iterate(split)):
                if limit and i >= limit:
                    break
                out = ctx.model(batch.inputs)
                sums[0] += float(F.cross_entropy(out.fused, batch.y, reduction="sum"))
                for j, m in enumerate(self.modalities, start=1):
                    sums[j] += float(F.cross_entropy(out.logits[m], batch.y, reduction="sum"))
                sums[-1] += len(batch)
        device = next(ctx.model.parameters()).device
        total = ctx.all_reduce_mean(torch.tensor(sums, dtype=torch.float32, device=device)).tolist()
        if total[-1] <= 0:
            raise RuntimeError(f"gblend: the '{split}' split is empty; G-Blend needs held-out data to estimate weights")
        return {k: total[i] / total[-1] for i, k in enumerate(self.heads)}

    def on_epoch_start(self, ctx: StepContext) -> None:
        if ctx.epoch % self.options.estimate_every != 0 or ctx.epoch == self.last_measured:
            return
        train = self.head_losses(ctx, "train", self.options.train_batches)
        val = self.head_losses(ctx, "val")
        point = {k: (train[k], val[k]) for k in self.heads}
        if self.window_start is not None:
            weights = ogr_weights(self.window_start, point, self.options.min_overfit)
            if weights is not None:
                self.weights = weights
            self.history.append({"epoch": ctx.epoch, "start": self.window_start, "end": point,
                                 "weights": dict(self.weights), "updated": weights is not None})
        self.window_start = point
        self.last_measured = ctx.epoch

    # ---- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "window_start": self.window_start,
                "last_measured": self.last_measured, "history": list(self.history)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = dict(state["weights"])
        self.window_start = state["window_start"]
        self.last_measured = state["last_measured"]
        self.history = list(state["history"])
