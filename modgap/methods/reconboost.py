"""ReconBoost: alternating boosting over modalities (Hua, Xu, Bao, Yang, Huang, ICML 2024).

The model is an additive ensemble of one learner per modality (encoder m + its head),
F(x) = rho * sum_m z_m. Training runs in cycles of ``stage_epochs + rectify_epochs`` epochs:

- stage (``stage_epochs``): one modality m, chosen round-robin, is updated alone; the others are
  frozen (they receive no gradient) and enter only through their ensemble's prediction
  p_o = softmax(rho * sum_{k != m} z_k). The learner fits what that ensemble misses with the
  reconcilement objective

      L_m = [w_ce * CE(z_m, y) - w_kl * KL(y ⊙ p_o || softmax(z_m))] / C
          = -(w_ce - w_kl * p_o,y) / C * log softmax(z_m)_y + const,

  (the 1/C is the released code's mean over the class axis; ``class_mean=false`` drops it)

  so samples the other modalities already get right weigh less (the gradient-boosting view of the
  paper: the new learner corrects the others' errors), and the KL term rewards disagreeing with
  the others' ensemble on the true class;
- global rectification (``rectify_epochs``): every learner and rho are trained jointly on CE(F(x), y).

rho is the boost rate, a learnable scalar starting at 1 (the released ``DynamicNet.boost_rate``).
Only the newest learner of each modality is kept (the paper's difference from classic boosting);
the prediction is F(x) = rho * sum_m z_m. As the released code builds a new SGD optimiser for each
phase, the optimiser's state (momentum) is cleared when a phase starts (``reset_optimizer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.classifier import ModelOutput
from .base import Losses, Method, StepContext, cross_entropy, register


def reconcilement_loss(
    z: torch.Tensor,
    others: torch.Tensor,
    y: torch.Tensor,
    ce_weight: float = 5.0,
    kl_weight: float = 1.0,
    class_mean: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kl), batch means: total = (ce_weight * CE(z, y) - kl_weight * KL(y ⊙ p_o || softmax(z))) / C
    with C the number of classes when ``class_mean`` (the released code's ``.mean(-1)``), else without /C.
    p_o = softmax(others) is treated as a constant. KL(q || p) = sum_c q_c (log q_c - log p_c) with the
    unnormalised target q = onehot(y) * p_o, i.e. p_o,y * (log p_o,y - log p_y). ce and kl are unscaled."""
    logp_y = F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    q = F.softmax(others.detach(), 1).gather(1, y[:, None]).squeeze(1)
    ce = -logp_y.mean()
    kl = (torch.special.xlogy(q, q) - q * logp_y).mean()
    total = ce_weight * ce - kl_weight * kl
    return (total / z.shape[1] if class_mean else total), ce, kl


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
        class_mean: bool = True
        """Divide the stage loss by the number of classes C, as the released code does (train.py:
        ``(target * ...).mean(-1)``, a mean over the class axis); false: the true CE and KL (sums)."""
        boost_rate: float = 1.0
        """Start value of rho in F(x) = rho * sum_m z_m (README: --boost_rate 1.0)."""
        learn_boost_rate: bool = True
        """Learn rho in the rectification phases, as the released code (models/dynamic_net.py:
        ``DynamicNet.parameters`` includes ``boost_rate``); false: rho stays ``boost_rate``."""
        reset_optimizer: bool = True
        """Clear the optimiser's state (momentum buffers) when a phase starts, as the released code,
        which builds a new SGD for every stage and every rectification (train.py: main); false: one
        optimiser state for the whole run (a learner's momentum resumes from its last update)."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.stage_epochs < 1 or options.rectify_epochs < 0:
            raise ConfigError("reconboost: method.stage_epochs must be >= 1 and method.rectify_epochs >= 0")
        if options.ce_weight <= 0 or options.kl_weight < 0:
            raise ConfigError("reconboost: method.ce_weight must be > 0 and method.kl_weight >= 0")
        rho = torch.tensor(float(options.boost_rate))
        if options.learn_boost_rate:
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)

    def on_epoch_start(self, ctx: StepContext) -> None:
        if getattr(ctx.model.fusion, "detached_heads", False):
            raise ConfigError(
                "reconboost trains each modality through its own logits z_m, but this fusion computes "
                "them on detached features (they would never reach the encoders); use "
                "model.fusion=mean, sum, concat or concat-heads"
            )
        within = ctx.epoch % (self.options.stage_epochs + self.options.rectify_epochs)
        if self.options.reset_optimizer and within in (0, self.options.stage_epochs) and ctx.optimizer is not None:
            ctx.optimizer.state.clear()  # a new phase: a fresh optimiser, as the released code

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
        total, ce, kl = reconcilement_loss(
            out.logits[m],
            self.rho.detach() * others,
            batch.y,
            self.options.ce_weight,
            self.options.kl_weight,
            self.options.class_mean,
        )
        return Losses(total, {f"cls_{m}": ce, "kl": kl})

    def predict(self, out: ModelOutput) -> torch.Tensor:
        return self.rho * torch.stack(list(out.logits.values())).sum(0)
