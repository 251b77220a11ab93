"""Preemption: SIGTERM / SIGUSR1 at random moments (mid-step, mid-evaluation, mid-checkpoint) stop a run
with a checkpoint of the batch it was on and the documented exit code; `--resume` then ends exactly as a
run that never stopped. With --requeue under Slurm the job asks to be requeued."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modgap.runs import load_checkpoint

from conftest import NO_PROBE, REPO, TINY, read_metrics, summary_of

EPOCHS = 3
ARGS = ["--method", "lfm-lb", "--set", "method.every=4", "--set", "method.lr_alpha=5", "--epochs", str(EPOCHS),
        *TINY, *NO_PROBE]  # 23 steps and 2 evaluations an epoch


def command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modgap", "train", "--out", str(run), *ARGS, *extra]


def outcome(run: Path) -> dict:
    return {
        "summary": summary_of(run),
        "metrics": read_metrics(run),
        **{name: (run / name).read_text() for name in ("alpha.csv", "scalars.csv")},
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("full") / "r"
    subprocess.run(command(run), cwd=REPO, check=True, capture_output=True, timeout=300)
    return outcome(run)


def stopped(proc: subprocess.Popen) -> bool:
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"


def signal_at(run: Path, fault: str, signum: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Start the run, let it stop itself at ``fault`` (SIGSTOP), send ``signum`` and let it go on."""
    proc = subprocess.Popen(command(run, *(["--requeue"] if env else [])), cwd=REPO, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {}), "MODGAP_FAULT": f"{fault}:stop"})
    deadline = time.time() + 120
    while not stopped(proc):
        assert proc.poll() is None and time.time() < deadline, "the run never reached its fault point"
        time.sleep(0.05)
    os.kill(proc.pid, signum)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


# random moments: a step of any epoch, an evaluation, a checkpoint being written (a .pt temp file)
rng = random.Random(16)
MOMENTS = [f"train_step:{rng.randint(1, EPOCHS * 23 - 2)}", f"evaluate:{rng.randint(1, 2 * (EPOCHS - 1))}",
           f"checkpoint_write:{rng.randint(1, EPOCHS - 1)}", f"train_step:{rng.randint(1, EPOCHS * 23 - 2)}"]


STOPS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)  # USR2: submitit's, before a time limit


@pytest.mark.parametrize("fault, signum", list(zip(MOMENTS, STOPS, strict=True)))
def test_a_stop_signal_checkpoints_and_the_resume_equals_the_uninterrupted_run(tmp_path, uninterrupted, fault,
                                                                                signum):
    run = tmp_path / "r"
    done = signal_at(run, fault, signum)
    assert done.returncode == 128 + signum, done.stderr  # 143 (TERM), 138 (USR1) or 140 (USR2)
    name = signal.Signals(signum).name
    assert f"modgap: {name} received: stopped at epoch" in done.stderr and "--resume" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["progress"]["batch"] >= 1  # the checkpoint of the batch it was on, mid-epoch
    assert ("epoch_so_far" in state) == (state["progress"]["batch"] > 0)
    resumed = subprocess.run([sys.executable, "-m", "modgap", "train", "--resume", "--out", str(run), "--quiet"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run) == uninterrupted


def test_requeue_asks_slurm_to_requeue_the_job(tmp_path, uninterrupted):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    (fake / "scontrol").chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{fake}:{os.environ['PATH']}"}
    done = signal_at(tmp_path / "r", "train_step:30", signal.SIGUSR1, env)
    assert done.returncode == 138, done.stderr
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert "modgap: job 4242 requeued" in done.stderr
