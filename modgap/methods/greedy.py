"""Greedy: balanced multi-modal learning (Wu, Jastrzebski, Cho, Geras, "Characterizing and
Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022).
docs/methods/greedy.md.

The paper's model has two branches joined by mid-level fusion layers; the conditional learning
speed of m1 given m0 compares how fast the fusion parameters carrying m1 into branch 0 learn with
how fast branch 0's own parameters learn. modgap's models fuse late, so the only way modality j
enters the prediction is its own branch: the "bypass" into branch m is the other branches. With

    mu_m(t) = sum over normal steps tau <= t of ||grad_{theta_m} L_tau||^2 / ||theta_m,tau||^2

over the parameters theta_m of modality m's encoder (the paper's accumulated relative gradient
norm, as in the authors' code), the conditional learning speed of the other modalities given m is

    s_m = s(rest | m) = mean_{j != m} log10 mu_j - log10 mu_m

(for M = 2: s_0 = s(m1|m0) = log10(mu_1 / mu_0), and the paper's d_speed = s_0 - s_1). After each
normal step (from epoch ``warmup_epochs`` on): if d = max_m s_m - min_m s_m > ``threshold``, the next
``window`` steps are re-balancing steps for the modality k = argmax_m s_m, the one the model learns
least from. A re-balancing step updates only modality k's branch (its encoder and its own head):
standalone, its loss is k's own CE (the branch with the other modalities' input cut, as the
paper's re-balancing step cuts the cross-modal input of the under-used branch); in every case
the gradients of the other modalities' branches are dropped before the optimiser step.

The pieces work in a user's own loop too: ``relative_gradient_norm``, ``conditional_speeds``,
``imbalance``, ``RebalanceSwitch``, and ``conditional_utilization`` (the paper's diagnostic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.base import Batch
from ..errors import ConfigError
from ..models.classifier import MultimodalClassifier
from .base import Losses, Method, StepContext, check_choice, cross_entropy, register, tensor_sum
from .joint import auxiliary_loss

TINY = 1e-30
REBALANCE_LOSS = ("unimodal", "same")
NORMAL_LOSS = ("fused", "branches")


# ------------------------------------------------------------------- learning speeds and switch
def relative_gradient_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """||grad||^2 / ||theta||^2 over a group of parameters (parameters without a gradient add 0).

    A 0-d float32 tensor on the parameters' device (no host synchronisation here)."""
    g2: torch.Tensor | float = 0.0
    w2: torch.Tensor | float = 0.0
    for p in params:
        w2 = w2 + p.detach().float().pow(2).sum()
        if p.grad is not None:
            g2 = g2 + p.grad.detach().float().pow(2).sum()
    w2, g2 = torch.as_tensor(w2), torch.as_tensor(g2)
    return g2.to(w2.device) / w2.clamp_min(TINY)


def conditional_speeds(cumulative: Sequence[float]) -> list[float]:
    """s_m = mean_{j != m} log10 mu_j - log10 mu_m for accumulated learning speeds mu (M >= 2)."""
    logs = [math.log10(max(float(c), TINY)) for c in cumulative]
    total, others = sum(logs), len(logs) - 1
    return [(total - lm) / others - lm for lm in logs]


def imbalance(speeds: Sequence[float]) -> tuple[float, int]:
    """d = max_m s_m - min_m s_m, and the modality to re-balance: argmax_m s_m (first on ties)."""
    top = max(range(len(speeds)), key=lambda m: speeds[m])
    return speeds[top] - min(speeds), top


@dataclass
class RebalanceSwitch:
    """The alternation of normal and re-balancing steps (the paper's Algorithm 1)."""

    threshold: float
    window: int
    target: int | None = None
    """The modality being re-balanced (index), None in normal mode."""
    left: int = 0
    """Re-balancing steps still to take."""

    @property
    def rebalancing(self) -> bool:
        return self.left > 0

    def decide(self, speeds: Sequence[float]) -> int | None:
        """After a normal step: returns the modality the next ``window`` steps re-balance, or None."""
        d, slow = imbalance(speeds)
        if d > self.threshold:
            self.target, self.left = slow, self.window
        return self.target if self.left else None

    def count(self) -> None:
        """After a re-balancing step; the last one of the window returns to normal mode."""
        self.left -= 1
        if self.left <= 0:
            self.target, self.left = None, 0


# ------------------------------------------------------------------- the paper's diagnostic
@torch.no_grad()
def mean_features(model: MultimodalClassifier, batches: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """The mean feature of each modality over ``batches`` (the training split, in the paper)."""
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in batches:
        for m, h in model.encode(batch.inputs).items():
            sums[m] = sums.get(m, 0) + h.sum(0)
        n += len(batch)
    return {m: s / max(n, 1) for m, s in sums.items()}


@torch.no_grad()
def conditional_utilization(
    model: MultimodalClassifier, batches: Iterable[Batch], means: dict[str, torch.Tensor]
) -> dict[str, float]:
    """u(m | rest) = (A(all) - A(all but m)) / A(all), the gain in accuracy from modality m.

    "All but m" replaces m's features by their mean ``means[m]`` before the fusion: the paper
    removes a modality's contribution by feeding the fusion its average input. Call with the
    model in evaluation mode and held-out batches.
    """
    correct_all, correct_without, n = 0, {m: 0 for m in means}, 0
    for batch in batches:
        features = model.encode(batch.inputs)
        _, fused = model.fusion(features)
        correct_all += int((fused.argmax(1) == batch.y).sum())
        for m in means:
            cut = {**features, m: means[m].expand_as(features[m])}
            correct_without[m] += int((model.fusion(cut)[1].argmax(1) == batch.y).sum())
        n += len(batch)
    acc = correct_all / max(n, 1)
    return {m: (acc - c / max(n, 1)) / acc if acc > 0 else 0.0 for m, c in correct_without.items()}


# --------------------------------------------------------------------------------- the method
@register
class Greedy(Method):
    name = "greedy"
    summary = (
        "balanced multi-modal learning: re-balancing steps train the modality with the slowest conditional "
        "learning speed"
    )
    min_modalities = 2
    leaves_parameters_unused = True  # a re-balancing step trains one modality's branch only

    @dataclass
    class Options:
        threshold: float = 0.01
        """alpha: re-balance when the speed imbalance d exceeds it (authors' config
        configs/training_guided.gin, Bias_Mitigation_Strong.epsilon=0.01)."""
        window: int = 5
        """Q: re-balancing steps per switch (Bias_Mitigation_Strong.curation_windowsize=5)."""
        warmup_epochs: int = 1
        """Epochs of normal steps only before re-balancing may start (starting_epoch=2, epochs
        counted from 1 there)."""
        rebalance_loss: str = "unimodal"
        """unimodal: a re-balancing step minimises the re-balanced modality's own CE; same: the
        normal loss, with the other branches' gradients dropped (what a composition does)."""
        normal_loss: str = "fused"
        """fused: a normal step minimises CE of the fused logits (late-fusion analogue of the authors'
        loss, whose branch outputs each see both modalities through MMTM). branches: the authors'
        literal loss, sum_m CE(z_m) over the per-modality heads (train.py: blend_loss); on modgap's
        late-fusion models this trains each branch on its own modality only."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.threshold < 0 or options.window < 1 or options.warmup_epochs < 0:
            raise ConfigError("method.threshold and method.warmup_epochs must be >= 0, method.window >= 1")
        check_choice(options, "normal_loss", NORMAL_LOSS)
        check_choice(options, "rebalance_loss", REBALANCE_LOSS)
        self.switch = RebalanceSwitch(options.threshold, options.window)
        self.cumulative = [0.0] * len(modalities)
        """mu_m: accumulated relative gradient norms of each encoder over the normal steps."""
        self.speeds = [0.0] * len(modalities)
        self.rebalanced = [0] * len(modalities)
        """Re-balancing steps taken per modality (kept in the checkpoint, for inspection)."""
        self._groups: tuple[dict[str, list[nn.Parameter]], dict[str, list[nn.Parameter]]] | None = None
        self._undo: dict[str, Any] | None = None

    def groups(
        self, model: MultimodalClassifier
    ) -> tuple[dict[str, list[nn.Parameter]], dict[str, list[nn.Parameter]]]:
        """(encoder parameters, branch parameters) per modality. A branch is the encoder plus the
        fusion parameters that belong to that modality alone (a ModuleDict entry named after it,
        e.g. the mean fusion's heads[m]); a head shared by all modalities belongs to none."""
        if self._groups is None:
            encoders = {m: list(model.encoders[m].parameters()) for m in self.modalities}
            branches = {
                m: encoders[m] + [p for name, p in model.fusion.named_parameters() if m in name.split(".")]
                for m in self.modalities
            }
            self._groups = (encoders, branches)
        return self._groups

    def losses(self, out, batch, ctx) -> Losses:
        cls = cross_entropy(out.fused, batch.y)
        terms = {"cls": cls}
        aux = auxiliary_loss(out, batch.y, ctx)  # fusions with detached per-modality heads (as joint)
        if aux is not None:
            terms["aux"] = aux
        # with detached per-modality heads z_k carries no gradient to the encoder: keep the normal loss
        if not self.switch.rebalancing or self.options.rebalance_loss == "same" or aux is not None:
            if self.options.normal_loss == "branches" and aux is None:
                branches = tensor_sum(cross_entropy(out.logits[m], batch.y) for m in self.modalities)
                return Losses(branches, {"cls": cls.detach(), "branches": branches})
            return Losses(cls if aux is None else cls + aux, terms)
        target = self.switch.target
        assert target is not None  # re-balancing: a modality is targeted
        own = cross_entropy(out.logits[self.modalities[target]], batch.y)
        return Losses(own, {"cls": cls.detach()})

    def after_backward(self, ctx: StepContext) -> None:
        encoders, branches = self.groups(ctx.model)
        self._undo = self.get_extra_state()  # restored if the trainer skips this step
        if self.switch.rebalancing:
            target = self.switch.target
            assert target is not None  # re-balancing: a modality is targeted
            kept = self.modalities[target]
            for m in self.modalities:
                if m != kept:
                    for p in branches[m]:
                        p.grad = None
            self.rebalanced[target] += 1
            self.switch.count()
            return
        reduced = ctx.all_reduce_mean(torch.stack([relative_gradient_norm(encoders[m]) for m in self.modalities]))
        ratios = reduced.double().tolist()
        if not all(math.isfinite(r) for r in ratios):
            return  # a non-finite gradient: the trainer stops or skips this step; the speeds stay clean
        self.cumulative = [c + r for c, r in zip(self.cumulative, ratios, strict=True)]
        self.speeds = conditional_speeds(self.cumulative)
        if ctx.epoch >= self.options.warmup_epochs:
            self.switch.decide(self.speeds)

    def after_step(self, ctx: StepContext) -> None:
        self._undo = None

    def on_skipped_step(self, ctx: StepContext) -> None:
        """A skipped step (non-finite loss or gradient) neither counts nor adds to the speeds."""
        if self._undo is not None:
            self.set_extra_state(self._undo)
            self._undo = None

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "cumulative": list(self.cumulative),
            "speeds": list(self.speeds),
            "rebalanced": list(self.rebalanced),
            "target": self.switch.target,
            "left": self.switch.left,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.cumulative, self.speeds = list(state["cumulative"]), list(state["speeds"])
        self.rebalanced = list(state["rebalanced"])
        self.switch.target, self.switch.left = state["target"], state["left"]
