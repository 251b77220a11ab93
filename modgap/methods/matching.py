"""Cross-modal matching losses (the unsupervised part of LFM), pairwise over M >= 2 modalities.

- ``js`` (released LFM code): mean over pairs m < n of the Jensen-Shannon divergence between
  softmax(z_m) and softmax(z_n), batch mean. No parameters.
- ``infonce`` (the paper's description): a linear projection per modality to a shared k-dim
  space, L2-normalised; for each pair the symmetric cross-entropy of S_ij = <u_i, v_j> / tau with
  the diagonal as targets; mean over pairs.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.classifier import ModelOutput
from ..registry import Registry

MATCHING: Registry = Registry("matching loss")


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of JS(softmax(p) || softmax(q)) = 0.5 KL(p||r) + 0.5 KL(q||r), r = (p + q) / 2."""
    log_p = F.log_softmax(p_logits, dim=1)
    log_q = F.log_softmax(q_logits, dim=1)
    log_r = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pr = (log_p.exp() * (log_p - log_r)).sum(1)
    kl_qr = (log_q.exp() * (log_q - log_r)).sum(1)
    return (0.5 * kl_pr + 0.5 * kl_qr).mean()


def info_nce(u: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised u, v (B, k): matching rows are the positives."""
    sim = u @ v.t() / tau
    target = torch.arange(len(u), device=u.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


def pairs(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    return list(itertools.combinations(modalities, 2))


@MATCHING.register("js")
class JSMatching(nn.Module):
    """Mean pairwise Jensen-Shannon divergence of the per-modality predictions (released code)."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int, proj_dim: int, tau: float) -> None:
        super().__init__()
        self.modalities = tuple(feature_dims)

    def project(self, out: ModelOutput) -> dict[str, torch.Tensor] | None:
        return None

    def forward(self, out: ModelOutput) -> torch.Tensor:
        terms = [js_divergence(out.logits[m], out.logits[n]) for m, n in pairs(self.modalities)]
        return torch.stack(terms).mean()


@MATCHING.register("infonce")
class InfoNCEMatching(nn.Module):
    """Mean pairwise symmetric InfoNCE of projected, L2-normalised features (the paper's text)."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int, proj_dim: int, tau: float) -> None:
        super().__init__()
        self.modalities = tuple(feature_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, proj_dim) for m, d in feature_dims.items()})
        self.tau = tau

    def project(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        return {m: F.normalize(self.proj[m](out.features[m]), dim=1) for m in self.modalities}

    def forward(self, out: ModelOutput) -> torch.Tensor:
        u = self.project(out)
        terms = [info_nce(u[m], u[n], self.tau) for m, n in pairs(self.modalities)]
        return torch.stack(terms).mean()
