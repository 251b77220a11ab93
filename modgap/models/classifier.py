"""The multimodal classifier: encoders per modality, then a fusion. Always returns everything."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, DataError, closest
from .encoders import ENCODERS
from .fusions import FUSIONS


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


def encoder_names(modalities: tuple[str, ...], suggested: dict[str, str], cfg: ModelConfig) -> dict[str, str]:
    """model.encoders[m], else model.encoder, else (auto) what the dataset suggests."""
    unknown = set(cfg.encoders) - set(modalities)
    if unknown:
        raise ConfigError(
            f"model.encoders names modality '{sorted(unknown)[0]}', which this run does not use"
            f"{closest(sorted(unknown)[0], modalities)}"
        )
    default = {m: (suggested[m] if cfg.encoder == "auto" else cfg.encoder) for m in modalities}
    return {**default, **cfg.encoders}


def build_model(
    input_shapes: dict[str, tuple[int, ...]],
    num_classes: int,
    cfg: ModelConfig,
    suggested: dict[str, str] | None = None,
) -> MultimodalClassifier:
    names = encoder_names(tuple(input_shapes), suggested or {m: "mlp" for m in input_shapes}, cfg)
    encoders = {m: ENCODERS.get(names[m])(shape, cfg) for m, shape in input_shapes.items()}
    for m, path in cfg.pretrained.items():
        if m not in encoders:
            raise ConfigError(f"model.pretrained names modality '{m}'{closest(m, tuple(encoders))}")
        load_encoder_weights(encoders[m], path, m)
    fusion = FUSIONS.get(cfg.fusion)({m: e.out_dim for m, e in encoders.items()}, num_classes)
    return MultimodalClassifier(encoders, fusion)


def load_encoder_weights(encoder: nn.Module, path: str, modality: str) -> None:
    """Start ``encoder`` from a state_dict file (a full checkpoint's ``encoders.<m>.`` part works too)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: pretrained weights for '{modality}' not found") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a state_dict
        raise DataError(f"{path}: not a readable state_dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    prefix = f"encoders.{modality}."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing:
        raise DataError(
            f"{path}: weights do not fit the '{modality}' encoder (missing {missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''})"
        )
