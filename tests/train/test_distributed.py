"""Two CPU processes (torchrun, gloo) give the same run as one process with the same global batch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modgap.config import make_config
from modgap.train.distributed import Distributed
from modgap.train.trainer import Trainer

TINY = ["--set", "model.hidden=[32]", "--set", "model.feature_dim=16", "--set", "train.probe=false",
        "--set", "train.threads=1", "--set", "data.batch_size=50"]  # 1440 train rows: a 40-row last batch


def train(out, procs: int, *args: str) -> None:
    if procs == 1:
        cmd = [sys.executable, "-m", "modgap", "train"]
    else:
        # --standalone: torchrun picks a free local port itself (no race with other tests for one)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "modgap", "train"]
    proc = subprocess.run([*cmd, "--out", str(out), "--quiet", *TINY, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def alphas(run):
    return np.array([float(r["alpha"]) for r in csv.DictReader((run / "alpha.csv").open())])


@pytest.mark.parametrize("method,ddp", [("joint", "true"), ("lfm-lb", "true"), ("joint", "false"), ("lfm-lb", "false")])
def test_two_processes_match_one(tmp_path, method, ddp):
    """DDP (default; lfm-lb mixes DDP steps with explicitly reduced hypergradient steps) and the explicit
    all-reduce (train.ddp=false) both give the one-process run."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = "method.every=3" if method == "lfm-lb" else "train.seed=0"
    train(one, 1, "--method", method, "--epochs", "3", "--set", extra)
    train(two, 2, "--method", method, "--epochs", "3", "--set", extra, "--set", f"train.ddp={ddp}")
    for a, b in zip(records(one), records(two), strict=True):
        for split in ("val", "test"):
            for part in a[split]:
                for metric in ("acc", "map", "f1"):
                    assert a[split][part][metric] == pytest.approx(b[split][part][metric], abs=2e-3), (split, part, metric)
        for term in a["train"]:
            assert a["train"][term] == pytest.approx(b["train"][term], rel=1e-4)
    if method == "lfm-lb":
        a, b = alphas(one), alphas(two)
        assert len(a) == len(b) and np.allclose(a, b, rtol=1e-4, atol=1e-6)
        assert a.max() > a.min(), "alpha moved (the check is not vacuous)"
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s1["best_epoch"] == s2["best_epoch"]


OTHER_METHODS = ["unimodal", "lfm-h", "ogm-ge", "gblend", "pmr", "agm", "mla", "reconboost", "mmpareto", "mmcosine",
                 "umt", "ume", "greedy", "lfm-lb+ogm-ge"]


@pytest.mark.parametrize("args", [["--method", m] for m in OTHER_METHODS]
                         + [["--method", "joint", "--set", "model.fusion=concat-heads"]])
def test_every_method_on_two_processes_matches_one(tmp_path, args):
    """Under DDP every method gives the one-process run: the gradient-modulating ones compute their
    coefficients from statistics reduced over processes; steps that leave parameters without a
    gradient (mla, reconboost: one modality per step; heads no loss reaches) are declared, so DDP
    searches for them; mmpareto takes its own gradients (explicit reduction)."""
    one, two = tmp_path / "one", tmp_path / "two"
    train(one, 1, "--epochs", "2", *args)
    train(two, 2, "--epochs", "2", *args)
    a, b = records(one)[-1], records(two)[-1]
    assert a["val"]["fused"]["acc"] == pytest.approx(b["val"]["fused"]["acc"], abs=2e-3)
    assert a["train"]["total"] == pytest.approx(b["train"]["total"], rel=1e-4)


def test_an_undeclared_unused_parameter_is_named_in_one_line(tmp_path):
    """If a component forgets to declare unused parameters, DDP's reducer error becomes a modgap error
    saying what to set (in-process, two gloo processes)."""
    import torch.multiprocessing as mp

    mp.spawn(_undeclared_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"{rank}.txt").read_text()
        assert "left a parameter without a gradient" in message and "train.ddp=false" in message, message


def _undeclared_worker(rank: int, world: int, init: str, out: str) -> None:
    import os

    import torch.distributed as tdist

    from modgap.errors import ModgapError
    from modgap.methods.mla import MLA

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    MLA.leaves_parameters_unused = False  # pretend MLA forgot to say so
    config = make_config(overrides={"method": {"name": "mla"}, "train": {"probe": False, "epochs": 1, "threads": 1},
                                    "model": {"hidden": [8], "feature_dim": 4}})
    message = "no error"
    try:
        Trainer(config, f"{out}/run").fit()
    except ModgapError as exc:
        message = str(exc)
    with open(f"{out}/{rank}.txt", "w") as f:
        f.write(message)


def test_resume_on_a_different_number_of_processes(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(full, 1, "--method", "lfm-lb", "--epochs", "4")
    train(part, 2, "--method", "lfm-lb", "--epochs", "2")
    proc = subprocess.run([sys.executable, "-m", "modgap", "train", "--out", str(part), "--resume", "--epochs", "4",
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = records(full), records(part)
    assert [r["epoch"] for r in b] == [0, 1, 2, 3]
    assert a[-1]["val"]["fused"]["acc"] == pytest.approx(b[-1]["val"]["fused"]["acc"], abs=5e-3)
    assert np.allclose(alphas(full), alphas(part), rtol=1e-3, atol=1e-5)


def test_sharding_covers_every_sample_once():
    rows = np.arange(103)
    shards = [Distributed(r, 4).shard_split(rows) for r in range(4)]
    assert np.array_equal(np.concatenate(shards), rows)  # evaluation: each sample once, in order
    batch = np.arange(10, 13)  # a last batch smaller than the number of processes
    parts = [Distributed(r, 4).shard_batch(batch) for r in range(4)]
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    assert sorted(np.concatenate([rows for rows, share in parts if share > 0]).tolist()) == [10, 11, 12]
    assert parts[3][1] == 0.0 and len(parts[3][0]) == 1  # padded with one row at weight 0


def test_single_process_evaluation_counts_each_sample_once(tmp_path):
    trainer = Trainer(make_config(overrides={"train": {"probe": False, "epochs": 1}}), tmp_path / "r")
    for split in ("val", "test"):
        y = trainer.evaluate(split).outputs.get("y")
        assert len(y) == len(trainer.data.splits[split])
        assert np.array_equal(y, trainer.data.labels[trainer.data.splits[split]])
    assert torch.get_num_threads() >= 1


def _average_buffers_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(3)
    for step in range(4):  # each process sees its own shard of every global batch
        bn(torch.randn(8, 3, generator=torch.Generator().manual_seed(10 * step + rank)) * (rank + 1))
    Distributed(rank, world).average_buffers(bn)
    torch.save({k: v.clone() for k, v in bn.state_dict().items()}, f"{out}/{rank}.pt")
    tdist.destroy_process_group()


def test_batchnorm_statistics_are_averaged_over_processes(tmp_path):
    """After average_buffers every process holds the same running statistics, equal to an exponential
    average of the per-step mean of the shards' batch statistics (one process sees them all)."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_average_buffers_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    mean, var = torch.zeros(3), torch.ones(3)
    for step in range(4):
        shards = [torch.randn(8, 3, generator=torch.Generator().manual_seed(10 * step + r)) * (r + 1) for r in range(2)]
        mean = 0.9 * mean + 0.1 * torch.stack([x.mean(0) for x in shards]).mean(0)
        var = 0.9 * var + 0.1 * torch.stack([x.var(0) for x in shards]).mean(0)
    torch.testing.assert_close(a["running_mean"], mean)
    torch.testing.assert_close(a["running_var"], var)
    assert not torch.allclose(a["running_var"], torch.ones(3))


def _stopped_workers(run) -> dict[int, int]:
    """LOCAL_RANK -> pid of the training processes of ``run`` that stopped themselves (SIGSTOP)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if state == "T" and str(run).encode() in cmdline and b"modgap" in cmdline:
            rank = next(int(e.split(b"=")[1]) for e in environ if e.startswith(b"LOCAL_RANK="))
            found[rank] = int(stat.parent.name)
    return found


def test_a_stop_signal_to_one_process_stops_all_at_the_same_batch(tmp_path):
    """SIGTERM reaches rank 1 only: both stop at the next check (every 10 batches), one checkpoint holds
    both processes' loss sums, and the resume on two processes ends as the uninterrupted run."""
    import os
    import signal
    import time
    from modgap.runs import load_checkpoint

    args = ["--method", "lfm-lb", "--epochs", "3", "--set", "method.every=3"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train(full, 2, *args)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "modgap",
           "train", "--out", str(stopped), "--quiet", *TINY, *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MODGAP_FAULT": "train_step:35:stop"})  # epoch 1, its 6th batch
    deadline = time.time() + 120
    while len(workers := _stopped_workers(stopped)) < 2:
        assert proc.poll() is None and time.time() < deadline, "the workers never reached their fault point"
        time.sleep(0.1)
    os.kill(workers[1], signal.SIGTERM)
    for pid in workers.values():
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGTERM received: stopped at epoch 1, step 39" in err, err[-2000:]
    state = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert state["progress"]["batch"] == 10 and state["epoch_so_far"]["seen"] == 10 * 50
    train(stopped, 2, *args, "--resume")
    a, b = records(full), records(stopped)
    assert [r["val"] for r in a] == [r["val"] for r in b] and [r["test"] for r in a] == [r["test"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["train"] == pytest.approx(rb["train"], rel=1e-9)
    assert np.array_equal(alphas(full), alphas(stopped))
