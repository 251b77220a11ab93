"""Mixed precision, memory format and compilation for the trainer (docs/scaling.md).

``train.precision``
    fp32  nothing changes.
    bf16  ``torch.autocast(device, bfloat16)`` (CPU and CUDA). No loss scaling: bf16 has fp32's
          exponent range.
    fp16  ``torch.autocast(cuda, float16)`` and dynamic loss scaling (CUDA only: refused on CPU).

Where: in the training step (``autocast()``: the forward and the method's losses), every encoder runs
under autocast and returns its features as fp32; the fusion heads and the losses (cross-entropy, the
matching term, a method's own projections) are computed in fp32. The encoders hold nearly all the
FLOPs; the heads and losses are cheap, and the matching term is a small difference between two
near-equal distributions that low-precision logits blur (mfeat, lfm-lb, first batch at initialisation:
JS 0.0128 in fp32, 0.0096 with the whole forward under bf16 autocast, 0.0128 with encoders-only).
Parameters, gradients and optimiser state stay fp32 in every mode. Evaluation, and whatever a method
runs outside the step's forward and losses (lfm-lb's validation forward and hypergradient, epoch
hooks, gradient hooks), runs in fp32; AlphaLearner accumulates the hypergradient in float64.

Why fp16 does not use ``torch.amp.GradScaler`` as is: GradScaler multiplies the loss by S and later
divides ``p.grad`` by S (``unscale_``). Methods that take gradients themselves inside their backward
hook with ``torch.autograd.grad`` keep quantities built from the scaled gradients that ``unscale_``
never sees: lfm-lb's direction s * (g_cls - g_match), from which the exact hypergradient is
computed, would be S (= 65536 at the start) times too large, and alpha would jump to a bound.
Here every loss term is multiplied by S and a hook on each trainable parameter multiplies its
gradient by 1/S as autograd delivers it, before it is accumulated into ``p.grad`` or returned by
``autograd.grad``: the backward pass through fp16 activations runs at scale S (what keeps small
gradients from underflowing) and every gradient any method hook sees is at true scale. S follows
GradScaler's rule: 2**16 to start, halved and the step skipped when a gradient is inf/NaN, doubled
after 2000 steps without one. Such steps are the scaler's business, not failures: they are not
counted in ``skipped_steps`` (``amp_skipped_steps`` in summary.json counts them).

``train.channels_last`` (CUDA only): the model's 4-D parameters and every input with >= 4 dims are
laid out channels-last (for a (B, T, C, H, W) clip: C innermost, so folding T into the batch gives an
NHWC view). It pays on CUDA with tensor cores (ResNets in bf16/fp16). Without it, such inputs are
made contiguous (NCHW) whatever layout the dataset produced (the prepared frames' augmentation
returns C innermost). On the CPU, channels-last is refused and never produced by accident: oneDNN's
backward of a 1x1 stride-2 convolution in NHWC with fewer input channels than its block (the first
downsample of a ResNet of model.width 4 or 8) crashes (torch 2.13 on an AVX-512 CPU: a 1x1 stride-2
Conv2d(8, 16) on a (2, 8, 56, 56) NHWC input segfaults in backward; oneDNN issue #6035 reports
the same kernel writing out of bounds, or wrong weight gradients, on other machines).

``train.compile``: each encoder is compiled in place (``nn.Module.compile``: state_dict keys do not
change, checkpoints stay interchangeable). The training step's forward and backward (including
lfm-lb's ``torch.autograd.grad`` of each loss term and of the validation loss) go through the
compiled graphs; AOTAutograd's buffer donation is turned off, since taking two gradients of one
graph (retain_graph=True, lfm-lb and mmpareto) is refused with it. Compiled graphs have no double
backward (create_graph=True): the epoch hooks, where lfm-lb ``variant=official`` needs one, run
eagerly (``eager()``); a method needing one inside the step (lfm-lb horizon > 1) is refused in one
line. Compiling costs time up front, once per input shape and per train/eval mode (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..models.classifier import MultimodalClassifier

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LossScale:
    """Dynamic loss scale for fp16 (GradScaler's constants and rule); its state is checkpointed."""

    def __init__(self, init: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5, interval: int = 2000) -> None:
        self.scale, self.growth, self.backoff, self.interval = init, growth, backoff, interval
        self.good_steps = 0
        self.skipped = 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale *= self.backoff
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps == self.interval:
            self.scale *= self.growth
            self.good_steps = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.good_steps, self.skipped = (
            float(state["scale"]),
            int(state["good_steps"]),
            int(state["skipped"]),
        )


class Precision:
    """What the trainer's step needs for train.precision, train.channels_last and train.compile."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        check_train_options(cfg, device.type)
        self.dtype = DTYPES[cfg.precision]
        self.device_type = device.type
        self.channels_last = cfg.channels_last
        self.compiled = cfg.compile
        self.loss_scale = LossScale() if cfg.precision == "fp16" else None
        self.active = False
        """True inside ``autocast()``: the encoders run in reduced precision."""

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Around the forward and the method's losses of a training step: the encoders (prepared
        by ``prepare_model``) run under autocast inside, everything else in fp32."""
        if self.dtype is None:
            yield
            return
        self.active = True
        try:
            yield
        finally:
            self.active = False

    @contextlib.contextmanager
    def scaled(self, losses, params: list[torch.nn.Parameter]) -> Iterator:
        """Around the method's backward. fp16: the losses times S, every parameter gradient times 1/S
        as autograd delivers it. Otherwise the losses as they are. Refuses, in one line, a backward
        that differentiates gradients (create_graph) where that cannot be right: fp16 (the leaf
        unscaling would also divide the second-order part) and compiled encoders."""
        hooks, second_order = [], []
        if self.loss_scale is not None:
            scale = self.loss_scale.scale

            def unscale(g: torch.Tensor, inv: float = 1.0 / scale) -> torch.Tensor:
                if g.requires_grad:  # a create_graph backward: this gradient will be differentiated
                    second_order.append(True)
                return g * inv

            hooks = [p.register_hook(unscale) for p in {id(p): p for p in params if p.requires_grad}.values()]
            losses = type(losses)(losses.total.float() * scale, {k: v.float() * scale for k, v in losses.terms.items()})
        try:
            yield losses
        except RuntimeError as exc:
            if self.compiled and "double backward" in str(exc):
                raise ConfigError(
                    "train.compile: this method differentiates its gradients in the training step "
                    "(create_graph, e.g. lfm-lb horizon > 1), which compiled graphs do not support; "
                    "set train.compile=false"
                ) from None
            raise
        finally:
            for h in hooks:
                h.remove()
        if second_order:
            raise ConfigError(
                "train.precision=fp16: this method differentiates its gradients in the training step "
                "(create_graph, e.g. lfm-lb horizon > 1), which loss scaling cannot unscale exactly; "
                "use train.precision=bf16"
            )

    def prepare_model(self, model: MultimodalClassifier) -> MultimodalClassifier:
        """Mixed-precision encoders, channels_last and compile, applied in place (model on its device).
        State_dict keys do not change; a deep copy of an encoder (uni-modal teachers) keeps the behaviour."""
        if self.dtype is not None:
            for encoder in model.encoders.values():
                encoder.forward = types.MethodType(_mixed_forward(self), encoder)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted; not in the stubs
        if self.compiled:
            # methods take several gradients of one graph (retain_graph=True: lfm-lb, mmpareto), which
            # compiled backward graphs refuse while they donate (reuse) their saved buffers
            with contextlib.suppress(ImportError, AttributeError):
                import torch._functorch.config as functorch_config

                functorch_config.donated_buffer = False
            for encoder in model.encoders.values():
                encoder.compile()
        return model

    def inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs in the chosen memory format: channels_last, C of the last three dims innermost;
        otherwise contiguous. Tensors of fewer than 4 dims (and integer ones) as they are."""
        layout = channels_last if self.channels_last else contiguous
        return {m: layout(x) for m, x in inputs.items()}

    def eager(self) -> contextlib.AbstractContextManager:
        """Compiled modules run eagerly inside (for method hooks that need double backward)."""
        if not self.compiled or not hasattr(torch.compiler, "set_stance"):
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def state_dict(self) -> dict[str, float] | None:
        return self.loss_scale.state_dict() if self.loss_scale is not None else None

    def load_state_dict(self, state: dict[str, float] | None) -> None:
        if self.loss_scale is not None and state:
            self.loss_scale.load_state_dict(state)


def _mixed_forward(precision: Precision):
    def forward(module: torch.nn.Module, *args, **kwargs):
        if not precision.active:
            return type(module).forward(module, *args, **kwargs)
        with torch.autocast(precision.device_type, dtype=precision.dtype):
            out = type(module).forward(module, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    return forward


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) with C innermost in memory; 4-D: ``torch.channels_last``. Fewer dims: as is."""
    if x.dim() < 4 or not x.is_floating_point():
        return x
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.movedim(-3, -1).contiguous().movedim(-1, -3)


def contiguous(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous() if x.dim() >= 4 and x.is_floating_point() else x


def check_train_options(cfg: TrainConfig, device_type: str) -> None:
    """One-line errors for precision / compile choices the device cannot do."""
    if cfg.precision not in DTYPES:
        from ..errors import closest

        raise ConfigError(f"unknown train.precision '{cfg.precision}'{closest(cfg.precision, tuple(DTYPES))}")
    if cfg.precision == "fp16" and device_type != "cuda":
        raise ConfigError(f"train.precision=fp16 needs CUDA (loss-scaled float16); on {device_type} use bf16 or fp32")
    if cfg.channels_last and device_type != "cuda":
        raise ConfigError(
            f"train.channels_last is for CUDA; on {device_type} oneDNN's channels-last convolution "
            f"backward can crash for narrow ResNets (see train/precision.py)"
        )
    if cfg.compile and not hasattr(torch.nn.Module, "compile"):
        raise ConfigError(f"train.compile needs torch >= 2.2 (this is {torch.__version__})")
