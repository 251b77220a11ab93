"""G-Blend: weights from given loss curves against a hand computation; held-out data is 'val'."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.gblend import ogr_weights
from modgap.models.classifier import ModelOutput

from conftest import method_values, train_losses

def test_weights_from_loss_curves_by_hand():
    # (L_T, L_V) per head at the start and the end of a window
    start = {"fused": (1.0, 1.2), "a": (0.8, 1.0), "b": (1.5, 1.6)}
    end = {"fused": (0.5, 0.9), "a": (0.3, 0.95), "b": (1.4, 1.45)}
    # fused: dG = 1.2 - 0.9 = 0.3, O: 0.2 -> 0.4, dO = 0.2  -> 0.3 / 0.04   = 7.5
    # a:     dG = 0.05,            O: 0.2 -> 0.65, dO = 0.45 -> 0.05 / 0.2025
    # b:     dG = 0.15,            O: 0.1 -> 0.05, dO = -0.05 -> 0.15 / 0.0025 = 60
    g = {"fused": 7.5, "a": 0.05 / 0.2025, "b": 60.0}
    total = sum(g.values())
    w = ogr_weights(start, end, min_overfit=1e-3)
    assert w.keys() == g.keys()
    for k in g:
        assert w[k] == pytest.approx(g[k] / total, rel=1e-9)
    assert sum(w.values()) == pytest.approx(1.0)


def test_guards_negative_generalisation_and_flat_overfitting():
    # b's held-out loss rose: weight 0; a's overfitting did not change: |dO| floored at min_overfit
    start = {"fused": (1.0, 1.2), "a": (1.0, 1.1), "b": (1.0, 1.0)}
    end = {"fused": (0.5, 0.9), "a": (0.9, 1.0), "b": (0.8, 1.1)}
    w = ogr_weights(start, end, min_overfit=0.1)
    g_fused = 0.3 / 0.2 ** 2  # dO = 0.4 - 0.2
    g_a = 0.1 / 0.1 ** 2      # dO = 0.1 - 0.1 = 0 -> floor 0.1
    assert w["b"] == 0.0
    assert w["fused"] == pytest.approx(g_fused / (g_fused + g_a))
    assert w["a"] == pytest.approx(g_a / (g_fused + g_a))
    # nobody generalised, or a loss is not finite: no estimate (the caller keeps its weights)
    assert ogr_weights(start, {k: (v[0], v[1] + 1) for k, v in start.items()}) is None
    assert ogr_weights(start, {**end, "a": (math.nan, 1.0)}) is None


class Passthrough(nn.Module):
    """A 'model' whose per-modality logits are its inputs; fused = their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        logits = dict(inputs)
        return ModelOutput(dict(inputs), logits, torch.stack(list(logits.values())).mean(0))


def test_estimate_uses_train_and_val_only_and_updates_at_window_ends():
    y = torch.tensor([0, 1, 2, 1])
    phase = {"now": 0}
    # logits = margin on the true class: larger margins later, so every held-out loss falls
    margins = {(0, "train"): (0.5, 0.3), (0, "val"): (0.2, 0.1), (1, "train"): (3.0, 1.0), (1, "val"): (1.0, 0.6)}
    data = {key: {m: F.one_hot(y, 3).float() * mg for m, mg in zip(("a", "b"), value)}
            for key, value in margins.items()}
    asked = []

    def iterate(split):
        asked.append(split)
        return iter([Batch(data[(phase["now"], split)], y, torch.arange(4))])

    method = build_method({"name": "gblend", "estimate": "joint", "estimate_every": 2, "min_overfit": 1e-3},
                          ("a", "b"), 3, {"a": 3, "b": 3})
    model = Passthrough()
    ctx = StepContext(model, None, [], epochs=6, iterate=iterate)

    def measured(p):
        out = {}
        for split in ("train", "val"):
            x = data[(p, split)]
            out.setdefault("fused", []).append(float(F.cross_entropy((x["a"] + x["b"]) / 2, y)))
            for m in ("a", "b"):
                out.setdefault(m, []).append(float(F.cross_entropy(x[m], y)))
        return {k: tuple(v) for k, v in out.items()}

    ctx.epoch = 0
    method.on_epoch_start(ctx)  # first boundary: nothing to estimate yet
    assert method.weights == pytest.approx({"fused": 1 / 3, "a": 1 / 3, "b": 1 / 3})
    ctx.epoch = 1
    method.on_epoch_start(ctx)  # inside the window: no pass at all
    assert asked == ["train", "val"]
    phase["now"] = 1
    ctx.epoch = 2
    method.on_epoch_start(ctx)
    assert set(asked) == {"train", "val"}  # never 'test'
    expected = ogr_weights(measured(0), measured(1), 1e-3)
    assert expected is not None and method.weights == pytest.approx(expected)
    assert len({round(v, 6) for v in expected.values()}) == 3  # three different weights
    # the loss is the weighted sum of the heads' CE
    batch = Batch(data[(1, "train")], y, torch.arange(4))
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    by_hand = sum(method.weights[k] * float(F.cross_entropy(z, y).detach())
                  for k, z in (("fused", out.fused), ("a", out.logits["a"]), ("b", out.logits["b"])))
    assert float(losses.total.detach()) == pytest.approx(by_hand, rel=1e-6)
    # the state survives a checkpoint
    clone = build_method({"name": "gblend", "estimate_every": 2}, ("a", "b"), 3, {"a": 3, "b": 3})
    clone.load_state_dict(method.state_dict())
    assert clone.weights == method.weights and clone.window_start == method.window_start


def test_end_to_end(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r", "--method", "gblend", "--set", "method.estimate_every=1")
    assert train_losses(tmp_path / "r") != joint_twin()
    # scalars.csv: the blending weights after every step, estimated (before the first one too), sum 1
    series = method_values(tmp_path / "r")
    assert set(series) == {"weight/fused", *(f"weight/{m}" for m in summary["modalities"])}
    for step in (0, -1):
        weights = [w["value"][step] for w in series.values()]
        assert sum(weights) == pytest.approx(1, abs=1e-6) and weights != pytest.approx([1 / 3] * 3)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["scalars"] == pytest.approx({k: w["value"][-1] for k, w in series.items()}, rel=1e-7)


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "gblend", "--data", "mfeat:pix+fou+mor",
                        "--set", "method.estimate_every=1")
    assert set(summary["modalities"]) == {"pix", "fou", "mor"}
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor")


def test_resume_continues_exactly(cli, tmp_path, metrics_of):
    """The method's state (checkpointed with the model) makes 2 + 2 epochs equal 4 epochs."""
    cli.train(tmp_path / "full", "--method", "gblend", "--set", "method.estimate_every=1", epochs=4)
    cli.train(tmp_path / "part", "--method", "gblend", "--set", "method.estimate_every=1", epochs=2)
    cli.resume(tmp_path / "part", epochs=4)
    assert metrics_of(tmp_path / "part") == metrics_of(tmp_path / "full")


def _toy():
    from modgap.config import ModelConfig
    from modgap.models import build_model

    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 3, ModelConfig(hidden=(8,), feature_dim=4))
    g = torch.Generator().manual_seed(1)
    splits = {}
    for split, n in (("train", 24), ("val", 16)):
        x = {"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 3, generator=g)}
        y = (x["a"][:, 0] > 0).long() + (x["b"][:, 0] > 0).long()
        splits[split] = [Batch({m: v[i:i + 8] for m, v in x.items()}, y[i:i + 8], torch.arange(i, i + 8))
                         for i in range(0, n, 8)]
    return model, splits


def test_separate_estimate_trains_one_copy_per_head_and_applies_the_formula():
    """The paper's estimate: per head, a copy of the model trained on that head's loss alone for n
    epochs; w_k ~ dG_k / dO_k^2 from its (L_T, L_V) before and after, normalised to sum 1."""
    model, splits = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = StepContext(model, optimizer, list(model.parameters()), epochs=4,
                      iterate=lambda split: iter(splits[split]), train_batches=lambda epoch: iter(splits["train"]))
    method = build_method({"name": "gblend", "estimate_every": 2, "min_overfit": 1e-6}, ("a", "b"), 3, {"a": 4, "b": 4})
    ctx.epoch = 0
    method.on_epoch_start(ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the main model is untouched

    def head(out, k):
        return out.fused if k == "fused" else out.logits[k]

    def mean_ce(net, split, k):
        with torch.no_grad():
            net.eval()
            total = sum(float(F.cross_entropy(head(net(b.inputs), k), b.y, reduction="sum")) for b in splits[split])
            net.train()
        return total / sum(len(b.y) for b in splits[split])

    import copy as _copy
    raw = {}
    for k in ("fused", "a", "b"):
        lt0, lv0 = mean_ce(model, "train", k), mean_ce(model, "val", k)
        twin = _copy.deepcopy(model)
        sgd = torch.optim.SGD(twin.parameters(), lr=0.5)
        for _ in range(2):
            for b in splits["train"]:
                sgd.zero_grad()
                F.cross_entropy(head(twin(b.inputs), k), b.y).backward()
                sgd.step()
        lt1, lv1 = mean_ce(twin, "train", k), mean_ce(twin, "val", k)
        d_g = lv0 - lv1
        d_o = (lv1 - lt1) - (lv0 - lt0)
        raw[k] = max(d_g, 0.0) / (d_o * d_o)
    expected = {k: v / sum(raw.values()) for k, v in raw.items()}
    assert method.weights == pytest.approx(expected, rel=1e-4)
    assert method.history[-1]["updated"]
    ctx.epoch = 1
    method.on_epoch_start(ctx)  # inside the window: nothing new
    assert len(method.history) == 1


def test_fixed_weights_as_in_the_released_code():
    """The released code's interface: weights given, loss = w_av CE(z) + sum_m w_m CE(z_m), no estimate."""
    w = {"fused": 0.356, "a": 0.630, "b": 0.014}  # VMZ gradient_blending.md, Kinetics400 R3D-50 (AV, visual, audio)
    method = build_method({"name": "gblend", "weights": w}, ("a", "b"), 3, {"a": 3, "b": 3})
    y = torch.tensor([0, 2])
    out = ModelOutput({}, {"a": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                           "b": torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])},
                      torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.5, 0.5]]))

    def ce(row, t):
        return -row[t] + math.log(sum(math.exp(v) for v in row))

    def mean_ce(z):
        return sum(ce(z[i].tolist(), int(y[i])) for i in range(2)) / 2

    by_hand = 0.356 * mean_ce(out.fused) + 0.630 * mean_ce(out.logits["a"]) + 0.014 * mean_ce(out.logits["b"])
    assert float(method.losses(out, Batch({}, y, torch.arange(2)), None).total.detach()) == pytest.approx(by_hand, rel=1e-6)
    assert abs(by_hand - mean_ce(out.fused)) > 1e-3  # joint's loss: the fused CE alone
    method.on_epoch_start(StepContext(None, None, [], epochs=4))  # no estimate, no data touched
    assert method.weights == w
    with pytest.raises(Exception):
        build_method({"name": "gblend", "weights": {"fused": 1.0}}, ("a", "b"), 3, {"a": 3, "b": 3})
