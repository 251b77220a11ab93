"""ogm-ge: On-the-fly Gradient Modulation with Generalization Enhancement (Peng et al., CVPR 2022).

Loss: joint's CE on the fused logits. After backward, per batch:

    s_m   = sum_i softmax(z_m,i)[y_i]                       (z_m: modality m's logits)
    rho_m = s_m / mean_{n != m} s_n                         (M = 2: s_a / s_v, the paper's ratio)
    k_m   = 1 - tanh(a * rho_m)  if rho_m > 1, else 1       (Eq. 10; offset > 0: relu(rho_m - offset))
    g     <- k_m * g + N(0, std(g)^2)                       (each convolution kernel of encoder m; GE)

during the modulation epochs [modulation_starts, modulation_ends] (epochs counted from 0), as the
authors' released main.py (``train_epoch``) does. Which tensors: the convolution kernels of the
encoder (the released code's 4-D gradients); an encoder without any (an MLP, a text transformer)
has every parameter modulated instead (``params=auto``), since the authors' rule would leave it
untouched and OGM-GE would be joint training. The scores go through ``ctx.all_reduce_mean``; the
noise comes from a generator seeded by the run's seed and the step, so it is the same on every
process and after a resume. docs/methods/ogm-ge.md holds the fidelity table.

Only the gradient hook matters for composition: ``--method lfm-lb+ogm-ge`` keeps lfm-lb's loss and
modulates its encoder gradients (the logits of the step come from ``ctx.out``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import StepContext, check_choice, register
from .joint import Joint
from .scores import modality_scores


def discrepancy_ratios(scores: dict[str, float]) -> dict[str, float]:
    """rho_m = s_m / (mean of the other modalities' scores)."""
    out = {}
    for m, s in scores.items():
        others = [v for n, v in scores.items() if n != m]
        out[m] = s / max(sum(others) / len(others), 1e-12)
    return out


def modulation_coefficients(scores: dict[str, float], alpha: float, offset: float = 0.0) -> dict[str, float]:
    """k_m = 1 - tanh(alpha * relu(rho_m - offset)) for modalities with rho_m > 1, else 1 (offset 0: Eq. 10)."""
    return {
        m: (1.0 - math.tanh(alpha * max(rho - offset, 0.0))) if rho > 1.0 else 1.0
        for m, rho in discrepancy_ratios(scores).items()
    }


PARAMS = ("auto", "conv", "all")
NOISE_STD = ("grad", "scaled")


def modulated_parameters(encoder: nn.Module, which: str = "auto") -> list[nn.Parameter]:
    """The parameters of ``encoder`` whose gradients OGM-GE modulates (see ``Options.params``)."""
    every = [p for p in encoder.parameters() if p.requires_grad]
    kernels = [p for p in every if p.dim() >= 3]
    if which == "all" or (which == "auto" and not kernels):
        return every
    return kernels


@register
class OGMGE(Joint):
    name = "ogm-ge"
    summary = "OGM-GE: the dominant modality's encoder gradients scaled down by its score ratio, plus Gaussian noise"
    min_modalities = 2

    @dataclass
    class Options:
        alpha: float = 0.1
        """Modulation strength a. 0.1 is the released code's default setting (README); the README
        recommends 0.1 for VGGSound and 0.8 for CREMA-D; the paper tunes it per dataset (0.1-0.8)."""
        modulation_starts: int = 0
        """First epoch (from 0) with modulation (released code: --modulation_starts 0)."""
        modulation_ends: int = 50
        """Last epoch with modulation, inclusive (released code: --modulation_ends 50 of 100 epochs)."""
        offset: float = 0.0
        """k = 1 - tanh(a * relu(rho - offset)) for rho > 1. 0 is the paper's Eq. 10 and the released
        code, 1 - tanh(a * rho), which jumps to 1 - tanh(a) just above rho = 1; 1 is the continuous
        form an earlier project spec used (much weaker: k = 0.95 instead of 0.85 at rho = 1.5, a = 0.1)."""
        ge: bool = True
        """Generalization enhancement: add Gaussian noise to each modulated gradient tensor
        (released code, --modulation OGM_GE); false gives plain OGM."""
        noise_std: str = "grad"
        """Std of the GE noise: grad, the gradient's own std before scaling (the released main.py,
        ``g * k + N(0, std(g))``); scaled, the std of k g (an earlier released version)."""
        params: str = "auto"
        """Which gradient tensors of encoder m are modulated: conv, its convolution kernels only
        (tensors of 3 or more dimensions; the released code's 4-D test), so BatchNorm and linear
        layers are untouched; all, every parameter of the encoder; auto (default), conv for an
        encoder that has convolutions and all for one that has none (MLPs, text transformers),
        where the authors' rule would modulate nothing and leave joint training."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.alpha < 0 or options.offset < 0:
            raise ConfigError("method.alpha and method.offset of ogm-ge must be >= 0")
        check_choice(options, "params", PARAMS)
        check_choice(options, "noise_std", NOISE_STD)
        self.noise_seed = int(torch.initial_seed()) % (2**31)
        self.last_scores: dict[str, float] = {}
        self.last_coefficients: dict[str, float] = {m: 1.0 for m in modalities}
        self.applied: dict[str, float] = {}

    def active(self, epoch: int) -> bool:
        return self.options.modulation_starts <= epoch <= self.options.modulation_ends

    def after_backward(self, ctx: StepContext) -> None:
        if ctx.out is None or ctx.batch is None:
            return
        scores = modality_scores({m: ctx.out.logits[m] for m in self.modalities}, ctx.batch.y)
        reduced = ctx.all_reduce_mean(torch.stack(list(scores.values())))
        self.last_scores = {m: float(v) for m, v in zip(scores, reduced, strict=True)}
        coeffs = modulation_coefficients(self.last_scores, self.options.alpha, self.options.offset)
        self.last_coefficients = coeffs
        self.applied = coeffs if self.active(ctx.epoch) else {m: 1.0 for m in self.modalities}
        if not self.active(ctx.epoch):
            return
        generator = None
        for m in self.modalities:
            for p in modulated_parameters(ctx.model.encoders[m], self.options.params):
                if p.grad is None:
                    continue
                grad = p.grad * coeffs[m]
                if self.options.ge:
                    if generator is None:
                        generator = torch.Generator(device=grad.device)
                        generator.manual_seed(self.noise_seed * 1_000_003 + ctx.step)
                    spread = grad if self.options.noise_std == "scaled" else p.grad
                    std = spread.std() if spread.numel() > 1 else spread.new_zeros(())
                    noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype)
                    grad = grad + noise * (std + 1e-8)
                p.grad = grad

    def scalars(self) -> dict[str, float]:
        """k/<modality>: the coefficient the step's encoder gradients were multiplied by (1 outside
        the modulation window)."""
        return {f"k/{m}": k for m, k in self.applied.items()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"noise_seed": self.noise_seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.noise_seed = int(state["noise_seed"])
