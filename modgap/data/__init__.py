"""Datasets: one file per family, all found through one registry (``DATASETS``)."""

from . import mfeat, tables  # noqa: F401  (registers the loaders)
from .base import Batch, FeatureDataset, MultimodalDataset
from .registry import DATASETS, load_dataset, parse_data_spec

__all__ = ["Batch", "FeatureDataset", "MultimodalDataset", "DATASETS", "load_dataset", "parse_data_spec"]
