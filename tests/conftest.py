"""Shared helpers for the CPU tests: tiny training runs through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# A model small enough that a 2-epoch run on the bundled mfeat data takes a fraction of a second.
# One torch thread: faster than two on a small shared CPU, and the same in every run.
TINY = ["--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--set", "train.threads=1", "--quiet"]
NO_PROBE = ["--set", "train.probe=false"]
TIMING_KEYS = {"epoch_s", "wall_s"}


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


class Runner:
    """Calls modgap.cli.main in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        from modgap.cli import main

        self.capsys.readouterr()  # drop anything printed before
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def train(self, out: Path, *extra: str, epochs: int = 2, probe: bool = False) -> dict:
        """A tiny training run into ``out``; asserts success and returns summary.json."""
        argv = ["train", "--epochs", str(epochs), "--out", str(out), *TINY, *([] if probe else NO_PROBE), *extra]
        code, _, err = self(*argv)
        assert code == 0, err
        return json.loads((out / "summary.json").read_text())

    def resume(self, out: Path, epochs: int) -> dict:
        code, _, err = self("train", "--resume", "--out", str(out), "--epochs", str(epochs), "--quiet")
        assert code == 0, err
        return json.loads((out / "summary.json").read_text())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    return Runner(capsys)


def read_metrics(run: Path, strip_timing: bool = True) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [_strip_timing(r) for r in records] if strip_timing else records


@pytest.fixture
def metrics_of():
    return read_metrics
