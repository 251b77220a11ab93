"""Uni-modal teachers (Du et al., ICML 2023): one uni-modal model per modality, used by UMT.

A teacher for modality m is a copy of the run's encoder for m plus a linear head, trained alone
with cross-entropy on the train split. Teachers are either trained inside the run, before the
multimodal model takes its first step (``Teachers.fit``), or read from a run folder / checkpoint
of uni-modal models (``read_teacher_state``): a ``unimodal`` or ``ume`` run (whose encoders and
per-modality heads ARE uni-modal models) or a ``umt`` run (whose teachers are stored in its method
state). Their weights travel in the owning method's checkpoint state (``state_dict`` below: plain
tensors), so a resumed run restores them and never trains them again.

Teachers are not registered as submodules of the method: their architecture is the model's
encoders, which a method first sees in a hook (``ctx.model``), after the trainer has built the
optimiser and, on resume, loaded the checkpoint. So they are built from ``ctx.model`` at the first
hook and their state goes through ``get_extra_state`` / ``set_extra_state``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Batch
from ..errors import ConfigError, DataError, ModgapError, RunFolderError, closest
from ..models.classifier import MultimodalClassifier
from ..runs import RunFolder, load_checkpoint
from .base import METHODS, StepContext, tensor_sum, trains_unimodal_models

FORMAT = "modgap.teachers/1"
SELECT = ("best", "last")


class Teachers:
    """Uni-modal models, one per modality: ``encoders[m]`` (a copy of the run's) and ``heads[m]``."""

    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, nn.Linear]) -> None:
        self.encoders, self.heads = encoders, heads
        self.val_acc: dict[str, float] = {}
        self.source = "trained in this run"

    @classmethod
    def like(cls, model: MultimodalClassifier, modalities: tuple[str, ...], num_classes: int) -> Teachers:
        """Teachers shaped like ``model``'s encoders, starting from their current weights.

        Called before the model's first step, so a teacher starts where the multimodal encoder
        starts (its initialisation, or the model.pretrained weights). The new heads are drawn
        without touching the global random state (a resumed run stays on the same stream).
        """
        encoders = {m: copy.deepcopy(model.encoders[m]) for m in modalities}
        heads = {}
        with torch.random.fork_rng(devices=[]):
            for m, enc in encoders.items():
                p = next(enc.parameters())
                heads[m] = nn.Linear(cast(int, enc.out_dim), num_classes).to(p.device, p.dtype)
        return cls(encoders, heads)

    # ---- modules ----------------------------------------------------------------------------
    def modules(self) -> list[nn.Module]:
        return [*self.encoders.values(), *self.heads.values()]

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.modules():
            yield from module.parameters()

    def train(self, mode: bool = True) -> None:
        for module in self.modules():
            module.train(mode)

    def freeze(self) -> None:
        """Evaluation mode (no dropout, fixed BatchNorm statistics) and no gradients, for good."""
        self.train(False)
        for p in self.parameters():
            p.grad = None
            p.requires_grad_(False)

    @torch.no_grad()
    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(inputs[m]) for m, enc in self.encoders.items()}

    def logits(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](self.encoders[m](inputs[m])) for m in self.encoders}

    # ---- stage 1: training ------------------------------------------------------------------
    def fit(self, ctx: StepContext, epochs: int, select: str = "best") -> None:
        """Train every teacher alone for ``epochs`` epochs on the train split, then freeze them.

        The optimiser is the run's kind with its configured settings (``optimizer.defaults``, a
        constant learning rate). ``select``: "best" keeps, per modality, the epoch with the best
        validation accuracy (the protocol's selection rule); "last" keeps the last epoch.
        """
        if select not in SELECT:
            raise ConfigError(f"unknown teacher selection '{select}'{closest(select, SELECT)}")
        params = list(self.parameters())
        optimizer = type(ctx.optimizer)(params, **ctx.optimizer.defaults)
        best: dict[str, tuple[float, dict[str, Any]]] = {m: (-math.inf, {}) for m in self.encoders}
        for epoch in range(epochs):
            self.train(True)
            for batch in _train_batches(ctx, epoch):
                optimizer.zero_grad(set_to_none=True)
                loss = tensor_sum(F.cross_entropy(z, batch.y) for z in self.logits(batch.inputs).values())
                if not torch.isfinite(loss):
                    raise ModgapError(f"uni-modal teachers: non-finite loss in teacher epoch {epoch}")
                loss.backward()
                for p in params:
                    if p.grad is not None:
                        p.grad = ctx.all_reduce_mean(p.grad)
                optimizer.step()
            if select == "best":
                for m, acc in self.accuracy(ctx, "val").items():
                    if acc > best[m][0]:
                        best[m] = (acc, _clone(self.state_of(m)))
        if select == "best" and epochs > 0:
            for m, (acc, state) in best.items():
                self.load_state_of(m, state)
                self.val_acc[m] = acc
        else:
            self.val_acc = self.accuracy(ctx, "val")
        self.freeze()

    @torch.no_grad()
    def accuracy(self, ctx: StepContext, split: str) -> dict[str, float]:
        """Accuracy of each teacher on ``split`` ("train" or "val"; never "test")."""
        modes = [module.training for module in self.modules()]
        self.train(False)
        device = next(self.heads[next(iter(self.heads))].parameters()).device
        counts = torch.zeros(len(self.encoders), 2, device=device)  # (correct, seen) per modality
        assert ctx.iterate is not None  # the trainer provides it
        for batch in ctx.iterate(split):
            for i, z in enumerate(self.logits(batch.inputs).values()):
                counts[i, 0] += (z.argmax(1) == batch.y).sum()
                counts[i, 1] += len(batch)
        for module, mode in zip(self.modules(), modes, strict=True):
            module.train(mode)
        rows = ctx.all_reduce_mean(counts).tolist()  # every process: the whole split
        return {m: c / max(n, 1.0) for m, (c, n) in zip(self.encoders, rows, strict=True)}

    # ---- state ------------------------------------------------------------------------------
    def state_of(self, m: str) -> dict[str, Any]:
        return {"encoder": self.encoders[m].state_dict(), "head": self.heads[m].state_dict()}

    def load_state_of(self, m: str, state: dict[str, Any]) -> None:
        try:
            self.encoders[m].load_state_dict(state["encoder"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise DataError(
                f"teacher for '{m}' ({self.source}) does not fit this run's '{m}' encoder: {first}"
            ) from None
        if state.get("head") is not None:
            try:
                self.heads[m].load_state_dict(state["head"])
            except RuntimeError:
                raise DataError(
                    f"teacher head for '{m}' ({self.source}) does not fit this run "
                    f"({self.heads[m].in_features} features, {self.heads[m].out_features} classes)"
                ) from None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "source": self.source,
            "val_acc": dict(self.val_acc),
            "teachers": {m: self.state_of(m) for m in self.encoders},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source = state.get("source", self.source)
        missing = [m for m in self.encoders if m not in state["teachers"]]
        if missing:
            raise DataError(
                f"{self.source}: no uni-modal teacher for '{missing[0]}' "
                f"(it has {', '.join(sorted(state['teachers'])) or 'none'})"
            )
        for m in self.encoders:
            self.load_state_of(m, state["teachers"][m])
        self.val_acc = dict(state.get("val_acc", {}))


def _train_batches(ctx: StepContext, epoch: int) -> Iterator[Batch]:
    """The trainer's own training pass (shuffled, augmented) where it lends one, else the split in order."""
    if ctx.train_batches is not None:
        return ctx.train_batches(epoch)
    assert ctx.iterate is not None  # the trainer provides it
    return ctx.iterate("train")


def _clone(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    return state


# ------------------------------------------------------------------ teachers from another run
def read_teacher_state(path: str, modalities: tuple[str, ...]) -> dict[str, Any]:
    """Teacher state (``Teachers.state_dict`` format) from a run folder or a checkpoint file.

    A run folder gives checkpoints/best.pt (else last.pt). Accepted: a ``umt`` run's stored
    teachers; a ``unimodal`` / ``ume`` run's encoders (``encoders.<m>.*``) and per-modality heads
    (``fusion.heads.<m>.*``, where the fusion has them). A run of another method is refused: its
    encoders were trained jointly, they are not uni-modal teachers.
    """
    source = Path(path).expanduser()
    if source.is_dir():
        run = RunFolder(source)
        file = run.best_or_last()
        if file is None:
            raise DataError(f"{source}: no checkpoints/best.pt or checkpoints/last.pt to take uni-modal teachers from")
    elif source.is_file():
        file, run = source, RunFolder(source.parent.parent)  # <run>/checkpoints/<name>.pt
    else:
        raise DataError(f"{source}: teachers not found (give a run folder or a checkpoint file)")
    try:
        state = load_checkpoint(file)
    except ModgapError:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not a state_dict
            raise DataError(
                f"{file}: not a modgap checkpoint nor a readable state_dict ({type(exc).__name__})"
            ) from None
    if not isinstance(state, dict):
        raise DataError(f"{file}: not a checkpoint (a {type(state).__name__})")

    for key, value in (state.get("method") or {}).items():
        if (
            key.endswith("_extra_state")
            and isinstance(value, dict)
            and value.get("format") == FORMAT
            and value.get("teachers")
        ):
            return {**value, "source": str(file)}

    method = _method_of(run)
    if method is not None and not trains_unimodal_models(method):
        sources = [name for name, cls in METHODS.items() if cls.unimodal_models]
        raise ConfigError(
            f"{source}: a '{method}' run holds no uni-modal teachers; give a run of {', '.join(sources)} or umt"
        )
    model = state.get("model", state)
    teachers = {}
    for m in modalities:
        encoder = _part(model, f"encoders.{m}.")
        if not encoder:
            have = sorted({k.split(".")[1] for k in model if isinstance(k, str) and k.startswith("encoders.")})
            raise DataError(f"{file}: no encoder for modality '{m}' (it has {', '.join(have) or 'none'})")
        teachers[m] = {"encoder": encoder, "head": _part(model, f"fusion.heads.{m}.") or None}
    return {"format": FORMAT, "source": str(file), "val_acc": {}, "teachers": teachers}


def _part(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def _method_of(run: RunFolder) -> str | None:
    """The method of the run that saved a checkpoint, None when its config.yaml is missing or unreadable
    (a bare checkpoint file: its contents decide)."""
    if not run.has_run():
        return None
    try:
        saved = run.read_config()
    except RunFolderError:
        return None
    method = saved.get("method", {})
    return str(method.get("name")) if isinstance(method, dict) and method.get("name") else None
