"""UME: Uni-Modal Ensemble (Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", ICML 2023). docs/methods/ume.md.

Every modality's model (its encoder and its own linear head; the method requires the mean fusion,
whose heads are separate) is trained alone with CE on its own logits, and the prediction is the
ensemble of the uni-modal models:

    train: L = sum_m CE(z_m, y)        (no parameter is shared, so these are M independent models)
    predict: mean_m z_m                (combine=logits)  or  log mean_m softmax(z_m)  (combine=probs)

The paper chooses UME over UMT when the uni-modal ensemble is at least as good as naive joint
training on held-out data (few paired features); see the doc. A finished UME run is also a set of
uni-modal teachers: ``--method umt --set method.teachers=<this run>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import check_choice, register
from .unimodal import Unimodal

COMBINE = ("logits", "probs")


@register
class UniModalEnsemble(Unimodal):
    name = "ume"
    summary = "uni-modal ensemble: each modality trained alone, prediction = mean of the uni-modal outputs"
    fusion = "mean"

    @dataclass
    class Options(Unimodal.Options):  # (label_mix too: Unimodal's __init__ and losses read it)
        combine: str = "logits"
        """How the uni-modal outputs are ensembled: logits (mean of logits, the paper's late-fusion
        sum up to scale) or probs (mean of softmax probabilities)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        check_choice(options, "combine", COMBINE)
        self._loss_seen = False

    def losses(self, out, batch, ctx):
        self._loss_seen = True
        return super().losses(out, batch, ctx)

    def after_backward(self, ctx) -> None:
        """In ``a+b`` only the first method's loss is used: UME placed later would do nothing."""
        if not self._loss_seen:
            raise ConfigError(
                f"method '{self.name}' works through its loss (independent uni-modal models), so in "
                f"a composition it must come first ({self.name}+<method>)"
            )

    def predict(self, out) -> torch.Tensor:
        z = torch.stack([out.logits[m] for m in self.modalities])
        if self.options.combine == "probs":
            return torch.log(torch.softmax(z, dim=-1).mean(0).clamp_min(1e-30))
        return z.mean(0)
