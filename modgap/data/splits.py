"""Stratified carve-outs with their own seed: the val split (and test, where none is official)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def stratified_carve(
    rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (kept, carved); ``carved`` holds round(fraction * n_c) rows of each class c.

    Every class keeps at least one row in ``kept``; with a positive fraction every class with two
    or more rows gives at least one to ``carved``. Deterministic in ``seed``; both parts sorted.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if fraction <= 0:
        return np.sort(rows), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        n = min(max(n, 1 if len(members) > 1 else 0), len(members) - 1)
        carved.append(members[:n])
        kept.append(members[n:])
    kept_rows, carved_rows = np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))
    if len(carved_rows) == 0:
        raise DataError(f"cannot carve a {what} split: too few samples per class")
    return kept_rows, carved_rows


def make_splits(
    labels: np.ndarray, given: dict[str, np.ndarray] | None, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """The three splits: official ones where ``given`` has them, stratified carve-outs otherwise.

    Test is carved from all rows (seed ``seed``), val from what remains of train (seed ``seed + 1``).
    """
    given = {k: np.asarray(v, dtype=np.int64) for k, v in (given or {}).items()}
    all_rows = np.arange(len(labels))
    train = given.get("train", all_rows if "test" not in given else all_rows)
    if "test" in given:
        test = given["test"]
        if "train" not in given:
            train = np.setdiff1d(all_rows, np.concatenate([test, given.get("val", np.zeros(0, np.int64))]))
    else:
        train, test = stratified_carve(train, labels, test_fraction, seed, "test")
    if "val" in given:
        val = given["val"]
    else:
        train, val = stratified_carve(train, labels, val_fraction, seed + 1, "validation")
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
