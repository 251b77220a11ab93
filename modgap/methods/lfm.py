"""LFM: dynamic integration of modality matching and supervised learning (Yang et al., NeurIPS 2024).

    L(theta; alpha) = s * (alpha * L_cls + (1 - alpha) * L_match)

alpha is the weight on classification, w = 1 - alpha the weight on matching, s = ``loss_scale``
(2 in the released code, so alpha = 0.5 gives L_cls + L_match).

- ``lfm-h`` sets w by a heuristic schedule of the epoch (``SCHEDULES``).
- ``lfm-lb`` learns alpha by bi-level optimisation: after each K-th optimiser step it takes the
  exact hypergradient of the one-step-unrolled problem min_alpha L_val(theta'(alpha)) on a batch
  of the VALIDATION split (``AlphaLearner``), or, with ``variant=official``, reproduces the released
  code's once-per-epoch update (not a true hypergradient; see docs/method.md).

The pieces work in a user's own loop too: ``lfm_objective``, ``matching_weight``, ``AlphaLearner``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, closest
from ..registry import Registry
from .base import Losses, Method, StepContext, cross_entropy, register
from .matching import MATCHING

# ------------------------------------------------------------------------------------ schedules
SCHEDULES: Registry[Callable[..., float]] = Registry("schedule")


@SCHEDULES.register("paper")
def _paper(t: int, total: int, w0: float, w1: float) -> float:
    """w(t) = 1 - exp(-1 / (t + 1)): 0.632, 0.393, 0.283, 0.221, ..."""
    return 1.0 - math.exp(-1.0 / (t + 1))


@SCHEDULES.register("exp")
def _exp(t: int, total: int, w0: float, w1: float) -> float:
    """Released code (Nov 2024): clip(exp(-0.3 t), 0.05, 0.95)."""
    return min(max(math.exp(-0.3 * t), 0.05), 0.95)


POLY = (0.204623704, 3.35472727e-3, 1.22989557e-4, -2.92947416e-6, 2.23835486e-8, -5.39717505e-11)


@SCHEDULES.register("poly")
def _poly(t: int, total: int, w0: float, w1: float) -> float:
    """Released code (current): a quintic fitted to one learned alpha curve on CREMA-D over 200
    epochs, w = 1 - clip(alpha(t), 0, 1). Not monotone; for reproduction only."""
    alpha = sum(c * t**k for k, c in enumerate(POLY))
    return 1.0 - min(max(alpha, 0.0), 1.0)


@SCHEDULES.register("linear")
def _linear(t: int, total: int, w0: float, w1: float) -> float:
    """w falls linearly from w0 (first epoch) to w1 (last epoch)."""
    return w0 + (w1 - w0) * t / max(total - 1, 1)


@SCHEDULES.register("cosine")
def _cosine(t: int, total: int, w0: float, w1: float) -> float:
    """w falls from w0 to w1 along half a cosine."""
    return w1 + (w0 - w1) * 0.5 * (1.0 + math.cos(math.pi * t / max(total - 1, 1)))


@SCHEDULES.register("constant")
def _constant(t: int, total: int, w0: float, w1: float) -> float:
    """w = w0 at every epoch (the fixed-weight control of the paper's ablation)."""
    return w0


def matching_weight(schedule: str, epoch: int, epochs: int, w0: float = 0.9, w1: float = 0.05) -> float:
    """Matching weight w = 1 - alpha of schedule ``schedule`` at ``epoch`` (from 0) of ``epochs``."""
    return SCHEDULES.get(schedule)(epoch, epochs, w0, w1)


def lfm_objective(cls_loss: torch.Tensor, match_loss: torch.Tensor, alpha: float,
                  loss_scale: float = 2.0) -> torch.Tensor:
    """s * (alpha * L_cls + (1 - alpha) * L_match)."""
    return loss_scale * (alpha * cls_loss + (1.0 - alpha) * match_loss)


# ------------------------------------------------------------ exact one-step hypergradient
def _sgd_direction(opt: torch.optim.Optimizer, group: dict, p: torch.Tensor, d: torch.Tensor,
                   pre: dict[str, Any]) -> torch.Tensor:
    """d theta'/d alpha for SGD (momentum, dampening, nesterov, weight decay): linear in the gradient."""
    mu = group["momentum"]
    slope = 1.0
    if mu != 0:
        buf_slope = 1.0 if pre["first"] else 1.0 - group["dampening"]
        slope = (1.0 + mu * buf_slope) if group["nesterov"] else buf_slope
    sign = 1.0 if group.get("maximize", False) else -1.0
    return sign * group["lr"] * slope * d


def _adam_direction(opt: torch.optim.Optimizer, group: dict, p: torch.Tensor, d: torch.Tensor,
                    pre: dict[str, Any]) -> torch.Tensor:
    """d theta'/d alpha for Adam / AdamW, differentiating the moments (method.md)."""
    if group.get("amsgrad", False):
        raise ConfigError("lfm-lb: the hypergradient is not derived for amsgrad; use optim.name=adam without it")
    state = opt.state[p]
    b1, b2 = group["betas"]
    eps, lr = group["eps"], group["lr"]
    t = float(state["step"])
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    g = pre["grad"]  # the gradient Adam saw, coupled weight decay included
    m_hat = state["exp_avg"] / c1
    sqrt_v = (state["exp_avg_sq"] / c2).sqrt()
    denom = sqrt_v + eps
    second = torch.where(sqrt_v > 0, m_hat * (1 - b2) * g * d / (c2 * sqrt_v.clamp_min(1e-300) * denom**2),
                         torch.zeros_like(d))
    sign = 1.0 if group.get("maximize", False) else -1.0
    return sign * lr * ((1 - b1) * d / (c1 * denom) - second)


def _sgd_pre(opt, group, p) -> dict[str, Any]:
    return {"first": opt.state.get(p, {}).get("momentum_buffer") is None}


def _adam_pre(opt, group, p) -> dict[str, Any]:
    g = p.grad.detach().clone()
    if isinstance(opt, torch.optim.AdamW) or group.get("decoupled_weight_decay", False):
        return {"grad": g}
    return {"grad": g + group["weight_decay"] * p.detach()}


OPTIMIZER_RULES = {
    torch.optim.SGD: (_sgd_pre, _sgd_direction),
    torch.optim.Adam: (_adam_pre, _adam_direction),
    torch.optim.AdamW: (_adam_pre, _adam_direction),
}


class AlphaLearner:
    """Learns alpha with the exact hypergradient of the one-step-unrolled bi-level problem.

    Use per update (every K steps) in any training loop::

        learner.backward(cls_loss, match_loss, params, loss_scale)   # sets p.grad, keeps g_cls - g_match
        optimizer.step()
        val_loss = ...                                               # fused CE on a validation batch at theta'
        learner.step(val_loss, optimizer, params)                    # updates learner.alpha

    dL_val/dalpha = < grad L_val(theta'), d theta'/d alpha >, where d theta'/d alpha follows the
    optimiser's own update rule (SGD: -lr * s * (g_cls - g_match); Adam/AdamW: method.md).
    """

    def __init__(self, alpha: float = 0.05, lr: float = 1.0, bounds: tuple[float, float] = (0.05, 1.0),
                 parametrization: str = "clip") -> None:
        if parametrization not in ("clip", "sigmoid"):
            raise ConfigError(f"unknown parametrization '{parametrization}'{closest(parametrization, ('clip', 'sigmoid'))}")
        if not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
            raise ConfigError(f"alpha bounds must satisfy 0 <= min <= max <= 1, got {bounds}")
        self.lr, self.bounds, self.parametrization = lr, bounds, parametrization
        self.alpha = min(max(alpha, bounds[0]), bounds[1])
        self.logit = math.log(max(self.alpha, 1e-6) / max(1 - self.alpha, 1e-6))
        self.last_hypergradient = 0.0
        self._d: list[torch.Tensor | None] | None = None
        self._pre: list[dict[str, Any] | None] = []

    def backward(self, cls_loss: torch.Tensor, match_loss: torch.Tensor, params: Sequence[torch.Tensor],
                 loss_scale: float, optimizer: torch.optim.Optimizer | None = None,
                 reduce: Callable[[list[torch.Tensor]], None] | None = None) -> None:
        """Accumulate s * (alpha g_cls + (1 - alpha) g_match) into p.grad and keep s * (g_cls - g_match).

        ``reduce`` combines the kept difference over processes (in place); pass ``optimizer`` to
        record the optimiser's pre-step state now, or call ``capture`` once p.grad is final."""
        g_cls = torch.autograd.grad(cls_loss, params, retain_graph=True, allow_unused=True)
        g_match = torch.autograd.grad(match_loss, params, allow_unused=True)
        self._d = []
        for p, gc, gm in zip(params, g_cls, g_match):
            gc = torch.zeros_like(p) if gc is None else gc
            gm = torch.zeros_like(p) if gm is None else gm
            grad = loss_scale * (self.alpha * gc + (1.0 - self.alpha) * gm)
            p.grad = grad if p.grad is None else p.grad + grad
            self._d.append(loss_scale * (gc - gm))
        if reduce is not None:
            reduce(self._d)
        if optimizer is not None:
            self.capture(optimizer, params)

    def capture(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Record what the optimiser's coming step depends on (call after backward, before step)."""
        pre_rule, _ = self._rules(optimizer)
        groups = self._groups(optimizer)
        self._pre = [pre_rule(optimizer, groups[id(p)], p) if id(p) in groups else None for p in params]

    def direction(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """d theta'/d alpha per parameter, after optimizer.step()."""
        if self._d is None:
            raise RuntimeError("AlphaLearner.direction() before backward()")
        if len(self._pre) != len(self._d):
            self.capture(optimizer, params)  # SGD needs nothing from before the step but the buffer flag
        _, rule = self._rules(optimizer)
        groups = self._groups(optimizer)
        return [rule(optimizer, groups[id(p)], p, d, pre) if pre is not None else torch.zeros_like(p)
                for p, d, pre in zip(params, self._d, self._pre)]

    def hypergradient(self, val_loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      params: Sequence[torch.Tensor]) -> torch.Tensor:
        """dL_val(theta')/dalpha; ``val_loss`` must be computed at the new parameters theta'."""
        grads = torch.autograd.grad(val_loss, params, allow_unused=True)
        total = torch.zeros((), dtype=torch.float64, device=val_loss.device)
        for g, v in zip(grads, self.direction(optimizer, params)):
            if g is not None:
                total = total + (g.double() * v.double()).sum()
        self._d, self._pre = None, []
        return total

    def update(self, hypergradient: float) -> float:
        """One gradient step on alpha (or on its logit), kept inside the bounds; returns alpha."""
        h = float(hypergradient)
        if not math.isfinite(h):
            return self.alpha  # a non-finite hypergradient never moves alpha
        self.last_hypergradient = h
        lo, hi = self.bounds
        if self.parametrization == "sigmoid":
            self.logit -= self.lr * h * self.alpha * (1.0 - self.alpha)
            self.logit = min(max(self.logit, -30.0), 30.0)
            self.alpha = min(max(1.0 / (1.0 + math.exp(-self.logit)), lo), hi)
        else:
            self.alpha = min(max(self.alpha - self.lr * h, lo), hi)
        return self.alpha

    def step(self, val_loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
             reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
        return self.update(reduce(self.hypergradient(val_loss, optimizer, params)).item())

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "logit": self.logit, "lr": self.lr, "last": self.last_hypergradient}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.logit = state["alpha"], state["logit"]
        self.lr, self.last_hypergradient = state["lr"], state["last"]

    @staticmethod
    def _groups(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
        return {id(p): g for g in optimizer.param_groups for p in g["params"]}

    @staticmethod
    def _rules(optimizer: torch.optim.Optimizer):
        for kind, rules in OPTIMIZER_RULES.items():
            if type(optimizer) is kind:
                return rules
        raise ConfigError(f"lfm-lb: no exact hypergradient for optimiser {type(optimizer).__name__} "
                          f"(supported: {', '.join(k.__name__ for k in OPTIMIZER_RULES)})")


def official_matching_gradient(cls_loss: torch.Tensor, match_loss: torch.Tensor, alpha: float,
                               loss_scale: float, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The released code's update signal for the matching weight (NOT a hypergradient).

    g_total = grad L (with graph), g_cls = grad L_cls; hvp = grad_theta <g_total, g_cls>;
    returns the mean of the entries of hvp for the FIRST parameter tensor.
    """
    total = lfm_objective(cls_loss, match_loss, alpha, loss_scale)
    g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
    g_cls = torch.autograd.grad(cls_loss, params, retain_graph=True, allow_unused=True)
    inner = sum((a * b.detach()).sum() for a, b in zip(g_total, g_cls) if a is not None and b is not None)
    hvp = torch.autograd.grad(inner, params[0], allow_unused=True)[0]
    return torch.zeros(()) if hvp is None else hvp.mean()


# --------------------------------------------------------------------------------- the methods
class LFMBase(Method):
    @dataclass
    class Options:
        matching: str = "js"
        """js (released code) or infonce (the paper's description)."""
        loss_scale: float = 2.0
        proj_dim: int = 128
        """infonce: size of the shared projection space."""
        tau: float = 0.07
        """infonce: temperature."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if len(modalities) < 2:
            raise ConfigError(f"method '{self.name}' matches modalities: it needs at least two")
        if options.tau <= 0 or options.proj_dim < 1 or options.loss_scale <= 0:
            raise ConfigError("method.tau, method.proj_dim and method.loss_scale must be positive")
        self.matching = MATCHING.get(options.matching)(feature_dims, num_classes, options.proj_dim, options.tau)
        self._alpha = 0.5

    @property
    def alpha(self) -> float:
        return self._alpha

    def losses(self, out, batch, ctx) -> Losses:
        cls = cross_entropy(out.fused, batch.y)
        match = self.matching(out)
        total = lfm_objective(cls, match, self.alpha, self.options.loss_scale)
        return Losses(total, {"cls": cls, "match": match})

    def projections(self, out):
        return self.matching.project(out)


@register
class LFMHeuristic(LFMBase):
    name = "lfm-h"
    summary = "LFM with a heuristic schedule of the matching weight (paper, exp, poly, linear, cosine, constant)"

    @dataclass
    class Options(LFMBase.Options):
        schedule: str = "paper"
        w0: float = 0.9
        """linear/cosine: first-epoch matching weight; constant: the matching weight."""
        w1: float = 0.05
        """linear/cosine: last-epoch matching weight."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        self.schedule = SCHEDULES.get(options.schedule)
        if not (0 <= options.w0 <= 1 and 0 <= options.w1 <= 1):
            raise ConfigError("method.w0 and method.w1 are matching weights: they must lie in [0, 1]")

    def on_epoch_start(self, ctx: StepContext) -> None:
        o = self.options
        self._alpha = 1.0 - self.schedule(ctx.epoch, ctx.epochs, o.w0, o.w1)


@register
class LFMLearned(LFMBase):
    name = "lfm-lb"
    summary = "LFM with alpha learned by bi-level optimisation on validation batches (exact hypergradient)"

    @dataclass
    class Options(LFMBase.Options):
        variant: str = "exact"
        """exact: one-step-unrolled hypergradient; official: the released code's update."""
        alpha0: float = 0.05
        alpha_min: float = 0.05
        alpha_max: float = 1.0
        lr_alpha: float = 1.0
        every: int = 10
        """Update alpha after every K-th optimiser step."""
        parametrization: str = "clip"
        """clip (alpha itself, clipped) or sigmoid (a logit)."""
        official_w0: float = 0.95
        official_lr: float = 1e-4
        official_halve_every: int = 20
        official_batch: int = 8

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.variant not in ("exact", "official"):
            raise ConfigError(f"unknown method.variant '{options.variant}'{closest(options.variant, ('exact', 'official'))}")
        if options.every < 1 or options.lr_alpha < 0 or options.official_batch < 1:
            raise ConfigError("method.every and method.official_batch must be >= 1, method.lr_alpha >= 0")
        if options.variant == "official":
            self.learner = AlphaLearner(1.0 - options.official_w0, options.official_lr, (0.05, 0.95))
        else:
            self.learner = AlphaLearner(options.alpha0, options.lr_alpha, (options.alpha_min, options.alpha_max),
                                        options.parametrization)
        self._pending = False

    @property
    def alpha(self) -> float:
        return self.learner.alpha

    def _due(self, ctx: StepContext) -> bool:
        return self.options.variant == "exact" and ctx.step % self.options.every == 0

    def backward(self, losses: Losses, ctx: StepContext) -> None:
        if not self._due(ctx):
            return super().backward(losses, ctx)
        self.learner.backward(losses.terms["cls"], losses.terms["match"], ctx.params, self.options.loss_scale,
                              reduce=lambda tensors: ctx.reduce_weighted(tensors, ctx.share))
        self._pending = True

    def after_backward(self, ctx: StepContext) -> None:
        if self._pending:  # p.grad is now the (reduced) gradient the optimiser will use
            self.learner.capture(ctx.optimizer, ctx.params)

    def after_step(self, ctx: StepContext) -> None:
        if not self._pending:
            return
        self._pending = False
        val = ctx.next_val_batch()
        with evaluation_mode(ctx.model, self):
            val_loss = cross_entropy(ctx.model(val.inputs).fused, val.y)

            def reduce(h: torch.Tensor) -> torch.Tensor:
                ctx.reduce_weighted([h], val.share)
                return h

            self.learner.step(val_loss, ctx.optimizer, ctx.params, reduce)

    def on_skipped_step(self, ctx: StepContext) -> None:
        self._pending = False

    def on_epoch_end(self, ctx: StepContext) -> None:
        if self.options.variant != "official":
            return
        o = self.options
        batch = ctx.fixed_val_batch(o.official_batch)
        with evaluation_mode(ctx.model, self):
            out = ctx.model(batch.inputs)
            cls, match = cross_entropy(out.fused, batch.y), self.matching(out)
            g = official_matching_gradient(cls, match, self.alpha, o.loss_scale, ctx.params)
        g = float(ctx.all_reduce_mean(g.detach()))
        lr = o.official_lr * 0.5 ** (ctx.epoch // o.official_halve_every)
        w = min(max((1.0 - self.alpha) - lr * g, 0.05), 0.95) if math.isfinite(g) else 1.0 - self.alpha
        self.learner.alpha, self.learner.last_hypergradient = 1.0 - w, g

    def get_extra_state(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])


class evaluation_mode:
    """Puts modules in eval mode (no dropout, BatchNorm statistics untouched) for a validation pass."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)
