"""unimodal: every modality trained alone, the reference a multimodal method has to beat.

Loss: sum_m CE(z_m, y). With the default mean fusion each modality's encoder and head receive
gradients from their own CE only, so one run trains M independent unimodal models (same data
order and optimiser settings). The fused prediction is their late-fusion ensemble (mean of
logits); the per-modality metrics are the unimodal results.
"""

from __future__ import annotations

from .base import Losses, Method, cross_entropy, register


@register
class Unimodal(Method):
    name = "unimodal"
    summary = "each modality trained alone (sum of per-modality CE); fused = mean of logits"

    def losses(self, out, batch, ctx) -> Losses:
        terms = {f"cls_{m}": cross_entropy(z, batch.y) for m, z in out.logits.items()}
        return Losses(sum(terms.values()), terms)
