"""Heuristic schedules of LFM's matching weight w = 1 - alpha over the epochs (``lfm-h``).

Each schedule is a function (t, total, w0, w1) -> w of the epoch t (from 0) of ``total``; w0 and w1
are the options of the schedules that use them (linear, cosine, constant). Found by name in
``SCHEDULES`` (``method.schedule``, ``modgap list schedules``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..registry import Registry

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
