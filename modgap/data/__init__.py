"""Datasets: one file per family, all found through one registry (``DATASETS``)."""

from .base import Batch, FeatureDataset, MultimodalDataset
from .registry import DATASETS, load_dataset, parse_data_spec

__all__ = ["Batch", "FeatureDataset", "MultimodalDataset", "DATASETS", "load_dataset", "parse_data_spec"]

from ..registry import import_submodules  # noqa: E402

import_submodules(__name__, __path__)  # every file here registers itself
