"""G-Blend: Gradient-Blending (Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification
Networks Hard?", CVPR 2020).

The loss is a weighted sum of the fused head's CE and every modality head's CE,

    L = w_fused * CE(z, y) + sum_m w_m * CE(z_m, y),

with weights from each head's overfitting-to-generalisation behaviour over a window of
``estimate_every`` epochs (the paper's super-epoch n). At both ends of a window each head's train
loss L_T (pass over the train split) and held-out loss L_V (pass over the VALIDATION split, which is
held out of training; never the test split) are measured, and

    O  = L_V - L_T,   dG = L_V(start) - L_V(end),   dO = O(end) - O(start),
    w_k  proportional to  max(dG_k, 0) / max(dO_k^2, min_overfit^2),   sum_k w_k = 1.

``estimate="separate"`` (default, the paper's Algorithms 1 and 2): at the start of every window a
copy of the current model is trained on head k's loss alone for n epochs, once per head, and the
window's weights come from those trajectories (the main model is untouched; with
``estimate_every >= epochs`` this is offline G-Blend, weights estimated once from initialisation).
``estimate="joint"``: no extra training; the weights come from the jointly trained heads over the
previous window (uniform, 1 / (M + 1), until the first window closes). ``weights``: fixed weights,
no estimate (the authors' released code takes the weights as flags). docs/methods/gblend.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Losses, Method, StepContext, cross_entropy, evaluation_mode, register, tensor_sum

FUSED = "fused"
ESTIMATES = ("separate", "joint")


def ogr_weights(
    start: Mapping[str, tuple[float, float]], end: Mapping[str, tuple[float, float]], min_overfit: float = 1e-2
) -> dict[str, float] | None:
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
    summary = (
        "G-Blend: fused + per-modality CE weighted by each head's OGR, "
        "estimated on val every super-epoch from per-head copies"
    )

    @dataclass
    class Options:
        estimate_every: int = 10
        """n: epochs per window ("super-epoch") between weight estimates; with ``estimate="separate"``
        also the epochs each per-head copy trains. The paper leaves n to the user; 10 is the public
        BalanceBenchmark setting (configs/trainer_config.yaml, GBlending.super_epoch: 10). A value
        >= train.epochs gives offline G-Blend (one estimate, at epoch 0)."""
        estimate: str = "separate"
        """separate (the paper's Algorithm 1, run every window as its online Algorithm 2): a copy of the
        current model is trained on each head's loss alone for n epochs, and dG, dO come from those
        copies. joint (modgap's cheaper variant): dG, dO from the jointly trained heads over the
        previous window, no extra training; weights uniform until the first window closes."""
        weights: dict[str, float] = field(default_factory=dict)
        """Fixed weights per head ('fused' and each modality), no estimate at all: the interface of the
        authors' released code (VMZ c2/tools/train_net.py: --av_weight, --visual_weight,
        --audio_weight). Empty: estimate them."""
        min_overfit: float = 1e-2
        """Floor on |dO| (nats) in w ~ dG / dO^2: a guard of this implementation, not in the paper."""
        train_batches: int = 0
        """Batches of the train split used to measure L_T (0: the whole split; the split is iterated
        in a fixed order, so the same batches every time)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.estimate_every < 1 or options.train_batches < 0 or not options.min_overfit > 0:
            raise ConfigError(
                "gblend: method.estimate_every must be >= 1, method.train_batches >= 0 and method.min_overfit > 0"
            )
        if FUSED in modalities:
            raise ConfigError(f"gblend: a modality may not be called '{FUSED}'")
        if options.estimate not in ESTIMATES:
            raise ConfigError(
                f"gblend: method.estimate must be one of {', '.join(ESTIMATES)}, got '{options.estimate}'"
            )
        self.heads = (FUSED, *self.modalities)
        self.weights: dict[str, float] = {k: 1.0 / len(self.heads) for k in self.heads}
        if options.weights:
            if set(options.weights) != set(self.heads) or not all(
                math.isfinite(float(v)) and float(v) >= 0 for v in options.weights.values()
            ):
                raise ConfigError(f"gblend: method.weights needs a weight >= 0 for each of {', '.join(self.heads)}")
            self.weights = {k: float(options.weights[k]) for k in self.heads}
        self.window_start: dict[str, tuple[float, float]] | None = None
        self.last_measured = -1
        self.history: list[dict[str, Any]] = []

    def scalars(self) -> dict[str, float]:
        """weight/<head>: the blending weight of the fused head and of each modality's head."""
        return {f"weight/{k}": w for k, w in self.weights.items()}

    # ---- the loss ----------------------------------------------------------------------------
    def losses(self, out, batch, ctx) -> Losses:
        ce = {FUSED: cross_entropy(out.fused, batch.y)}
        ce.update({m: cross_entropy(out.logits[m], batch.y) for m in self.modalities})
        total = tensor_sum(self.weights[k] * ce[k] for k in self.heads)
        terms = {"cls": ce[FUSED], **{f"cls_{m}": ce[m] for m in self.modalities}}
        terms.update({f"w_{k}": torch.tensor(self.weights[k]) for k in self.heads})
        return Losses(total, terms)

    # ---- the estimate ------------------------------------------------------------------------
    @torch.no_grad()
    def head_losses(self, ctx: StepContext, split: str, limit: int = 0, model=None) -> dict[str, float]:
        """Mean CE of every head of ``model`` (default ctx.model) over ``split`` ('train' or 'val'),
        in evaluation mode."""
        if ctx.iterate is None:
            raise RuntimeError("gblend needs ctx.iterate to measure losses over the train and val splits")
        model = ctx.model if model is None else model
        sums = [0.0] * (len(self.heads) + 1)
        with evaluation_mode(model, self):
            for i, batch in enumerate(ctx.iterate(split)):
                if limit and i >= limit:
                    break
                out = model(batch.inputs)
                sums[0] += float(F.cross_entropy(out.fused, batch.y, reduction="sum"))
                for j, m in enumerate(self.modalities, start=1):
                    sums[j] += float(F.cross_entropy(out.logits[m], batch.y, reduction="sum"))
                sums[-1] += len(batch)
        device = next(model.parameters()).device
        total = ctx.all_reduce_mean(torch.tensor(sums, dtype=torch.float32, device=device)).tolist()
        if total[-1] <= 0:
            raise RuntimeError(f"gblend: the '{split}' split is empty; G-Blend needs held-out data to estimate weights")
        return {k: total[i] / total[-1] for i, k in enumerate(self.heads)}

    def point(self, ctx: StepContext, model=None) -> dict[str, tuple[float, float]]:
        """(L_T, L_V) of every head: train split (``train_batches`` batches) and validation split."""
        train = self.head_losses(ctx, "train", self.options.train_batches, model)
        val = self.head_losses(ctx, "val", 0, model)
        return {k: (train[k], val[k]) for k in self.heads}

    def head_loss(self, out, y: torch.Tensor, head: str) -> torch.Tensor:
        return cross_entropy(out.fused if head == FUSED else out.logits[head], y)

    def train_alone(self, ctx: StepContext, head: str, epochs: int) -> torch.nn.Module:
        """A copy of the current model trained on ``head``'s CE alone for ``epochs`` epochs (from
        ctx.epoch on, the trainer's shuffles), with a fresh optimiser of the run's kind and settings."""
        if ctx.optimizer is None:
            raise RuntimeError("gblend: estimate='separate' needs the run's optimizer (ctx.optimizer)")
        twin = copy.deepcopy(ctx.model)
        params = [p for p in twin.parameters() if p.requires_grad]
        optimizer = type(ctx.optimizer)(params, **ctx.optimizer.defaults)
        twin.train(True)
        for i in range(epochs):
            if ctx.train_batches is not None:
                batches = ctx.train_batches(ctx.epoch + i)
            else:
                assert ctx.iterate is not None  # the trainer provides it
                batches = ctx.iterate("train")
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = self.head_loss(twin(batch.inputs), batch.y, head)
                if not torch.isfinite(loss):
                    break  # this head's copy diverged: its end point is not finite, no estimate
                loss.backward()
                for p in params:
                    if p.grad is not None:
                        p.grad = ctx.all_reduce_mean(p.grad)
                optimizer.step()
        return twin

    def on_epoch_start(self, ctx: StepContext) -> None:
        if self.options.weights:
            return
        if ctx.epoch % self.options.estimate_every != 0 or ctx.epoch == self.last_measured:
            return
        if self.options.estimate == "separate":
            if ctx.epoch >= ctx.epochs:
                return
            start = self.point(ctx)
            n = self.options.estimate_every
            end = {}
            for k in self.heads:
                end[k] = self.point(ctx, self.train_alone(ctx, k, n))[k]
            weights = ogr_weights(start, end, self.options.min_overfit)
            if weights is not None:
                self.weights = weights
            self.history.append(
                {
                    "epoch": ctx.epoch,
                    "start": start,
                    "end": end,
                    "weights": dict(self.weights),
                    "updated": weights is not None,
                }
            )
            self.last_measured = ctx.epoch
            return
        point = self.point(ctx)
        if self.window_start is not None:
            weights = ogr_weights(self.window_start, point, self.options.min_overfit)
            if weights is not None:
                self.weights = weights
            self.history.append(
                {
                    "epoch": ctx.epoch,
                    "start": self.window_start,
                    "end": point,
                    "weights": dict(self.weights),
                    "updated": weights is not None,
                }
            )
        self.window_start = point
        self.last_measured = ctx.epoch

    # ---- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "window_start": self.window_start,
            "last_measured": self.last_measured,
            "history": list(self.history),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = dict(state["weights"])
        self.window_start = state["window_start"]
        self.last_measured = state["last_measured"]
        self.history = list(state["history"])
