"""MLA: the shared head's projected gradient is orthogonal to the stored inputs; entropy-weighted fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modgap.data.base import Batch
from modgap.errors import ConfigError
from modgap.methods import StepContext, build_method
from modgap.methods.mla import entropy_fusion, owm_update
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import SharedFusion

from conftest import Ident, softmax, train_losses

def test_projector_is_orthogonal_to_every_stored_direction():
    torch.manual_seed(0)
    G = torch.randn(4, 5, dtype=torch.float64)
    x1 = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    x2 = torch.tensor([0.0, 1.0, 3.0, -1.0, 1.0], dtype=torch.float64)
    P = owm_update(torch.eye(5, dtype=torch.float64), x1, alpha=0.0)
    assert (G @ P @ x1).abs().max() < 1e-12
    assert (G @ P).abs().max() > 0.1  # what is left of the gradient is not nothing
    P = owm_update(P, x2, alpha=0.0)
    assert (G @ P @ x1).abs().max() < 1e-12 and (G @ P @ x2).abs().max() < 1e-12
    # with alpha > 0 the component along x shrinks by alpha / (alpha + |x|^2) (here 0.5 / 7.5)
    Pa = owm_update(torch.eye(5, dtype=torch.float64), x1, alpha=0.5)
    assert torch.allclose(G @ Pa @ x1, G @ x1 * 0.5 / (0.5 + 7.0))


def test_alternating_steps_do_not_move_the_head_on_the_previous_modality():
    torch.manual_seed(0)
    model = MultimodalClassifier({"a": Ident(3), "b": Ident(3)}, SharedFusion({"a": 3, "b": 3}, 2))
    method = build_method({"name": "mla", "owm_alpha": 0.0, "owm_order": "project_first", "owm_normalize": False,
                           "owm_bias": True}, ("a", "b"), 2, {"a": 3, "b": 3})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = StepContext(model, opt, list(model.parameters()), steps_per_epoch=4)
    batch = Batch({"a": torch.rand(6, 3), "b": torch.rand(6, 3) + 1}, torch.tensor([0, 1, 0, 1, 1, 0]), torch.arange(6))
    head = model.fusion.head

    def step(t):
        ctx.step = t
        opt.zero_grad(set_to_none=True)
        losses = method.losses(model(batch.inputs), batch, ctx)
        losses.total.backward()
        method.after_backward(ctx)
        grads = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1).detach().clone()
        opt.step()
        method.after_step(ctx)
        return grads

    x_a = torch.cat([batch.inputs["a"].mean(0), torch.ones(1)])
    step(0)  # modality a, nothing stored yet: a plain step
    before = head(batch.inputs["a"].mean(0)).detach().clone()
    g = step(1)  # modality b: its head gradient is projected away from a's stored mean input
    assert method.modality_at(1) == "b"
    assert g.abs().max() > 1e-3
    assert (g @ x_a).abs().max() < 1e-6
    assert torch.allclose(head(batch.inputs["a"].mean(0)), before, atol=1e-6)  # a's output did not move


def test_released_projection_by_hand():
    # defaults (released GSPlugin.before_update, bugs fixed): at step t > 0, with x = batch mean of h and
    # alpha = 0.1 * 0.1 ** (b / B): P <- P - P x x^T P / (alpha + x^T P x), P <- P / ||P||_F, dW <- dW P;
    # bias gradient untouched; step 0 left alone. Steps 0 and 1 train a then b on batch 0 of B = 2
    # (4 optimiser steps per epoch: 2 batches x 2 modalities), step 2 trains a on batch 1.
    torch.manual_seed(0)
    model = MultimodalClassifier({"a": Ident(3), "b": Ident(3)}, SharedFusion({"a": 3, "b": 3}, 2))
    method = build_method({"name": "mla"}, ("a", "b"), 2, {"a": 3, "b": 3})
    ctx = StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()), steps_per_epoch=4)
    batch = Batch({"a": torch.rand(6, 3), "b": torch.rand(6, 3) + 1}, torch.tensor([0, 1, 0, 1, 1, 0]), torch.arange(6))
    head = model.fusion.head
    P = np.eye(3)
    for t in range(3):
        ctx.step = t
        model.zero_grad(set_to_none=True)
        method.losses(model(batch.inputs), batch, ctx).total.backward()
        gw, gb = head.weight.grad.clone().numpy().astype(np.float64), head.bias.grad.clone()
        method.after_backward(ctx)
        if t > 0:
            x = batch.inputs["ab"[t % 2]].mean(0).numpy().astype(np.float64)
            alpha = 0.1 * 0.1 ** ((t // 2) / 2)
            Px = P @ x
            P = P - np.outer(Px, x @ P) / (alpha + x @ P @ x)
            P = P / np.sqrt((P ** 2).sum())
        np.testing.assert_allclose(head.weight.grad.numpy(), gw @ P, rtol=1e-5, atol=1e-7)
        assert torch.equal(head.bias.grad, gb)
        method.after_step(ctx)
    np.testing.assert_allclose(method.projector.numpy(), P, rtol=1e-10, atol=1e-12)


def test_released_alternation_takes_one_step_per_modality_on_every_batch(cli, tmp_path):
    """alternate=batch: M optimiser steps per batch (a, then b, on the same batch); alternate=step: one."""
    cli.train(tmp_path / "b", "--method", "mla", "--data", "mfeat:pix+fou+mor", epochs=1)
    cli.train(tmp_path / "s", "--method", "mla", "--data", "mfeat:pix+fou+mor", "--set", "method.alternate=step", epochs=1)
    from modgap.runs import load_checkpoint

    steps = {k: load_checkpoint(tmp_path / k / "checkpoints" / "last.pt")["progress"]["step"] for k in "bs"}
    assert steps["s"] > 10 and steps["b"] == 3 * steps["s"]  # one step per batch, or one per modality


def test_fixed_test_fusion():
    method = build_method({"name": "mla", "test_fusion": "fixed", "fixed_weights": [0.3, 0.7]}, ("a", "b"), 2,
                          {"a": 3, "b": 3})
    out = MultimodalClassifier({"a": Ident(3), "b": Ident(3)}, SharedFusion({"a": 3, "b": 3}, 2))(
        {"a": torch.rand(2, 3), "b": torch.rand(2, 3)})
    torch.testing.assert_close(method.predict(out), 0.3 * out.logits["a"] + 0.7 * out.logits["b"])


def test_round_robin_over_modalities():
    method = build_method({"name": "mla"}, ("x", "y", "z"), 2, {"x": 4, "y": 4, "z": 4})
    assert [method.modality_at(t) for t in range(7)] == ["x", "y", "z", "x", "y", "z", "x"]


def test_entropy_weighted_fusion_by_hand():
    za, zb = [2.0, 0.0], [0.5, 0.3]
    pa, pb = softmax(np.array([za, zb]))
    ea, eb = (-sum(p * math.log(p) for p in q) for q in (pa, pb))
    emax = max(ea, eb)
    la = math.exp(emax - ea) / (math.exp(emax - ea) + math.exp(emax - eb))
    lb = 1 - la
    assert la > lb  # the more certain modality weighs more
    logits = {"a": torch.tensor([za]), "b": torch.tensor([zb])}
    fused = entropy_fusion(logits)[0].tolist()
    assert fused == pytest.approx([la * za[c] + lb * zb[c] for c in range(2)], rel=1e-6)
    mixed = entropy_fusion(logits, "probs")[0].tolist()
    assert mixed == pytest.approx([math.log(la * pa[c] + lb * pb[c]) for c in range(2)], rel=1e-6)
    # the method's prediction is this fusion
    method = build_method({"name": "mla"}, ("a", "b"), 2, {"a": 3, "b": 3})
    out = MultimodalClassifier({"a": Ident(3), "b": Ident(3)}, SharedFusion({"a": 3, "b": 3}, 2))(
        {"a": torch.rand(2, 3), "b": torch.rand(2, 3)})
    assert torch.allclose(method.predict(out), entropy_fusion(out.logits))


def test_shared_fusion_needs_equal_feature_sizes():
    with pytest.raises(ConfigError, match="shared"):
        SharedFusion({"a": 3, "b": 4}, 2)


def test_end_to_end(cli, tmp_path, joint_twin):
    cli.train(tmp_path / "r", "--method", "mla")
    assert train_losses(tmp_path / "r") != joint_twin()


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "mla", "--data", "mfeat:pix+fou+mor")
    assert set(summary["modalities"]) == {"pix", "fou", "mor"}
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor")


def test_resume_continues_exactly(cli, tmp_path, metrics_of):
    """The method's state (checkpointed with the model) makes 2 + 2 epochs equal 4 epochs."""
    cli.train(tmp_path / "full", "--method", "mla", epochs=4)
    cli.train(tmp_path / "part", "--method", "mla", epochs=2)
    cli.resume(tmp_path / "part", epochs=4)
    assert metrics_of(tmp_path / "part") == metrics_of(tmp_path / "full")
