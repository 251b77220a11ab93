"""ReconBoost: alternating boosting over modalities (Hua, Xu, Bao, Yang, Huang, ICML 2024).

The model is an additive ensemble of one learner per modality (encoder m + its head),
F(x) = sum_m z_m. Training runs in cycles of ``stage_epochs + rectify_epochs`` epochs:

- stage (``stage_epochs``): one modality m, chosen round-robin, is updated alone; the others are
  frozen (they receive no gradient) and enter only through their ensemble's prediction
  p_o = softmax(sum_{k != m} z_k). The learner fits what that ensemble misses with the
  reconcilement objective

      L_m = w_ce * CE(z_m, y) - w_kl * KL(y ⊙ p_o || softmax(z_m))
          = -(w_ce - w_kl * p_o,y) * log softmax(z_m)_y + const,

  so samples the other modalities already get right weigh less (the gradient-boosting view of the
  paper: the new learner corrects the others' errors), and the KL term rewards disagreeing with
  the others' ensemble on the true class;
- global rectification (``rectify_epochs``): every learner is trained jointly on CE(F(x), y).

Only the newest learner of each modality is kept (the paper's difference from classic boosting);
the prediction is F(x) = sum_m z_m.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.classifier import ModelOutput
from .base import Losses, Method, StepContext, cross_entropy, register


def reconcilement_loss(z: torch.Tensor, others: torch.Tensor, y: torch.Tensor, ce_weight: float = 5.0,
                       kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kl), batch means: total = ce_weight * CE(z, y) - kl_weight * KL(y ⊙ p_o || softmax(z)),
    p_o = softmax(others) treated as a constant. KL(q || p) = sum_c q_c (log q_c - log p_c) with the
    unnormalised target q = onehot(y) * p_o, i.e. p_o,y * (log p_o,y - log p_y)."""
    logp_y = F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    q = F.softmax(others.detach(), 1).gather(1, y[:, None]).squeeze(1)
    ce = -logp_y.mean()
    kl = (torch.special.xlogy(q, q) - q * logp_y).mean()
    return ce_weight * ce - kl_weight * kl, ce, kl


def phase_at(epoch: int, modalities: tuple[str, ...], stage_epochs: int, rectify_epochs: int) -> tuple[str, str]:
    """('stage', m) or ('rectify', m) at ``epoch``: m is the modality of the current cycle's stage."""
    cycle, within = divmod(epoch, stage_epochs + rectify_epochs)
    m = modalities[cycle % len(modalities)]
    return ("stage" if within < stage_epochs else "rectify"), m


@register
class ReconBoost(Method):
    name = "reconboost"
    summary = "ReconBoost: one modality at a time fits what the others miss (KL reconcilement), global rectification"
    leaves_parameters_unused = True  # one modality's encoder per step

    @dataclass
    class Options:
        stage_epochs: int = 4
        """Epochs one modality is trained per stage (authors' README: --epochs_per_stage 4)."""
        rectify_epochs: int = 4
        """Epochs of global rectification after each stage; 0 disables it (README: --correct_epoch 4)."""
        ce_weight: float = 5.0
        """Weight of the CE term (README: --weight1 5 on CREMA-D, 4 on AVE and ModelNet40)."""
        kl_weight: float = 1.0
        """Weight of the KL reconcilement term (README: --weight2 1)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.stage_epochs < 1 or options.rectify_epochs < 0:
            raise ConfigError("reconboost: method.stage_epochs must be >= 1 and method.rectify_epochs >= 0")
        if options.ce_weight <= 0 or options.kl_weight < 0:
            raise ConfigError("reconboost: method.ce_weight must be > 0 and method.kl_weight >= 0")

    def on_epoch_start(self, ctx: StepContext) -> None:
        if getattr(ctx.model.fusion, "detached_heads", False):
            raise ConfigError("reconboost trains each modality through its own logits z_m, but this fusion computes "
                              "them on detached features (they would never reach the encoders); use "
                              "model.fusion=mean, sum, concat or concat-heads")

    def phase(self, epoch: int) -> tuple[str, str]:
        return phase_at(epoch, self.modalities, self.options.stage_epochs, self.options.rectify_epochs)

    def losses(self, out, batch, ctx) -> Losses:
        kind, m = self.phase(ctx.epoch)
        if kind == "rectify":
            loss = cross_entropy(self.predict(out), batch.y)
            return Losses(loss, {"cls": loss})
        others = sum(out.logits[k].detach() for k in self.modalities if k != m)
        if not torch.is_tensor(others):  # a single modality: no others, uniform p_o
            others = torch.zeros_like(out.logits[m])
        total, ce, kl = reconcilement_loss(out.logits[m], others, batch.y, self.options.ce_weight,
                                           self.options.kl_weight)
        return Losses(total, {f"cls_{m}": ce, "kl": kl})

    def predict(self, out: ModelOutput) -> torch.Tensor:
        return torch.stack(list(out.logits.values())).sum(0)
