"""Loading a prepared dataset folder (written by `modgap prepare`, see prepare.py; its files and
format version are described in prepared_format.py).

Online work per batch (frame choice, crops, flips, normalisation) is done by the modality kinds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError, closest
from .base import SPLITS, Batch, MultimodalDataset, select_modalities
from .kinds import KINDS, FramesKind, ModalityKind, upscale_warning
from .prepared_format import count_file, file_sha256, read_manifest, read_samples, read_split_ids


class PreparedLoader:
    """The registry entry of a prepared dataset family: ``--data NAME:DIR``."""

    def __init__(self, name: str, summary: str, modalities: set[str]) -> None:
        self.name, self.summary, self.modalities = name, summary, modalities

    def parse_arg(self, arg: str) -> dict[str, Any]:
        return {"path": arg}

    def load(self, cfg: DataConfig) -> MultimodalDataset:
        if not cfg.path:
            raise DataError(
                f"{self.name}: give the prepared folder, e.g. --data {self.name}:DIR "
                f"(make it with `modgap prepare {self.name} --src RAW --out DIR`)"
            )
        return PreparedDataset(Path(cfg.path), cfg, expect=self.name)


def kind_from_manifest(entry: dict[str, Any]) -> ModalityKind:
    recorded = ("kind", "shape", "dtype", "file", "sha256", "preset_params", "source_sizes")
    params = {k: v for k, v in entry.items() if k not in recorded}
    return KINDS.get(entry["kind"])(**params)


PREPARED_FIX = "prepare the folder again with --image-size {size}"
"""How a prepared folder's images can be kept at their size (upscale_warning's ``fix``)."""


class PreparedDataset(MultimodalDataset):
    def __init__(self, root: Path, cfg: DataConfig, expect: str | None = None, size_fix: str = PREPARED_FIX) -> None:
        """``size_fix``: the option that keeps upscaled images at their size, as the loader names it."""
        manifest = read_manifest(root, expect)
        self.root, self.manifest, self.size_fix = root, manifest, size_fix
        self.name = manifest["dataset"]
        self.classes = list(manifest["classes"])
        self._check_options(cfg.options)
        split_ids = read_split_ids(root, manifest)
        rows = read_samples(root)
        self.ids = [r["id"] for r in rows]
        class_of = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.asarray([class_of[r["label"]] for r in rows], dtype=np.int64)
        row_of = {sid: i for i, sid in enumerate(self.ids)}
        self.splits = {s: np.asarray(sorted(row_of[i] for i in split_ids[s]), dtype=np.int64) for s in SPLITS}
        available = tuple(manifest["modalities"])
        self.modalities = select_modalities(available, cfg.modalities, available, str(root))
        self.kinds = {m: kind_from_manifest(manifest["modalities"][m]) for m in self.modalities}
        self.frames = cfg.frames or None
        self.arrays, self.counts = {}, {}
        for m in self.modalities:
            entry = manifest["modalities"][m]
            path = root / entry["file"]
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read the cached array ({exc})") from None
            if list(array.shape) != [len(self.ids), *entry["shape"]]:
                raise DataError(
                    f"{path}: shape {array.shape} does not match the manifest "
                    f"({len(self.ids)}, {', '.join(map(str, entry['shape']))}); prepare it again"
                )
            self.arrays[m] = array
            self.counts[m] = np.load(root / count_file(m))
        if cfg.options.get("verify", False):
            self.verify()

    def _check_options(self, options: dict[str, Any]) -> None:
        known = {"preset", "verify", "image_size"}
        for key in options:
            if key not in known:
                raise DataError(
                    f"unknown data.options key '{key}' for a prepared dataset{closest(key, known, 'data.options.')}"
                )
        for key in ("preset", "image_size"):
            if key not in options:
                continue
            used = {m: e.get(key) for m, e in self.manifest["modalities"].items() if key in e}
            for m, value in used.items():
                if value != options[key]:
                    raise DataError(
                        f"{self.root}: prepared with {key} {value} for '{m}', but this run asks for "
                        f"{options[key]}; prepare a folder with --{key.replace('_', '-')} {options[key]}"
                    )

    def verify(self) -> None:
        """Check every cached array against the sha256 recorded when it was written."""
        for m in self.modalities:
            entry = self.manifest["modalities"][m]
            if file_sha256(self.root / entry["file"]) != entry["sha256"]:
                raise DataError(f"{self.root / entry['file']}: checksum differs from the manifest (corrupt or changed)")

    def warnings(self) -> list[str]:
        """Images upscaled more than 2x, judged from the source sizes `modgap prepare` recorded (a folder
        prepared before they were recorded has none, and gets no warning)."""
        entries = self.manifest["modalities"]
        found = (
            upscale_warning(m, self.kinds[m], entries[m].get("source_sizes", []), self.size_fix)
            for m in self.modalities
        )
        return [text for text in found if text is not None]

    def encoder_for(self, modality: str) -> str:
        return self.kinds[modality].encoder

    def _frames_arg(self, m: str) -> dict[str, Any]:
        return {"frames": self.frames} if isinstance(self.kinds[m], FramesKind) and self.frames else {}

    def input_shape(self, modality: str) -> tuple[int, ...]:
        return tuple(self.kinds[modality].input_shape(**self._frames_arg(modality)))

    def batch(self, rows: np.ndarray, train: bool) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # sorted reads from the memory map, then back
        sorted_rows = rows[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        inputs = {}
        for m in self.modalities:
            cached = np.asarray(self.arrays[m][sorted_rows])[inverse]
            inputs[m] = self.kinds[m].online(cached, self.counts[m][rows], train, **self._frames_arg(m))
        return Batch(inputs, torch.from_numpy(self.labels[rows]), torch.as_tensor(rows))
