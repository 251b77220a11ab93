"""UMT: stage 1 trains each uni-modal teacher alone, stage 2 adds the feature distillation term."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from modgap.config import ModelConfig
from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.teachers import Teachers
from modgap.methods.umt import UniModalTeacher
from modgap.models import build_model
from modgap.runs import load_checkpoint

from conftest import NO_PROBE, TINY, train_losses

MODS = ("a", "b")


def toy(epochs: int = 3):
    torch.manual_seed(0)
    model = build_model({"a": (5,), "b": (3,)}, 3, ModelConfig(hidden=(8,), feature_dim=4))
    x = {"a": torch.randn(48, 5), "b": torch.randn(48, 3)}
    y = (x["a"][:, 0] > 0).long() + (x["b"][:, 0] > 0).long()
    batches = [Batch({m: v[i:i + 16] for m, v in x.items()}, y[i:i + 16], torch.arange(i, i + 16)) for i in range(0, 48, 16)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = StepContext(model, optimizer, list(model.parameters()), epochs=epochs,
                      iterate=lambda split: iter(batches), train_batches=lambda epoch: iter(batches))
    return model, batches, ctx


def umt(**options) -> UniModalTeacher:
    return UniModalTeacher(UniModalTeacher.Options(**options), MODS, 3, {m: 4 for m in MODS})


def test_stage_one_trains_each_teacher_alone_like_a_hand_loop():
    model, batches, ctx = toy()
    before = copy.deepcopy(model.state_dict())
    method = umt(teacher_epochs=3, teacher_select="last")
    torch.manual_seed(7)
    method.on_epoch_start(ctx)

    # the hand loop: copies of the initial encoders, fresh heads (drawn from the same random state),
    # SGD with the run's settings, CE of each teacher on its own modality
    torch.manual_seed(7)
    enc = {m: copy.deepcopy(model.encoders[m]) for m in MODS}
    head = {m: torch.nn.Linear(4, 3) for m in MODS}
    params = [p for m in MODS for p in (*enc[m].parameters(), *head[m].parameters())]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for _ in range(3):
        for batch in batches:
            opt.zero_grad()
            sum(F.cross_entropy(head[m](enc[m](batch.inputs[m])), batch.y) for m in MODS).backward()
            opt.step()

    for m in MODS:
        for got, want in zip(method.teachers.encoders[m].parameters(), enc[m].parameters()):
            assert torch.allclose(got, want, atol=1e-6)
        for got, want in zip(method.teachers.heads[m].parameters(), head[m].parameters()):
            assert torch.allclose(got, want, atol=1e-6)
    # the multimodal model is untouched, the teachers are frozen and not part of the run's optimiser
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not p.requires_grad for p in method.teachers.parameters())
    assert not any(mod.training for mod in method.teachers.modules())
    assert list(method.parameters()) == []
    assert set(method.teachers.val_acc) == set(MODS)


def test_stage_two_loss_is_fused_ce_plus_weighted_feature_mse():
    model, batches, ctx = toy()
    method = umt(teacher_epochs=2, distill_weight=2.5)
    method.on_epoch_start(ctx)
    batch = batches[0]
    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    with torch.no_grad():
        target = {m: method.teachers.encoders[m](batch.inputs[m]) for m in MODS}
    mse = {m: ((out.features[m] - target[m]) ** 2).mean() for m in MODS}
    expected = F.cross_entropy(out.fused, batch.y) + 2.5 * (mse["a"] + mse["b"])
    assert torch.allclose(losses.total, expected)
    assert float((mse["a"] + mse["b"]).detach()) > 1e-3  # the distillation term: what joint's loss lacks
    assert set(losses.terms) == {"cls", "distill_a", "distill_b"}
    assert all(torch.allclose(losses.terms[f"distill_{m}"], mse[m]) for m in MODS)
    losses.total.backward()
    assert all(p.grad is not None for p in model.encoders.parameters())
    assert all(p.grad is None for p in method.teachers.parameters())
    method.after_backward(ctx)  # umt defined the loss: no complaint


def test_checkpoint_state_restores_teachers_without_training(monkeypatch):
    model, _, ctx = toy()
    method = umt(teacher_epochs=1)
    method.on_epoch_start(ctx)
    state = copy.deepcopy(method.state_dict())
    restored = umt(teacher_epochs=1)
    restored.load_state_dict(state)
    monkeypatch.setattr(Teachers, "fit", lambda *a, **k: pytest.fail("teachers trained again"))
    restored.on_epoch_start(ctx)
    for m in MODS:
        for k, v in method.teachers.state_of(m)["encoder"].items():
            assert torch.equal(restored.teachers.state_of(m)["encoder"][k], v)
    assert restored.teachers.val_acc == method.teachers.val_acc


def test_end_to_end_and_resume_does_not_train_teachers_again(cli, tmp_path, metrics_of, monkeypatch):
    run = tmp_path / "r"
    cli.train(run, "--method", "umt", "--set", "method.teacher_epochs=1", epochs=2)
    records = metrics_of(run)
    assert set(records[0]["train"]) == {"cls", "distill_pix", "distill_fou", "total"}
    teachers = load_checkpoint(run / "checkpoints" / "last.pt")["method"]["_extra_state"]
    assert set(teachers["teachers"]) == {"pix", "fou"}

    parts = tmp_path / "parts"
    cli.train(parts, "--method", "umt", "--set", "method.teacher_epochs=1", epochs=1)
    monkeypatch.setattr(Teachers, "fit", lambda *a, **k: pytest.fail("teachers trained again on resume"))
    cli.resume(parts, epochs=2)
    assert metrics_of(parts) == records


def test_teachers_from_a_ume_run_and_not_from_a_joint_run(cli, tmp_path, monkeypatch):
    source = tmp_path / "ume"
    cli.train(source, "--method", "ume", epochs=1)
    monkeypatch.setattr(Teachers, "fit", lambda *a, **k: pytest.fail("teachers trained instead of loaded"))
    run = tmp_path / "umt"
    cli.train(run, "--method", "umt", "--set", f"method.teachers={source}", epochs=1)
    taught = load_checkpoint(run / "checkpoints" / "last.pt")["method"]["_extra_state"]["teachers"]
    model = load_checkpoint(source / "checkpoints" / "best.pt")["model"]
    for m in ("pix", "fou"):
        for k, v in taught[m]["encoder"].items():
            assert torch.equal(v, model[f"encoders.{m}.{k}"])
        assert torch.equal(taught[m]["head"]["weight"], model[f"fusion.heads.{m}.weight"])

    joint = tmp_path / "joint"
    cli.train(joint, "--method", "joint", epochs=1)
    code, _, err = cli("train", "--method", "umt", "--epochs", "1", "--out", str(tmp_path / "bad"), *TINY, *NO_PROBE,
                       "--set", f"method.teachers={joint}")
    assert code == 2 and "'joint' run holds no uni-modal teachers" in err


def test_three_modalities(cli, tmp_path):
    summary = cli.train(tmp_path / "r", "--data", "mfeat:pix+fou+mor", "--method", "umt")
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert set(train_losses(tmp_path / "r")[0]) == {"cls", "distill_pix", "distill_fou", "distill_mor", "total"}


def test_as_a_later_part_it_adds_the_same_distillation_gradient():
    model, batches, ctx = toy()
    single = umt(teacher_epochs=1, distill_weight=3.0)
    single.on_epoch_start(ctx)
    composite = build_method({"name": "joint+umt", "distill_weight": 3.0}, MODS, 3, {m: 4 for m in MODS})
    composite.parts[1].teachers = single.teachers
    batch = batches[1]
    grads = []
    for method in (single, composite):
        model.zero_grad(set_to_none=True)
        out = model(batch.inputs)
        ctx.out, ctx.batch = out, batch  # as the trainer does before the hooks
        losses = method.losses(out, batch, ctx)
        method.backward(losses, ctx)
        method.after_backward(ctx)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_composes_with_lfm_lb(cli, tmp_path):
    cli.train(tmp_path / "r", "--method", "lfm-lb+umt", "--set", "method.teacher_epochs=1", epochs=1)
    cli.train(tmp_path / "l", "--method", "lfm-lb", epochs=1)
    assert train_losses(tmp_path / "r") != train_losses(tmp_path / "l")  # umt's distillation changes lfm-lb's steps


class _FixedTeachers:
    """Stands in for the frozen teachers: fixed teacher features, whatever the inputs."""

    def __init__(self, features):
        self._features = features

    def features(self, inputs):
        return {m: t.clone() for m, t in self._features.items()}


def test_formula_on_fixed_numbers_worked_out_by_hand():
    """L = CE(z, y) + lambda * sum_m mean((h_m - t_m)^2), numbers from the paper's formula by hand.

    a: h - t = [[1, 0], [0, 2]]          -> MSE = (1 + 0 + 0 + 4) / 4 = 1.25
    b: h - t = [[0, -1, 0], [0, 0, 2]]   -> MSE = (1 + 4) / 6 = 5/6
    fused z = [[0, ln 3], [ln 4, 0]], y = [1, 0] -> CE = (-ln 3/4 - ln 4/5) / 2
    lambda = 2 -> total = CE + 2 * (1.25 + 5/6); d total / d h_a = 2 * 2 (h_a - t_a) / 4.
    """
    from modgap.models.classifier import ModelOutput

    h_a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    h_b = torch.tensor([[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]], requires_grad=True)
    t_a = torch.tensor([[0.0, 2.0], [3.0, 2.0]])
    t_b = torch.tensor([[1.0, 1.0, -1.0], [2.0, 2.0, 0.0]])
    fused = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])
    y = torch.tensor([1, 0])
    method = UniModalTeacher(UniModalTeacher.Options(distill_weight=2.0), MODS, 2, {"a": 2, "b": 3})
    method.teachers = _FixedTeachers({"a": t_a, "b": t_b})
    out = ModelOutput({"a": h_a, "b": h_b}, {"a": fused, "b": fused}, fused)
    batch = Batch({"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)}, y, torch.arange(2))
    model = torch.nn.Module()
    model.fusion = torch.nn.Identity()  # a fusion without detached heads: no auxiliary term
    losses = method.losses(out, batch, StepContext(model, None, []))

    ce = (-math.log(3 / 4) - math.log(4 / 5)) / 2
    assert losses.terms["cls"].item() == pytest.approx(ce, rel=1e-6)
    assert losses.terms["distill_a"].item() == pytest.approx(1.25, rel=1e-6)
    assert losses.terms["distill_b"].item() == pytest.approx(5 / 6, rel=1e-6)
    assert losses.total.item() == pytest.approx(ce + 2.0 * (1.25 + 5 / 6), rel=1e-6)
    losses.total.backward()
    assert torch.allclose(h_a.grad, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # 2 * 2 * (h - t) / 4
    assert torch.allclose(h_b.grad, torch.tensor([[0.0, -2.0, 0.0], [0.0, 0.0, 4.0]]) / 3)  # 2 * 2 * (h - t) / 6
