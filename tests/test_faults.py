"""Kill -9 at chosen and at random points, then `modgap train --resume`: the run ends as if never killed.

The kill points come from modgap/faults.py (MODGAP_FAULT="point:count"): each killed run is a real
subprocess that SIGKILLs itself there. After each kill the run folder must hold only whole files (every
checkpoint passes its checksum, summary/config/splits parse, metrics lines are whole) plus, at most,
``.*.tmp`` leftovers and the stale ``.lock``; the resume cleans both away and the final summary (timing
excluded), metrics.jsonl, alpha.csv and scalars.csv equal those of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import NO_PROBE, REPO, TINY, read_metrics, summary_of
from modgap.cli import main
from modgap.runs import load_checkpoint

EPOCHS = 4
METHODS = {
    "joint": ["--method", "joint"],
    "lfm-lb": ["--method", "lfm-lb", "--set", "method.every=4", "--set", "method.lr_alpha=5"],
}
TMP = re.compile(r"^\..+\.tmp$")


def train_argv(run: Path, method: str, epochs: int = EPOCHS) -> list[str]:
    return ["train", "--epochs", str(epochs), "--out", str(run), *TINY, *NO_PROBE, *METHODS[method]]


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "modgap", *argv]


def step_rows(run: Path, name: str) -> list[tuple[str, ...]]:
    """alpha.csv or scalars.csv without its progress column (the 3rd)."""
    path = run / name
    if not path.exists():
        return []
    return [tuple(r[:2] + r[3:]) for r in (line.split(",") for line in path.read_text().splitlines())]


def outcome(run: Path) -> dict:
    return {
        "summary": summary_of(run),
        "metrics": read_metrics(run),
        "alpha": step_rows(run, "alpha.csv"),
        "scalars": step_rows(run, "scalars.csv"),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: one uninterrupted run per method (and per length), computed once."""
    done: dict[tuple[str, int], dict] = {}

    def get(method: str, epochs: int = EPOCHS) -> dict:
        if (method, epochs) not in done:
            run = tmp_path_factory.mktemp("full") / f"{method}-{epochs}"
            assert main(train_argv(run, method, epochs)) == 0
            done[method, epochs] = outcome(run)
        return done[method, epochs]

    return get


def assert_only_whole_files(run: Path, torn_tail_ok: bool = False) -> list[str]:
    """What a killed run leaves: whole files, plus .*.tmp leftovers and the stale .lock (returned)."""
    leftovers = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        name = path.name
        if TMP.match(name) or name == ".lock":
            leftovers.append(str(path.relative_to(run)))
        elif path.suffix == ".pt":
            load_checkpoint(path)  # raises on a checksum mismatch or a truncated file
        elif name in ("summary.json", "splits.json"):
            json.loads(path.read_text())
        elif name == "config.yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict)
        elif name in ("metrics.jsonl", "alpha.csv", "scalars.csv"):
            lines = path.read_text().splitlines()
            if torn_tail_ok and lines and not path.read_text().endswith("\n"):
                lines = lines[:-1]  # an append cut short by the kill: cut back on resume
            for line in lines:
                if name == "metrics.jsonl":
                    json.loads(line)
                else:
                    assert line.count(",") == (3 if name == "alpha.csv" else 4), line
        else:
            pytest.fail(f"unexpected file in the run folder: {path}")
    return leftovers


def resume_and_compare(cli_main, run: Path, expected: dict, epochs: int = EPOCHS) -> None:
    assert cli_main(["train", "--resume", "--out", str(run), "--epochs", str(epochs), "--quiet"]) == 0
    assert not [p for p in run.rglob("*") if TMP.match(p.name)], "temp files left after the resume"
    assert not (run / ".lock").exists()
    got = outcome(run)
    assert got["summary"] == expected["summary"]
    assert got["metrics"] == expected["metrics"]
    assert got["alpha"] == expected["alpha"]
    assert got["scalars"] == expected["scalars"]


def killed_at(run: Path, method: str, fault: str) -> tuple[str, list[str]]:
    result = subprocess.run(command(train_argv(run, method)), cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "MODGAP_FAULT": fault})
    assert result.returncode == -signal.SIGKILL, result.stderr
    point, count = fault.split(":")[:2]
    assert f"fault injected: kill at {point} #{count}" in result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr, assert_only_whole_files(run)


# The three kill points of every method: mid-epoch (the 30th step: epoch 1 of 4), mid-evaluation (the
# 5th evaluation: val of epoch 2), mid-checkpoint-write (the 4th .pt file, temp written, not renamed).
CORE = ["train_step:30", "evaluate:5", "checkpoint_write:4"]


@pytest.mark.parametrize("fault", CORE)
@pytest.mark.parametrize("method", list(METHODS))
def test_kill_then_resume_equals_uninterrupted(tmp_path, method, fault, uninterrupted):
    run = tmp_path / "r"
    _, leftovers = killed_at(run, method, fault)
    assert ".lock" in leftovers  # the killed process's; taken over by the resume
    assert not (run / "summary.json").exists()
    if fault.startswith("checkpoint_write"):  # the 4th .pt write is epoch 1's last.pt: the worst moment,
        assert any(p.startswith("checkpoints/.last.pt.") for p in leftovers), leftovers  # last.pt rotated away
        assert not (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "last.prev.pt").exists()
    resume_and_compare(main, run, uninterrupted(method))


@pytest.mark.parametrize("method, fault, why", [
    ("lfm-lb", "checkpoint_write:1", "before the first checkpoint: the resume starts over"),
    ("joint", "metrics_append:2", "epoch 1's record on disk, its checkpoint not: cut back and replayed"),
    # file writes: config.yaml, splits.json, the scalars.csv header, then summary.json
    ("joint", "file_write:4", "summary.json half-written (temp file): recomputed from best.pt"),
    ("lfm-lb", f"evaluate:{2 * EPOCHS + 1}", "during the final evaluation, after the last checkpoint"),
])
def test_kill_at_the_other_points(tmp_path, method, fault, why, uninterrupted):
    run = tmp_path / "r"
    _, leftovers = killed_at(run, method, fault)
    if fault == "checkpoint_write:1":
        assert not list((run / "checkpoints").glob("*.pt"))
    if fault.startswith("metrics_append"):
        assert len(read_metrics(run)) == 2 and not (run / "checkpoints" / "last.prev.pt").exists()
    if fault.startswith("file_write"):
        assert any(p.startswith(".summary.json.") for p in leftovers), leftovers
        assert not (run / "summary.json").exists()
    if fault.startswith("evaluate"):
        assert len(read_metrics(run)) == EPOCHS
    resume_and_compare(main, run, uninterrupted(method))


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def wait_for_epoch(run: Path, proc: subprocess.Popen, logged: int, deadline_s: float = 180) -> None:
    """Until the process has logged one more epoch than ``logged`` (it is past start-up, mid-run)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None and lines_in(run / "metrics.jsonl") <= logged:
        time.sleep(0.01)


def test_kill_from_outside_at_random_times_twice(tmp_path, uninterrupted):
    """SIGKILL from the parent at a random moment after an epoch is logged, resume in a subprocess, SIGKILL
    that one at a random moment after its first epoch too, then resume to the end: as if never killed."""
    epochs, rng = 12, random.Random(os.urandom(8))
    run = tmp_path / "r"
    argv = train_argv(run, "lfm-lb", epochs)
    kills = []
    for _ in range(2):
        logged = lines_in(run / "metrics.jsonl")
        proc = subprocess.Popen(command(argv), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_epoch(run, proc, logged)
            delay = rng.uniform(0.0, 0.4)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=120)
        kills.append({"delay_s": round(delay, 3), "exit": proc.returncode, "epochs_logged": lines_in(run / "metrics.jsonl")})
        assert "Traceback" not in err.decode(), err.decode()
        assert_only_whole_files(run, torn_tail_ok=True)
        argv = ["train", "--resume", "--out", str(run), "--epochs", str(epochs), "--quiet"]
    try:
        resume_and_compare(main, run, uninterrupted("lfm-lb", epochs), epochs)
    except AssertionError as exc:
        raise AssertionError(f"after kills {kills}: {exc}") from exc
    assert kills[0]["exit"] == -signal.SIGKILL, kills  # the first kill lands mid-run (12 epochs)
