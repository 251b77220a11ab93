"""MMCosine: per-modality logits are scaled cosines of features and class weights; fused = their sum."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from modgap.data.base import Batch
from modgap.methods import METHODS, StepContext, build_method
from modgap.models.classifier import MultimodalClassifier
from modgap.models.fusions import FUSIONS
from modgap.runs import load_checkpoint

from conftest import Enc, train_losses

C = 3


def test_logits_are_scaled_cosines_by_hand():
    torch.manual_seed(0)
    dims = {"a": 4, "v": 2}
    fusion = FUSIONS.get("cosine")(dims, C, scale=7.0)
    h = {"a": torch.randn(5, 4, dtype=torch.float64), "v": torch.randn(5, 2, dtype=torch.float64)}
    fusion = fusion.double()
    logits, fused = fusion(h)
    for m in dims:
        x, w = h[m].numpy(), fusion.weights[m].detach().numpy()
        cos = np.array([[xi @ wc / (np.linalg.norm(xi) * np.linalg.norm(wc)) for wc in w] for xi in x])
        np.testing.assert_allclose(logits[m].detach().numpy(), 7.0 * cos, rtol=1e-10)
        assert float(logits[m].detach().abs().max()) <= 7.0 + 1e-9
    torch.testing.assert_close(fused, logits["a"] + logits["v"])
    assert not any("bias" in n for n, _ in fusion.named_parameters())


def test_norms_do_not_matter():
    torch.manual_seed(1)
    dims = {"a": 4, "v": 3}
    fusion = FUSIONS.get("cosine")(dims, C)
    h = {"a": torch.randn(6, 4), "v": torch.randn(6, 3)}
    big = {"a": 100.0 * h["a"], "v": h["v"]}
    torch.testing.assert_close(fusion(h)[1], fusion(big)[1], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        fusion.weights["a"].mul_(50.0)
    torch.testing.assert_close(fusion(h)[1], fusion(big)[1], rtol=1e-5, atol=1e-5)


def test_method_requires_the_cosine_fusion_and_sets_its_scale():
    assert METHODS.get("mmcosine").fusion == "cosine"
    dims = {"a": 4, "v": 3}
    model = MultimodalClassifier({m: Enc(d, d) for m, d in dims.items()}, FUSIONS.get("cosine")(dims, C))
    method = build_method({"name": "mmcosine", "scale": 20.0}, ("a", "v"), C, dims)
    ctx = StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    assert float(model.fusion.scale) == 10.0   # the released code's default
    build_method({"name": "joint"}, ("a", "v"), C, dims).on_epoch_start(ctx)
    assert float(model.fusion.scale) == 10.0   # joint leaves the scale alone
    method.on_epoch_start(ctx)
    assert float(model.fusion.scale) == 20.0
    assert "fusion.scale" in model.state_dict()   # saved with the model, restored on resume


def test_method_loss_is_ce_of_summed_scaled_cosines_by_hand():
    """The method's loss on a fixed batch against the paper's formula worked out in numpy:
    z_c = sum_m s * <h_m, w_m,c> / (|h_m| |w_m,c|),  L = mean_i -log softmax(z_i)[y_i]  (no bias)."""
    s = 7.0
    dims = {"a": 3, "v": 2}
    fusion = FUSIONS.get("cosine")(dims, C)
    with torch.no_grad():  # fixed class weights, so the hand computation needs no model internals
        fusion.weights["a"].copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]]))
        fusion.weights["v"].copy_(torch.tensor([[0.0, 3.0], [1.0, -1.0], [-2.0, 0.5]]))
    model = MultimodalClassifier({m: nn.Identity() for m in dims}, fusion)
    method = build_method({"name": "mmcosine", "scale": s}, ("a", "v"), C, dims)
    ctx = StepContext(model, None, list(model.parameters()))
    method.on_epoch_start(ctx)
    h = {"a": [[3.0, 4.0, 0.0], [-1.0, 2.0, 2.0]], "v": [[1.0, 1.0], [0.0, -5.0]]}
    y = [2, 1]
    batch = Batch({m: torch.tensor(x) for m, x in h.items()}, torch.tensor(y), torch.arange(2))
    loss = float(method.losses(model(batch.inputs), batch, ctx).total.detach())

    w = {m: fusion.weights[m].detach().numpy().astype(np.float64) for m in dims}
    expected = 0.0
    for i in range(2):
        z = np.zeros(C)
        for m in dims:
            x = np.array(h[m][i])
            z += [s * x @ w[m][c] / (np.linalg.norm(x) * np.linalg.norm(w[m][c])) for c in range(C)]
        expected += -(z[y[i]] - np.log(np.exp(z).sum())) / 2
    assert loss == pytest.approx(expected, rel=1e-5)


def test_end_to_end(cli, tmp_path, joint_twin):
    cli.train(tmp_path / "r", "--method", "mmcosine")
    assert train_losses(tmp_path / "r") != joint_twin()  # scaled-cosine logits, not joint's linear head
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert float(state["model"]["fusion.scale"]) == 10.0
    assert any(k.startswith("fusion.weights.") for k in state["model"])


def test_three_modalities(cli, tmp_path, joint_twin):
    summary = cli.train(tmp_path / "r3", "--method", "mmcosine", "--set", "method.scale=5",
                        "--data", "mfeat:pix+fou+mor", epochs=1)
    assert summary["modalities"] == ["pix", "fou", "mor"]
    assert train_losses(tmp_path / "r3") != joint_twin("--data", "mfeat:pix+fou+mor", epochs=1)


def test_bad_scale_is_refused(cli, tmp_path):
    code, _, err = cli("train", "--method", "mmcosine", "--set", "method.scale=0", "--out", str(tmp_path / "x"),
                       "--quiet", "--epochs", "1")
    assert code == 2 and "mmcosine" in err
    with pytest.raises(Exception):
        build_method({"name": "mmcosine", "scale": -1.0}, ("a", "v"), C, {"a": 2, "v": 2})
