"""Modality contributions by exact Shapley values.

The players are the modalities; the value of a subset S is a score of the fused prediction when the
modalities outside S are replaced, so they carry no information of the sample:

- ``zero``: the modality's inputs are zeros (as AGM's mono-responses);
- ``mean``: the modality's inputs are the mean input over the train split (evaluation transforms);
  inputs that are not floating point (token ids) fall back to zeros and the result says so.

Two scores: the fused accuracy and the mean fused logit of the true class (``method.predict``, the
prediction the protocol evaluates). Each modality's contribution is its exact Shapley value

    phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)),

over all 2^M subsets (M <= 6), so sum_m phi_m = v(all) - v(none) (efficiency), a modality that never
changes the fused prediction gets 0, and two interchangeable modalities get the same value.

Encoders see one modality each, so per batch each encoder runs twice (real and replaced inputs) and
only the fusion runs once per subset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..models.classifier import ModelOutput

REPLACEMENTS = ("zero", "mean")
MAX_MODALITIES = 6
SCORES = ("acc", "true_logit")


def subsets(players: Sequence[str]) -> list[frozenset[str]]:
    return [frozenset(c) for k in range(len(players) + 1) for c in itertools.combinations(players, k)]


def shapley_values(
    value: Mapping[frozenset[str], float] | Callable[[frozenset[str]], float], players: Sequence[str]
) -> dict[str, float]:
    """Exact Shapley values of a cooperative game given v on every subset (a mapping or a function)."""
    players = list(players)
    if len(players) > MAX_MODALITIES:
        raise ConfigError(
            f"exact Shapley values are computed for at most {MAX_MODALITIES} modalities, got {len(players)}"
        )
    v = value if callable(value) else value.__getitem__
    cache = {s: float(v(s)) for s in subsets(players)}
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for c in itertools.combinations(others, k):
                s = frozenset(c)
                total += weight * (cache[s | {p}] - cache[s])
        out[p] = total
    return out


@torch.no_grad()
def train_means(batches: Iterable, modalities: Sequence[str]) -> dict[str, torch.Tensor | None]:
    """Mean input of each modality over ``batches`` (float64 sums); None for non-float inputs."""
    sums: dict[str, torch.Tensor | None] = {}
    count = 0
    for batch in batches:
        for m in modalities:
            x = batch.inputs[m]
            if not torch.is_floating_point(x):
                sums[m] = None
                continue
            part = x.double().sum(0)
            sums[m] = part if m not in sums else (None if sums[m] is None else sums[m] + part)
        count += len(batch)
    return {m: (None if s is None else (s / max(count, 1)).float()) for m, s in sums.items()}


def _replaced(x: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    return baseline.to(x.device, x.dtype).expand_as(x).contiguous()


@torch.no_grad()
def subset_scores(
    model,
    predict: Callable[[ModelOutput], torch.Tensor],
    batches: Iterable,
    modalities: Sequence[str],
    baselines: Mapping[str, torch.Tensor | None] | None = None,
) -> dict[frozenset[str], dict[str, float]]:
    """For every subset S of modalities kept: fused accuracy and mean fused logit of the true class,
    the other modalities' inputs replaced by ``baselines[m]`` (None or missing: zeros)."""
    baselines = baselines or {}
    all_subsets = subsets(modalities)
    correct = {s: 0.0 for s in all_subsets}
    logit = {s: 0.0 for s in all_subsets}
    n = 0
    for batch in batches:
        real = model.encode(batch.inputs)
        fake = {m: model.encoders[m](_replaced(batch.inputs[m], baselines.get(m))) for m in modalities}
        y = batch.y.to(next(iter(real.values())).device)
        for s in all_subsets:
            features = {m: real[m] if m in s else fake[m] for m in modalities}
            logits, fused = model.fusion(features)
            z = predict(ModelOutput(features, logits, fused)).float()
            correct[s] += float((z.argmax(1) == y).sum())
            logit[s] += float(z.gather(1, y[:, None]).sum())
        n += len(y)
    if n == 0:
        raise ConfigError("no samples to compute Shapley values on")
    return {s: {"acc": correct[s] / n, "true_logit": logit[s] / n} for s in all_subsets}


def contributions(scores: Mapping[frozenset[str], Mapping[str, float]], modalities: Sequence[str]) -> dict[str, Any]:
    mods = list(modalities)
    full = frozenset(mods)
    empty: frozenset[str] = frozenset()
    return {
        "modalities": mods,
        "shapley": {k: shapley_values({s: v[k] for s, v in scores.items()}, mods) for k in SCORES},
        "full": {k: scores[full][k] for k in SCORES},
        "empty": {k: scores[empty][k] for k in SCORES},
        "subsets": [{"kept": [m for m in mods if m in s], **{k: scores[s][k] for k in SCORES}} for s in subsets(mods)],
    }


def modality_shapley(trainer, split: str = "test", replace: str = "zero") -> dict[str, Any]:
    """Shapley contributions of each modality of a loaded run (modgap.report.checkpoint.load_trained)."""
    if replace not in REPLACEMENTS:
        from ..errors import closest

        raise ConfigError(f"unknown replacement '{replace}'{closest(replace, REPLACEMENTS)} (zero or mean)")
    mods = list(trainer.data.modalities)
    if len(mods) > MAX_MODALITIES:
        raise ConfigError(f"exact Shapley values are computed for at most {MAX_MODALITIES} modalities, got {len(mods)}")
    trainer.model.eval()
    trainer.method.eval()
    notes = []
    baselines: dict[str, torch.Tensor | None] = {}
    if replace == "mean":
        baselines = train_means(trainer.batches("train", train=False), mods)
        for m, b in baselines.items():
            if b is None:
                notes.append(f"{m}: inputs are not floating point; replaced by zeros instead of the mean")
    scores = subset_scores(trainer.model, trainer.method.predict, trainer.batches(split, train=False), mods, baselines)
    result = contributions(scores, mods)
    result.update({"split": split, "replace": replace, "n": int(len(trainer.data.splits[split])), "notes": notes})
    return result


def shapley_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {
            "modality": m,
            "shapley_acc": result["shapley"]["acc"][m],
            "shapley_true_logit": result["shapley"]["true_logit"][m],
        }
        for m in result["modalities"]
    ]
    return rows


def shapley_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Shapley contributions ({result['replace']}-replaced modalities, {result['split']} split, "
        f"n = {result.get('n', '?')})",
        "",
        "| modality | to fused accuracy | to true-class fused logit |",
        "|---|---|---|",
    ]
    for r in shapley_rows(result):
        lines.append(f"| {r['modality']} | {r['shapley_acc']:+.4f} | {r['shapley_true_logit']:+.4f} |")
    f, e = result["full"], result["empty"]
    lines.append(f"| all − none | {f['acc'] - e['acc']:+.4f} | {f['true_logit'] - e['true_logit']:+.4f} |")
    lines += ["", "| modalities kept | fused accuracy | true-class fused logit |", "|---|---|---|"]
    for s in result["subsets"]:
        lines.append(f"| {'+'.join(s['kept']) or '(none)'} | {s['acc']:.4f} | {s['true_logit']:.4f} |")
    for note in result.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
