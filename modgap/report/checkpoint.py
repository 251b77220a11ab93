"""A trained model back from its run folder, for the analyses (report, Shapley, Grad-CAM).

``load_trained(run)`` rebuilds the run's Trainer from config.yaml (same data, same split: the split
checksum is checked), loads a checkpoint's model and method state (best.pt by default, as
Trainer.finish does) and leaves both in eval mode. Nothing in the run folder is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import build
from ..errors import RunFolderError
from ..runs import LAST, RunFolder, load_checkpoint

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


def load_trained(run: str | Path, checkpoint: str = "best", threads: int | None = None,
                 device: str | None = None) -> Any:
    """The run's Trainer with the checkpoint's weights loaded, model and method in eval mode."""
    from ..train.trainer import Trainer, load_run_config

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
    trainer = Trainer(config, run)
    saved = RunFolder(run).read_config().get("split_checksum")
    if saved is not None and saved != trainer.data.split_checksum():
        raise RunFolderError(f"{run}: the data split differs from the one the run was trained on "
                             "(its test split would not be the test split)")
    state = load_checkpoint(path)
    trainer.model.load_state_dict(state["model"])
    trainer.method.load_state_dict(state["method"])
    trainer.model.eval()
    trainer.method.eval()
    trainer.checkpoint_file = path
    trainer.checkpoint_epoch = state.get("progress", {}).get("epoch", 0) - 1
    return trainer
