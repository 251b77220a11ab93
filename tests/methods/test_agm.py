"""AGM: Shapley mono-responses with the other modalities zeroed, running averages, per-encoder scaling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from modgap.data.base import Batch
from modgap.methods.agm import agm_coefficients, mono_responses, response_scores
from modgap.methods import StepContext, build_method
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import FUSIONS

from conftest import Enc, joint_gradients, method_values, train_losses

C = 3


def toy(dims_in: dict[str, int], fusion: str, spec: dict):
    torch.manual_seed(0)
    dims = {m: 4 for m in dims_in}
    model = MultimodalClassifier({m: Enc(d, 4) for m, d in dims_in.items()}, FUSIONS.get(fusion)(dims, C))
    method = build_method(spec, tuple(dims_in), C, dims)
    params = list(model.parameters())
    ctx = StepContext(model, torch.optim.SGD(params, lr=0.1), params, epochs=30)
    batch = Batch({m: torch.randn(8, d) for m, d in dims_in.items()}, torch.randint(0, C, (8,)), torch.arange(8))
    return model, method, ctx, batch


def zeroed(model, batch, keep):
    inputs = {m: x if m in keep else torch.zeros_like(x) for m, x in batch.inputs.items()}
    with torch.no_grad():
        return model(inputs).fused


def test_two_modalities_match_the_released_formula():
    model, method, ctx, batch = toy({"a": 6, "v": 5}, "concat", {"name": "agm"})
    out = model(batch.inputs)
    ctx.out, ctx.batch = out, batch
    responses = mono_responses(method.subset_outputs(ctx), ("a", "v"))
    f_av, f_a0, f_0v = out.fused.detach(), zeroed(model, batch, {"a"}), zeroed(model, batch, {"v"})
    torch.testing.assert_close(responses["a"], 0.5 * (f_av - f_0v + f_a0))
    torch.testing.assert_close(responses["v"], 0.5 * (f_av - f_a0 + f_0v))
    torch.testing.assert_close(responses["a"] + responses["v"], f_av)


def test_three_modalities_are_shapley_values():
    # an arbitrary (non-additive) set function: r_m = Shapley value + f(empty)/M, by permutations
    mods = ("a", "b", "c")
    g = torch.Generator().manual_seed(0)
    f = {frozenset(s): torch.randn(2, C, generator=g) for k in range(4) for s in itertools.combinations(mods, k)}
    responses = mono_responses({s: v for s, v in f.items() if s}, mods)
    for m in mods:
        total = torch.zeros(2, C)
        for order in itertools.permutations(mods):
            before = frozenset(order[:order.index(m)])
            total += f[before | {m}] - f[before]
        torch.testing.assert_close(responses[m], total / 6 + f[frozenset()] / 3)
    torch.testing.assert_close(sum(responses.values()), f[frozenset(mods)])


def test_additive_fusion_gives_each_modality_its_own_logits():
    # sum fusion, features zeroed: f(S) = sum_{m in S} W_m h_m + sum_m b_m, so r_m = W_m h_m + sum_m b_m / M
    model, method, ctx, batch = toy({"a": 6, "b": 5, "c": 3}, "sum", {"name": "agm", "zero": "features"})
    out = model(batch.inputs)
    ctx.out, ctx.batch = out, batch
    responses = mono_responses(method.subset_outputs(ctx), ("a", "b", "c"))
    bias = sum(model.fusion.heads[m].bias for m in "abc").detach()
    for m in "abc":
        own = (out.features[m] @ model.fusion.heads[m].weight.t()).detach()
        torch.testing.assert_close(responses[m], own + bias / 3)


def test_scores_and_coefficients_by_hand():
    r = {"a": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "v": torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    y = torch.tensor([0, 1])
    s = response_scores(r, y)
    p_a = [math.exp(2) / (math.exp(2) + 2), math.e / (math.e + 2)]
    p_v = [1 / 3, 1 / (math.e + 2)]
    assert float(s["a"]) == pytest.approx(-(math.log(p_a[0]) + math.log(p_a[1])) / 2)
    assert float(s["v"]) == pytest.approx(-(math.log(p_v[0]) + math.log(p_v[1])) / 2)
    scores, averages = {"a": 0.4, "v": 1.1}, {"a": 0.6, "v": 0.9}
    k = agm_coefficients(scores, averages, alpha=1.0)
    assert k["a"] == pytest.approx(math.exp(math.exp(0.9 - 0.6) - math.exp(1.1 - 0.4)))   # a ahead of its usual: slowed
    assert k["v"] == pytest.approx(math.exp(math.exp(0.6 - 0.9) - math.exp(0.4 - 1.1)))   # v behind: sped up
    assert k["a"] < 1 < k["v"]
    big = agm_coefficients({"a": 0.0, "v": 5.0}, {"a": 5.0, "v": 0.0}, alpha=1.0, clip=10.0)
    assert big["v"] == pytest.approx(math.exp(10.0))
    three = agm_coefficients({"a": 0.2, "b": 0.4, "c": 0.9}, {"a": 0.5, "b": 0.5, "c": 0.5}, alpha=0.5)
    assert three["a"] == pytest.approx(math.exp(0.5 * (1.0 - math.exp((0.4 + 0.9) / 2 - 0.2))))


def test_after_backward_scales_encoders_and_keeps_running_averages():
    model, method, ctx, batch = toy({"a": 6, "v": 5}, "concat",
                                    {"name": "agm", "alpha": 0.5, "target": "encoders", "grad_clip": 0})
    seen = []
    for step in range(3):
        ctx.step = step
        ctx.optimizer.zero_grad()
        out = model(batch.inputs)
        ctx.out, ctx.batch = out, batch  # as the trainer does before the hooks
        losses = method.losses(out, batch, ctx)
        method.backward(losses, ctx)
        before = {n: p.grad.clone() for n, p in model.named_parameters()}
        averages = dict(method.averages)
        responses = mono_responses(method.subset_outputs(ctx), ("a", "v"))
        s = {m: float(v) for m, v in response_scores(responses, batch.y).items()}
        k = agm_coefficients(s, averages, 0.5)   # step 0: averages 0, target ratio 1
        method.after_backward(ctx)
        assert method.last_coefficients == pytest.approx(k)
        for name, p in model.named_parameters():
            m = name.split(".")[1] if name.startswith("encoders.") else None
            torch.testing.assert_close(p.grad, before[name] * (k[m] if m else 1.0))
        seen.append(s)
        ctx.optimizer.step()
    for m in ("a", "v"):
        assert method.averages[m] == pytest.approx(sum(x[m] for x in seen) / 3)
    state = method.state_dict()
    fresh = build_method({"name": "agm"}, ("a", "v"), C, {"a": 4, "v": 4})
    fresh.load_state_dict(state)
    assert fresh.averages == pytest.approx(method.averages) and fresh.count == 3


def _ce_grad(z, y):
    """d mean_i CE(z_i, y_i) / dz, by hand: (softmax(z) - onehot(y)) / B."""
    p = torch.softmax(z, 1)
    return (p - torch.nn.functional.one_hot(y, z.shape[1]).to(p.dtype)) / len(y)


def test_responses_target_scales_each_mono_response_gradient_by_hand():
    # released GradMod: out = r_a + r_v with r_a's gradient times k_a and r_v's times k_v, the padded
    # passes (eval mode) differentiated too. Expected gradients from the surrogate sum_m k_m <g, r_m>,
    # with g = dCE/dz at z = f(a,v) and k_m = exp(alpha (exp(s_other - s_m)... )) worked out here.
    model, method, ctx, batch = toy({"a": 6, "v": 5}, "concat", {"name": "agm", "alpha": 0.7, "grad_clip": 0})
    method.averages, method.count = {"a": 1.3, "v": 0.9}, 4
    y = batch.y
    joint = joint_gradients(model, batch)
    out = model(batch.inputs)
    method.losses(out, batch, ctx).total.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    f_av = model(batch.inputs).fused
    model.eval()
    f_a0 = model({"a": batch.inputs["a"], "v": torch.zeros_like(batch.inputs["v"])}).fused
    f_0v = model({"a": torch.zeros_like(batch.inputs["a"]), "v": batch.inputs["v"]}).fused
    model.train()
    r = {"a": 0.5 * (f_av - f_0v + f_a0), "v": 0.5 * (f_av - f_a0 + f_0v)}
    s = {m: float(-torch.log(torch.softmax(r[m].detach(), 1)[torch.arange(8), y]).mean()) for m in r}
    k_a = math.exp(0.7 * min(math.exp(0.9 - 1.3) - math.exp(s["v"] - s["a"]), 10))
    k_v = math.exp(0.7 * min(math.exp(1.3 - 0.9) - math.exp(s["a"] - s["v"]), 10))
    g = _ce_grad(f_av.detach(), y)
    ((k_a * g * r["a"]).sum() + (k_v * g * r["v"]).sum()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    assert method.last_coefficients == pytest.approx({"a": k_a, "v": k_v})
    assert method.averages["a"] == pytest.approx((1.3 * 4 + s["a"]) / 5)
    # not joint's step: k_a, k_v != 1 re-weight the two modalities' parts of the encoders' gradients
    assert abs(k_a - 1) > 1e-3 and abs(k_v - 1) > 1e-3
    for m in ("a", "v"):
        assert not torch.allclose(got[f"encoders.{m}.weight"], joint[f"encoders.{m}.weight"], atol=1e-6)


def test_modulation_window_is_the_first_twenty_epochs():
    method = build_method({"name": "agm"}, ("a", "v"), C, {"a": 4, "v": 4})
    assert [method.active(e) for e in (0, 19, 20)] == [True, True, False]


def test_released_gradient_clipping():
    model, method, ctx, batch = toy({"a": 6, "v": 5}, "concat", {"name": "agm", "grad_clip": 0.5})
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.3)
    method.clip_gradients(ctx)  # every entry inside [-0.5, 0.5]: untouched
    assert all(torch.equal(p.grad, torch.full_like(p, 0.3)) for p in params)
    model.fusion.head.weight.grad[0, 0] = -2.0
    before = [p.grad.clone() for p in params]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in before))
    method.clip_gradients(ctx)
    for p, g in zip(params, before):
        torch.testing.assert_close(p.grad, g * 0.5 / (norm + 1e-6))


def test_end_to_end(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r", "--method", "agm")
    assert train_losses(tmp_path / "r") != joint_twin()  # the re-weighted steps train another model
    # scalars.csv: k/<m> after every step, moving
    series = method_values(tmp_path / "r")
    assert set(series) == {f"k/{m}" for m in summary["modalities"]}
    for k in series.values():
        assert len(set(k["value"])) > 1 and all(0 < v < math.inf for v in k["value"])


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "agm", "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor", epochs=1)
