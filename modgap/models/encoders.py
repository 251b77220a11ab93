"""Encoders: one per modality, mapping an input batch to features (B, out_dim).

An encoder is any ``nn.Module`` with an ``out_dim`` attribute, built by a registered factory
``factory(input_shape, cfg: ModelConfig) -> nn.Module``. Spectrogram, frame and text encoders
register here the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import Registry

ENCODERS: Registry = Registry("encoder")


class MLP(nn.Module):
    """Feature vectors -> hidden layers (Linear, ReLU, dropout) -> features of size ``out_dim``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.Linear(width, out_dim), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


@ENCODERS.register("mlp")
def mlp(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """MLP on flattened feature vectors: model.hidden layers, then model.feature_dim features."""
    return MLP(math.prod(input_shape), cfg.hidden, cfg.feature_dim, cfg.dropout)
