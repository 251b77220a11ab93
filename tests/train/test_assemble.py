"""A run assembled apart from its loop (modgap/train/assemble.py, plan.py; methods/compose.py).

One function builds a config's data, model and method for the trainer and the analyses alike; the
method's options are checked before any data is read; the training forward hands its outputs back
as its return value; every pass over a split takes its rows from one batch plan.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modgap.config import make_config
from modgap.errors import ConfigError
from modgap.methods import METHODS
from modgap.methods.compose import check_method_options
from modgap.train.assemble import Assembly, assemble
from modgap.train.distributed import Distributed, TrainResult
from modgap.train.plan import VAL_STREAM, BatchPlan, permutation
from modgap.train.trainer import Trainer

from conftest import TINY

MISSING = "tables:/nonexistent/modgap-test-data"
SMALL = {"model": {"hidden": [16], "feature_dim": 8}, "train": {"threads": 1, "epochs": 1, "probe": False,
                                                                "progress": False}}


# ------------------------------------------------------------------------ options before data
def test_a_mistyped_method_key_fails_before_the_data_is_read(cli, tmp_path):
    code, _, err = cli("train", "--data", MISSING, "--set", "method.evry=3", "--out", str(tmp_path / "r"), *TINY)
    assert code == 2
    assert "unknown key 'method.evry'" in err and "did you mean 'method.every'" in err
    assert "nonexistent" not in err and not (tmp_path / "r").exists()
    code, _, err = cli("train", "--data", MISSING, "--set", "method.every=3", "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "nonexistent" in err  # a valid key: the next thing to fail is the data


def test_assemble_checks_the_method_options_first():
    config = make_config(overrides={"data": {"name": "tables", "path": "/nonexistent/modgap-test-data"},
                                    "method": {"name": "lfm-lb", "evry": 3}})
    with pytest.raises(ConfigError, match=r"method\.evry"):
        assemble(config)


def test_method_options_are_typed_per_part_of_a_composition():
    parts = check_method_options({"name": "lfm-lb+ogm-ge", "every": 4, "ogm-ge": {"alpha": 0.3}})
    lfm_lb, ogm_ge = METHODS.get("lfm-lb"), METHODS.get("ogm-ge")
    assert [cls for cls, _ in parts] == [lfm_lb, ogm_ge]
    (_, lfm), (_, ogm) = parts
    assert isinstance(lfm, lfm_lb.Options) and lfm.every == 4
    assert isinstance(ogm, ogm_ge.Options) and ogm.alpha == 0.3
    with pytest.raises(ConfigError, match=r"unknown key 'method\.nope' for lfm-lb\+ogm-ge"):
        check_method_options({"name": "lfm-lb+ogm-ge", "nope": 1})
    with pytest.raises(ConfigError, match=r"method\.every"):
        check_method_options({"name": "lfm-lb", "every": "often"})


# ------------------------------------------------------------------------ the assembled run
def test_the_trainer_trains_the_assembled_run(tmp_path):
    trainer = Trainer(make_config(overrides=SMALL), tmp_path / "r")
    run = trainer.assembly
    assert isinstance(run, Assembly)
    assert (trainer.data, trainer.model, trainer.method, trainer.params) == (run.data, run.model, run.method, run.params)
    again = assemble(make_config(overrides=SMALL))  # the same config, the same initial weights
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_training_forward_returns_its_outputs(tmp_path):
    trainer = Trainer(make_config(overrides=SMALL), tmp_path / "r")
    batch = next(trainer.batches("train", True, 0))
    total, result = trainer.forward(batch, trainer.ctx)
    assert isinstance(result, TrainResult) and result.losses.total is total
    assert set(result.out.logits) == set(trainer.data.modalities)
    assert not hasattr(trainer.forward, "out") and not hasattr(trainer.forward, "losses")
    assert trainer.train_step(batch)["total"] == pytest.approx(float(total.detach()), rel=1e-6)


# ------------------------------------------------------------------------ one batch plan
def _old_train_plan(rows, size, seed, epoch, dist):
    order = rows[permutation(len(rows), seed, epoch)]
    return [dist.shard_batch(order[s:s + size]) for s in range(0, len(order), size)]


@pytest.mark.parametrize("world", [1, 3])
def test_every_pass_comes_from_one_plan(world):
    rows = np.arange(100, 123)
    for rank in range(world):
        dist = Distributed(rank, world)
        plan = BatchPlan(dist, seed=5, batch_size=4, eval_batch_size=7)
        old = _old_train_plan(rows, 4, 5, 2, dist)
        new = plan.train(rows, 2)
        assert len(new) == len(old) and all(np.array_equal(a, c) and s == t for (a, s), (c, t) in zip(new, old))
        part = dist.shard_split(rows)
        assert [r.tolist() for r, _ in plan.evaluation(rows)] == [part[s:s + 7].tolist() for s in range(0, len(part), 7)]
        per_pass = math.ceil(len(rows) / 4)
        for cursor in (0, per_pass - 1, per_pass, 3 * per_pass + 2):
            cycle, k = divmod(cursor, per_pass)
            order = rows[permutation(len(rows), 5, VAL_STREAM, cycle)]
            local, share = plan.val_stream(rows, cursor)
            expected = dist.shard_batch(order[k * 4:(k + 1) * 4])
            assert np.array_equal(local, expected[0]) and share == expected[1]
        local, share = plan.fixed(rows[:5])
        assert np.array_equal(local, dist.shard_batch(rows[:5])[0]) and share == dist.shard_batch(rows[:5])[1]
    # training: every row once per epoch over the processes, shares summing to 1 per batch
    plans = [BatchPlan(Distributed(r, world), 5, 4, 7).train(rows, 0) for r in range(world)]
    seen = np.concatenate([local for p in plans for local, share in p if share > 0])
    assert sorted(seen.tolist()) == rows.tolist()
    for batch in zip(*plans):
        assert sum(share for _, share in batch) == pytest.approx(1.0)
