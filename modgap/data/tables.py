"""Feature tables: a user's own multi-view tabular data, ``--data tables:PATH``.

Layout of PATH:
    labels.csv         header ``id,label[,split]``; split is train, val or test when given
    <modality>.csv     header ``id,<feature columns...>``; one row per id, any order
    <modality>.npy     a 2-D float array whose rows follow the order of labels.csv

Every id of labels.csv must have a row in every modality file. Labels may be names or integers;
classes are sorted (numerically if all are integers). Without a split column, test and val are
stratified carve-outs (data.test_fraction, data.val_fraction, data.split_seed).
Errors name the file, the line and what is wrong, in one line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import SPLITS, FeatureDataset, MultimodalDataset, select_modalities
from .registry import DATASETS
from .splits import make_splits


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a UTF-8 CSV file, with one-line errors naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: empty file (expected a header row)")
    header = [h.strip() for h in rows[0]]
    return header, [[c.strip() for c in r] for r in rows[1:]]


def read_labels(path: Path) -> tuple[list[str], list[str], list[str] | None]:
    header, rows = read_csv(path)
    for column in ("id", "label"):
        if column not in header:
            raise DataError(f"{path}: missing column '{column}' (header is {','.join(header)})")
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    i_id, i_label = header.index("id"), header.index("label")
    i_split = header.index("split") if "split" in header else None
    ids, labels, splits = [], [], []
    seen: dict[str, int] = {}  # id -> its first line
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        sid = row[i_id]
        if not sid:
            raise DataError(f"{path}: line {line} has an empty id")
        if sid in seen:
            raise DataError(f"{path}: line {line}: duplicate id '{sid}' (first on line {seen[sid]})")
        seen[sid] = line
        if not row[i_label]:
            raise DataError(f"{path}: line {line}: empty label for id '{sid}'")
        ids.append(sid)
        labels.append(row[i_label])
        if i_split is not None:
            if row[i_split] not in SPLITS:
                raise DataError(f"{path}: line {line}: split '{row[i_split]}' is not one of {', '.join(SPLITS)}")
            splits.append(row[i_split])
    return ids, labels, (splits if i_split is not None else None)


def read_modality(path: Path, ids: list[str]) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            with path.open("rb") as f:
                magic = f.read(6)
            x = np.load(path, allow_pickle=False) if magic == b"\x93NUMPY" else None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from None
        if x is None:  # np.load would blame pickled data, misleadingly
            raise DataError(f"{path}: not a .npy file (no NumPy header; write it with numpy.save)")
        if x.ndim != 2 or x.shape[0] != len(ids):
            raise DataError(
                f"{path}: expected shape ({len(ids)}, features) in the row order of labels.csv, got {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{path}: expected real numbers, got dtype {x.dtype}")
        if x.shape[1] < 1:
            raise DataError(f"{path}: no feature columns (shape {x.shape})")
        with np.errstate(over="ignore"):  # beyond float32: inf, reported below as such
            x = x.astype(np.float32)
    else:
        header, rows = read_csv(path)
        if not header or header[0] != "id":
            raise DataError(f"{path}: the first column must be 'id' (header is {','.join(header)})")
        width = len(header) - 1
        if width < 1:
            raise DataError(f"{path}: no feature columns after 'id'")
        table: dict[str, np.ndarray] = {}
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
            if row[0] in table:
                raise DataError(f"{path}: line {line}: duplicate id '{row[0]}'")
            try:
                with np.errstate(over="ignore"):  # beyond float32: inf, reported below as such
                    table[row[0]] = np.asarray(row[1:], dtype=np.float32)
            except ValueError:
                bad = next(j for j, v in enumerate(row[1:]) if not _is_number(v))
                raise DataError(
                    f"{path}: line {line}, column '{header[bad + 1]}': '{row[bad + 1]}' is not a number"
                ) from None
        missing = [i for i in ids if i not in table]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{path}: no row for id {', '.join(repr(m) for m in missing[:3])}{more} of labels.csv")
        x = np.stack([table[i] for i in ids])
    if not np.isfinite(x).all():
        bad_row = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise DataError(f"{path}: non-finite value (or one beyond float32's +-3.4e38) for id '{ids[bad_row]}'")
    return x


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def class_list(labels: list[str]) -> list[str]:
    names = sorted(set(labels))
    if all(_is_int(n) for n in names):
        names.sort(key=int)
    return names


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


@DATASETS.register("tables")
class FeatureTables:
    summary = "your own feature tables: labels.csv + <modality>.csv|.npy; --data tables:PATH"

    @staticmethod
    def parse_arg(arg: str) -> dict[str, Any]:
        return {"path": arg}

    @staticmethod
    def load(cfg: DataConfig) -> MultimodalDataset:
        if not cfg.path:
            raise DataError("tables: give the folder, e.g. --data tables:PATH")
        root = Path(cfg.path)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (expected labels.csv and one table per modality)")
        labels_file = root / "labels.csv"
        if not labels_file.is_file():
            raise DataError(f"{labels_file}: missing (expected header id,label[,split])")
        tables = [p for p in sorted(root.iterdir()) if p.suffix in (".csv", ".npy") and p.name != "labels.csv"]
        if not tables:
            raise DataError(f"{root}: no modality tables (<modality>.csv or .npy) beside labels.csv")
        files = {p.stem: p for p in tables}
        if len(files) < len(tables):
            clash = next(p.stem for p in tables if sum(q.stem == p.stem for q in tables) > 1)
            raise DataError(f"{root}: modality '{clash}' has both a .csv and a .npy table")
        modalities = select_modalities(tuple(files), cfg.modalities, tuple(files), str(root))
        ids, names, given = read_labels(labels_file)
        classes = class_list(names)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[n] for n in names], dtype=np.int64)
        features = {m: read_modality(files[m], ids) for m in modalities}
        official = None
        if given is not None:
            arr = np.asarray(given)
            official = {s: np.flatnonzero(arr == s) for s in SPLITS if (arr == s).any()}
            if "train" not in official:
                raise DataError(f"{labels_file}: the split column names no 'train' rows")
        splits = make_splits(labels, official, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        return FeatureDataset(f"tables:{root.name}", features, labels, ids, classes, splits, cfg.standardize)
