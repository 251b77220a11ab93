"""The hypergradient of LFM's alpha: what ``lfm-lb`` learns alpha with, usable in any training loop.

    L(theta; alpha) = s * (alpha * L_cls + (1 - alpha) * L_match)        (``lfm_objective``)

``AlphaLearner`` takes the exact hypergradient dL_val(theta')/dalpha of the one-step-unrolled problem
(or of the last ``horizon`` steps, forward mode) through the optimiser's own update rule: the
per-optimiser rules below give d theta'/d alpha (SGD, Adam, AdamW). ``validation_loss`` is the outer
objective L_val; ``official_matching_gradient`` is the released code's update signal (not a
hypergradient; docs/method.md). How a hypergradient moves alpha's parameters, and the implicit
(Neumann) hypergradient, are in alpha_steps.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError, closest
from .alpha_steps import PAPER_SLOPE, AlphaParams, dot_all, logit
from .alpha_steps import dot as _dot
from .base import cross_entropy, tensor_sum


def lfm_objective(
    cls_loss: torch.Tensor, match_loss: torch.Tensor, alpha: float, loss_scale: float = 2.0
) -> torch.Tensor:
    """s * (alpha * L_cls + (1 - alpha) * L_match)."""
    return loss_scale * (alpha * cls_loss + (1.0 - alpha) * match_loss)


VAL_OBJECTIVES = ("fused", "fused+modalities", "fused+weakest")


def validation_loss(
    out,
    y: torch.Tensor,
    objective: str = "fused",
    modality_weight: float = 1.0,
    combine: Callable[[list[torch.Tensor]], None] | None = None,
) -> torch.Tensor:
    """The outer objective of lfm-lb on a validation batch.

    fused:             CE(z, y)
    fused+modalities:  CE(z, y) + modality_weight * (1/M) sum_m CE(z_m, y)   (each modality's own head,
                       so that a step that leaves the weak modality behind costs something)
    fused+weakest:     CE(z, y) + modality_weight * max_m CE(z_m, y)   (only the modality that is worst on
                       this batch: the starved one, whatever the others do)

    ``combine`` (several processes) makes the per-modality CE values global in place before the
    largest is picked, so every process differentiates the same modality's term."""
    loss = cross_entropy(out.fused, y)
    if objective in ("fused+modalities", "fused+weakest"):
        per = [cross_entropy(z, y) for z in out.logits.values()]
        if objective == "fused+modalities":
            extra = sum(per) / len(per)
        else:
            values = [p.detach().clone() for p in per]
            if combine is not None:
                combine(values)
            extra = per[max(range(len(per)), key=lambda k: float(values[k]))]
        loss = loss + modality_weight * extra
    elif objective != "fused":
        raise ConfigError(f"unknown method.val_objective '{objective}'{closest(objective, VAL_OBJECTIVES)}")
    return loss


# ------------------------------------------------------------ exact one-step hypergradient
def _sgd_direction(
    opt: torch.optim.Optimizer, group: dict, p: torch.Tensor, d: torch.Tensor, pre: dict[str, Any]
) -> torch.Tensor:
    """d theta'/d alpha for SGD (momentum, dampening, nesterov, weight decay): linear in the gradient."""
    return _sgd_factor(group, pre) * d


def _sgd_factor(group: dict, pre: dict[str, Any]) -> float:
    """SGD's d theta'/d alpha is this number times s (g_cls - g_match)."""
    mu = group["momentum"]
    slope = 1.0
    if mu != 0:
        buf_slope = 1.0 if pre["first"] else 1.0 - group["dampening"]
        slope = (1.0 + mu * buf_slope) if group["nesterov"] else buf_slope
    sign = 1.0 if group.get("maximize", False) else -1.0
    return sign * group["lr"] * slope


def _sgd_dot(opt, group, p, d, pre, g) -> torch.Tensor:
    """<g, d theta'/d alpha> for SGD without forming the direction."""
    return _sgd_factor(group, pre) * _dot(g, d)


def _adam_dot(opt, group, p, d, pre, g) -> torch.Tensor:
    """<g, d theta'/d alpha> for Adam / AdamW: the same formula as ``_adam_direction``, arranged as
    lr sign <g * c, d> with c = ((1 - b1) / c1 - m (1 - b2) g_pre / (c1 c2 sqrt(v_hat) denom)) / denom,
    computed in place (three temporaries of the parameter's size instead of about ten)."""
    if group.get("amsgrad", False):
        raise ConfigError("lfm-lb: the hypergradient is not derived for amsgrad; use optim.name=adam without it")
    state = opt.state[p]
    b1, b2 = group["betas"]
    t = float(state["step"])
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    sqrt_v = state["exp_avg_sq"].div(c2).sqrt_()
    denom = sqrt_v.add(group["eps"])
    c = state["exp_avg"].mul(pre["grad"]).mul_((1 - b2) / (c1 * c2)).div_(sqrt_v).div_(denom)
    c.masked_fill_(sqrt_v == 0, 0.0)  # v_hat = 0: no second term (as in _adam_direction)
    c.neg_().add_((1 - b1) / c1).div_(denom).mul_(g)
    sign = 1.0 if group.get("maximize", False) else -1.0
    return sign * group["lr"] * _dot(c, d)


def _adam_direction(
    opt: torch.optim.Optimizer, group: dict, p: torch.Tensor, d: torch.Tensor, pre: dict[str, Any]
) -> torch.Tensor:
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
    second = torch.where(
        sqrt_v > 0, m_hat * (1 - b2) * g * d / (c2 * sqrt_v.clamp_min(1e-300) * denom**2), torch.zeros_like(d)
    )
    sign = 1.0 if group.get("maximize", False) else -1.0
    return sign * lr * ((1 - b1) * d / (c1 * denom) - second)


def _sgd_pre(opt, group, p) -> dict[str, Any]:
    return {"first": opt.state.get(p, {}).get("momentum_buffer") is None}


def _adam_pre(opt, group, p) -> dict[str, Any]:
    g = p.grad.detach().clone()
    if group.get("maximize", False):
        g = -g  # torch negates the gradient before the weight decay and the moments
    if isinstance(opt, torch.optim.AdamW) or group.get("decoupled_weight_decay", False):
        return {"grad": g}
    return {"grad": g + group["weight_decay"] * p.detach()}


# ------------------------------------------------- truncated K-step hypergradient (forward mode)
# Through a window of K optimiser steps the tangent z_t = d theta_t / d alpha (zero at the window's
# start: the truncation) follows the optimiser's own recursion. With D_t = s (g_cls - g_match) +
# H_t z_t (H_t the Hessian of the step's training loss; one Hessian-vector product) the gradient the
# optimiser sees moves by dg_t = D_t (+ wd z_t where the weight decay is coupled); the rules below
# push dg_t through the momentum buffer / Adam moments to z_{t+1}. ``tan`` holds the tangents of the
# optimiser state (SGD: the buffer u; Adam: the moments m, v), also zero at the window's start.
def _sgd_tangent(
    opt: torch.optim.Optimizer,
    group: dict,
    p: torch.Tensor,
    D: torch.Tensor,
    pre: dict[str, Any],
    tan: dict[str, torch.Tensor],
    z: torch.Tensor,
) -> torch.Tensor:
    mu, damp, wd = group["momentum"], group["dampening"], group["weight_decay"]
    dg = -D if group.get("maximize", False) else D
    if wd != 0:
        dg = dg + wd * z
    if mu != 0:
        u = dg if pre["first"] else mu * tan.get("u", torch.zeros_like(dg)) + (1.0 - damp) * dg
        tan["u"] = u
        dg = dg + mu * u if group["nesterov"] else u
    return z - group["lr"] * dg


def _adam_tangent(
    opt: torch.optim.Optimizer,
    group: dict,
    p: torch.Tensor,
    D: torch.Tensor,
    pre: dict[str, Any],
    tan: dict[str, torch.Tensor],
    z: torch.Tensor,
) -> torch.Tensor:
    if group.get("amsgrad", False):
        raise ConfigError("lfm-lb: the hypergradient is not derived for amsgrad; use optim.name=adam without it")
    b1, b2 = group["betas"]
    eps, lr, wd = group["eps"], group["lr"], group["weight_decay"]
    decoupled = isinstance(opt, torch.optim.AdamW) or group.get("decoupled_weight_decay", False)
    g = pre["grad"]  # as Adam saw it: sign of maximize and coupled weight decay applied
    dg = -D if group.get("maximize", False) else D
    if wd != 0 and not decoupled:
        dg = dg + wd * z
    dm = b1 * tan.get("m", torch.zeros_like(dg)) + (1 - b1) * dg
    dv = b2 * tan.get("v", torch.zeros_like(dg)) + 2 * (1 - b2) * g * dg
    tan["m"], tan["v"] = dm, dv
    state = opt.state[p]
    t = float(state["step"])
    c1, c2 = 1.0 - b1**t, 1.0 - b2**t
    m_hat = state["exp_avg"] / c1
    sqrt_v = (state["exp_avg_sq"] / c2).sqrt()
    denom = sqrt_v + eps
    second = torch.where(sqrt_v > 0, m_hat * dv / (2 * c2 * sqrt_v.clamp_min(1e-300) * denom**2), torch.zeros_like(dv))
    if decoupled and wd != 0:
        z = z * (1.0 - lr * wd)
    return z - lr * (dm / (c1 * denom) - second)


OPTIMIZER_RULES = {
    torch.optim.SGD: (_sgd_pre, _sgd_direction),
    torch.optim.Adam: (_adam_pre, _adam_direction),
    torch.optim.AdamW: (_adam_pre, _adam_direction),
}
DOT_RULES = {torch.optim.SGD: _sgd_dot, torch.optim.Adam: _adam_dot, torch.optim.AdamW: _adam_dot}
TANGENT_RULES = {torch.optim.SGD: _sgd_tangent, torch.optim.Adam: _adam_tangent, torch.optim.AdamW: _adam_tangent}


class AlphaLearner:
    """Learns alpha with the exact hypergradient of the unrolled bi-level problem.

    One-step (``horizon=1``, the default), per update (every K steps) in any training loop::

        learner.backward(cls_loss, match_loss, params, loss_scale)   # sets p.grad, keeps g_cls - g_match
        optimizer.step()
        val_loss = ...                                               # e.g. fused CE on a validation batch at theta'
        learner.step(val_loss, optimizer, params)                    # updates learner.alpha

    dL_val/dalpha = < grad L_val(theta'), d theta'/d alpha >, where d theta'/d alpha follows the
    optimiser's own update rule (SGD: -lr * s * (g_cls - g_match); Adam/AdamW: method.md).

    Truncated ``horizon`` H > 1: the derivative of L_val after the last H steps with respect to
    the alpha those H steps used (earlier steps held fixed), by forward-mode differentiation through
    the optimiser: every step of the window calls ``backward`` (one extra Hessian-vector product
    after the window's first step) and, after ``optimizer.step()``, ``advance``; the last step calls
    ``step`` instead of ``advance``, which ends the window::

        learner.backward(cls_loss, match_loss, params, loss_scale, optimizer)   # each window step
        optimizer.step()
        learner.advance(optimizer, params)            # or, on the window's last step: learner.step(val_loss, ...)

    ``momentum`` beta > 0 moves alpha by a bias-corrected exponential average of the hypergradients
    instead of the latest one.

    What alpha is a function of (``parametrization``: clip, sigmoid, or a learned ``schedule`` of the
    epoch set by ``at(epoch)``) and how a hypergradient moves it (``step``: raw, sign, rms, cosine) are
    ``AlphaParams``'s (alpha_steps.py, issue 12).
    """

    def __init__(
        self,
        alpha: float = 0.05,
        lr: float = 1.0,
        bounds: tuple[float, float] = (0.05, 1.0),
        parametrization: str = "clip",
        horizon: int = 1,
        momentum: float = 0.0,
        step: str = "raw",
        step_size: float = 0.02,
        rms_beta: float = 0.9,
        slope: float = PAPER_SLOPE,
    ) -> None:
        if horizon < 1:
            raise ConfigError(f"the hypergradient horizon must be >= 1 optimiser step, got {horizon}")
        self.params = AlphaParams(parametrization, alpha, bounds, step, lr, step_size, momentum, rms_beta, slope)
        self.bounds, self.parametrization, self.rule = bounds, parametrization, step
        self.horizon = horizon
        self.epoch = 0.0  # where in training the current alpha is used (step / steps per epoch)
        self.last_hypergradient = 0.0
        self._d: list[torch.Tensor] | None = None
        self._pre: list[dict[str, Any] | None] = []
        self._z: list[torch.Tensor] | None = None  # horizon > 1: d theta / d alpha in the window so far
        self._tan: list[dict[str, torch.Tensor]] | None = None
        self.window_steps = 0

    @property
    def alpha(self) -> float:
        return self.params.alpha_at(self.epoch)

    @alpha.setter
    def alpha(self, value: float) -> None:
        """Set alpha (``clip`` only: the official variant's own update)."""
        if self.parametrization != "clip":
            raise ConfigError("alpha can be set directly only with parametrization=clip")
        self.params.values = [min(max(value, self.bounds[0]), self.bounds[1])]

    @property
    def lr(self) -> float:
        return self.params.lr

    @property
    def logit(self) -> float:
        return self.params.values[0] if self.parametrization != "clip" else logit(self.alpha)

    def at(self, epoch: float) -> float:
        """Move to ``epoch`` (fractional) of training; returns the alpha used there."""
        self.epoch = epoch
        return self.alpha

    # ---- gradients of the training step -------------------------------------------------------
    def backward(
        self,
        cls_loss: torch.Tensor,
        match_loss: torch.Tensor,
        params: Sequence[torch.Tensor],
        loss_scale: float,
        optimizer: torch.optim.Optimizer | None = None,
        reduce: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> None:
        """Accumulate s * (alpha g_cls + (1 - alpha) g_match) into p.grad and keep s * (g_cls - g_match)
        (with ``horizon`` > 1, plus H z: the change of the gradient along the window's tangent z).

        ``reduce`` combines the kept difference over processes (in place); pass ``optimizer`` to
        record the optimiser's pre-step state now, or call ``capture`` once p.grad is final."""
        self._gradients(cls_loss, match_loss, list(params), loss_scale)
        if reduce is not None:
            assert self._d is not None  # set by _gradients
            reduce(self._d)
        if optimizer is not None:
            self.capture(optimizer, params)

    def _gradients(self, cls_loss, match_loss, params, loss_scale) -> None:
        """p.grad += grad L; keeps D = s (g_cls - g_match) (+ H z inside a window of ``horizon`` > 1, H the
        Hessian of L at this step). Two backward passes, one of L = s (a L_cls + (1 - a) L_match) and
        one of s (L_cls - L_match): the two gradients come out as they are used, with no element-wise
        combining of g_cls and g_match afterwards."""
        total = lfm_objective(cls_loss, match_loss, self.alpha, loss_scale)
        direct = loss_scale * (cls_loss - match_loss)
        z = self._z
        if z is None:  # first step of a window: z = 0, no Hessian term
            g_total = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
            D = torch.autograd.grad(direct, params, allow_unused=True)
        else:
            g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            dot = sum(
                ((g * v.to(g)).sum() for g, v in zip(g_total, z, strict=True) if g is not None and g.requires_grad),
                torch.zeros((), dtype=total.dtype, device=total.device),
            )
            D = torch.autograd.grad(direct + dot, params, allow_unused=True)
        self._d = []
        for p, g, d in zip(params, g_total, D, strict=True):
            g = torch.zeros_like(p) if g is None else g.detach()
            p.grad = g if p.grad is None else p.grad + g
            self._d.append(torch.zeros_like(p) if d is None else d)

    def capture(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Record what the optimiser's coming step depends on (call after backward, before step)."""
        pre_rule, _ = self._rules(optimizer)
        groups = self._groups(optimizer)
        self._pre = [pre_rule(optimizer, groups[id(p)], p) if id(p) in groups else None for p in params]

    # ---- d theta' / d alpha -------------------------------------------------------------------
    def advance(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """horizon > 1, after optimizer.step(): carry the tangent z = d theta/d alpha through the step."""
        if self._d is None:
            raise RuntimeError("AlphaLearner.advance() before backward()")
        if len(self._pre) != len(self._d):
            raise RuntimeError("AlphaLearner.advance(): call capture() (or pass optimizer to backward) before the step")
        rule = self._tangent_rule(optimizer)
        groups = self._groups(optimizer)
        z = self._z if self._z is not None else [torch.zeros_like(p) for p in params]
        tan = self._tan if self._tan is not None else [{} for _ in params]
        new = []
        for p, d, pre, zi, ti in zip(params, self._d, self._pre, z, tan, strict=True):
            zi = zi.to(p)
            for k in ti:
                ti[k] = ti[k].to(p)
            new.append(rule(optimizer, groups[id(p)], p, d, pre, ti, zi).detach() if pre is not None else zi)
        self._z, self._tan = new, tan
        self._d, self._pre = None, []
        self.window_steps += 1

    def direction(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """d theta'/d alpha per parameter, after optimizer.step(). With ``horizon=1`` this is the formula in
        its direct form (``OPTIMIZER_RULES``); ``hypergradient`` uses the in-place arrangement of the same
        formula (``DOT_RULES``), tested equal to the dot product with this."""
        if self.horizon > 1:
            if self._d is not None:
                self.advance(optimizer, params)
            if self._z is None:
                raise RuntimeError("AlphaLearner.direction() before backward()")
            return self._z
        if self._d is None:
            raise RuntimeError("AlphaLearner.direction() before backward()")
        if len(self._pre) != len(self._d):
            self.capture(optimizer, params)  # SGD needs nothing from before the step but the buffer flag
        _, rule = self._rules(optimizer)
        groups = self._groups(optimizer)
        return [
            rule(optimizer, groups[id(p)], p, d, pre) if pre is not None else torch.zeros_like(p)
            for p, d, pre in zip(params, self._d, self._pre, strict=True)
        ]

    def hypergradient(
        self, val_loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """dL_val(theta')/dalpha; ``val_loss`` must be computed at the new parameters theta'.
        Ends the current window (horizon > 1)."""
        params = list(params)
        grads = torch.autograd.grad(val_loss, params, allow_unused=True)
        total = torch.zeros((), dtype=torch.float64, device=val_loss.device)
        if self.horizon > 1:
            for g, v in zip(grads, self.direction(optimizer, params), strict=True):
                if g is not None:
                    total = total + _dot(g, v)
        else:  # one step: <g, d theta'/d alpha> straight from the optimiser's state, no direction formed
            if self._d is None:
                raise RuntimeError("AlphaLearner.hypergradient() before backward()")
            if len(self._pre) != len(self._d):
                self.capture(optimizer, params)
            self._rules(optimizer)  # refuses an unsupported optimiser with its message
            dot, groups = DOT_RULES[type(optimizer)], self._groups(optimizer)
            for p, g, d, pre in zip(params, grads, self._d, self._pre, strict=True):
                if g is not None and pre is not None:
                    total = total + dot(optimizer, groups[id(p)], p, d, pre, g)
        self.reset()
        return total

    def reset(self) -> None:
        """Drop what was kept for the coming update (a skipped step, the end of a window)."""
        self._d, self._pre = None, []
        self._z, self._tan, self.window_steps = None, None, 0

    # ---- the step on alpha --------------------------------------------------------------------
    def update(self, hypergradient: float) -> float:
        """One step on alpha's parameters from dL_val/dalpha (``step=cosine``: from the cosine), by
        the ``step`` rule, kept inside the bounds; returns alpha. A non-finite value moves nothing.
        With ``momentum`` beta the step uses the bias-corrected average of the gradients."""
        h = float(hypergradient)
        if math.isfinite(h):
            self.last_hypergradient = h
        self.params.move(h, self.epoch)
        return self.alpha

    def step(
        self,
        val_loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        reduce_grads: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> float:
        """One update of alpha from ``val_loss`` at theta'. ``reduce`` combines the hypergradient over
        processes; ``step=cosine`` combines the validation gradient itself (``reduce_grads``, in place)."""
        if self.rule == "cosine":
            return self.update(self.cosine(val_loss, optimizer, params, reduce_grads))
        return self.update(reduce(self.hypergradient(val_loss, optimizer, params)).item())

    def cosine(
        self,
        val_loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        reduce_grads: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> float:
        """cos(grad L_val(theta'), d theta'/d alpha): the hypergradient without its size (``step=cosine``).
        Ends the current window."""
        params = list(params)
        raw = torch.autograd.grad(val_loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw, strict=True)]
        if reduce_grads is not None:
            reduce_grads(grads)
        direction = self.direction(optimizer, params)
        value = float(dot_all(grads, direction))
        norm = math.sqrt(float(dot_all(grads, grads)) * float(dot_all(direction, direction)))
        self.reset()
        return value / norm if norm > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        state = {"params": self.params.state_dict(), "epoch": self.epoch, "last": self.last_hypergradient}
        if self._z is not None and self._tan is not None:  # a window in flight (horizon > 1): resume it exactly
            state["window"] = {
                "z": [z.detach().clone() for z in self._z],
                "steps": self.window_steps,
                "tan": [{k: v.detach().clone() for k, v in t.items()} for t in self._tan],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "params" in state:
            self.params.load_state_dict(state["params"])
        else:  # a checkpoint from before issue 12: alpha (clip) or its logit (sigmoid), h's average
            if self.parametrization == "schedule":
                raise ConfigError(
                    "this checkpoint's lfm-lb learned alpha itself (the default before the learned schedule of "
                    "issue 12) and cannot continue as a schedule: train it again, with --set "
                    "method.parametrization=clip --set method.step=raw --set method.val_objective=fused "
                    "--set method.alpha0=0.5 for the old learner"
                )
            self.params.values = [state["logit"] if self.parametrization != "clip" else state["alpha"]]
            self.params.average, self.params.updates = [state.get("average", 0.0)], state.get("updates", 0)
            self.params.lr = state["lr"]
        self.epoch, self.last_hypergradient = state.get("epoch", 0.0), state["last"]
        self.reset()
        window = state.get("window")
        if window is not None:
            self._z, self._tan, self.window_steps = list(window["z"]), list(window["tan"]), window["steps"]

    @staticmethod
    def _groups(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
        return {id(p): g for g in optimizer.param_groups for p in g["params"]}

    @staticmethod
    def _rules(optimizer: torch.optim.Optimizer):
        for kind, rules in OPTIMIZER_RULES.items():
            if type(optimizer) is kind:
                return rules
        raise ConfigError(
            f"lfm-lb: no exact hypergradient for optimiser {type(optimizer).__name__} "
            f"(supported: {', '.join(k.__name__ for k in OPTIMIZER_RULES)})"
        )

    @staticmethod
    def _tangent_rule(optimizer: torch.optim.Optimizer):
        AlphaLearner._rules(optimizer)  # the same optimisers, the same message
        return TANGENT_RULES[type(optimizer)]


def official_matching_gradient(
    cls_loss: torch.Tensor, match_loss: torch.Tensor, alpha: float, loss_scale: float, params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The released code's update signal for the matching weight (NOT a hypergradient).

    g_total = grad L (with graph), g_cls = grad L_cls; hvp = grad_theta <g_total, g_cls>;
    returns the mean of the entries of hvp for the FIRST parameter tensor.
    """
    total = lfm_objective(cls_loss, match_loss, alpha, loss_scale)
    g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
    g_cls = torch.autograd.grad(cls_loss, params, retain_graph=True, allow_unused=True)
    inner = tensor_sum(
        (a * b.detach()).sum() for a, b in zip(g_total, g_cls, strict=True) if a is not None and b is not None
    )
    hvp = torch.autograd.grad(inner, params[0], allow_unused=True)[0]
    return torch.zeros(()) if hvp is None else hvp.mean()
