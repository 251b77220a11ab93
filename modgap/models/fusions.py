"""Fusions: per-modality features {m: h_m} -> (per-modality logits {m: z_m}, fused logits z), found by
name in ``FUSIONS`` (``model.fusion``).

Every fusion returns the per-modality logits, not only the fused ones, so that methods and
metrics can always look at each modality on its own.

- ``mean``, ``shared``: z = (1/M) sum_m z_m; ``concat``, ``sum``, ``cosine``: z = sum_m z_m, so z_m
  is each modality's exact share of the fused output.
- ``concat-heads``: fused head on the concatenation plus an own linear head per modality; z_m is
  that head's output (a unimodal classifier, trained by whatever loss uses it).
- ``film``, ``gated``: the fused output is not a sum of per-modality parts. z_m then comes from an
  auxiliary linear head per modality on the DETACHED features h_m, so it never changes what the
  encoders learn; such a fusion sets ``detached_heads = True`` and a method that wants the per-
  modality metrics to mean something adds CE on z_m (``joint`` does, see docs/methods/joint.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

FUSIONS: Registry = Registry("fusion")
Outputs = tuple[dict[str, torch.Tensor], torch.Tensor]


@FUSIONS.register("mean")
class MeanFusion(nn.Module):
    """A linear head per modality, z_m = W_m h_m + b_m; fused z = (1/M) sum_m z_m (released LFM code)."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.heads[m](h) for m, h in features.items()}
        return logits, torch.stack(list(logits.values())).mean(0)


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """One linear head on the concatenated features; z_m = W[:, block_m] h_m + b / M, so sum_m z_m = z."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.dims = dict(feature_dims)
        self.head = nn.Linear(sum(self.dims.values()), num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        blocks = torch.split(self.head.weight, list(self.dims.values()), dim=1)
        share = self.head.bias / len(self.dims)
        logits = {m: features[m] @ w.t() + share for m, w in zip(self.dims, blocks, strict=True)}
        return logits, torch.stack(list(logits.values())).sum(0)


@FUSIONS.register("shared")
class SharedFusion(nn.Module):
    """One linear head shared by all modalities; fused z = mean of the per-modality logits.

    MLA (CVPR 2024): z_m = W h_m + b with the same W, b for every m, so every modality's features
    must have the same size.
    """

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        sizes = sorted(set(feature_dims.values()))
        if len(sizes) != 1:
            listed = ", ".join(f"{m}: {d}" for m, d in feature_dims.items())
            raise ConfigError(
                f"fusion 'shared' applies one head to every modality, so their features must have "
                f"the same size (got {listed}); choose encoders with equal output sizes"
            )
        self.dim = sizes[0]
        self.head = nn.Linear(self.dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.head(h) for m, h in features.items()}
        return logits, torch.stack(list(logits.values())).mean(0)


def _detached_heads(feature_dims: dict[str, int], num_classes: int) -> nn.ModuleDict:
    return nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})


@FUSIONS.register("sum")
class SumFusion(nn.Module):
    """A linear head per modality, z_m = W_m h_m + b_m; fused z = sum_m z_m."""

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.heads[m](h) for m, h in features.items()}
        return logits, torch.stack(list(logits.values())).sum(0)


@FUSIONS.register("film")
class FiLMFusion(nn.Module):
    """FiLM chain: c_1 = h_1, c_k = gamma_k(c_{k-1}) * h_k + beta_k(c_{k-1}); z = W c_M + b.

    With two modalities the first modality's features produce the scale and shift of the second's
    (Perez et al., AAAI 2018; the ``x_film`` default of OGM-GE's released fusion). z_m: auxiliary
    heads on detached features (``detached_heads``).
    """

    detached_heads = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        if len(feature_dims) < 2:
            raise ConfigError("fusion 'film' conditions one modality on another: it needs at least two")
        self.order = list(feature_dims)
        dims = [feature_dims[m] for m in self.order]
        self.films = nn.ModuleList(nn.Linear(dims[k - 1], 2 * dims[k]) for k in range(1, len(dims)))
        self.head = nn.Linear(dims[-1], num_classes)
        self.aux = _detached_heads(feature_dims, num_classes)

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        c = features[self.order[0]]
        for film, m in zip(self.films, self.order[1:], strict=True):
            gamma, beta = film(c).chunk(2, dim=1)
            c = gamma * features[m] + beta
        return self.head(c)

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.aux[m](h.detach()) for m, h in features.items()}
        return logits, self.fuse(features)


@FUSIONS.register("gated")
class GatedFusion(nn.Module):
    """Sigmoid gates per modality from all features, then one linear head on the gated features.

    g_m = sigmoid(U_m [h_1; ...; h_M] + c_m), z = W [g_1 * h_1; ...; g_M * h_M] + b. z_m: auxiliary
    heads on detached features (``detached_heads``).
    """

    detached_heads = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        total = sum(feature_dims.values())
        self.gates = nn.ModuleDict({m: nn.Linear(total, d) for m, d in feature_dims.items()})
        self.head = nn.Linear(total, num_classes)
        self.aux = _detached_heads(feature_dims, num_classes)

    def gate_values(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        joint = torch.cat([features[m] for m in self.gates], dim=1)
        return {m: torch.sigmoid(gate(joint)) for m, gate in self.gates.items()}

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        gates = self.gate_values(features)
        return self.head(torch.cat([gates[m] * features[m] for m in self.gates], dim=1))

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.aux[m](h.detach()) for m, h in features.items()}
        return logits, self.fuse(features)


@FUSIONS.register("cosine")
class CosineFusion(nn.Module):
    """MMCosine: z_m = s * cos(h_m, w_m,c) per class c (no bias); fused z = sum_m z_m.

    ``scale`` (s) is a buffer, saved with the model; the ``mmcosine`` method sets it from its options.
    """

    DEFAULT_SCALE = 10.0
    """The released MMCosine code's default --scaling (main_CD.py, README)."""

    scale: torch.Tensor  # a buffer (register_buffer in __init__), declared for the type checker

    def __init__(self, feature_dims: dict[str, int], num_classes: int, scale: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.weights = nn.ParameterDict()
        for m, d in feature_dims.items():
            w = torch.empty(num_classes, d)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's initialisation
            self.weights[m] = nn.Parameter(w)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {
            m: self.scale * F.normalize(h, dim=1) @ F.normalize(self.weights[m], dim=1).t() for m, h in features.items()
        }
        return logits, torch.stack(list(logits.values())).sum(0)


@FUSIONS.register("concat-heads")
class ConcatHeadsFusion(nn.Module):
    """A fused head on the concatenated features plus an own linear head per modality (MMPareto).

    z = W [h_1; ...; h_M] + b and z_m = W_m h_m + b_m: a multimodal head and unimodal heads on
    shared encoders, the architecture of MMPareto's released code.
    """

    leaves_parameters_unused = True  # a loss on the fused logits alone never reaches the unimodal heads

    def __init__(self, feature_dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.order = list(feature_dims)
        self.head = nn.Linear(sum(feature_dims.values()), num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: dict[str, torch.Tensor]) -> Outputs:
        logits = {m: self.heads[m](h) for m, h in features.items()}
        return logits, self.head(torch.cat([features[m] for m in self.order], dim=1))
