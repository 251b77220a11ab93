"""OGM-GE: the discrepancy ratio, the modulation coefficient and the GE noise, against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.ogm_ge import modulation_coefficients
from modgap.methods.scores import modality_scores
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import FUSIONS


from conftest import Enc, joint_gradients, method_values, softmax, train_losses

C = 3


def test_scores_ratio_and_coefficient_by_hand():
    z_a = np.array([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 4.0], [1.0, 2.0, 0.5]])
    z_v = np.array([[0.5, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.3, 0.1], [0.0, 0.0, 0.0]])
    y = np.array([0, 0, 2, 1])
    s_a = softmax(z_a)[np.arange(4), y].sum()
    s_v = softmax(z_v)[np.arange(4), y].sum()
    scores = modality_scores({"a": torch.tensor(z_a), "v": torch.tensor(z_v)}, torch.tensor(y))
    assert float(scores["a"]) == pytest.approx(s_a)
    assert float(scores["v"]) == pytest.approx(s_v)
    rho = s_a / s_v
    assert rho > 1  # audio dominates
    k = modulation_coefficients({"a": s_a, "v": s_v}, alpha=0.1)  # the default: Eq. 10
    assert k["a"] == pytest.approx(1 - math.tanh(0.1 * rho))
    assert k["v"] == 1.0
    continuous = modulation_coefficients({"a": s_a, "v": s_v}, alpha=0.1, offset=1.0)
    assert continuous["a"] == pytest.approx(1 - math.tanh(0.1 * (rho - 1)))
    assert continuous["v"] == 1.0


def test_default_coefficient_is_the_papers_eq_10():
    """At rho = 1.5 and a = 0.1 the authors' k is 0.85 (1 - tanh 0.15), not 0.95 (1 - tanh 0.05)."""
    k = modulation_coefficients({"a": 3.0, "v": 2.0}, alpha=0.1)
    assert k["a"] == pytest.approx(0.851115, abs=1e-6)
    assert k["v"] == 1.0
    k = build_method({"name": "ogm-ge"}, ("a", "v"), C, {"a": 4, "v": 4})
    assert k.options.offset == 0.0 and k.options.params == "auto" and k.options.noise_std == "grad"


def test_three_modalities_compare_with_the_mean_of_the_others():
    k = modulation_coefficients({"a": 6.0, "b": 2.0, "c": 4.0}, alpha=0.5)
    assert k["a"] == pytest.approx(1 - math.tanh(0.5 * 6.0 / 3.0))
    assert k["c"] == 1.0  # rho = 4 / mean(6, 2) = 1: not dominant, no modulation
    assert k["b"] == 1.0


def toy(method_spec: dict, width: int = 4):
    torch.manual_seed(0)
    dims = {"a": width, "v": width}
    model = MultimodalClassifier({"a": Enc(6, width), "v": Enc(5, width)}, FUSIONS.get("concat")(dims, C))
    method = build_method(method_spec, ("a", "v"), C, dims)
    params = list(model.parameters())
    ctx = StepContext(model, torch.optim.SGD(params, lr=0.1), params, epochs=100)
    x_a = torch.randn(32, 6)
    y = torch.randint(0, C, (32,))
    x_a[torch.arange(32), y] += 4.0  # audio carries the label: it dominates
    batch = Batch({"a": x_a, "v": torch.randn(32, 5)}, y, torch.arange(32))
    return model, method, ctx, batch


def step(model, method, ctx, batch):
    out = model(batch.inputs)
    ctx.out, ctx.batch = out, batch  # as the trainer does before the hooks
    losses = method.losses(out, batch, ctx)
    method.backward(losses, ctx)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.after_backward(ctx)
    return out, before


def expected_k(out, batch, alpha=0.1):
    """Eq. 10 in plain numpy, independently of modgap's helpers."""
    y = batch.y.numpy()
    s = {m: softmax(out.logits[m].detach().numpy())[np.arange(len(y)), y].sum() for m in ("a", "v")}
    rho = {"a": s["a"] / s["v"], "v": s["v"] / s["a"]}
    return {m: 1 - math.tanh(alpha * r) if r > 1 else 1.0 for m, r in rho.items()}


def test_ogm_scales_only_the_dominant_encoder():
    model, method, ctx, batch = toy({"name": "ogm-ge", "ge": False, "alpha": 0.8})
    for _ in range(20):  # a few plain steps so that audio's logits get ahead
        ctx.optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch.inputs).fused, batch.y).backward()
        ctx.optimizer.step()
    ctx.optimizer.zero_grad()
    joint = joint_gradients(model, batch)
    out, before = step(model, method, ctx, batch)
    k = expected_k(out, batch, alpha=0.8)
    assert k["a"] < 1.0 and k["v"] == 1.0
    assert method.last_coefficients == pytest.approx(k)
    for name, g in joint.items():  # OGM starts from joint's gradient ...
        torch.testing.assert_close(before[name], g)
    # ... and scales the dominant (audio) encoder's part of it by k_a < 1, nothing else
    for name, p in model.named_parameters():
        factor = k["a"] if name.startswith("encoders.a.") else 1.0
        torch.testing.assert_close(p.grad, before[name] * factor)


@pytest.mark.parametrize("noise_std", ["grad", "scaled"])
def test_ge_noise_has_the_std_of_the_gradient(noise_std):
    """Released main.py: g * k + N(0, std(g)); noise_std=scaled: the std of k g (an earlier release)."""
    model, method, ctx, batch = toy({"name": "ogm-ge", "alpha": 0.8, "noise_std": noise_std}, width=400)
    for _ in range(20):  # audio gets ahead, so that k_a is well below 1 and the two stds differ
        ctx.optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch.inputs).fused, batch.y).backward()
        ctx.optimizer.step()
    ctx.optimizer.zero_grad()
    ctx.step = 7
    out, before = step(model, method, ctx, batch)
    k = expected_k(out, batch, alpha=0.8)
    assert k["a"] < 0.5
    w = "encoders.a.weight"  # 400 x 6 entries
    scaled = before[w] * k["a"]
    noise = dict(model.named_parameters())[w].grad - scaled
    spread = before[w] if noise_std == "grad" else scaled
    assert float(noise.std()) == pytest.approx(float(spread.std()), rel=0.1)
    assert abs(float(noise.mean())) < 0.2 * float(scaled.std())
    # the noise depends only on the run's seed and the step: the same step draws the same noise
    for n, p in model.named_parameters():
        p.grad = before[n].clone()
    method.after_backward(ctx)
    torch.testing.assert_close(dict(model.named_parameters())[w].grad - scaled, noise)
    # head gradients are never touched
    torch.testing.assert_close(model.fusion.head.weight.grad, before["fusion.head.weight"])


class ConvEncoder(nn.Module):
    """A convolution, a BatchNorm and a linear layer: the released code modulates the first only."""

    def __init__(self, out_dim: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, out_dim)
        self.out_dim = out_dim

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("params", ["auto", "conv", "all"])
def test_which_parameters_are_modulated(params):
    """Default (auto): a convolutional encoder has only its kernels scaled, an MLP encoder everything."""
    torch.manual_seed(0)
    dims = {"a": 4, "v": 4}
    model = MultimodalClassifier({"a": ConvEncoder(), "v": Enc(5, 4)}, FUSIONS.get("concat")(dims, C))
    method = build_method({"name": "ogm-ge", "ge": False, "alpha": 0.8, "params": params}, ("a", "v"), C, dims)
    ctx = StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()), epochs=100)
    y = torch.arange(8) % C
    x_a = torch.randn(8, 1, 5, 5)
    batch = Batch({"a": x_a, "v": torch.randn(8, 5)}, y, torch.arange(8))
    out, before = step(model, method, ctx, batch)
    k = expected_k(out, batch, alpha=0.8)
    for name, p in model.named_parameters():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        touched = m is not None and (params == "all" or name == "encoders.a.conv.weight" or m == "v" and params == "auto")
        torch.testing.assert_close(p.grad, before[name] * (k[m] if touched else 1.0))


def test_bad_params_option_is_one_line():
    from modgap.errors import ConfigError

    with pytest.raises(ConfigError, match="method.params 'convs'.*conv"):
        build_method({"name": "ogm-ge", "params": "convs"}, ("a", "v"), C, {"a": 4, "v": 4})


def test_no_modulation_outside_the_modulation_epochs():
    model, method, ctx, batch = toy({"name": "ogm-ge", "modulation_starts": 2, "modulation_ends": 3})
    ctx.epoch = 4
    _, before = step(model, method, ctx, batch)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, before[name])


def test_composition_with_lfm_lb_modulates_its_gradients():
    model, method, ctx, batch = toy({"name": "lfm-lb+ogm-ge", "ge": False, "alpha": 0.8, "every": 1})
    ctx.step = 0   # lfm-lb's own backward (the hypergradient step) runs
    out, before = step(model, method, ctx, batch)
    k = expected_k(out, batch, alpha=0.8)
    assert min(k.values()) < 1.0
    for name, p in model.named_parameters():
        m = name.split(".")[1] if name.startswith("encoders.") else None
        torch.testing.assert_close(p.grad, before[name] * (k[m] if m else 1.0))


def test_end_to_end(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r", "--method", "ogm-ge")
    assert train_losses(tmp_path / "r") != joint_twin()  # the modulated steps train another model
    # scalars.csv: k/<m> after every step; the weaker modality keeps k = 1, the stronger one is damped
    series = method_values(tmp_path / "r")
    assert set(series) == {f"k/{m}" for m in summary["modalities"]}
    ks = np.array([series[f"k/{m}"]["value"] for m in summary["modalities"]])
    assert ks.shape[1] == series[f"k/{summary['modalities'][0]}"]["step"][-1]  # one value per step
    assert np.all(ks.max(0) == 1.0) and np.any(ks.min(0) < 1.0) and np.all(ks > 0)
    assert not (tmp_path / "r" / "alpha.csv").exists()  # ogm-ge has no alpha


def test_composition_end_to_end(cli, tmp_path):
    summary = cli.train(tmp_path / "c", "--method", "lfm-lb+ogm-ge", "--set", "method.alpha=0.5", epochs=1)
    assert summary["method"] == "lfm-lb+ogm-ge"
    # both parts' values are logged: lfm-lb's alpha (also in alpha.csv) and ogm-ge's coefficients
    series = method_values(tmp_path / "c")
    assert set(series) == {"alpha", *(f"k/{m}" for m in summary["modalities"])}
    alpha_csv = np.loadtxt(tmp_path / "c" / "alpha.csv", delimiter=",", skiprows=1)
    assert alpha_csv[:, 3].tolist() == pytest.approx(series["alpha"]["value"], rel=1e-7)
    assert summary["alpha_final"] == pytest.approx(series["alpha"]["value"][-1], rel=1e-7)
    cli.train(tmp_path / "l", "--method", "lfm-lb", epochs=1)
    assert train_losses(tmp_path / "c") != train_losses(tmp_path / "l")  # ogm-ge modulates lfm-lb's steps


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "ogm-ge", "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor", epochs=1)
