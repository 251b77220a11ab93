"""unimodal: every modality trained alone, the reference a multimodal method has to beat.

Loss: sum_m CE(z_m, t). With the default mean fusion each modality's encoder and head receive
gradients from their own CE only, so one run trains M independent unimodal models (same data
order and optimiser settings). The fused prediction is their late-fusion ensemble (mean of
logits); the per-modality metrics are the unimodal results.

Targets: ``method.label_mix`` = mix in [0, 1] trains on soft targets
t = (1 - mix) * onehot(y) + mix * uniform, uniform = 1/C for every class, with the soft-target
cross-entropy -sum_c t_c log softmax(z)_c. mix = 0 (the default) is the ordinary one-hot CE
(computed exactly as before); mix = 1 is the uniform-label case (every target 1/C: the labels carry
no information, as in the LFM paper's motivating experiment, `modgap analyze label-fitting`);
0.3 mixes 0.7 one-hot with 0.3 uniform (label smoothing of strength 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Losses, Method, cross_entropy, register, tensor_sum


def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mix: float) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log softmax(z)_c, t = (1 - mix) onehot(y) + mix / C."""
    if mix == 0.0:
        return cross_entropy(logits, y)
    c = logits.shape[1]
    target = torch.full_like(logits, mix / c, dtype=torch.float32)
    target.scatter_add_(1, y[:, None], torch.full((len(y), 1), 1.0 - mix, device=logits.device))
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


@register
class Unimodal(Method):
    name = "unimodal"
    unimodal_models = True
    summary = "each modality trained alone (sum of per-modality CE); fused = mean of logits"

    @dataclass
    class Options:
        label_mix: float = 0.0
        """Soft targets (1 - mix) * onehot + mix * uniform; 0 = one-hot labels, 1 = uniform labels
        (every target 1/C)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if not 0.0 <= options.label_mix <= 1.0:
            raise ConfigError(f"method.label_mix must be in [0, 1], got {options.label_mix}")

    def losses(self, out, batch, ctx) -> Losses:
        mix = self.options.label_mix
        terms = {f"cls_{m}": soft_cross_entropy(z, batch.y, mix) for m, z in out.logits.items()}
        return Losses(tensor_sum(terms.values()), terms)
