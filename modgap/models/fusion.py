"""Fusion: per-modality features -> per-modality logits z_m and fused logits z.

Every fusion returns the per-modality logits, not only the fused ones, so that methods and
metrics can always look at each modality on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

FUSIONS: Registry = Registry("fusion")


@FUSIONS.register("mean")
class MeanFusion(nn.Module):
    """A linear head per modality, z_m = W_m h_m + b_m; fused z = (1/M) sum_m z_m (released LFM code)."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits = {m: self.heads[m](h) for m, h in features.items()}
        return logits, torch.stack(list(logits.values())).mean(0)


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """One linear head on the concatenated features; z_m = W[:, block_m] h_m + b / M, so sum_m z_m = z."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.dims = dict(feature_dims)
        self.head = nn.Linear(sum(self.dims.values()), num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        blocks = torch.split(self.head.weight, list(self.dims.values()), dim=1)
        share = self.head.bias / len(self.dims)
        logits = {m: features[m] @ w.t() + share for m, w in zip(self.dims, blocks)}
        return logits, torch.stack(list(logits.values())).sum(0)
