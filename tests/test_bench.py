"""`modgap bench`: the grid, skipping finished cells, resuming killed ones, and the tables."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from modgap.bench import parse_method, split_list
from modgap.cli import main
from modgap.errors import ConfigError
from modgap.report.tables import aggregate, markdown, ranks

TINY = ["--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--set", "train.probe=false"]


def test_split_and_parse_method_entries():
    assert split_list("joint,lfm-h[schedule=constant,w0=0.5],lfm-lb") == ["joint", "lfm-h[schedule=constant,w0=0.5]", "lfm-lb"]
    assert parse_method("lfm-h[schedule=constant,w0=0.5]") == ("lfm-h", {"schedule": "constant", "w0": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'joint'"):
        parse_method("jont")
    with pytest.raises(ConfigError, match="key=value"):
        parse_method("lfm-h[schedule]")


def test_bench_runs_grid_skips_finished_cells_and_writes_tables(tmp_path, capsys):
    out = tmp_path / "b"
    args = ["bench", "--methods", "unimodal,joint,lfm-h[schedule=exp]", "--data", "mfeat:pix+fou", "--seeds", "0,1",
            "--epochs", "2", "--out", str(out), "--quiet", "--jobs", "2", *TINY]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"unimodal", "joint", "lfm-h[schedule=exp]"}
    table = (out / "table.md").read_text()
    assert "**" in table and "<u>" in table and "mfeat:pix+fou" in table
    assert (out / "table.tex").read_text().count("\\\\") >= 4
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    victim = out / "mfeat-pix+fou__joint__s1" / "summary.json"
    victim.unlink()
    assert main(args) == 0
    for path, mtime in finished.items():
        if path != victim:
            assert path.stat().st_mtime_ns == mtime  # not rerun
    assert victim.exists()


def test_killed_bench_resumes_without_rerunning_finished_cells(tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "modgap", "bench", "--methods", "joint,lfm-lb", "--data", "mfeat", "--seeds", "0",
           "--epochs", "12", "--out", str(out), "--quiet", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*/summary.json")):
        time.sleep(0.2)
    import os
    os.killpg(proc.pid, signal.SIGKILL)  # the bench and the run it was in
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert len(done) == 1, "the kill should land while the second cell runs"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    for path, mtime in done.items():
        assert path.stat().st_mtime_ns == mtime
    assert len(list(out.glob("*/summary.json"))) == 2
    second = [p for p in out.glob("*/summary.json") if p not in done][0]
    assert json.loads(second.read_text())["epochs"] == 12


def test_collect_needs_runs_and_ranks_mark_best_and_second(tmp_path, capsys):
    assert main(["bench", "--collect", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    run = {"data_label": "d", "modalities": ["a", "b"], "seed": 0, "imbalance_test": 1.0,
           "test": {"fused": {"acc": 0.5, "map": 0.5, "f1": 0.5}, "a": {"acc": 0.6}, "b": {"acc": 0.4}}}
    runs = [{**run, "label": "unimodal"},
            {**run, "label": "x", "test": {**run["test"], "fused": {"acc": 0.7, "map": 0.7, "f1": 0.7}}},
            {**run, "label": "y", "test": {**run["test"], "fused": {"acc": 0.55, "map": 0.55, "f1": 0.55}}}]
    agg = aggregate(runs)
    assert ranks(agg["d"], "acc") == {"x": 1, "y": 2, "unimodal": 3}
    text = markdown(agg)
    assert "| y † |" in text and "| x |" in text  # y (55) is below the best unimodal modality (60)


def test_the_unimodal_reference_comes_from_the_method_classes():
    from modgap.methods.base import trains_unimodal_models
    from modgap.report.tables import best_unimodal

    assert trains_unimodal_models("unimodal") and trains_unimodal_models("ume[combine=probs]")
    assert not trains_unimodal_models("joint") and not trains_unimodal_models("unimodal+ogm-ge")
    assert not trains_unimodal_models("no-such-method")
    rows = {"joint": {"modalities": {"a": (0.9, 0.0), "b": (0.5, 0.0)}},
            "ume": {"modalities": {"a": (0.7, 0.0), "b": (0.6, 0.0)}},
            "unimodal[label_mix=0.1]": {"modalities": {"a": (0.8, 0.0), "b": (0.4, 0.0)}}}
    assert best_unimodal(rows) == 0.8  # joint's heads never count
    assert best_unimodal({"joint": rows["joint"]}) is None


def test_every_cell_of_a_bench_is_tracked(tmp_path, capsys):
    """--set log.* reaches every cell's run, a resumed one's too; a bad backend stops the bench before any cell."""
    pytest.importorskip("tensorboard")
    import shutil

    import yaml

    out = tmp_path / "b"
    args = ["bench", "--methods", "joint,unimodal", "--data", "mfeat:pix+fou", "--seeds", "0", "--epochs", "1",
            "--out", str(out), "--quiet", "--jobs", "2", *TINY]
    assert main([*args, "--set", "log.backends=[tensorbord]"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err and not list(out.glob("*/"))
    assert main([*args, "--set", "log.backends=[tensorboard]"]) == 0
    cells = sorted(p for p in out.iterdir() if (p / "config.yaml").exists())
    assert len(cells) == 2
    for cell in cells:
        assert list((cell / "tensorboard").glob("events.out.tfevents.*")), cell
    # a cell to resume that started without tracking: the bench's --set log.* turns it on
    cell = cells[0]
    (cell / "summary.json").unlink()
    shutil.rmtree(cell / "tensorboard")
    (cell / "tracking.json").unlink()
    config = yaml.safe_load((cell / "config.yaml").read_text())
    config["log"]["backends"] = []
    (cell / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main([*args, "--set", "log.backends=[tensorboard]"]) == 0
    assert list((cell / "tensorboard").glob("events.out.tfevents.*")) and (cell / "summary.json").exists()
