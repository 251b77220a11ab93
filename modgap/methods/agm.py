"""agm: Adaptive Gradient Modulation (Li, Li, Hu, Lei, Li, Zhou, ICCV 2023).

Loss: joint's CE on the fused logits. After backward, per batch:

1. Mono-responses, Shapley-style. f(S) is the fused output with the modalities outside S zeroed
   (their inputs, or their features); f(M) is the step's own fused output. With
   w(k) = k! (M - k - 1)! / M!,

       r_m = sum_{S not containing m} w(|S|) [f(S + m) - f(S)]  +  f(empty) / M

   i.e. the Shapley value of m plus an equal share of f(empty), so that sum_m r_m = f(M). The
   f(empty) terms cancel, so f(empty) is never evaluated: 2^M - 2 extra evaluations. For M = 2 this
   is exactly the released code's r_a = (f(a, v) - f(0, v) + f(a, 0)) / 2.
2. Score of each response: s_m = mean_i -log max(softmax(r_m,i)[y_i], 1e-8) (a CE; lower = better),
   averaged over processes, and its running average S_m over all steps so far (cumulative mean).
3. Ratios against the other modalities, now and on average (M = 2: exp(s_v - s_a)):

       ratio_m = exp(mean_{n != m} s_n - s_m),   target_m = exp(mean_{n != m} S_n - S_m)

   using the running averages from before this step, then
   k_m = exp(alpha * min(target_m - ratio_m, clip)): a modality doing better than its usual
   standing is slowed down, one doing worse is sped up.
4. During the modulation epochs, the gradient is scaled by k_m. Default (``target=responses``, the
   released code): the training output is sum_m r_m, each r_m's incoming gradient multiplied by
   k_m, and the padded passes behind r_m are differentiated too, so encoder m, the fusion's weights
   on h_m and the zero-input passes all feel k_m. ``target=encoders``: after backward, every
   gradient of encoder m is multiplied by k_m (a pure gradient hook; also what a composition such as
   ``lfm-lb+agm`` gets, where agm's loss is not called).
5. Released-code gradient clipping (``grad_clip``): when an entry of the fusion's weight gradient
   leaves [-c, c], every gradient is clipped to total norm c.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from ..errors import ConfigError
from .base import Losses, StepContext, check_choice, cross_entropy, evaluation_mode, register, tensor_sum
from .joint import Joint, auxiliary_loss

ZERO_MODES = ("inputs", "features")
TARGETS = ("responses", "encoders")


def shapley_weights(m: int) -> list[float]:
    """w(k) = k! (M - k - 1)! / M! for coalitions of k other modalities."""
    return [math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m) for k in range(m)]


def mono_responses(f: dict[frozenset, torch.Tensor], modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """r_m = Shapley value of m + f(empty)/M, from f(S) for every non-empty S (f(empty) cancels)."""
    w = shapley_weights(len(modalities))
    out: dict[str, torch.Tensor] = {}
    for m in modalities:
        others = [n for n in modalities if n != m]
        total: float | torch.Tensor = 0.0
        for k in range(len(others) + 1):
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                total = total + w[k] * f[s | {m}]
                if s:
                    total = total - w[k] * f[s]
        out[m] = cast(torch.Tensor, total)  # f[{m}] is always added: a tensor by now
    return out


def response_scores(responses: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    """s_m = mean_i -log max(softmax(r_m,i)[y_i], 1e-8)."""
    rows = torch.arange(len(y), device=y.device)
    return {m: -torch.softmax(r.float(), dim=1)[rows, y].clamp_min(1e-8).log().mean() for m, r in responses.items()}


def _against_others(values: dict[str, float]) -> dict[str, float]:
    return {m: math.exp(sum(v for n, v in values.items() if n != m) / (len(values) - 1) - s) for m, s in values.items()}


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient is multiplied by k (the released code's backward hook)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.k, None


def scale_grad(x: torch.Tensor, k: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, k)


def agm_coefficients(
    scores: dict[str, float], averages: dict[str, float], alpha: float, clip: float = 10.0
) -> dict[str, float]:
    """k_m = exp(alpha * min(target_m - ratio_m, clip)) from batch scores and running averages."""
    ratio, target = _against_others(scores), _against_others(averages)
    return {m: math.exp(alpha * min(target[m] - ratio[m], clip)) for m in scores}


@register
class AGM(Joint):
    name = "agm"
    summary = "AGM: Shapley mono-responses, running averages, per-encoder gradient scaling to keep them balanced"
    min_modalities = 2

    @dataclass
    class Options:
        alpha: float = 1.0
        """Modulation strength (released code, utils/config.py --alpha default 1.0; its README
        trains AV-MNIST with 2.5)."""
        modulation_starts: int = 0
        """First epoch (from 0) with modulation (released code: --modulation_starts 0)."""
        modulation_ends: int = 19
        """Last epoch with modulation, inclusive, epochs from 0 (released code: --modulation_ends 20
        with epochs from 1, i.e. the first 20 epochs; run/CREMAD_main.py: train)."""
        zero: str = "inputs"
        """What "zeroing a modality" zeroes: its inputs (released code: zero tensors through the
        encoders, in eval mode) or its features (cheaper: only the fusion is re-evaluated)."""
        clip: float = 10.0
        """Upper clip of target - ratio in the exponent (released CREMA-D code: min(., 10); UR-Funny: 7;
        AVE, AV-MNIST, MOSEI: none, i.e. .inf)."""
        target: str = "responses"
        """Where k_m acts. responses (released code, model/CREMAD_net.py: GradMod): the training output is
        sum_m r_m with r_m's gradient scaled by k_m, and the padded passes are differentiated, so the
        fusion's weights on h_m are scaled too. encoders: after backward, encoder m's parameter gradients
        are multiplied by k_m (fusion untouched, padded passes not differentiated; cheaper)."""
        grad_clip: float = 1.0
        """Released-code clipping: when an entry of a fusion weight's gradient leaves [-c, c], all
        gradients are clipped to total norm c (run/CREMAD_main.py, AVMNIST, MOSEI: 1; URFunny: 5;
        AVE: none). 0 turns it off. Applied in every epoch, as in the released code."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        check_choice(options, "zero", ZERO_MODES)
        check_choice(options, "target", TARGETS)
        if options.alpha < 0:
            raise ConfigError("method.alpha of agm must be >= 0")
        if options.grad_clip < 0:
            raise ConfigError("method.grad_clip of agm must be >= 0 (0: off)")
        self.averages = {m: 0.0 for m in modalities}
        self.count = 0
        self.last_scores: dict[str, float] = {}
        self.last_coefficients: dict[str, float] = {m: 1.0 for m in modalities}
        self.applied: dict[str, float] = {}
        self._scaled_in_loss = False

    def active(self, epoch: int) -> bool:
        return self.options.modulation_starts <= epoch <= self.options.modulation_ends

    def subset_outputs(self, ctx: StepContext, grad: bool = False) -> dict[frozenset, torch.Tensor]:
        """f(S) for every non-empty S: the fused logits with the modalities outside S zeroed. The padded
        passes run in eval mode; with ``grad`` they are differentiated (released code), else detached."""
        mods, out = self.modalities, ctx.out
        assert out is not None  # set by the trainer (or losses) before the method's hooks
        f = {frozenset(mods): out.fused if grad else out.fused.detach()}
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()), evaluation_mode(ctx.model):
            for k in range(1, len(mods)):
                for subset in itertools.combinations(mods, k):
                    keep = set(subset)
                    if self.options.zero == "inputs":
                        assert ctx.batch is not None  # set together with ctx.out
                        inputs = {m: x if m in keep else torch.zeros_like(x) for m, x in ctx.batch.inputs.items()}
                        fused = ctx.model(inputs).fused
                    else:
                        feats = {
                            m: (h if grad else h.detach()) if m in keep else torch.zeros_like(h)
                            for m, h in out.features.items()
                        }
                        fused = ctx.model.fusion(feats)[1]
                    f[frozenset(subset)] = fused
        return f

    def _coefficients(self, responses: dict[str, torch.Tensor], y: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        """k_m from this step's scores and the running averages before it; then updates the averages."""
        scores = response_scores({m: r.detach() for m, r in responses.items()}, y)
        reduced = ctx.all_reduce_mean(torch.stack(list(scores.values())))
        self.last_scores = {m: float(v) for m, v in zip(scores, reduced, strict=True)}
        coeffs = agm_coefficients(self.last_scores, self.averages, self.options.alpha, self.options.clip)
        self.last_coefficients = coeffs
        self.applied = coeffs if self.active(ctx.epoch) else {m: 1.0 for m in self.modalities}
        self.count += 1
        t = self.count
        self.averages = {m: self.averages[m] * (t - 1) / t + self.last_scores[m] / t for m in self.modalities}
        return coeffs

    def losses(self, out, batch, ctx) -> Losses:
        self._scaled_in_loss = False
        if self.options.target != "responses" or not torch.is_grad_enabled():
            return super().losses(out, batch, ctx)
        ctx.out, ctx.batch = out, batch
        responses = mono_responses(self.subset_outputs(ctx, grad=True), self.modalities)
        coeffs = self._coefficients(responses, batch.y, ctx)
        k = coeffs if self.active(ctx.epoch) else {m: 1.0 for m in self.modalities}
        fused = tensor_sum(scale_grad(r, k[m]) for m, r in responses.items())  # = f(M) in value
        loss = cross_entropy(fused, batch.y)
        self._scaled_in_loss = True
        aux = auxiliary_loss(out, batch.y, ctx)
        if aux is None:
            return Losses(loss, {"cls": loss})
        return Losses(loss + aux, {"cls": loss, "aux": aux})

    def after_backward(self, ctx: StepContext) -> None:
        if ctx.out is None or ctx.batch is None:
            return
        if not self._scaled_in_loss:  # target=encoders, or a composition that did not call agm's loss
            with torch.no_grad():
                responses = mono_responses(self.subset_outputs(ctx), self.modalities)
            coeffs = self._coefficients(responses, ctx.batch.y, ctx)
            if self.active(ctx.epoch):
                for m in self.modalities:
                    for p in ctx.model.encoders[m].parameters():
                        if p.grad is not None:
                            p.grad = p.grad * coeffs[m]
        self._scaled_in_loss = False
        self.clip_gradients(ctx)

    def clip_gradients(self, ctx: StepContext) -> None:
        """Released code: if a fusion weight gradient has an entry outside [-c, c], clip all to norm c."""
        c = self.options.grad_clip
        if c <= 0:
            return
        weights = [p.grad for p in ctx.model.fusion.parameters() if p.grad is not None and p.grad.dim() >= 2]
        if weights and max(float(g.abs().max()) for g in weights) > c:
            torch.nn.utils.clip_grad_norm_([p for p in ctx.params if p.grad is not None], max_norm=c)

    def scalars(self) -> dict[str, float]:
        """k/<modality>: the coefficient on the step's gradients of that modality (1 outside the window)."""
        return {f"k/{m}": k for m, k in self.applied.items()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"averages": dict(self.averages), "count": self.count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.averages, self.count = dict(state["averages"]), int(state["count"])
