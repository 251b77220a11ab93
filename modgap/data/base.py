"""What every dataset gives the trainer: aligned modalities, labels, ids and a three-way split.

Data flows one way: dataset -> Batch({modality: tensor}, labels, row indices) -> model. A dataset
knows nothing of methods or models.

Pixels travel as uint8 (N, [T,] C, H, W) from the loader to the device, four times fewer bytes than
float32 through workers, pinned memory and the host-to-device copy; ``Batch.to`` turns them into
normalised floats there (``pixels_to_model``): ImageNet mean and std for 3 channels, 0.5 and 0.5 for
any other count (depth, optical flow). Every other input (spectrograms, features, token ids) is
moved as it is.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, closest

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_for(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 intensity units) that uint8 pixels with ``channels`` channels get."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


def pixels_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, in one float copy
    (in-place multiply-subtract: a third of the time of the out-of-place expression on a CPU). Any
    other dtype is returned as it is."""
    if x.dtype != torch.uint8:
        return x
    scale, shift = _pixel_affine(x.shape[-3], x.device)
    return x.float().mul_(scale).sub_(shift)


@functools.cache
def _pixel_affine(channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) as (C, 1, 1) tensors on ``device``, made once (not a host-to-device
    copy per batch)."""
    mean, std = norm_for(channels)
    shape = (channels, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=device).view(shape)
    return scale, shift


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    index: torch.Tensor
    """Row indices into the dataset (to name samples in messages and to gather outputs)."""
    share: float = 1.0
    """This process's share of the global batch (1 on one process; see train/distributed.py)."""

    def to(self, device: torch.device | str) -> Batch:
        """On ``device``, as the model takes it: uint8 pixels normalised there (see the module's doc)."""
        return Batch(
            {m: pixels_to_model(x.to(device, non_blocking=True)) for m, x in self.inputs.items()},
            self.y.to(device, non_blocking=True),
            self.index,
            self.share,
        )

    def __len__(self) -> int:
        return len(self.y)


class MultimodalDataset(abc.ABC):
    """A labelled dataset with several aligned modalities and train/val/test row indices."""

    name: str
    modalities: tuple[str, ...]
    classes: list[str]
    ids: list[str]
    labels: np.ndarray
    splits: dict[str, np.ndarray]

    @abc.abstractmethod
    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one sample of ``modality`` (what the encoder is built for)."""

    def encoder_for(self, modality: str) -> str:
        """The encoder this modality's inputs call for (used when model.encoder is auto)."""
        return "mlp"

    def warnings(self) -> list[str]:
        """One-line warnings about the data (e.g. images upscaled more than 2x) that a run prints once
        and records in summary.json; none by default."""
        return []

    @abc.abstractmethod
    def batch(self, rows: np.ndarray, train: bool) -> Batch:
        """The samples at ``rows``; ``train`` turns on online augmentation where a dataset has it."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_ids(self) -> dict[str, list[str]]:
        return {s: [self.ids[i] for i in self.splits[s]] for s in SPLITS}

    def split_checksum(self) -> str:
        blob = json.dumps(self.split_ids(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "modalities": list(self.modalities),
            "classes": list(self.classes),
            "sizes": {s: int(len(self.splits[s])) for s in SPLITS},
            "split_checksum": self.split_checksum(),
        }


class FeatureDataset(MultimodalDataset):
    """Feature vectors per modality, held in memory (mfeat, feature tables)."""

    def __init__(
        self,
        name: str,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        ids: list[str],
        classes: list[str],
        splits: dict[str, np.ndarray],
        standardize: bool = True,
    ) -> None:
        self.name = name
        self.modalities = tuple(features)
        self.classes = list(classes)
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.splits = {s: np.asarray(splits[s], dtype=np.int64) for s in SPLITS}
        train = self.splits["train"]
        self._x: dict[str, torch.Tensor] = {}
        for m, x in features.items():
            x = np.asarray(x, dtype=np.float32)
            if standardize:  # statistics of the train split only: val and test never leak in
                with np.errstate(over="ignore", invalid="ignore"):
                    mean, std = x[train].mean(0), x[train].std(0)
                if not (np.isfinite(mean).all() and np.isfinite(std).all()):  # float32 overflow (|x| ~ 1e19+)
                    mean, std = x[train].astype(np.float64).mean(0), x[train].astype(np.float64).std(0)
                x = (x - mean) / np.where(std > 1e-8, std, 1.0)
            self._x[m] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self._y = torch.from_numpy(self.labels)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        return tuple(self._x[modality].shape[1:])

    def batch(self, rows: np.ndarray, train: bool) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Batch({m: x[index] for m, x in self._x.items()}, self._y[index], index)


def select_modalities(
    available: tuple[str, ...], wanted: tuple[str, ...], default: tuple[str, ...], source: str
) -> tuple[str, ...]:
    """Check a user's modality choice against what ``source`` has; at least two are needed."""
    chosen = tuple(wanted) or tuple(default)
    for m in chosen:
        if m not in available:
            raise ConfigError(f"{source} has no modality '{m}'{closest(m, available)}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"modalities listed twice: {', '.join(chosen)}")
    if len(chosen) < 1:
        raise ConfigError(f"{source}: choose at least one modality")
    return chosen


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    if labels.size == 0:
        raise DataError(f"{source}: no samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{source}: label outside 0..{num_classes - 1}")
