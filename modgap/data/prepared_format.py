"""The prepared dataset folder's format: its files, its version, and reading it back safely.

    manifest.json     format version, dataset, modgap version, classes, per modality its kind,
                      preset and parameters, array shape, dtype and sha256 (and for images and
                      frames ``source_sizes``: width, height of a few raw sources, for the
                      upscaling warning); split checksum; source split files' checksums; counts
                      per split and class; skipped count
    <modality>.npy    the cached arrays (read as memory maps), rows in samples.csv order
    <modality>.count.npy   valid entries per row (frames per clip)
    samples.csv       row, id, label, split
    splits.json       ids per split (its sha256 is in the manifest: an edited split is refused)
    skipped.csv       every id that could not be used, and why
    classes.txt       the class list used, one per line

`modgap prepare` (prepare.py) writes such a folder and PreparedDataset (prepared.py) reads it; both
take the names, the version and the checksums from here, so neither imports the other for them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

FORMAT_VERSION = 1
"""Written in every manifest; a folder of another version is refused (it must be prepared again)."""

MANIFEST_FILE = "manifest.json"
SAMPLES_FILE = "samples.csv"
SPLITS_FILE = "splits.json"
SKIPPED_FILE = "skipped.csv"
CLASSES_FILE = "classes.txt"


def array_file(modality: str) -> str:
    return f"{modality}.npy"


def count_file(modality: str) -> str:
    return f"{modality}.count.npy"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(root: Path, expect: str | None = None) -> dict[str, Any]:
    """manifest.json of a prepared folder, refused when missing, unreadable, of another format
    version, or (``expect``) of another dataset."""
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{root}: not a prepared dataset folder (no manifest.json); run `modgap prepare` first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path}: prepared with format {manifest.get('format')}, this modgap reads "
            f"format {FORMAT_VERSION}; prepare it again"
        )
    if expect is not None and manifest.get("dataset") != expect:
        raise DataError(f"{root}: holds a prepared '{manifest.get('dataset')}' dataset, not '{expect}'")
    return manifest


def read_split_ids(root: Path, manifest: dict[str, Any]) -> dict[str, list[str]]:
    """splits.json (ids per split), refused when it differs from the checksum in the manifest."""
    split_blob = (root / SPLITS_FILE).read_bytes()
    if hashlib.sha256(split_blob).hexdigest() != manifest["splits_sha256"]:
        raise DataError(
            f"{root / SPLITS_FILE}: changed since the folder was prepared (checksum differs); "
            f"prepare it again rather than editing the split"
        )
    return json.loads(split_blob)


def read_samples(root: Path) -> list[dict[str, str]]:
    """samples.csv: one dict (row, id, label, split) per cached row, in row order."""
    with (root / SAMPLES_FILE).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
