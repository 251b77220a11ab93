"""modgap.train.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from modgap.train.metrics import (accuracy, average_precision, classification_metrics, imbalance_ratio,
                                  linear_probe, macro_f1, mean_average_precision, modality_gap, softmax,
                                  still_improving, still_improving_note)


def sklearn_map(logits: np.ndarray, y: np.ndarray) -> float:
    """protocol.md: AP per column of the softmax scores (one-vs-rest), classes without positives
    left out, then the mean."""
    probs = softmax(logits)  # the same float scores, so ties are the same ties
    aps = [average_precision_score(y == c, probs[:, c]) for c in range(logits.shape[1]) if (y == c).any()]
    return float(np.mean(aps))


def random_case(seed: int, n: int = 300, classes: int = 6, tied: bool = False, absent: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % classes  # this class never occurs in the labels
    if tied:
        # few distinct logit values: many rows are identical, so the softmax scores tie
        logits = rng.integers(0, 3, (n, classes)).astype(np.float64)
    else:
        logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[y] * rng.random((n, 1))
    return logits, y


CASES = [dict(seed=s, tied=t, absent=a) for s in (0, 1, 2) for t in (False, True) for a in (None, 2)]


def test_softmax_matches_scipy():
    logits = np.random.default_rng(0).normal(scale=30, size=(50, 7))
    probs = softmax(logits)
    np.testing.assert_allclose(probs, scipy.special.softmax(logits, axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"s{c['seed']}-tied{c['tied']}-absent{c['absent']}")
def test_accuracy_map_f1_match_sklearn(case):
    logits, y = random_case(**case)
    if case["absent"] is not None:
        assert not (y == case["absent"]).any()
    pred = logits.argmax(1)
    assert accuracy(logits, y) == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert mean_average_precision(logits, y) == pytest.approx(sklearn_map(logits, y), abs=1e-12)
    assert macro_f1(logits, y) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    metrics = classification_metrics(logits, y)
    assert set(metrics) == {"acc", "map", "f1"}
    assert metrics["map"] == pytest.approx(sklearn_map(logits, y), abs=1e-12)


def test_tied_case_really_has_ties():
    logits, y = random_case(0, tied=True)
    probs = softmax(logits)
    assert len(np.unique(probs[:, 0])) < len(probs) / 5


def test_map_skips_class_without_positives():
    # class 2 has no positive: its AP is undefined and must not pull the mean down to 0
    y = np.array([0, 0, 1, 1])
    logits = np.array([[5.0, 0, 0], [4, 1, 0], [0, 5, 0], [1, 4, 0]])
    assert mean_average_precision(logits, y) == pytest.approx(1.0)


def test_f1_counts_class_predicted_but_absent_from_labels():
    # class 2 is predicted once but never occurs: its F1 is 0 and it counts in the macro mean
    y = np.array([0, 0, 1, 1])
    logits = np.eye(3)[[0, 0, 1, 2]]
    expected = f1_score(y, logits.argmax(1), average="macro", zero_division=0)
    assert macro_f1(logits, y) == pytest.approx(expected)
    assert macro_f1(logits, y) == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]), st.booleans()),
                min_size=1, max_size=40).filter(lambda rows: any(p for _, p in rows)))
def test_average_precision_with_ties_matches_sklearn(rows):
    score = np.array([s for s, _ in rows])
    positive = np.array([p for _, p in rows])
    assert average_precision(score, positive) == pytest.approx(average_precision_score(positive, score), abs=1e-12)


def test_average_precision_rounded_scores():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(500), 1)  # 11 distinct values: heavy ties
    positive = rng.random(500) < score
    assert average_precision(score, positive) == pytest.approx(average_precision_score(positive, score), abs=1e-12)


# ------------------------------------------------------------------------------- modality gap
def test_modality_gap_identical_features_is_zero():
    x = np.random.default_rng(0).normal(size=(20, 5))
    gap = modality_gap({"a": x, "b": x.copy()})
    assert set(gap) == {"a-b"}
    assert gap["a-b"]["centroid"] == pytest.approx(0.0, abs=1e-12)
    assert gap["a-b"]["paired"] == pytest.approx(0.0, abs=1e-12)
    # scaling a sample does not change its L2-normalised feature
    gap = modality_gap({"a": x, "b": x * np.arange(1, 21)[:, None]})
    assert gap["a-b"]["centroid"] == pytest.approx(0.0, abs=1e-12)
    assert gap["a-b"]["paired"] == pytest.approx(0.0, abs=1e-12)


def test_modality_gap_hand_computed_2d():
    a = np.array([[2.0, 0.0], [0.0, 3.0]])   # -> (1, 0), (0, 1); centroid (0.5, 0.5)
    b = np.array([[0.0, 5.0], [-4.0, 0.0]])  # -> (0, 1), (-1, 0); centroid (-0.5, 0.5)
    c = np.array([[3.0, 4.0], [6.0, 8.0]])   # -> (0.6, 0.8) twice
    gap = modality_gap({"a": a, "b": b, "c": c})
    assert list(gap) == ["a-b", "a-c", "b-c"]
    assert gap["a-b"]["centroid"] == pytest.approx(1.0)
    assert gap["a-b"]["paired"] == pytest.approx(math.sqrt(2))
    assert gap["a-c"]["centroid"] == pytest.approx(math.sqrt(0.1 ** 2 + 0.3 ** 2))
    assert gap["a-c"]["paired"] == pytest.approx((math.sqrt(0.8) + math.sqrt(0.4)) / 2)
    assert gap["b-c"]["centroid"] == pytest.approx(math.sqrt(1.1 ** 2 + 0.3 ** 2))
    assert gap["b-c"]["paired"] == pytest.approx((math.sqrt(0.36 + 0.04) + math.sqrt(1.6 ** 2 + 0.8 ** 2)) / 2)


# ------------------------------------------------------------------------ imbalance and probe
def test_imbalance_ratio():
    assert imbalance_ratio({"a": 0.8, "b": 0.4}) == pytest.approx(2.0)
    assert imbalance_ratio({"b": 0.4, "a": 0.8, "c": 0.5}) == pytest.approx(2.0)
    assert imbalance_ratio({"a": 0.7, "b": 0.7}) == pytest.approx(1.0)
    r = imbalance_ratio({"a": 0.5, "b": 0.0})
    assert math.isfinite(r) and r > 1e6


def test_linear_probe_separable():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(4, 6))
    ytr, yte = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    xtr = centres[ytr] + rng.normal(size=(200, 6))
    xte = centres[yte] + rng.normal(size=(100, 6))
    assert linear_probe(xtr, ytr, xte, yte) > 0.95
    # and it is not trivially high: on shuffled test labels it is near chance
    assert linear_probe(xtr, ytr, xte, rng.permutation(yte)) < 0.6


# ------------------------------------------------------------------------------ still improving
# the val fused accuracy of the README's default run (lfm-lb on mfeat, 30 epochs): best at epoch 11, then flat
DEFAULT_RUN = [0.7125, 0.8125, 0.9375, 0.95, 0.95625, 0.96875, 0.975, 0.975, 0.98125, 0.98125, 0.98125,
               0.9875] + [0.98125] * 18


@pytest.mark.parametrize("curve, best, window, improving", [
    ([0.2, 0.4, 0.5, 0.55, 0.6, 0.62, 0.63, 0.64], 7, 2, True),        # rising to the end
    ([0.2, 0.4, 0.5, 0.55, 0.6, 0.62, 0.64, 0.63], 6, 2, True),        # best one before the last: still in the window
    ([0.2, 0.4, 0.5, 0.64, 0.6, 0.62, 0.63, 0.63], 3, 2, False),       # peaked early
    (DEFAULT_RUN, 11, 3, False),                                        # the plateaued default run
    ([0.5] * 10, 0, 2, False),                                          # flat: a tie keeps the first epoch
    ([0.5, 0.7, 0.8] + [0.8] * 27, 2, 3, False),                        # reached its high early and stayed there
    ([0.5] * 27 + [0.5, 0.51, 0.5], 28, 3, True),                       # a new high in the window counts
    ([0.5] * 26 + [0.51, 0.5, 0.5, 0.5], 26, 3, False),                 # ... one just before it does not
    ([0.3, 0.4], 1, 2, True),                                           # two epochs: the second beat the first
    ([0.4, 0.4], 0, 2, False),                                          # ... or did not
    ([0.4], 0, 2, False),                                               # one epoch shows no trend
    ([0.1 * i for i in range(21)], 20, 3, True),                        # window max(2, ceil(10 %)): 21 epochs -> 3
])
def test_still_improving_rule(curve, best, window, improving):
    result = still_improving(curve)
    assert result["still_improving"] is improving
    assert result["best_epoch"] == best and result["window"] == window and result["epochs"] == len(curve)
    assert result["best_val"] == max(curve)
    before = curve[: len(curve) - window]
    assert result["best_before_window"] == (max(before) if before else None)


def test_still_improving_note_text():
    summary = {"still_improving": True, "best_epoch": 7, "epochs": 8}
    assert still_improving_note(summary) == ("validation accuracy was still improving at the last epoch "
                                             "(best at epoch 7 of 8); more epochs may help (--epochs N)")
    assert still_improving_note({**summary, "still_improving": False}) is None
    assert still_improving_note({"best_epoch": 7, "epochs": 8}) is None  # a summary from before the key
