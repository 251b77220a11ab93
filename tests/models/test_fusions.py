"""Fusions for joint: sum, film, gated (and the fusions methods require: cosine, concat-heads).

FiLM and gated outputs are not sums of per-modality parts: their per-modality logits come from
auxiliary heads on detached features, which joint trains without touching the encoders.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modgap.data.base import Batch
from modgap.errors import ConfigError
from modgap.methods import StepContext, build_method
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import FUSIONS

from conftest import Enc

C = 4


def features(dims: dict[str, int], batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g) for m, d in dims.items()}


def test_sum_is_the_sum_of_per_modality_heads():
    torch.manual_seed(0)
    dims = {"a": 3, "b": 5, "c": 2}
    fusion = FUSIONS.get("sum")(dims, C)
    h = features(dims)
    logits, fused = fusion(h)
    for m in dims:
        head = fusion.heads[m]
        torch.testing.assert_close(logits[m], h[m] @ head.weight.t() + head.bias)
    torch.testing.assert_close(fused, logits["a"] + logits["b"] + logits["c"])


def test_film_two_modalities_by_hand():
    torch.manual_seed(0)
    dims = {"a": 3, "b": 4}
    fusion = FUSIONS.get("film")(dims, C)
    h = features(dims)
    film = fusion.films[0]
    out = h["a"] @ film.weight.t() + film.bias          # (B, 2 * 4)
    gamma, beta = out[:, :4], out[:, 4:]
    expected = (gamma * h["b"] + beta) @ fusion.head.weight.t() + fusion.head.bias
    logits, fused = fusion(h)
    torch.testing.assert_close(fused, expected)
    for m in dims:
        torch.testing.assert_close(logits[m], fusion.aux[m](h[m]))
    assert fusion.detached_heads is True


def test_film_chains_three_modalities():
    torch.manual_seed(1)
    dims = {"a": 3, "b": 4, "c": 2}
    fusion = FUSIONS.get("film")(dims, C)
    h = features(dims)
    c = h["a"]
    for film, m in zip(fusion.films, ["b", "c"]):
        gamma, beta = film(c).split(dims[m], dim=1)
        c = gamma * h[m] + beta
    torch.testing.assert_close(fusion(h)[1], fusion.head(c))
    with pytest.raises(ConfigError, match="film"):
        FUSIONS.get("film")({"a": 3}, C)


def test_gated_by_hand():
    torch.manual_seed(2)
    dims = {"a": 3, "b": 4}
    fusion = FUSIONS.get("gated")(dims, C)
    h = features(dims)
    joint = torch.cat([h["a"], h["b"]], dim=1)
    g_a = torch.sigmoid(joint @ fusion.gates["a"].weight.t() + fusion.gates["a"].bias)
    g_b = torch.sigmoid(joint @ fusion.gates["b"].weight.t() + fusion.gates["b"].bias)
    expected = torch.cat([g_a * h["a"], g_b * h["b"]], dim=1) @ fusion.head.weight.t() + fusion.head.bias
    torch.testing.assert_close(fusion(h)[1], expected)
    # the gate of one modality depends on the other: the fused output is not a sum of parts
    h2 = {"a": h["a"], "b": h["b"] + 1.0}
    assert not torch.allclose(fusion.gate_values(h)["a"], fusion.gate_values(h2)["a"])


def test_concat_heads_has_own_unimodal_heads():
    torch.manual_seed(3)
    dims = {"a": 3, "b": 4}
    fusion = FUSIONS.get("concat-heads")(dims, C)
    h = features(dims)
    logits, fused = fusion(h)
    torch.testing.assert_close(fused, fusion.head(torch.cat([h["a"], h["b"]], dim=1)))
    torch.testing.assert_close(logits["b"], fusion.heads["b"](h["b"]))


@pytest.mark.parametrize("name", ["film", "gated"])
def test_joint_trains_detached_heads_without_changing_the_encoders_gradient(name):
    torch.manual_seed(4)
    dims_in, dims = {"a": 6, "b": 5}, {"a": 3, "b": 4}
    model = MultimodalClassifier({m: Enc(dims_in[m], dims[m]) for m in dims}, FUSIONS.get(name)(dims, C))
    method = build_method({"name": "joint"}, ("a", "b"), C, dims)
    params = list(model.parameters())
    ctx = StepContext(model, torch.optim.SGD(params, lr=0.1), params)
    batch = Batch({m: torch.randn(8, d) for m, d in dims_in.items()}, torch.randint(0, C, (8,)), torch.arange(8))
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    assert set(losses.terms) == {"cls", "aux"}
    expected_aux = sum(nn.functional.cross_entropy(out.logits[m], batch.y) for m in dims)
    torch.testing.assert_close(losses.terms["aux"], expected_aux)
    enc_params = list(model.encoders.parameters())
    only_fused = torch.autograd.grad(losses.terms["cls"], enc_params, retain_graph=True)
    losses.total.backward()
    for p, g in zip(enc_params, only_fused):
        torch.testing.assert_close(p.grad, g)      # the auxiliary CE never reaches an encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.aux.parameters())


def test_joint_without_detached_heads_is_plain_ce():
    torch.manual_seed(5)
    dims = {"a": 3, "b": 4}
    model = MultimodalClassifier({m: Enc(d, d) for m, d in dims.items()}, FUSIONS.get("sum")(dims, C))
    method = build_method({"name": "joint"}, ("a", "b"), C, dims)
    ctx = StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    batch = Batch({m: torch.randn(8, d) for m, d in dims.items()}, torch.randint(0, C, (8,)), torch.arange(8))
    losses = method.losses(model(batch.inputs), batch, ctx)
    assert set(losses.terms) == {"cls"}


def test_joint_film_end_to_end(cli, tmp_path):
    summary = cli.train(tmp_path / "r", "--method", "joint", "--set", "model.fusion=film")
    assert summary["method"] == "joint"
    assert all(v == v and 0.0 <= v <= 1.0 for part in summary["test"].values() for v in part.values())
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "fusion: film" in config
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "aux" in records[0]["train"]


def test_joint_gated_three_modalities(cli, tmp_path):
    summary = cli.train(tmp_path / "r3", "--method", "joint", "--set", "model.fusion=gated",
                        "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert all(v == v for part in summary["test"].values() for v in part.values())
