"""joint: end-to-end training with cross-entropy on the fused logits (the usual baseline).

Any fusion works (``--set model.fusion=NAME``: mean, concat, sum, film, gated, ...). A fusion whose
fused output is not a sum of per-modality parts (film, gated) gives its per-modality logits from
auxiliary heads on DETACHED features and says so with ``detached_heads = True``; joint then adds
CE on those logits (``auxiliary_loss``), which trains only the auxiliary heads: the encoders and
the fused head get exactly the gradient of the fused CE.
"""

from __future__ import annotations

import torch

from ..models.classifier import ModelOutput
from .base import Losses, Method, StepContext, cross_entropy, register, tensor_sum


def auxiliary_loss(out: ModelOutput, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
    """sum_m CE(z_m, y) when the model's fusion declares detached per-modality heads, else None."""
    if not getattr(ctx.model.fusion, "detached_heads", False):
        return None
    return tensor_sum(cross_entropy(z, y) for z in out.logits.values())


@register
class Joint(Method):
    name = "joint"
    summary = "joint training, CE on the fused logits"

    def losses(self, out, batch, ctx) -> Losses:
        loss = cross_entropy(out.fused, batch.y)
        aux = auxiliary_loss(out, batch.y, ctx)
        if aux is None:
            return Losses(loss, {"cls": loss})
        return Losses(loss + aux, {"cls": loss, "aux": aux})
