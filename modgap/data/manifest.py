"""File manifests: a user's own multimodal files, ``--data manifest:PATH``.

PATH is a manifest.csv, a folder holding one, or a folder written by ``modgap prepare manifest``.

    manifest.csv   header ``id,label[,split],<modality>,...``; one row per sample. Each modality
                   column holds a path relative to the manifest's folder (absolute paths work too)
                   or, for text, the text itself:
                       .wav .flac .mp3 .ogg .m4a .aac          -> audio   (audio kind, preset ogmge_stft)
                       .jpg .jpeg .png .bmp                    -> image   (image kind, 224 x 224)
                       a folder of frames, .mp4 .avi .flv ...  -> frames  (frames kind, 1 fps from videos)
                       .txt file (UTF-8)                       -> text    (text kind)
                       anything else                           -> text    (the cell is the text)
                   A column's kind is read from its first non-empty cell; every other cell must agree.
    classes.txt    optional, beside manifest.csv: the class list, one per line, in label-index order.
                   Without it, the classes are the labels found, sorted (numerically if all integers).

split is train, val or test; without a split column, test is a stratified carve-out
(data.test_fraction, data.split_seed) and val is carved from train (data.val_fraction).

``--data manifest:CSV`` prepares on first use, into ``<manifest folder>/.modgap-cache/<key>/``, a
normal prepared folder (see prepared.py), and reuses it while the key is unchanged. The key covers
the manifest's bytes, classes.txt, every referenced file's size and modification time, the
settings (data.options: preset, image_size, max_frames, text_model, max_len), the split settings
and data.on_error. ``modgap prepare manifest --src CSV --out DIR`` writes the same folder anywhere.

Errors in the manifest itself (missing column, duplicate id, a cell whose kind differs from its
column's) stop at once, naming the file, the line and the column. Per-sample problems (a missing or
unreadable file, an empty cell, a label outside classes.txt) stop too, unless data.on_error is
skip: then they are listed in the prepared folder's skipped.csv and the count is printed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import DataConfig
from ..errors import DataError, closest
from .base import SPLITS, MultimodalDataset
from .kinds import IMAGE_SUFFIXES
from .prepare import RAW_FORMATS, RawFormat, RawIndex, RawSample, prepare
from .prepared import PREPARED_FIX, PreparedDataset
from .prepared_format import FORMAT_VERSION, file_sha256
from .registry import DATASETS
from .splits import stratified_carve
from .tables import class_list

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac")
VIDEO_SUFFIXES = (".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
CATEGORIES = {  # what a cell holds -> (modality kind, words for messages)
    "audio": ("audio", "an audio file"),
    "image": ("image", "an image file"),
    "frames": ("frames", "a video or frame folder"),
    "textfile": ("text", "a .txt file"),
    "text": ("text", "text"),
}
PATH_CATEGORIES = ("audio", "image", "frames", "textfile")
DEFAULTS: dict[str, dict[str, Any]] = {
    "audio": {"preset": "ogmge_stft"},
    "image": {"image_size": 224},
    "frames": {},
    "text": {},
}
SETTINGS = ("preset", "image_size", "max_frames", "text_model", "max_len")
"""data.options keys that shape the prepared arrays (and so the cache key)."""
OPTIONS = (*SETTINGS, "jobs", "verify")
CACHE_DIR = ".modgap-cache"
CSV_FIX = "set data.options.image_size={size} (or prepare with --image-size {size})"
"""How images of a manifest prepared on first use are kept at their size (upscale_warning's ``fix``)."""


def category(value: str, base: Path) -> str:
    """What a (stripped, non-empty) cell holds: a key of CATEGORIES."""
    suffix = Path(value).suffix.lower() if "\n" not in value else ""
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "frames"
    if suffix == ".txt":
        return "textfile"
    if value.endswith(("/", os.sep)):
        return "frames"
    try:
        return "frames" if "\n" not in value and (base / value).is_dir() else "text"
    except OSError:  # e.g. a long text is no valid file name
        return "text"


@dataclass
class ManifestTable:
    """A parsed manifest.csv: rows, per-column categories, and the class list."""

    csv: Path
    base: Path
    columns: dict[str, str]
    """modality column -> category (see CATEGORIES)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Each: id, label, split (or None), line, cells {column: raw text}."""
    classes: list[str] = field(default_factory=list)
    classes_file: Path | None = None
    has_split: bool = False

    def resolve(self, value: str) -> Path:
        return Path(value) if os.path.isabs(value) else self.base / value


def find_manifest(path: Path) -> Path:
    if path.is_dir():
        if not (path / "manifest.csv").is_file():
            raise DataError(f"{path}: no manifest.csv in this folder (nor a prepared folder's manifest.json)")
        return path / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    return path


def read_manifest(path: Path) -> ManifestTable:
    """Parse and check a manifest (structure only; files are checked per row by ``index``)."""
    path = find_manifest(Path(path))
    base = path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not records:
        raise DataError(f"{path}: empty file (expected a header row: id,label[,split],<modality>,...)")
    header = [h.strip() for h in records[0][1]]
    for column in ("id", "label"):
        if column not in header:
            raise DataError(f"{path}: missing column '{column}' (header is {','.join(header)})")
    if any(not h for h in header):
        raise DataError(f"{path}: line 1: an empty column name")
    repeated = next((h for h in header if header.count(h) > 1), None)
    if repeated:
        raise DataError(f"{path}: line 1: column '{repeated}' appears twice")
    modalities = [h for h in header if h not in ("id", "label", "split")]
    if not modalities:
        raise DataError(f"{path}: no modality columns (header is {','.join(header)}; add one column per modality)")
    if len(records) < 2:
        raise DataError(f"{path}: no rows after the header")
    table = ManifestTable(path, base, {}, has_split="split" in header)
    first: dict[str, int] = {}
    seen: dict[str, int] = {}
    for line, record in records[1:]:
        if len(record) != len(header):
            raise DataError(f"{path}: line {line} has {len(record)} fields, the header has {len(header)}")
        cells = dict(zip(header, record, strict=True))
        sid, label = cells["id"].strip(), cells["label"].strip()
        if not sid:
            raise DataError(f"{path}: line {line}: empty id")
        if sid in seen:
            raise DataError(f"{path}: line {line}: duplicate id '{sid}' (first on line {seen[sid]})")
        seen[sid] = line
        if not label:
            raise DataError(f"{path}: line {line}: empty label for id '{sid}'")
        split = cells["split"].strip() if table.has_split else None
        if table.has_split and split not in SPLITS:
            raise DataError(f"{path}: line {line}: split '{split}' is not one of {', '.join(SPLITS)}")
        row_cells = {}
        for m in modalities:
            value = row_cells[m] = cells[m].strip()
            if not value:
                continue
            cat = category(value, base)
            if m not in table.columns:
                table.columns[m], first[m] = cat, line
                continue
            want = table.columns[m]
            if cat == want or (want == "frames" and cat == "text" and not Path(value).suffix):
                continue  # (a frame folder that is missing is reported per row, not as a kind clash)
            raise DataError(
                f"{path}: line {line}, column '{m}': '{_short(value)}' is {CATEGORIES[cat][1]}, but "
                f"the column holds {CATEGORIES[want][1]} (from line {first[m]})"
            )
        table.rows.append({"id": sid, "label": label, "split": split, "line": line, "cells": row_cells})
    empty = [m for m in modalities if m not in table.columns]
    if empty:
        raise DataError(f"{path}: column '{empty[0]}' is empty in every row")
    classes_file = base / "classes.txt"
    if classes_file.is_file():
        try:
            names = [c.strip() for c in classes_file.read_text(encoding="utf-8-sig").splitlines() if c.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{classes_file}: cannot read ({type(exc).__name__})") from None
        if not names:
            raise DataError(f"{classes_file}: no class names")
        repeated = next((c for c in names if names.count(c) > 1), None)
        if repeated:
            raise DataError(f"{classes_file}: class '{repeated}' listed twice")
        table.classes, table.classes_file = names, classes_file
    else:
        table.classes = class_list([r["label"] for r in table.rows])
    if table.has_split and not any(r["split"] == "test" for r in table.rows):
        raise DataError(
            f"{path}: the split column names no test rows (add some, or drop the column to carve a test split)"
        )
    return table


def _short(value: str, n: int = 60) -> str:
    value = " ".join(value.split())
    return value if len(value) <= n else value[: n - 3] + "..."


class ManifestFormat(RawFormat):
    """The raw format of a manifest: modalities and kinds come from the file (``for_source``)."""

    name = "manifest"
    summary = "your own files: manifest.csv (id, label[, split], one path column per modality); --data manifest:PATH"

    def __init__(self, table: ManifestTable | None = None) -> None:
        self.table = table
        if table is not None:
            self.modalities = {m: CATEGORIES[c][0] for m, c in table.columns.items()}
            self.defaults = {m: DEFAULTS[k] for m, k in self.modalities.items()}
            self.has_val = table.has_split and any(r["split"] == "val" for r in table.rows)

    def for_source(self, src: Path) -> ManifestFormat:
        return ManifestFormat(read_manifest(src))

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        table = self.table if self.table is not None else read_manifest(src)
        known = set(table.classes)
        samples, problems = [], []
        for row in table.rows:
            where = f"{table.csv}: line {row['line']}"
            if row["label"] not in known:
                problems.append((row["id"], f"{where}: label '{row['label']}' is not in {table.classes_file}"))
                continue
            sources, problem = {}, None
            for m, cat in table.columns.items():
                value = row["cells"][m]
                if not value:
                    problem = f"{where}, column '{m}': empty"
                    break
                if cat == "text":
                    sources[m] = value
                    continue
                path = table.resolve(value)
                exists = path.is_dir() if cat == "frames" and not path.suffix else path.is_file()
                if not exists:
                    problem = f"{where}, column '{m}': {path}: file not found"
                    break
                sources[m] = path
            if problem is not None:
                problems.append((row["id"], problem))
            else:
                samples.append(RawSample(row["id"], row["label"], row["split"] or "train", sources))
        if not table.has_split and samples:
            _carve_test(samples, table.classes, options)
        files = {"manifest.csv": file_sha256(table.csv)}
        if table.classes_file is not None:
            files["classes.txt"] = file_sha256(table.classes_file)
        notes = {
            "manifest": str(table.csv),
            "columns": {m: CATEGORIES[c][1] for m, c in table.columns.items()},
            "test_carved": not table.has_split,
        }
        if not table.has_split:
            notes["test_fraction"] = float(options.get("test_fraction", DataConfig.test_fraction))
        return RawIndex(list(table.classes), samples, problems, files, notes)


def _carve_test(samples: list[RawSample], classes: list[str], options: dict[str, Any]) -> None:
    """Without a split column: mark a stratified share of the samples as test (the rest stay train)."""
    fraction = float(options.get("test_fraction", DataConfig.test_fraction))
    seed = int(options.get("split_seed", DataConfig.split_seed))
    class_of = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([class_of[s.label] for s in samples], dtype=np.int64)
    _, test = stratified_carve(np.arange(len(samples)), labels, fraction, seed, "test")
    for i in test:
        samples[i].split = "test"


# ------------------------------------------------------------------------------ --data manifest:PATH
def cache_key(table: ManifestTable, settings: dict[str, Any], cfg: DataConfig) -> str:
    """sha256 over everything that shapes the prepared folder (see the module docstring)."""
    digest = hashlib.sha256()
    head = {
        "format": FORMAT_VERSION,
        "modgap": __version__,
        "settings": settings,
        "on_error": cfg.on_error,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "split_seed": cfg.split_seed,
        "manifest": file_sha256(table.csv),
        "classes": file_sha256(table.classes_file) if table.classes_file else None,
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    for row in table.rows:
        for m, cat in table.columns.items():
            value = row["cells"][m]
            if cat in PATH_CATEGORIES and value:
                digest.update(_stat_line(table.resolve(value)).encode())
    return digest.hexdigest()


def _stat_line(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}\0missing\n"
    if path.is_dir():
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
            inner = ";".join(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in entries)
        except OSError:
            inner = "unreadable"
        return f"{path}\0dir\0{inner}\n"
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n"


def ensure_prepared(path: Path, cfg: DataConfig) -> Path:
    """The prepared folder of manifest ``path``: the cached one if still current, else a new one."""
    table = read_manifest(path)
    settings = {k: cfg.options[k] for k in SETTINGS if cfg.options.get(k) is not None}
    key = cache_key(table, settings, cfg)
    root = table.base / CACHE_DIR
    out = root / key[:16]
    if (out / "manifest.json").is_file():
        _report_skipped(out, table.csv, fresh=False)
        return out
    try:
        root.mkdir(exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{root}: cannot write the cache beside the manifest ({exc.strerror}); prepare it elsewhere "
            f"with `modgap prepare manifest --src {table.csv} --out DIR` and use --data manifest:DIR"
        ) from None
    print(f"modgap: preparing {table.csv} (first use with these settings) into {out}", file=sys.stderr)
    report = prepare(
        "manifest",
        table.csv,
        out,
        settings=settings,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        jobs=int(cfg.options.get("jobs", 1)),
        on_error=cfg.on_error,
        progress=False,
        options={"test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed},
    )
    print(
        f"modgap: prepared {sum(sum(c.values()) for c in report.counts.values())} samples in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    _report_skipped(out, table.csv, fresh=True)
    return out


def _report_skipped(out: Path, csv_path: Path, fresh: bool) -> None:
    with (out / "skipped.csv").open(newline="", encoding="utf-8") as f:
        skipped = list(csv.reader(f))[1:]
    if not skipped:
        return
    when = "" if fresh else " when it was prepared"
    print(
        f"modgap: skipped {len(skipped)} row(s) of {csv_path}{when}, listed in {out / 'skipped.csv'}; "
        f"first: {skipped[0][0]}: {skipped[0][1]}",
        file=sys.stderr,
    )


class ManifestLoader:
    summary = ManifestFormat.summary

    @staticmethod
    def parse_arg(arg: str) -> dict[str, Any]:
        return {"path": arg}

    @staticmethod
    def load(cfg: DataConfig) -> MultimodalDataset:
        if not cfg.path:
            raise DataError("manifest: give the manifest, e.g. --data manifest:path/to/manifest.csv")
        for key in cfg.options:
            if key not in OPTIONS:
                raise DataError(
                    f"unknown data.options key '{key}' for a manifest{closest(key, OPTIONS, 'data.options.')}"
                )
        path = Path(cfg.path)
        prepared = (path / "manifest.json").is_file()
        root = path if prepared else ensure_prepared(path, cfg)
        options = {k: v for k, v in cfg.options.items() if k in ("preset", "image_size", "verify")}
        fix = PREPARED_FIX if prepared else CSV_FIX  # a folder prepared elsewhere must be prepared again
        return PreparedDataset(root, dataclasses.replace(cfg, options=options), expect="manifest", size_fix=fix)


RAW_FORMATS.register("manifest")(ManifestFormat())
DATASETS.register("manifest")(ManifestLoader())
