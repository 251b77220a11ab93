"""UMT: Uni-Modal Teacher (Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", ICML 2023). docs/methods/umt.md.

Stage 1: one uni-modal model per modality (a copy of the run's encoder + a linear head), trained
alone, then frozen (``teachers.Teachers``): trained here at the start of the run, or read from a
run folder (``teachers=runs/<unimodal or ume run>``).
Stage 2: the multimodal model is trained with the fused cross-entropy plus the distillation of each
modality's features toward its teacher's features:

    L = CE(z, y) + lambda * sum_m MSE(h_m, h_m^teacher)

MSE is the mean over the feature entries (torch's ``mse_loss``); the teachers stay frozen.

As a later part of a composition (``lfm-lb+umt``) UMT adds the gradient of its distillation term
to the first method's gradient, from a second forward of the encoders on the step's batch
(``ctx.batch``): the same as adding the term to that method's loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Losses, Method, StepContext, check_choice, cross_entropy, register
from .joint import auxiliary_loss
from .teachers import FORMAT, SELECT, Teachers, read_teacher_state


@register
class UniModalTeacher(Method):
    name = "umt"
    summary = "uni-modal teachers trained first, their features distilled (MSE) into the multimodal encoders"

    @dataclass
    class Options:
        distill_weight: float = 10.0
        """lambda on sum_m MSE(h_m, teacher h_m). The paper tunes it per dataset; 10 is the public
        BalanceBenchmark configuration of UMT (configs/trainer_config.yaml, UMT.scaling)."""
        teacher_epochs: int = 0
        """Epochs of stage-1 training per teacher; 0: as many as the run (train.epochs), the paper
        trains the uni-modal models with the multimodal recipe."""
        teacher_select: str = "best"
        """best: per teacher, the epoch with the best validation accuracy (protocol.md); last."""
        teachers: str = ""
        """A run folder or checkpoint to take the teachers from (a unimodal, ume or umt run on the
        same data and split); empty: train them in this run."""

    def __init__(self, options, modalities, num_classes, feature_dims) -> None:
        super().__init__(options, modalities, num_classes, feature_dims)
        if options.distill_weight < 0 or options.teacher_epochs < 0:
            raise ConfigError("method.distill_weight and method.teacher_epochs must be >= 0")
        check_choice(options, "teacher_select", SELECT)
        self.teachers: Teachers | None = None
        self._restored: dict[str, Any] | None = None
        self._own_loss = False

    def on_epoch_start(self, ctx: StepContext) -> None:
        if self.teachers is not None:
            return
        teachers = Teachers.like(ctx.model, self.modalities, self.num_classes)
        if self._restored is not None:  # resumed: stage 1 is in the checkpoint
            teachers.load_state_dict(self._restored)
        elif self.options.teachers:
            teachers.load_state_dict(read_teacher_state(self.options.teachers, self.modalities))
        else:
            teachers.fit(ctx, self.options.teacher_epochs or ctx.epochs, self.options.teacher_select)
        teachers.freeze()
        self.teachers, self._restored = teachers, None

    def distillation(
        self, features: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """MSE(h_m, teacher h_m) per modality, named distill_<m>."""
        if self.teachers is None:
            raise RuntimeError("umt: a training step before on_epoch_start() built the teachers")
        target = self.teachers.features(inputs)
        return {f"distill_{m}": F.mse_loss(features[m], target[m]) for m in self.modalities}

    def losses(self, out, batch, ctx) -> Losses:
        self._own_loss = True
        cls = cross_entropy(out.fused, batch.y)
        distill = self.distillation(out.features, batch.inputs)
        total = cls + self.options.distill_weight * sum(distill.values())
        terms = {"cls": cls, **distill}
        aux = auxiliary_loss(out, batch.y, ctx)  # fusions with detached per-modality heads (as joint)
        if aux is not None:
            total, terms["aux"] = total + aux, aux
        return Losses(total, terms)

    def after_backward(self, ctx: StepContext) -> None:
        if self._own_loss:  # the distillation term was in this step's loss
            self._own_loss = False
            return
        self.add_distillation_gradient(ctx)

    def add_distillation_gradient(self, ctx: StepContext) -> None:
        """After another method's backward: p.grad += d(lambda * sum_m MSE)/dp for the encoders.

        The encoders run once more on the step's batch; their buffers (BatchNorm statistics) are
        put back afterwards, so the step updates them once, as a single forward would."""
        if ctx.batch is None:
            raise ConfigError("method 'umt' after another method needs the step's batch (StepContext.batch)")
        encoders = [ctx.model.encoders[m] for m in self.modalities]
        saved = [{k: b.detach().clone() for k, b in e.named_buffers()} for e in encoders]
        features = {m: e(ctx.batch.inputs[m]) for m, e in zip(self.modalities, encoders, strict=True)}
        with torch.no_grad():
            for e, state in zip(encoders, saved, strict=True):
                for k, b in e.named_buffers():
                    b.copy_(state[k])
        loss = self.options.distill_weight * sum(self.distillation(features, ctx.batch.inputs).values())
        params = [p for e in encoders for p in e.parameters() if p.requires_grad]
        grads = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True), strict=True)
        ]
        ctx.reduce_weighted(grads, ctx.share)  # p.grad is already reduced over processes: so must this be
        for p, g in zip(params, grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g

    # ---- checkpoint state: the teachers' weights --------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        if self.teachers is None:
            return self._restored or {"format": FORMAT, "teachers": None}
        return self.teachers.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not state.get("teachers"):
            return
        if self.teachers is not None:
            self.teachers.load_state_dict(state)
        else:
            self._restored = state
