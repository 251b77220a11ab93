"""PMR: prototypes, prototype scores, imbalance ratio and the loss against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.pmr import rebalance_coefficients
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import MeanFusion

from conftest import Ident, method_values, train_losses

def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


TRAIN = [  # two batches; features are the inputs (identity encoders)
    Batch({"a": t([[0, 0], [2, 0]]), "b": t([[1, 1], [3, 3]])}, torch.tensor([0, 1]), torch.arange(2)),
    Batch({"a": t([[0, 2], [4, 2]]), "b": t([[1, 3], [5, 1]])}, torch.tensor([0, 1]), torch.arange(2, 4)),
]


def setup(**options):
    torch.manual_seed(0)
    model = MultimodalClassifier({"a": Ident(2), "b": Ident(2)}, MeanFusion({"a": 2, "b": 2}, 2))
    method = build_method({"name": "pmr", **options}, ("a", "b"), 2, {"a": 2, "b": 2})
    data = {"train": TRAIN}
    asked = []

    def iterate(split):
        asked.append(split)
        return iter(data[split])

    ctx = StepContext(model, None, list(model.parameters()), epoch=0, epochs=10, iterate=iterate)
    return model, method, ctx, data, asked


def test_prototypes_are_class_means_of_the_train_split():
    _, method, ctx, data, asked = setup(momentum=0.5)
    method.on_epoch_start(ctx)
    assert asked == ["train"]
    # a: class 0 = mean([0,0],[0,2]) = [0,1]; class 1 = mean([2,0],[4,2]) = [3,1]
    assert method.prototypes("a").tolist() == [[0.0, 1.0], [3.0, 1.0]]
    # b: class 0 = mean([1,1],[1,3]) = [1,2]; class 1 = mean([3,3],[5,1]) = [4,2]
    assert method.prototypes("b").tolist() == [[1.0, 2.0], [4.0, 2.0]]
    # next epoch, every feature moved by +2: EMA with momentum 0.5 -> old + 1
    data["train"] = [Batch({m: x + 2 for m, x in b.inputs.items()}, b.y, b.index) for b in TRAIN]
    ctx.epoch = 1
    method.on_epoch_start(ctx)
    assert method.prototypes("a").tolist() == [[1.0, 2.0], [4.0, 2.0]]
    assert method.prototypes("b").tolist() == [[2.0, 3.0], [5.0, 3.0]]


def _softmax_neg(dists):
    e = [math.exp(-d) for d in dists]
    return [v / sum(e) for v in e]


def test_scores_ratio_coefficients_and_loss_by_hand():
    """rule=paper: clipped coefficients (paper) and the entropy regulariser on the dominant modality."""
    alpha, mu = 2.0, 0.1
    model, method, ctx, _, _ = setup(rule="paper", alpha=alpha, mu=mu, per_epochs=5)
    method.on_epoch_start(ctx)  # prototypes a: [0,1],[3,1]; b: [1,2],[4,2]
    batch = Batch({"a": t([[0, 1], [3, 2]]), "b": t([[2, 2], [1, 2]])}, torch.tensor([0, 1]), torch.arange(2))
    # Euclidean distances to (class 0, class 1) prototypes
    q_a = [_softmax_neg([0.0, 3.0]), _softmax_neg([math.sqrt(10.0), 1.0])]
    q_b = [_softmax_neg([1.0, 2.0]), _softmax_neg([0.0, 3.0])]
    s_a = q_a[0][0] + q_a[1][1]  # probability of the true class, summed over the batch
    s_b = q_b[0][0] + q_b[1][1]
    rho = s_a / s_b
    assert rho > 1  # a dominates here: b gets the prototypical CE, a the entropy regulariser
    beta = {"a": min(max(1 / rho - 1, 0), 1), "b": min(max(rho - 1, 0), 1)}
    gamma = {"a": min(max(rho - 1, 0), 1), "b": min(max(1 / rho - 1, 0), 1)}
    assert beta["a"] == 0 and gamma["b"] == 0 and beta["b"] == gamma["a"] > 0
    assert rebalance_coefficients({"a": s_a, "b": s_b}) == (pytest.approx(beta), pytest.approx(gamma))

    out = model(batch.inputs)
    losses = method.losses(out, batch, ctx)
    assert method.last["scores"] == pytest.approx({"a": s_a, "b": s_b})
    pce = {"a": -(math.log(q_a[0][0]) + math.log(q_a[1][1])) / 2, "b": -(math.log(q_b[0][0]) + math.log(q_b[1][1])) / 2}
    ent = {m: -sum(p * math.log(p) for row in q for p in row) / 2 for m, q in (("a", q_a), ("b", q_b))}
    cls = float(F.cross_entropy(out.fused, batch.y).detach())
    by_hand = cls + alpha * sum(beta[m] * pce[m] for m in "ab") - mu * sum(gamma[m] * ent[m] for m in "ab")
    assert float(losses.total.detach()) == pytest.approx(by_hand, rel=1e-5)
    assert abs(by_hand - cls) > 1e-3  # joint's loss would be cls alone

    ctx.epoch = 5  # past per_epochs: no entropy term any more
    assert "entropy" not in method.losses(model(batch.inputs), batch, ctx).terms
    ctx.epoch = 71  # past modulation_ends (70): plain CE on the fused logits
    assert float(method.losses(model(batch.inputs), batch, ctx).total.detach()) == pytest.approx(cls, rel=1e-6)


def test_released_hard_switch_by_hand():
    """Default rule (released code, main_Prototype_grad.py: train_epoch): alpha * PCE on the modality
    whose summed true-class prototype probability is lower, nothing on the other, no entropy term."""
    alpha = 3.0
    model, method, ctx, _, _ = setup(alpha=alpha)
    assert method.options.rule == "released"
    method.on_epoch_start(ctx)  # prototypes a: [0,1],[3,1]; b: [1,2],[4,2]

    def by_hand(fa, fb, y):
        """cls + alpha * PCE of the lower-scoring modality, in plain float arithmetic."""
        q = {}
        for m, rows, protos in (("a", fa, [[0, 1], [3, 1]]), ("b", fb, [[1, 2], [4, 2]])):
            q[m] = [_softmax_neg([math.dist(r, c) for c in protos]) for r in rows]
        score = {m: sum(q[m][i][y[i]] for i in range(len(y))) for m in q}
        pce = {m: -sum(math.log(q[m][i][y[i]]) for i in range(len(y))) / len(y) for m in q}
        weight = {"a": alpha if score["a"] < score["b"] else 0.0, "b": alpha if score["b"] < score["a"] else 0.0}
        return score, weight, sum(weight[m] * pce[m] for m in q)

    for fa, fb in (([[0, 1], [3, 2]], [[2, 2], [1, 2]]),    # a closer to its prototypes: PCE on b
                   ([[2, 2], [1, 2]], [[1, 2], [4, 3]])):   # b closer: PCE on a
        y = [0, 1]
        batch = Batch({"a": t(fa), "b": t(fb)}, torch.tensor(y), torch.arange(2))
        score, weight, extra = by_hand(fa, fb, y)
        assert sorted(weight.values()) == [0.0, alpha]
        out = model(batch.inputs)
        losses = method.losses(out, batch, ctx)
        cls = float(F.cross_entropy(out.fused, batch.y).detach())
        assert method.last["scores"] == pytest.approx(score)
        assert {m: alpha * b for m, b in method.last["beta"].items()} == weight
        assert "entropy" not in losses.terms
        assert float(losses.total.detach()) == pytest.approx(cls + extra, rel=1e-5)
    # a tie: no PCE at all
    batch = Batch({"a": t([[0, 1], [3, 1]]), "b": t([[1, 2], [4, 2]])}, torch.tensor([0, 1]), torch.arange(2))
    out = model(batch.inputs)
    cls = float(F.cross_entropy(out.fused, batch.y).detach())
    assert float(method.losses(out, batch, ctx).total.detach()) == pytest.approx(cls, rel=1e-6)


def test_shuffled_pass_uses_the_first_tenth():
    """Released calculate_prototype: the first all_num // 10 batches of the shuffled train loader."""
    model, method, ctx, _, asked = setup()
    rng = torch.Generator().manual_seed(0)
    batches = [Batch({"a": torch.randn(4, 2, generator=rng), "b": torch.randn(4, 2, generator=rng)},
                     torch.tensor([0, 1, 0, 1]), torch.arange(4)) for _ in range(25)]
    seen = []

    def train_batches(epoch):
        seen.append(epoch)
        return iter(batches)

    ctx.train_batches, ctx.steps_per_epoch, ctx.epoch = train_batches, 25, 3
    method.on_epoch_start(ctx)
    assert seen == [3] and asked == []  # the epoch's shuffled pass, not the ordered one
    for m in "ab":  # 25 // 10 = 2 batches: class k = mean of rows 0/2 (k=0) or 1/3 (k=1) of batches 0 and 1
        x = torch.cat([batches[0].inputs[m], batches[1].inputs[m]]).numpy()
        expected = [[(x[k, j] + x[k + 2, j] + x[k + 4, j] + x[k + 6, j]) / 4 for j in range(2)] for k in range(2)]
        np.testing.assert_allclose(method.prototypes(m).numpy(), expected, atol=1e-6)
    ctx.steps_per_epoch = 5  # 5 // 10 = 0: still one batch
    method.on_epoch_start(ctx)
    x = batches[0].inputs["a"].numpy()
    np.testing.assert_allclose(method.prototypes("a").numpy(), [[(x[0, j] + x[2, j]) / 2 for j in range(2)],
                                                                [(x[1, j] + x[3, j]) / 2 for j in range(2)]], atol=1e-6)


def test_three_modality_coefficients_reduce_to_the_pair():
    beta, gamma = rebalance_coefficients({"a": 4.0, "b": 2.0, "c": 3.0})
    assert beta == pytest.approx({"a": 0.0, "b": 1.0, "c": 4 / 3 - 1})
    assert gamma == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.5})


def test_end_to_end(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r", "--method", "pmr")
    assert train_losses(tmp_path / "r") != joint_twin()
    # scalars.csv: beta/<m> on the steps where the prototype loss applies; the released switch gives
    # the PCE to the weaker modality only (1), never to the best (0)
    series = method_values(tmp_path / "r")
    assert set(series) == {f"beta/{m}" for m in summary["modalities"]}
    betas = np.array([series[f"beta/{m}"]["value"] for m in summary["modalities"]])
    assert betas.size and set(np.unique(betas)) <= {0.0, 1.0} and np.all(betas.min(0) == 0.0)


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "pmr", "--data", "mfeat:pix+fou+mor")
    assert set(summary["modalities"]) == {"pix", "fou", "mor"}
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor")
