"""mmcosine: Multi-Modal Cosine loss (Xu, Feng, Zhang, Hu, ICASSP 2023).

Features and per-modality head weights are L2-normalised, so each modality's logits are scaled
cosines, z_m,c = s * cos(h_m, w_m,c) (no bias), and the fused logits their sum, z = sum_m z_m.
Loss: CE on z. No modality can dominate the fused logits through the norm of its features or
weights; each contributes at most s in absolute value per class.

The model side is the ``cosine`` fusion (modgap/models/fusions.py), required through the
``fusion`` class attribute; this method sets its scale s from ``method.scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .base import StepContext, register
from .joint import Joint


@register
class MMCosine(Joint):
    name = "mmcosine"
    summary = "MMCosine: per-modality logits are scaled cosines s*cos(h_m, w_m,c), fused = their sum"
    fusion = "cosine"

    @dataclass
    class Options:
        scale: float = 10.0
        """s, the scaling of the cosines: the released code's default --scaling 10 (main_CD.py,
        README command for CREMA-D); the paper tunes it per dataset."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.scale <= 0:
            raise ConfigError(f"method.scale of mmcosine must be positive, got {options.scale}")

    def _set_scale(self, ctx: StepContext) -> None:
        scale = getattr(ctx.model.fusion, "scale", None)
        if scale is None:
            raise ConfigError("mmcosine needs the 'cosine' fusion (its scale s); the model has another")
        if float(scale) != self.options.scale:
            scale.fill_(self.options.scale)

    def on_epoch_start(self, ctx: StepContext) -> None:
        self._set_scale(ctx)  # before the first step; the scale then lives in the model's state
