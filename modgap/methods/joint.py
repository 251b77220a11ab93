"""joint: end-to-end training with cross-entropy on the fused logits (the usual baseline)."""

from __future__ import annotations

from .base import Losses, Method, cross_entropy, register


@register
class Joint(Method):
    name = "joint"
    summary = "joint training, CE on the fused logits"

    def losses(self, out, batch, ctx) -> Losses:
        loss = cross_entropy(out.fused, batch.y)
        return Losses(loss, {"cls": loss})
