"""The one hook interface every training method implements.

The trainer owns the loop (data, forward, optimiser step, evaluation, checkpoints); a method only
says what the loss is and, where it needs to, how gradients, steps and epochs are adjusted:

    out    = model(batch.inputs)                 # ModelOutput: features, logits per modality, fused
    losses = method.losses(out, batch, ctx)      # Losses(total, named terms)
    method.backward(losses, ctx)                 # default: losses.total.backward()
    method.after_backward(ctx)                   # e.g. per-encoder gradient modulation
    optimizer.step()
    method.after_step(ctx)                       # e.g. learn alpha on a validation batch
    ...                                          # on_epoch_start / on_epoch_end at the boundaries
    method.predict(out)                          # the fused logits used for evaluation

A method is an ``nn.Module``: its own trainable modules (projection heads, ...) are optimised with
the model and its state (buffers, and ``get_extra_state``) is saved in every checkpoint.
Each method declares an ``Options`` dataclass; ``method.*`` config keys are checked against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import build
from ..data.base import Batch
from ..errors import ConfigError, closest
from ..models.classifier import ModelOutput, MultimodalClassifier
from ..registry import Registry


@dataclass
class Losses:
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named parts, still attached to the graph (e.g. cls, match)."""


@dataclass
class StepContext:
    """What the trainer lends a method at each hook."""

    model: MultimodalClassifier
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    """Every trainable parameter, model's and method's, in the optimiser's order."""
    epoch: int = 0
    epochs: int = 1
    step: int = 0
    """Optimiser steps taken before this one (global, from 0)."""
    steps_per_epoch: int = 1
    """Optimiser steps per epoch: batches per epoch times ``Method.steps_per_batch()``."""
    share: float = 1.0
    """This process's share of the current global training batch (1 on one process)."""
    next_val_batch: Callable[[], Batch] | None = None
    """Returns the next batch of the validation split (cycling); never the test split."""
    fixed_val_batch: Callable[[int], Batch] | None = None
    """Returns the same first n validation samples every call."""
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    """Averages a tensor over processes (identity on one process)."""
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    """Sums a tensor over processes (identity on one process): counts, sums for prototypes."""
    reduce_weighted: Callable[[list[torch.Tensor], float], None] = lambda tensors, share: None
    """In place, sum over processes of share * tensor: with share = batch.share, a per-batch mean
    computed on this process's shard becomes the global-batch value (nothing on one process)."""
    iterate: Callable[..., Iterator[Batch]] | None = None
    """iterate(split) yields the batches of a split in order, evaluation transforms, no shuffle.
    Methods may pass over "train" and "val" (prototypes, held-out estimates); never "test"."""
    train_batches: Callable[[int], Iterator[Batch]] | None = None
    """train_batches(epoch) yields the train split exactly as the trainer's own pass of that epoch:
    shuffled by (seed, epoch), training transforms (for methods that train models of their own,
    e.g. UMT's uni-modal teachers). None in loops that do not provide it."""
    out: ModelOutput | None = None
    """The current training step's model output, recorded when the step's losses are computed
    (``Method.losses`` of any method records it), so gradient hooks of a composition's later
    parts (e.g. ogm-ge's after_backward in ``lfm-lb+ogm-ge``) see the logits of this step."""
    batch: Batch | None = None
    """The current training step's batch, recorded with ``out``."""

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return (self.epoch + 0.0) / max(self.epochs, 1)


class Method(nn.Module):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    min_modalities: ClassVar[int] = 1
    """Fewest modalities the method works with (2 for a method that compares, matches or balances them)."""
    fusion: ClassVar[str | None] = None
    """A fusion the method needs (e.g. a shared head); None: model.fusion from the config."""
    unimodal_models: ClassVar[bool] = False
    """The trained model is one independent uni-modal model per modality (its encoders and heads never
    see another modality): a reference for tables, a source of teachers."""
    leaves_parameters_unused: ClassVar[bool] = False
    """Some steps' loss does not reach every parameter (e.g. one modality trained per step). DDP then
    has to search the graph for unused parameters each step (train/distributed.py)."""

    @dataclass
    class Options:
        pass

    def __init__(
        self, options: Any, modalities: tuple[str, ...], num_classes: int, feature_dims: dict[str, int]
    ) -> None:
        super().__init__()
        if len(modalities) < self.min_modalities:
            needed = "two" if self.min_modalities == 2 else str(self.min_modalities)
            raise ConfigError(f"method '{self.name}' compares modalities: it needs at least {needed}")
        self.options = options
        self.modalities = tuple(modalities)
        self.num_classes = num_classes

    def steps_per_batch(self) -> int:
        """Optimiser steps the trainer takes on each training batch, one after another, each with its
        own forward pass and hooks (1; MLA: one per modality in turn, as its released code does)."""
        return 1

    # ---- hooks -------------------------------------------------------------------------------
    def losses(self, out: ModelOutput, batch: Batch, ctx: StepContext) -> Losses:
        raise NotImplementedError

    def backward(self, losses: Losses, ctx: StepContext) -> None:
        losses.total.backward()

    def takes_own_gradients(self, ctx: StepContext) -> bool:
        """True when this step's ``backward`` takes gradients with ``torch.autograd.grad`` instead of one
        ``Tensor.backward`` (called before the step's forward): on several processes the trainer then
        reduces the gradients itself after ``backward`` instead of through DDP's hooks."""
        return False

    def after_backward(self, ctx: StepContext) -> None:
        pass

    def after_step(self, ctx: StepContext) -> None:
        pass

    def on_skipped_step(self, ctx: StepContext) -> None:
        """The trainer skipped this step (non-finite loss or gradient): drop anything kept for it."""

    def on_epoch_start(self, ctx: StepContext) -> None:
        pass

    def on_epoch_end(self, ctx: StepContext) -> None:
        pass

    def predict(self, out: ModelOutput) -> torch.Tensor:
        return out.fused

    # ---- what a method shows of itself --------------------------------------------------------
    def scalars(self) -> dict[str, float]:
        """The values this method set for the step just taken, by name, logged after every optimiser
        step in scalars.csv (and in the progress bar and metrics.jsonl at the end of each epoch).
        Names in use: ``alpha`` (the weight on classification; also alpha.csv and the summary, as the
        run-folder contract asks), ``k/<modality>`` (a gradient coefficient), ``weight/<head>``,
        ``beta/<modality>``. Called once per step: return plain floats already at hand."""
        return {}

    def eval_outputs(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        """Arrays, one row per example, that evaluation should keep besides logits and features, by
        name. ``projection/<modality>`` (features in a learned shared space) gives the modality gap
        of that space in the diagnostics and the summary."""
        return {}


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    return METHODS.register(cls.name)(cls)


def method_classes(name: str) -> list[type[Method]]:
    """The classes named by ``name``: one, or several joined by '+' (a composition)."""
    return [METHODS.get(part) for part in name.split("+")]


def check_method_settings(settings: dict[str, dict[str, Any]]) -> None:
    """Every entry of a config's ``methods`` section names a method and only that method's options
    (one line naming ``methods.<name>.<key>`` and the closest valid choice otherwise)."""
    for name, options in settings.items():
        try:
            cls = METHODS.get(name)
        except ConfigError as exc:
            raise ConfigError(f"methods.{name}: {exc}") from None
        build(cls.Options, options, where=f"methods.{name}")


def required_fusion(name: str) -> str | None:
    fusions = {c.fusion for c in method_classes(name) if c.fusion}
    if len(fusions) > 1:
        raise ConfigError(f"methods in '{name}' need different fusions: {', '.join(sorted(fusions))}")
    return fusions.pop() if fusions else None


def trains_unimodal_models(label: str) -> bool:
    """Whether a method label ("unimodal", "ume[combine=probs]", "lfm-lb+ogm-ge", ...) names a single
    registered method whose models are uni-modal (``Method.unimodal_models``); unknown names: False."""
    name = label.split("[", 1)[0]
    if "+" in name or name not in METHODS:
        return False
    return METHODS.get(name).unimodal_models


def options_of(cls: type[Method]) -> dict[str, Any]:
    return dataclasses.asdict(cls.Options())


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def check_choice(options: Any, key: str, choices: Sequence[str]) -> None:
    """Option ``key`` of a method's ``options`` must be one of ``choices``: otherwise one line naming
    ``method.<key>``, the value and the closest valid choice."""
    value = getattr(options, key)
    if value not in choices:
        raise ConfigError(f"unknown method.{key} '{value}'{closest(str(value), choices)}")


def tensor_sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(tensors)``, typed as the tensor it is: the int start 0 vanishes in the first addition
    (callers sum over at least one tensor: the modalities, the loss terms)."""
    return cast(torch.Tensor, sum(tensors))


class evaluation_mode:
    """Puts modules in eval mode (no dropout, BatchNorm statistics untouched) for a validation pass."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.modules, self.modes, strict=True):
            m.train(mode)
