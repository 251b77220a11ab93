"""How lfm-lb turns a hypergradient into a move of alpha (issue 12).

Two independent choices, both named options of ``lfm-lb``:

- **what alpha is a function of** (``parametrization``):

  - ``clip``      alpha itself, clipped to the bounds (one parameter);
  - ``sigmoid``   alpha = sigmoid(a) (one parameter, the logit);
  - ``schedule``  a learned schedule of the epoch t (fractional: step / steps per epoch):
                  logit alpha(t) = a + b log(1 + t), two parameters. From a = -0.54, b = 1.2 it
                  follows the paper's heuristic alpha(t) = exp(-1 / (t + 1)) within 0.05 over the
                  first 20 epochs (matching-heavy first, classification later), and the
                  hypergradients move its start a and its rise b: every update at epoch t moves the
                  whole rest of the schedule, not only the current weight.

  The hypergradient h = dL_val/dalpha of the alpha used at epoch t reaches the parameters by the
  chain rule, g = h * dalpha/dparams(t).

- **how big a step is** (``step``):

  - ``raw``     params -= lr_alpha * g (the plain gradient step: its size follows the optimiser's
                learning rate, the loss scale and the gradient norms);
  - ``sign``    params -= step_size * sign(g);
  - ``rms``     params -= step_size * g / sqrt(v), v a bias-corrected moving average of g^2 (as
                meta-learned loss weights are updated in Auto-Lambda): unit-free, and the first
                update equals ``sign``'s;
  - ``cosine``  h is replaced by the cosine between the validation gradient and the training
                step's direction d theta'/d alpha (as in "Adapting Auxiliary Losses Using Gradient
                Similarity", Du et al.), then params -= step_size * g.

``sign``, ``rms`` and ``cosine`` do not change when the learning rate, the loss scale or the
gradients are multiplied by a positive number (tests/methods/test_alpha_steps.py).

``neumann_hypergradient`` is the implicit-function-theorem hypergradient (``variant=implicit``):
the derivative of L_val at the training loss's minimiser theta*(alpha),

    dL_val/dalpha = -<grad L_val, H^{-1} d(grad L)/dalpha>,   d(grad L)/dalpha = s (g_cls - g_match),

with H^{-1} replaced by the Neumann series eta * sum_{j=0..J} (I - eta H)^j (Lorraine, Vicol and
Duvenaud, AISTATS 2020): J Hessian-vector products, no unrolled trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError, closest

PARAMETRIZATIONS = ("clip", "sigmoid", "schedule")
STEP_RULES = ("raw", "sign", "rms", "cosine")
PAPER_START, PAPER_SLOPE = -0.54, 1.2  # logit alpha(t) = a + b log(1 + t) near exp(-1 / (t + 1))
LOGIT_LIMIT = 30.0


def logit(alpha: float) -> float:
    alpha = min(max(alpha, 1e-6), 1 - 1e-6)
    return math.log(alpha / (1 - alpha))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def check(parametrization: str, step: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ConfigError(f"unknown parametrization '{parametrization}'{closest(parametrization, PARAMETRIZATIONS)}")
    if step not in STEP_RULES:
        raise ConfigError(f"unknown alpha step (method.step) '{step}'{closest(step, STEP_RULES)}")


class AlphaParams:
    """The parameters alpha is a function of, and the rule that moves them.

    ``alpha_at(t)`` gives alpha at epoch t (only ``schedule`` depends on t); ``move(signal, t)``
    takes one step from the signal (the hypergradient, or its cosine) of the alpha used at t.
    """

    def __init__(
        self,
        parametrization: str = "clip",
        alpha0: float = 0.5,
        bounds: tuple[float, float] = (0.05, 1.0),
        step: str = "raw",
        lr: float = 1.0,
        step_size: float = 0.02,
        momentum: float = 0.0,
        rms_beta: float = 0.9,
        slope: float = PAPER_SLOPE,
    ) -> None:
        check(parametrization, step)
        if not 0.0 <= bounds[0] <= bounds[1] <= 1.0:
            raise ConfigError(f"alpha bounds must satisfy 0 <= min <= max <= 1, got {bounds}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"the hypergradient momentum must lie in [0, 1), got {momentum}")
        if not 0.0 <= rms_beta < 1.0 or step_size < 0:
            raise ConfigError(
                f"method.rms_beta must lie in [0, 1) and method.step_size be >= 0, got {rms_beta}, {step_size}"
            )
        self.parametrization, self.bounds, self.rule = parametrization, bounds, step
        self.lr, self.step_size, self.momentum, self.rms_beta = lr, step_size, momentum, rms_beta
        a0 = min(max(alpha0, bounds[0]), bounds[1])
        self.values = {"clip": [a0], "sigmoid": [logit(a0)], "schedule": [logit(a0), slope]}[parametrization]
        self.average = [0.0] * len(self.values)
        self.square = [0.0] * len(self.values)
        self.updates = 0

    # ---- alpha and its derivative -------------------------------------------------------------
    def raw_alpha(self, t: float) -> float:
        if self.parametrization == "clip":
            return self.values[0]
        x = self.values[0] + (self.values[1] * math.log1p(max(t, 0.0)) if self.parametrization == "schedule" else 0.0)
        return sigmoid(min(max(x, -LOGIT_LIMIT), LOGIT_LIMIT))

    def alpha_at(self, t: float) -> float:
        lo, hi = self.bounds
        return min(max(self.raw_alpha(t), lo), hi)

    def jacobian(self, t: float) -> list[float]:
        """d alpha / d params at epoch t (the clip at the bounds is not differentiated)."""
        if self.parametrization == "clip":
            return [1.0]
        a = self.raw_alpha(t)
        slope = a * (1.0 - a)
        return [slope] if self.parametrization == "sigmoid" else [slope, slope * math.log1p(max(t, 0.0))]

    # ---- the step -----------------------------------------------------------------------------
    def move(self, signal: float, t: float) -> None:
        """One step from ``signal`` (dL_val/dalpha, or its cosine for ``step=cosine``) of the alpha
        used at epoch t. A non-finite signal moves nothing."""
        if not math.isfinite(signal):
            return
        g = [signal * j for j in self.jacobian(t)]
        self.updates += 1
        if self.momentum > 0:  # bias-corrected average of the gradients
            self.average = [
                self.momentum * m + (1.0 - self.momentum) * gi for m, gi in zip(self.average, g, strict=True)
            ]
            g = [m / (1.0 - self.momentum**self.updates) for m in self.average]
        if self.rule == "raw":
            steps = [self.lr * gi for gi in g]
        elif self.rule == "sign":
            steps = [self.step_size * float(math.copysign(1.0, gi)) if gi != 0 else 0.0 for gi in g]
        elif self.rule == "rms":
            b = self.rms_beta
            self.square = [b * v + (1.0 - b) * gi * gi for v, gi in zip(self.square, g, strict=True)]
            steps = [
                self.step_size * gi / math.sqrt(v / (1.0 - b**self.updates)) if v > 0 else 0.0
                for gi, v in zip(g, self.square, strict=True)
            ]
        else:  # cosine: the signal is already unit-free
            steps = [self.step_size * gi for gi in g]
        if any(math.isnan(s) for s in steps):  # inf * 0 (lr = inf, g = 0): no step
            return
        lo, hi = self.bounds
        if self.parametrization == "clip":
            self.values = [min(max(self.values[0] - steps[0], lo), hi)]
        else:
            self.values = [min(max(v - s, -LOGIT_LIMIT), LOGIT_LIMIT) for v, s in zip(self.values, steps, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": list(self.values),
            "average": list(self.average),
            "square": list(self.square),
            "updates": self.updates,
            "lr": self.lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values, self.average = list(state["values"]), list(state["average"])
        self.square, self.updates, self.lr = list(state["square"]), state["updates"], state["lr"]


# ------------------------------------------------------------------------ implicit hypergradient
def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) as one BLAS dot in the tensors' dtype, returned in float64 (summed over tensors there)."""
    return torch.dot(a.reshape(-1), b.to(a.dtype).reshape(-1)).double()


def dot_all(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over the pairs of tensors of dot(a_i, b_i), in float64."""
    return sum((dot(x, y) for x, y in zip(a, b, strict=True)), torch.zeros((), dtype=torch.float64))


def neumann_hypergradient(
    train_grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    val_grads: Sequence[torch.Tensor],
    d: Sequence[torch.Tensor],
    eta: float,
    steps: int,
    damping: float = 0.0,
    reduce: Callable[[list[torch.Tensor]], None] | None = None,
) -> tuple[float, float]:
    """The implicit hypergradient -eta <sum_{j=0..J} (I - eta H)^j g_val, d> and its cosine form.

    ``train_grads``: grad L(theta; alpha) built with ``create_graph=True`` (H v is its gradient
    against v); ``val_grads``: grad L_val; ``d``: d(grad L)/dalpha = s (g_cls - g_match); ``damping``
    adds damping * I to H (the optimiser's coupled weight decay is part of the training loss whose
    minimum is meant); ``reduce`` combines each H v over processes (in place). Returns (hypergradient, cosine between
    -sum (I - eta H)^j g_val and d)."""
    params = list(params)
    v = [g.detach().clone() for g in val_grads]
    total = [x.clone() for x in v]
    for _ in range(steps):
        inner = sum(
            ((g * x).sum() for g, x in zip(train_grads, v, strict=True) if g is not None and g.requires_grad),
            torch.zeros((), dtype=v[0].dtype, device=v[0].device),
        )
        raw = torch.autograd.grad(inner, params, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, raw, strict=True)]
        if reduce is not None:
            reduce(hv)
        v = [x - eta * (h + damping * x) for x, h in zip(v, hv, strict=True)]
        total = [t + x for t, x in zip(total, v, strict=True)]
    value = float(dot_all(total, d))
    norm = math.sqrt(float(dot_all(total, total)) * float(dot_all(d, d)))
    return -eta * value, (-value / norm if norm > 0 else 0.0)
