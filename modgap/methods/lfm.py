"""LFM: dynamic integration of modality matching and supervised learning (Yang et al., NeurIPS 2024).

    L(theta; alpha) = s * (alpha * L_cls + (1 - alpha) * L_match)

alpha is the weight on classification, w = 1 - alpha the weight on matching, s = ``loss_scale``
(2 in the released code, so alpha = 0.5 gives L_cls + L_match).

- ``lfm-h`` sets w by a heuristic schedule of the epoch (``SCHEDULES``, schedules.py).
- ``lfm-lb`` learns alpha by bi-level optimisation: after each K-th optimiser step it takes the
  exact hypergradient of the one-step-unrolled problem min_alpha L_val(theta'(alpha)) on a batch
  of the VALIDATION split (``AlphaLearner``), or, with ``variant=official``, reproduces the released
  code's once-per-epoch update (not a true hypergradient; see docs/method.md). Remedies for the
  one-step horizon's short-sightedness (issue 8): ``horizon`` (exact hypergradient through the last
  H steps, forward mode), ``val_objective=fused+modalities`` (an outer loss that also counts each
  modality's own CE), ``hyper_momentum`` (an average of hypergradients) and ``warmup``.

This file holds the two methods. Their pieces work in a user's own loop too: ``lfm_objective``,
``AlphaLearner`` and ``validation_loss`` (hypergrad.py), ``matching_weight`` (schedules.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..data.base import Batch
from ..errors import ConfigError
from .alpha_steps import PAPER_SLOPE, neumann_hypergradient
from .base import Losses, Method, StepContext, check_choice, cross_entropy, evaluation_mode, register
from .hypergrad import VAL_OBJECTIVES, AlphaLearner, lfm_objective, official_matching_gradient, validation_loss
from .matching import MATCHING
from .schedules import SCHEDULES


class LFMBase(Method):
    min_modalities = 2  # it matches modalities

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

    def scalars(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def eval_outputs(self, out):
        return {f"projection/{m}": u for m, u in (self.matching.project(out) or {}).items()}


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


VARIANTS = ("exact", "implicit", "official")


@register
class LFMLearned(LFMBase):
    name = "lfm-lb"
    summary = "LFM with alpha learned by bi-level optimisation on validation batches (exact hypergradient)"

    @dataclass
    class Options(LFMBase.Options):
        variant: str = "exact"
        """exact: unrolled hypergradient (one step, or `horizon` steps); implicit: the implicit-function
        hypergradient at the training loss's minimum (Neumann series, `neumann_steps` Hessian-vector
        products per update); official: the released code's update."""
        alpha0: float = 0.37
        """Starting alpha (with parametrization=schedule: alpha at epoch 0). 0.37 with the learned schedule
        (issue 12: the paper's first-epoch weight, exp(-1)); issue 8's clip learner started at 0.5; the
        released code starts at 0.05 (matching weight 0.95)."""
        alpha_min: float = 0.05
        alpha_max: float = 1.0
        lr_alpha: float = 1.0
        every: int = 10
        """Update alpha after every K-th optimiser step."""
        parametrization: str = "schedule"
        """clip (alpha itself, clipped; the default before issue 12), sigmoid (a logit) or schedule (a learned
        schedule of the epoch t, logit alpha(t) = a + b log(1 + t), a from alpha0 and b from schedule_slope;
        alpha_steps.py)."""
        schedule_slope: float = PAPER_SLOPE
        """parametrization=schedule: the starting b (1.2 with alpha0 0.37 follows the paper's schedule)."""
        step: str = "rms"
        """How a hypergradient moves alpha's parameters: raw (lr_alpha x the gradient; before issue 12), or, free of the
        learning rate, the loss scale and the gradient norms, sign / rms (step_size x the sign, or the
        gradient over its running RMS) / cosine (step_size x the cosine of the validation gradient and
        the step's direction)."""
        step_size: float = 0.02
        """step=sign/rms/cosine: the size of one move (in alpha, or in logit units for sigmoid/schedule)."""
        rms_beta: float = 0.9
        """step=rms: decay of the running mean of the squared gradient."""
        neumann_steps: int = 5
        """variant=implicit: terms J of the Neumann series (J Hessian-vector products per update; every=10:
        about 1.4x joint per step with J = 1 and 2x with J = 5 on CPU, docs/method.md)."""
        neumann_lr: float = 0.0
        """variant=implicit: eta of the series eta sum (I - eta H)^j; 0 = the optimiser's learning rate."""
        horizon: int = 1
        """Differentiate L_val through the last H optimiser steps before each update (forward mode,
        one Hessian-vector product per step of the window after its first); 1 = one-step; capped at every."""
        val_objective: str = "fused+weakest"
        """fused (CE of the fused logits), fused+modalities (plus val_modality_weight x the mean of each
        modality's own CE) or fused+weakest (plus val_modality_weight x the largest modality CE)."""
        val_modality_weight: float = 1.0
        hyper_momentum: float = 0.0
        """beta of a bias-corrected moving average of the hypergradient that moves alpha (0: the latest)."""
        warmup: int = 0
        """Epochs at the start with alpha fixed at alpha0 (no hypergradient is computed)."""
        official_w0: float = 0.95
        official_lr: float = 1e-4
        official_halve_every: int = 20
        official_batch: int = 8

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        o = options
        check_choice(o, "variant", VARIANTS)
        if o.neumann_steps < 0 or o.neumann_lr < 0:
            raise ConfigError("method.neumann_steps and method.neumann_lr must be >= 0")
        if o.variant == "implicit" and (o.horizon != 1 or o.hyper_momentum):
            raise ConfigError("method.horizon and method.hyper_momentum apply to variant=exact, not to implicit")
        if o.every < 1 or o.lr_alpha < 0 or o.official_batch < 1:
            raise ConfigError("method.every and method.official_batch must be >= 1, method.lr_alpha >= 0")
        if o.horizon < 1 or o.warmup < 0 or o.val_modality_weight < 0:
            raise ConfigError("method.horizon must be >= 1, method.warmup and method.val_modality_weight >= 0")
        check_choice(o, "val_objective", VAL_OBJECTIVES)
        if o.variant == "official":
            remedies = {"horizon": 1, "hyper_momentum": 0.0, "warmup": 0}  # val_objective, step: not used
            changed = [k for k, v in remedies.items() if getattr(o, k) != v]
            if changed:
                raise ConfigError(f"method.{changed[0]} applies to variant=exact, not to the official reproduction")
            self.learner = AlphaLearner(1.0 - o.official_w0, o.official_lr, (0.05, 0.95))
        else:
            self.learner = AlphaLearner(
                o.alpha0,
                o.lr_alpha,
                (o.alpha_min, o.alpha_max),
                o.parametrization,
                horizon=min(o.horizon, o.every),
                momentum=o.hyper_momentum,
                step=o.step,
                step_size=o.step_size,
                rms_beta=o.rms_beta,
                slope=o.schedule_slope,
            )
        self._pending = False

    @property
    def alpha(self) -> float:
        return self.learner.alpha

    def _active(self, ctx: StepContext) -> bool:
        return self.options.variant != "official" and ctx.epoch >= self.options.warmup

    def losses(self, out, batch, ctx) -> Losses:
        self.learner.at(ctx.step / max(ctx.steps_per_epoch, 1))  # a learned schedule moves with the epoch
        return super().losses(out, batch, ctx)

    def _due(self, ctx: StepContext) -> bool:
        """alpha is updated after this step."""
        return self._active(ctx) and ctx.step % self.options.every == 0

    def _in_window(self, ctx: StepContext) -> bool:
        """This step is one of the last `horizon` steps before an update (the update step included)."""
        h, every = self.learner.horizon, self.options.every
        return self._active(ctx) and ((ctx.step % every) + h - 1) % every < h

    def takes_own_gradients(self, ctx: StepContext) -> bool:
        return self._in_window(ctx)

    def backward(self, losses: Losses, ctx: StepContext) -> None:
        if not self._in_window(ctx):
            return super().backward(losses, ctx)
        if self.options.variant == "implicit":
            return self._implicit_update(losses, ctx)
        self.learner.backward(
            losses.terms["cls"],
            losses.terms["match"],
            ctx.params,
            self.options.loss_scale,
            reduce=lambda tensors: ctx.reduce_weighted(tensors, ctx.share),
        )
        self._pending = True

    def after_backward(self, ctx: StepContext) -> None:
        if self._pending:  # p.grad is now the (reduced) gradient the optimiser will use
            self.learner.capture(ctx.optimizer, ctx.params)

    def after_step(self, ctx: StepContext) -> None:
        if not self._pending:
            return
        self._pending = False
        if not self._due(ctx):  # inside a window (horizon > 1): carry d theta/d alpha through the step
            self.learner.advance(ctx.optimizer, ctx.params)
            return
        val, val_loss = self._validation_loss(ctx)

        def reduce(h: torch.Tensor) -> torch.Tensor:
            ctx.reduce_weighted([h], val.share)
            return h

        self.learner.step(
            val_loss,
            ctx.optimizer,
            ctx.params,
            reduce,
            reduce_grads=lambda tensors: ctx.reduce_weighted(tensors, val.share),
        )

    def _validation_loss(self, ctx: StepContext) -> tuple[Batch, torch.Tensor]:
        """The next validation batch and its loss (``val_objective``), computed in evaluation mode and
        kept on the graph: the hypergradient differentiates it with respect to the parameters."""
        o = self.options
        assert ctx.next_val_batch is not None  # the trainer provides it to methods that use val batches
        val = ctx.next_val_batch()
        with evaluation_mode(ctx.model, self):
            loss = validation_loss(
                ctx.model(val.inputs),
                val.y,
                o.val_objective,
                o.val_modality_weight,
                combine=lambda values: ctx.reduce_weighted(values, val.share),
            )
        return val, loss

    def _implicit_update(self, losses: Losses, ctx: StepContext) -> None:
        """variant=implicit, on a due step, before the optimiser's step: p.grad += grad L, and alpha moves
        by the implicit hypergradient -<grad L_val, H^-1 s (g_cls - g_match)> at the current parameters
        (the Hessian of this step's training loss, inverted by ``neumann_steps`` terms of the series)."""
        o, params = self.options, ctx.params
        cls, match = losses.terms["cls"], losses.terms["match"]
        total = lfm_objective(cls, match, self.alpha, o.loss_scale)
        g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
        raw_d = torch.autograd.grad(o.loss_scale * (cls - match), params, retain_graph=True, allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw_d, strict=True)]
        ctx.reduce_weighted(d, ctx.share)
        val, val_loss = self._validation_loss(ctx)
        raw_val = torch.autograd.grad(val_loss, params, allow_unused=True)
        g_val = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw_val, strict=True)]
        ctx.reduce_weighted(g_val, val.share)
        group = ctx.optimizer.param_groups[0]
        coupled = not (isinstance(ctx.optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False))
        h, cos = neumann_hypergradient(
            g_total,
            params,
            g_val,
            d,
            o.neumann_lr or group["lr"],
            o.neumann_steps,
            damping=group.get("weight_decay", 0.0) if coupled else 0.0,
            reduce=lambda tensors: ctx.reduce_weighted(tensors, ctx.share),
        )
        for p, g in zip(params, g_total, strict=True):
            if g is not None:
                p.grad = g.detach() if p.grad is None else p.grad + g.detach()
        self.learner.update(cos if self.learner.rule == "cosine" else h)

    def on_skipped_step(self, ctx: StepContext) -> None:
        self._pending = False
        self.learner.reset()  # the window restarts (shorter) at the next step

    def on_epoch_start(self, ctx: StepContext) -> None:
        """variant=official: the released update, before each epoch's training (epoch 0 included), of
        the UNSCALED objective alpha L_cls + w L_match (Crema_epoch_learnable.py: getAlpha_Learnable)."""
        if self.options.variant != "official":
            return
        o = self.options
        assert ctx.fixed_val_batch is not None  # the trainer provides it to methods that use val batches
        batch = ctx.fixed_val_batch(o.official_batch)
        with evaluation_mode(ctx.model, self):
            out = ctx.model(batch.inputs)
            cls, match = cross_entropy(out.fused, batch.y), self.matching(out)
            grad = official_matching_gradient(cls, match, self.alpha, 1.0, ctx.params)
        g = float(ctx.all_reduce_mean(grad.detach()))
        lr = o.official_lr * 0.5 ** (ctx.epoch // o.official_halve_every)
        ok = math.isfinite(g) and not math.isnan(lr * g)  # inf * 0 (official_lr = inf, g = 0): no step
        w = min(max((1.0 - self.alpha) - lr * g, 0.05), 0.95) if ok else 1.0 - self.alpha
        self.learner.alpha, self.learner.last_hypergradient = 1.0 - w, g

    def get_extra_state(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
