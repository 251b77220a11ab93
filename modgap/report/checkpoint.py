"""A trained model back from its run folder, for the analyses (report, Shapley, Grad-CAM).

``load_trained(run)`` assembles the run again from config.yaml (same data, same split: the split
checksum is checked), loads a checkpoint's model and method state (best.pt by default, as
Trainer.finish does) and leaves both in eval mode. Nothing in the run folder is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import build
from ..errors import RunFolderError
from ..runs import LAST, RunFolder, load_checkpoint

if TYPE_CHECKING:
    from ..train.assemble import Assembly, EvalResult

CHECKPOINTS = ("best", "last")


def checkpoint_path(run: str | Path, checkpoint: str = "best") -> Path:
    """best / last -> run/checkpoints/{best,last}.pt (best falls back to last when a run kept no best,
    e.g. train.checkpoint_best=false); anything else is a path to a checkpoint file."""
    run = Path(run)
    if checkpoint in CHECKPOINTS:
        folder = RunFolder(run)
        path = folder.best_or_last() if checkpoint == "best" else folder.checkpoints / LAST
        if path is None or not path.exists():
            raise RunFolderError(f"{run}: no checkpoint ({checkpoint}.pt) in {folder.checkpoints}")
        return path
    path = Path(checkpoint)
    if not path.exists():
        raise RunFolderError(f"{path}: checkpoint not found (give best, last or a path)")
    return path


@dataclass
class Trained:
    """A run's parts with a checkpoint's weights loaded, model and method in eval mode."""

    assembly: Assembly
    checkpoint_file: Path
    checkpoint_epoch: int
    """The epoch the checkpoint was saved after (-1: before the first)."""

    @property
    def data(self):
        return self.assembly.data

    @property
    def model(self):
        return self.assembly.model

    @property
    def method(self):
        return self.assembly.method

    @property
    def device(self) -> torch.device:
        return self.assembly.device

    def batches(self, split: str, train: bool = False) -> Iterator[Any]:
        return self.assembly.batches(split, train)

    def evaluate(self, split: str) -> EvalResult:
        from ..train.assemble import evaluate

        return evaluate(self.assembly, self.batches(split))


def load_trained(
    run: str | Path, checkpoint: str = "best", threads: int | None = None, device: str | None = None
) -> Trained:
    """The run assembled again with the checkpoint's weights loaded, model and method in eval mode."""
    from ..train.assemble import assemble
    from ..train.trainer import load_run_config

    run = Path(run)
    if not RunFolder(run).has_run():
        raise RunFolderError(f"{run}: not a run folder (no config.yaml)")
    config = load_run_config(run)
    train: dict[str, Any] = {"progress": False}
    if threads:
        train["threads"] = threads
    if device is not None:
        train["device"] = device
    elif config.train.device.startswith("cuda") and not torch.cuda.is_available():
        train["device"] = "cpu"
    config = build(type(config), {"train": train}, base=config)
    path = checkpoint_path(run, checkpoint)
    assembly = assemble(config)
    saved = RunFolder(run).read_config().get("split_checksum")
    if saved is not None and saved != assembly.data.split_checksum():
        raise RunFolderError(
            f"{run}: the data split differs from the one the run was trained on "
            "(its test split would not be the test split)"
        )
    return with_checkpoint(assembly, path)


def with_checkpoint(assembly: Assembly, path: Path) -> Trained:
    """``assembly`` with the weights of the checkpoint at ``path``, model and method in eval mode."""
    state = load_checkpoint(path)
    assembly.model.load_state_dict(state["model"])
    assembly.method.load_state_dict(state["method"])
    assembly.model.eval()
    assembly.method.eval()
    return Trained(assembly, path, state.get("progress", {}).get("epoch", 0) - 1)
