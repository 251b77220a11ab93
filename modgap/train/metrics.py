"""Metrics of protocol.md, computed from accumulated logits (no sample is ever dropped).

ACC: top-1 accuracy. MAP: mean over classes of the average precision of the softmax score against
the one-vs-rest label (classes without a positive in the split are left out of the mean, as their
AP is undefined). F1: macro-averaged F1 over the classes present in labels or predictions.
Each is checked against scikit-learn in tests/train/test_metrics.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall step curve, ties grouped (sklearn's definition)."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order].astype(np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tp = np.cumsum(positive)[last_of_tie]
    seen = last_of_tie + 1
    precision, recall = tp / seen, tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(logits: np.ndarray, y: np.ndarray) -> float:
    probs = softmax(logits)
    aps = [average_precision(probs[:, c], y == c) for c in range(logits.shape[1]) if (y == c).any()]
    return float(np.mean(aps))


def macro_f1(logits: np.ndarray, y: np.ndarray) -> float:
    pred = logits.argmax(1)
    classes = np.union1d(y, pred)
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        scores.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"acc": accuracy(logits, y), "map": mean_average_precision(logits, y), "f1": macro_f1(logits, y)}


def modality_gap(u: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per pair of modalities: distance between the centroids of L2-normalised features
    (Liang et al. 2022) and the mean distance between the paired features of each sample."""
    out = {}
    for m, n in itertools.combinations(u, 2):
        a = u[m] / np.maximum(np.linalg.norm(u[m], axis=1, keepdims=True), 1e-12)
        b = u[n] / np.maximum(np.linalg.norm(u[n], axis=1, keepdims=True), 1e-12)
        out[f"{m}-{n}"] = {
            "centroid": float(np.linalg.norm(a.mean(0) - b.mean(0))),
            "paired": float(np.linalg.norm(a - b, axis=1).mean()),
        }
    return out


def imbalance_ratio(per_modality_acc: dict[str, float]) -> float:
    """Strongest over weakest per-modality accuracy (1 = balanced)."""
    values = list(per_modality_acc.values())
    return float(max(values) / max(min(values), 1e-12))


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> float:
    """Logistic regression on frozen, standardised features: fit on train, accuracy on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # BLAS threads as many as torch's: lbfgs on small problems slows down badly when oversubscribed
    with threadpool_limits(limits=torch.get_num_threads()):
        scaler = StandardScaler().fit(train_x)
        clf = LogisticRegression(max_iter=2000, random_state=seed)
        clf.fit(scaler.transform(train_x), train_y)
        return float(clf.score(scaler.transform(test_x), test_y))


class OutputAccumulator:
    """Collects fused logits, per-modality logits, features and labels over an evaluation pass."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self.parts.setdefault(name, []).append(value.detach().float().cpu().numpy())

    def get(self, name: str) -> np.ndarray:
        return np.concatenate(self.parts[name])

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    def gather(self, gather_arrays) -> None:
        """Replace each part by its concatenation over processes (rank order = split order)."""
        gathered = gather_arrays({k: self.get(k) for k in self.parts})
        self.parts = {k: [v] for k, v in gathered.items()}


STILL_IMPROVING_SHARE = 0.1
"""The last max(2, ceil(10 %)) epochs of a run form the window ``still_improving`` looks at."""


def still_improving(val_acc: Sequence[float]) -> dict[str, Any]:
    """Whether validation fused accuracy was still improving when the run stopped: its best epoch (the
    first epoch of the highest accuracy, the one the protocol reports) is one of the run's last
    ``window`` = max(2, ceil(10 % of the epochs)) epochs and beat an earlier epoch (so not epoch 0:
    one epoch shows no trend). A flat plateau never counts (a tie keeps the earlier epoch); a noisy
    one only when a new high lands in the window (for exchangeable noise about a tenth of the time,
    and the cost is one advisory line). With the numbers behind it: the window, the best accuracy
    and the best before the window (None when the window is the whole run)."""
    curve = [float(v) for v in val_acc]
    epochs = len(curve)
    window = max(2, math.ceil(STILL_IMPROVING_SHARE * epochs))
    best = curve.index(max(curve)) if curve else -1
    before = curve[: max(epochs - window, 0)]
    return {
        "still_improving": best >= max(epochs - window, 1),
        "best_epoch": best,
        "epochs": epochs,
        "window": window,
        "best_val": curve[best] if curve else None,
        "best_before_window": max(before) if before else None,
    }


def still_improving_note(summary: dict[str, Any]) -> str | None:
    """The line a summary of a run that was still improving gets (format_summary, report.html)."""
    if not summary.get("still_improving"):
        return None
    return (
        f"validation accuracy was still improving at the last epoch (best at epoch {summary['best_epoch']} of "
        f"{summary['epochs']}); more epochs may help (--epochs N)"
    )
