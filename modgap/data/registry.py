"""The dataset registry. A dataset family registers a loader class here, in its own file."""

from __future__ import annotations

from typing import Any, Protocol

from ..config import DataConfig
from ..errors import DataError
from ..registry import Registry
from .base import MultimodalDataset


class DatasetLoader(Protocol):
    """A class with static methods (the built-in datasets) or an instance (a prepared format's loader)."""

    summary: str
    """One line for `modgap list datasets`."""

    def parse_arg(self, arg: str) -> dict[str, Any]:
        """What the ARG of ``--data NAME:ARG`` means for this dataset, as DataConfig overrides."""

    def load(self, cfg: DataConfig) -> MultimodalDataset: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(cfg: DataConfig) -> MultimodalDataset:
    data = DATASETS.get(cfg.name).load(cfg)
    present = sorted({data.classes[int(y)] for y in data.labels[data.splits["train"]]})
    if len(present) < 2:  # (else a whole run would end in the probe's error, or learn nothing)
        raise DataError(
            f"{data.name}: the train split holds {len(present)} class(es) "
            f"({', '.join(present) or 'none'}); classification needs at least two"
        )
    return data


def parse_data_spec(spec: str) -> dict[str, Any]:
    """``NAME[:ARG]`` -> DataConfig overrides, ARG interpreted by the dataset itself."""
    name, _, arg = spec.partition(":")
    loader = DATASETS.get(name)
    overrides: dict[str, Any] = {"name": name}
    if arg:
        overrides.update(loader.parse_arg(arg))
    return overrides
