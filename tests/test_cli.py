"""The `modgap` command: listing, one-line errors, the run folder contract of protocol.md."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from modgap.methods.schedules import matching_weight
from modgap.runs import read_scalars

from conftest import NO_PROBE, REPO, TINY, summary_of

STEPS_PER_EPOCH = 23  # mfeat: 1440 training rows in batches of 64
METRIC_KEYS = {"acc", "map", "f1"}


def folder_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modgap: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def alpha_rows(run: Path) -> list[dict]:
    with (run / "alpha.csv").open(newline="") as f:
        return [{"step": int(r["step"]), "epoch": int(r["epoch"]), "progress": float(r["progress"]),
                 "alpha": float(r["alpha"])} for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------ listing
def test_list_methods_subprocess():
    result = subprocess.run([sys.executable, "-m", "modgap", "list", "methods"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert {"joint", "lfm-h", "lfm-lb", "unimodal"} <= set(names)
    assert len(names) == len(set(names))
    assert all(len(line.split()) > 1 for line in lines)  # a description after the name


def test_list_in_process(cli):
    code, out, _ = cli("list", "schedules")
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()] == ["constant", "cosine", "exp", "linear", "paper", "poly"]
    code, out, _ = cli("list")
    assert code == 0
    for section in ("methods:", "datasets:", "schedules:", "matching:", "encoders:", "fusions:", "trackers:"):
        assert section in out.splitlines()
    assert "  mfeat" in out and "  infonce" in out and "  mlflow" in out


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["list", "--help"]])
def test_help(cli, capsys, argv):
    from modgap.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: modgap")
    if argv[0] == "train":
        assert "--resume" in out and "--set KEY=VALUE" in out and "examples:" in out
    if argv[0] == "list":
        assert "methods" in out


def test_version(capsys):
    from modgap import __version__
    from modgap.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


# ------------------------------------------------------------------------------------- errors
def test_unknown_method(cli, tmp_path):
    code, out, err = cli("train", "--method", "lfm-hh", "--out", str(tmp_path / "r"), "--quiet")
    assert_one_line_error(code, out, err, "unknown method 'lfm-hh'", "did you mean 'lfm-h'")
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.parametrize("argv, fragments", [
    (["--set", "optim.lrr=0.1"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
    (["--set", "trian.epochs=3"], ["unknown key 'trian'", "did you mean 'train'"]),
    (["--set", "optim.lr=abc"], ["optim.lr", "expected a number", "abc"]),
    (["--set", "train.epochs=2.5"], ["train.epochs", "integer"]),
    (["--set", "data.val_fraction=1.5"], ["data.val_fraction", "(0, 1)"]),
    (["--set", "optim.name=sdg"], ["optim.name", "did you mean 'sgd'"]),
    (["--set", "noequals"], ["key=value"]),
    (["--data", "mfet"], ["unknown dataset 'mfet'", "did you mean 'mfeat'"]),
    (["--data", "mfeat:pix+fuo"], ["'fuo'", "did you mean 'fou'"]),
    (["--method", "lfm-lb", "--set", "method.varient=official"], ["method.varient", "did you mean 'method.variant'"]),
    (["--method", "lfm-lb", "--set", "method.variant=oficial"], ["oficial", "did you mean 'official'"]),
    (["--method", "lfm-h", "--set", "method.schedule=cosin"], ["cosin", "did you mean 'cosine'"]),
    (["--method", "lfm-lb", "--set", "method.matching=infonse"], ["infonse", "did you mean 'infonce'"]),
    (["--resume"], ["--resume needs --out"]),
])
def test_config_errors(cli, tmp_path, argv, fragments):
    out_dir = tmp_path / "r"
    extra = [] if "--resume" in argv else ["--out", str(out_dir)]
    code, out, err = cli("train", "--epochs", "1", "--quiet", *extra, *argv)
    assert_one_line_error(code, out, err, *fragments)
    assert not (out_dir / "config.yaml").exists()


def test_resume_folder_without_run(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        code, out, err = cli("train", "--resume", "--out", str(folder), "--quiet")
        assert_one_line_error(code, out, err, str(folder))
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("change, fragment", [
    (["--method", "lfm-lb"], "method.name is 'lfm-lb' here but 'joint' in the run"),
    (["--seed", "4"], "train.seed is 4 here but 0 in the run"),
    (["--set", "optim.lr=0.2"], "optim.lr is 0.2 here but 0.01 in the run"),
    (["--data", "mfeat:fac+mor"], "data.modalities is ['fac', 'mor'] here but ['pix', 'fou'] in the run"),
])
def test_resume_refuses_a_setting_that_differs_naming_both_values(cli, tmp_path, change, fragment):
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", "--data", "mfeat:pix+fou", epochs=1)
    before = folder_digest(run)
    code, out, err = cli("train", "--resume", "--out", str(run), "--epochs", "2", *change)
    assert_one_line_error(code, out, err, fragment, "only --epochs and --set log.* may change")
    assert folder_digest(run) == before


def test_resume_may_change_log_settings(cli, tmp_path):
    """log.* changes no number: a resume may change it (tests/test_tracking.py turns a tracker on)."""
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", epochs=1)
    code, out, err = cli("train", "--resume", "--out", str(run), "--quiet", "--set", "log.experiment=x")
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["log"]["experiment"] == "x"
    code, out, err = cli("train", "--resume", "--out", str(run), "--set", "log.experment=x")
    assert_one_line_error(code, out, err, "did you mean 'log.experiment'")


TYPED = ["--method", "lfm-lb", "--seed", "3", "--data", "mfeat:pix+fou", "--set", "model.hidden=[16]",
         "--set", "model.feature_dim=8", "--set", "train.threads=1", "--set", "train.probe=false", "--quiet"]


def test_the_original_command_plus_resume_continues_the_run(cli, tmp_path, metrics_of):
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert cli("train", *TYPED, "--epochs", "3", "--out", str(full))[0] == 0
    assert cli("train", *TYPED, "--epochs", "2", "--out", str(parts))[0] == 0
    code, _, err = cli("train", *TYPED, "--epochs", "3", "--out", str(parts), "--resume")  # retyped, plus --resume
    assert code == 0, err
    assert metrics_of(parts) == metrics_of(full)
    assert summary_of(parts) == summary_of(full)


def test_resume_auto_starts_an_empty_folder_and_continues_a_partial_one(cli, tmp_path, metrics_of):
    full, auto = tmp_path / "full", tmp_path / "auto"
    assert cli("train", *TYPED, "--epochs", "3", "--out", str(full))[0] == 0
    for epochs in ("2", "3", "3"):  # the same job line at every (re)start: start, continue, nothing left to do
        code, _, err = cli("train", *TYPED, "--epochs", epochs, "--out", str(auto), "--resume", "auto")
        assert code == 0, err
    assert metrics_of(auto) == metrics_of(full)
    assert summary_of(auto) == summary_of(full)
    code, out, err = cli("train", "--out", str(tmp_path / "none"), "--resume")  # plain --resume: nothing there
    assert_one_line_error(code, out, err, "nothing to resume", "--resume auto")


def test_second_train_into_run_folder_is_refused(cli, tmp_path):
    run = tmp_path / "r"
    cli.train(run, "--method", "lfm-lb", epochs=1)
    before = folder_digest(run)
    assert "summary.json" in before and "checkpoints/last.pt" in before
    code, out, err = cli("train", "--epochs", "2", "--out", str(run), "--quiet", "--method", "joint",
                         "--set", "model.hidden=[16]", "--set", "model.feature_dim=8")
    assert_one_line_error(code, out, err, str(run), "--resume")
    assert folder_digest(run) == before  # byte-identical, no lock left behind
    assert not (run / ".lock").exists()


# ------------------------------------------------------------------------------ the run folder
def check_metric_block(block: dict, modalities: list[str]) -> None:
    assert set(block) == {"fused", *modalities}
    for values in block.values():
        assert set(values) == METRIC_KEYS
        assert all(0.0 <= v <= 1.0 for v in values.values())


def test_run_folder_contract(cli, tmp_path):
    run = tmp_path / "r"
    epochs = 4
    summary = cli.train(run, "--method", "lfm-lb", "--set", "optim.lr=0.05", epochs=epochs, probe=True)
    mods = ["pix", "fou"]
    # config.yaml: the full resolved configuration + version + split checksum
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert {"data", "model", "optim", "train", "method", "version", "split_checksum"} <= set(config)
    assert config["train"]["epochs"] == epochs and config["method"]["name"] == "lfm-lb"
    assert config["model"]["hidden"] == [16] and config["optim"]["lr"] == 0.05
    # splits.json: ids per split, with the same checksum
    splits = json.loads((run / "splits.json").read_text())
    assert splits["checksum"] == config["split_checksum"] == summary["split_checksum"]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1440, 160, 400]
    assert len(set(splits["train"]) | set(splits["val"]) | set(splits["test"])) == 2000
    # metrics.jsonl: one record per epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(epochs))
    for r in records:
        assert {"epoch", "lr", "alpha", "train", "val", "test"} <= set(r)
        assert set(r["train"]) == {"cls", "match", "total"}
        assert r["lr"] == pytest.approx(0.05)
        check_metric_block(r["val"], mods)
        check_metric_block(r["test"], mods)
    # alpha.csv: one row per optimiser step, the per-epoch alpha equal to the last step's
    rows = alpha_rows(run)
    total = epochs * STEPS_PER_EPOCH
    assert [row["step"] for row in rows] == list(range(1, total + 1))
    assert [row["epoch"] for row in rows] == [(s - 1) // STEPS_PER_EPOCH for s in range(1, total + 1)]
    for row in rows:
        assert row["progress"] == pytest.approx(row["step"] / total, abs=1e-6)
    for r in records:
        assert r["alpha"] == pytest.approx(rows[(r["epoch"] + 1) * STEPS_PER_EPOCH - 1]["alpha"], rel=1e-6)
    # scalars.csv: every step's loss terms (their batch-weighted epoch means are metrics.jsonl's) and alpha
    series = read_scalars(run)
    assert set(series) == {"alpha", "loss/cls", "loss/match", "loss/total"}
    assert series["alpha"]["value"] == pytest.approx([row["alpha"] for row in rows], rel=1e-7)
    sizes = np.array([64] * (STEPS_PER_EPOCH - 1) + [1440 - 64 * (STEPS_PER_EPOCH - 1)], dtype=float)
    for r in records:
        for term in ("cls", "match", "total"):
            values = np.array(series[f"loss/{term}"]["value"][r["epoch"] * STEPS_PER_EPOCH:][:STEPS_PER_EPOCH])
            assert float(values @ sizes / sizes.sum()) == pytest.approx(r["train"][term], rel=1e-5)
    # summary.json: the keys of protocol.md
    assert {"dataset", "modalities", "method", "seed", "best_epoch", "test", "test_last", "val", "probe",
            "gap", "wall_s", "epochs"} <= set(summary)
    assert summary["dataset"] == "mfeat" and summary["modalities"] == mods
    assert summary["method"] == "lfm-lb" and summary["seed"] == 0 and summary["epochs"] == epochs
    for key in ("test", "test_last", "val"):
        check_metric_block(summary[key], mods)
    assert set(summary["probe"]) == set(mods) and all(0 <= v <= 1 for v in summary["probe"].values())
    assert set(summary["gap"]["logits"]) == {"pix-fou"}
    assert set(summary["gap"]["logits"]["pix-fou"]) == {"centroid", "paired"}
    assert summary["wall_s"] >= 0
    # model selection on validation, first epoch on ties
    val_acc = [r["val"]["fused"]["acc"] for r in records]
    best = val_acc.index(max(val_acc))
    assert summary["best_epoch"] == best
    assert summary["test"] == records[best]["test"]
    assert summary["val"] == records[best]["val"]
    assert summary["test_last"] == records[-1]["test"]
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert not (run / ".lock").exists()


def test_stdout_summary_table(cli, tmp_path):
    code, out, err = cli("train", "--epochs", "1", "--out", str(tmp_path / "r"), "--method", "joint",
                         "--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--quiet",
                         "--set", "train.probe=false")
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert out.startswith("joint on mfeat (pix+fou), seed 0")
    assert f"{summary['test']['fused']['acc']:9.3f}" in out


def test_set_accepts_exponent_numbers_and_yaml_config(cli, tmp_path):
    """1e-4 has no dot, so YAML 1.1 reads it as a string: it must still be taken as a number,
    on the command line and in a --config file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 2e-3\n  weight_decay: 0\nmethod:\n  name: lfm-lb\n  lr_alpha: 5e-1\n")
    run = tmp_path / "r"
    cli.train(run, "--config", str(cfg), "--set", "optim.momentum=5e-1", epochs=1)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optim"]["lr"] == pytest.approx(2e-3) and config["optim"]["momentum"] == pytest.approx(0.5)
    assert config["optim"]["weight_decay"] == 0.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == pytest.approx(2e-3)
    code, out, err = cli("train", "--out", str(tmp_path / "bad"), "--set", "optim.lr=1e-4x")
    assert_one_line_error(code, out, err, "optim.lr", "expected a number")
    code, out, err = cli("train", "--out", str(tmp_path / "bad"), "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, out, err, "nope.yaml", "not found")


def test_best_epoch_first_on_ties(cli, tmp_path):
    # lr so small that nothing changes: every epoch has the same val accuracy
    run = tmp_path / "r"
    summary = cli.train(run, "--method", "joint", "--set", "optim.lr=1e-12", epochs=3)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len({r["val"]["fused"]["acc"] for r in records}) == 1
    assert summary["best_epoch"] == 0


def test_still_improving_run_says_so(cli, tmp_path):
    """Two epochs of the tiny model at lr 0.01 are far from its plateau: the second epoch beats the first."""
    code, out, err = cli("train", "--epochs", "2", "--out", str(tmp_path / "r"), "--method", "joint",
                         "--set", "optim.lr=0.01", *TINY, *NO_PROBE)
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["val"]["fused"]["acc"] > records[0]["val"]["fused"]["acc"]
    assert summary["still_improving"] is True and summary["best_epoch"] == 1
    assert summary["still_improving_detail"] == {"best_epoch": 1, "epochs": 2, "window": 2,
                                                 "best_val": records[1]["val"]["fused"]["acc"],
                                                 "best_before_window": None}
    assert out.splitlines()[-1] == ("note: validation accuracy was still improving at the last epoch "
                                    "(best at epoch 1 of 2); more epochs may help (--epochs N)")
    assert summary["warnings"] == [] and "warning" not in err  # mfeat has no images to upscale


def test_plateaued_run_has_no_note(cli, tmp_path):
    # nothing changes at this lr: every epoch ties with the first, the best
    code, out, err = cli("train", "--epochs", "3", "--out", str(tmp_path / "r"), "--method", "joint",
                         "--set", "optim.lr=1e-12", *TINY, *NO_PROBE)
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best_epoch"] == 0 and summary["still_improving"] is False
    assert "note:" not in out and "still improving" not in out


METHOD_RUNS = [
    ("joint", []),
    ("unimodal", []),
    ("lfm-h", []),
    ("lfm-lb", []),
    ("lfm-lb", ["method.matching=infonce"]),
    ("lfm-lb", ["method.variant=official"]),
    ("lfm-lb", ["method.parametrization=sigmoid", "method.lr_alpha=50", "method.every=1"]),
    ("lfm-lb", ["method.lr_alpha=1000", "method.every=1", "method.alpha0=0.3",
                "method.alpha_min=0.2", "method.alpha_max=0.7"]),
]


@pytest.mark.parametrize("method, sets", METHOD_RUNS, ids=lambda v: v if isinstance(v, str) else "+".join(v) or "default")
def test_methods_complete(cli, tmp_path, method, sets):
    run = tmp_path / "r"
    extra = [a for s in sets for a in ("--set", s)]
    summary = cli.train(run, "--method", method, *extra)
    assert summary["method"] == method and summary["epochs"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(math.isfinite(v) for r in records for v in r["train"].values())
    if method in ("joint", "unimodal"):
        assert not (run / "alpha.csv").exists()
        assert all(r["alpha"] is None for r in records)
        if method == "unimodal":
            assert set(records[0]["train"]) == {"cls_pix", "cls_fou", "total"}
        return
    rows = alpha_rows(run)
    assert len(rows) == 2 * STEPS_PER_EPOCH
    options = dict(s.split("=", 1) for s in sets)
    alphas = [r["alpha"] for r in rows]
    if method == "lfm-h":
        assert alphas == pytest.approx([1 - matching_weight("paper", r["epoch"], 2) for r in rows], abs=1e-7)
    elif options.get("method.variant") == "official":
        assert all(0.05 - 1e-9 <= a <= 0.95 + 1e-9 for a in alphas)
        assert alphas[0] == pytest.approx(0.05, abs=1e-3)  # w starts at 0.95, one small step before epoch 0
        assert len(set(alphas[:STEPS_PER_EPOCH])) == 1 and len(set(alphas[STEPS_PER_EPOCH:])) == 1  # epoch starts only
    else:
        lo, hi = float(options.get("method.alpha_min", 0.05)), float(options.get("method.alpha_max", 1.0))
        assert all(lo - 1e-9 <= a <= hi + 1e-9 for a in alphas), (min(alphas), max(alphas))
        if "method.lr_alpha" in options:
            assert len(set(alphas)) > 1  # alpha is learned, not stuck
        if "method.alpha_min" in options:
            assert min(alphas) == pytest.approx(lo) or max(alphas) == pytest.approx(hi)
    if options.get("method.matching") == "infonce":
        assert set(summary["gap"]["projection"]) == {"pix-fou"}


@pytest.mark.parametrize("schedule", ["paper", "exp", "poly", "linear", "cosine", "constant"])
def test_lfm_h_every_schedule(cli, tmp_path, schedule):
    run = tmp_path / "r"
    cli.train(run, "--method", "lfm-h", "--set", f"method.schedule={schedule}",
              "--set", "method.w0=0.8", "--set", "method.w1=0.1", epochs=3)
    rows = alpha_rows(run)
    assert len(rows) == 3 * STEPS_PER_EPOCH
    expected = [1 - matching_weight(schedule, r["epoch"], 3, 0.8, 0.1) for r in rows]
    assert [r["alpha"] for r in rows] == pytest.approx(expected, abs=1e-7)
    assert all(0.0 <= r["alpha"] <= 1.0 for r in rows)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["alpha"] for r in records] == pytest.approx(
        [1 - matching_weight(schedule, e, 3, 0.8, 0.1) for e in range(3)], abs=1e-12)


@pytest.mark.parametrize("matching", ["js", "infonce"])
def test_three_modalities(cli, tmp_path, matching):
    run = tmp_path / "r"
    summary = cli.train(run, "--data", "mfeat:pix+fou+mor", "--method", "lfm-lb",
                        "--set", f"method.matching={matching}", "--set", "method.every=1")
    mods = ["pix", "fou", "mor"]
    assert summary["modalities"] == mods
    check_metric_block(summary["test"], mods)
    assert set(summary["gap"]["logits"]) == {"pix-fou", "pix-mor", "fou-mor"}
    if matching == "infonce":
        assert set(summary["gap"]["projection"]) == {"pix-fou", "pix-mor", "fou-mor"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train"]["match"] > 0 for r in records)
    assert len(alpha_rows(run)) == 2 * STEPS_PER_EPOCH


def test_train_on_feature_tables(cli, tmp_path):
    import numpy as np

    root = tmp_path / "tables"
    root.mkdir()
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    (root / "labels.csv").write_text("id,label\n" + "".join(f"r{i},c{c}\n" for i, c in enumerate(y)))
    np.save(root / "x.npy", rng.normal(size=(90, 4)) + y[:, None])
    (root / "z.csv").write_text("id,u,v\n" + "".join(f"r{i},{rng.normal() + c},{rng.normal()}\n" for i, c in enumerate(y)))
    summary = cli.train(tmp_path / "r", "--data", f"tables:{root}", "--method", "lfm-h", "--set", "data.batch_size=16")
    assert summary["dataset"] == "tables:tables" and summary["modalities"] == ["x", "z"]
    assert len(alpha_rows(tmp_path / "r")) == 2 * math.ceil(len(json.loads((tmp_path / "r" / "splits.json").read_text())["train"]) / 16)


def test_mapping_settings_merge_across_layers():
    from modgap.config import make_config

    config = make_config(overrides={"data": {"name": "synth-av", "options": {"n": 6, "size": 32}}},
                         assignments=["data.options.frames=2", "model.encoders.audio=mlp"])
    assert config.data.options == {"n": 6, "size": 32, "frames": 2}
    assert config.model.encoders == {"audio": "mlp"}
    other = make_config(overrides={"method": {"name": "lfm-lb", "every": 5}}, assignments=["method.name=joint"])
    assert other.method == {"name": "joint"}
