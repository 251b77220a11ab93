"""The trainer, metrics and the run folder."""

from .trainer import Trainer, TrainingError, load_run_config, train

__all__ = ["Trainer", "TrainingError", "load_run_config", "train"]
