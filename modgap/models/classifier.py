"""The multimodal classifier: encoders per modality, then a fusion. Always returns everything."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .encoders import ENCODERS
from .fusion import FUSIONS


@dataclass
class ModelOutput:
    features: dict[str, torch.Tensor]
    """h_m per modality, (B, d_m)."""
    logits: dict[str, torch.Tensor]
    """z_m per modality, (B, C)."""
    fused: torch.Tensor
    """z, (B, C)."""


class MultimodalClassifier(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(inputs[m]) for m, enc in self.encoders.items()}

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        features = self.encode(inputs)
        logits, fused = self.fusion(features)
        return ModelOutput(features, logits, fused)


def build_model(input_shapes: dict[str, tuple[int, ...]], num_classes: int, cfg: ModelConfig) -> MultimodalClassifier:
    factory = ENCODERS.get(cfg.encoder)
    encoders = {m: factory(shape, cfg) for m, shape in input_shapes.items()}
    fusion = FUSIONS.get(cfg.fusion)({m: e.out_dim for m, e in encoders.items()}, num_classes)
    return MultimodalClassifier(encoders, fusion)
