"""A shared head: one linear classifier applied to every modality's features (MLA, CVPR 2024).

    z_m = W h_m + b   (the same W, b for every m),   z = (1/M) sum_m z_m

Every modality's features must have the same size, since they all enter the same layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .fusion import FUSIONS


@FUSIONS.register("shared")
class SharedFusion(nn.Module):
    """One linear head shared by all modalities; fused z = mean of the per-modality logits."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        sizes = sorted(set(feature_dims.values()))
        if len(sizes) != 1:
            listed = ", ".join(f"{m}: {d}" for m, d in feature_dims.items())
            raise ConfigError(f"fusion 'shared' applies one head to every modality, so their features must have "
                              f"the same size (got {listed}); choose encoders with equal output sizes")
        self.dim = sizes[0]
        self.head = nn.Linear(self.dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        logits = {m: self.head(h) for m, h in features.items()}
        return logits, torch.stack(list(logits.values())).mean(0)
