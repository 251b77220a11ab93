"""OGM-GE's per-modality score and the discrepancy ratio built from it.

One definition for both users: ogm-ge modulates gradients with the scores, and the trainer logs the
discrepancy (train.diagnostics) for every method, so the logged number is the one OGM-GE would see.
"""

from __future__ import annotations

import torch


def modality_scores(logits: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    """s_m = sum_i softmax(z_m,i)[y_i] for each modality."""
    rows = torch.arange(len(y), device=y.device)
    return {m: torch.softmax(z.detach().float(), dim=1)[rows, y].sum() for m, z in logits.items()}


def discrepancy(scores: dict[str, float]) -> float:
    """Strongest over weakest score, max_m s_m / min_m s_m (the weakest floored at 1e-12)."""
    values = list(scores.values())
    return max(values) / max(min(values), 1e-12)
