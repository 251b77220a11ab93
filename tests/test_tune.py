"""`modgap tune`: a real Optuna study in SQLite, continued by a second command, shared by processes,
robust to a killed trial, pruning a planted bad trial, and refusing a bad search space in one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from modgap.tune import Param, TuneSpec, load_spec, open_study, parse_space, run_trials

from conftest import NO_PROBE, REPO, TINY

SPACE = ["--space", "method.w0=uniform(0.1,0.9)", "--space", "optim.lr=loguniform(1e-3,1e-1)"]
BASE = ["--data", "mfeat:pix+fou", "--method", "lfm-h", "--set", "method.schedule=constant", "--epochs", "2"]


def tune_argv(out: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", *BASE, *SPACE, "--trials", str(trials), "--out", str(out), "--sampler-seed", "0",
            *TINY, *NO_PROBE, *extra]


def trials_of(out: Path) -> list[optuna.trial.FrozenTrial]:
    return open_study(load_spec(out)).get_trials(deepcopy=False)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_in_sqlite_its_best_yaml_trains_and_the_same_command_adds_trials(cli, tmp_path):
    out = tmp_path / "t"
    code, stdout, err = cli(*tune_argv(out, 4, "--final-seeds", "0"))
    assert code == 0, err
    assert (out / "study.db").exists() and json.loads((out / "tune.json").read_text())["storage"].startswith("sqlite:")
    trials = trials_of(out)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in trials:  # each trial is an ordinary run folder with the sampled values in its config
        config = yaml.safe_load((out / "trials" / f"{t.number:04d}-s0" / "config.yaml").read_text())
        assert config["method"]["w0"] == t.params["method.w0"] and config["optim"]["lr"] == t.params["optim.lr"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value)
    summary = json.loads((out / "trials" / f"{best.number:04d}-s0" / "summary.json").read_text())
    assert best.value == summary["val"]["fused"]["acc"]  # the objective is validation, never test
    # best.yaml is a config `modgap train --config` runs, with the best trial's values
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    assert best_yaml["method"]["w0"] == best.params["method.w0"] and best_yaml["optim"]["lr"] == best.params["optim.lr"]
    summary = cli.train(tmp_path / "again", "--config", str(out / "best.yaml"))
    assert summary["val"] == json.loads((out / "trials" / f"{best.number:04d}-s0" / "summary.json").read_text())["val"]
    # the final run of the best configuration is the only place the test split is read
    final = out / "final" / f"trial-{best.number:04d}" / "s0" / "summary.json"
    assert final.exists() and f"| {best.number} ★ |" in stdout
    rows = read_csv(out / "trials.csv")
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3] and set(json.loads((out / "importance.json").read_text()))
    # the same command again: two more trials in the same study, numbered on
    code, _, err = cli(*tune_argv(out, 2, "--final-seeds", "0"))
    assert code == 0, err
    assert [t.number for t in trials_of(out)] == [0, 1, 2, 3, 4, 5]
    assert len(read_csv(out / "trials.csv")) == 6
    # modgap report on the tune folder: history, slices and importance drawn from trials.csv
    code, _, err = cli("report", str(out))
    assert code == 0, err
    history = json.loads((out / "report" / "tune_history.plot.json").read_text())
    lines = {line["gid"]: line for ax in history["axes"] for line in ax["lines"]}
    rows = read_csv(out / "trials.csv")
    done = [r for r in rows if r["state"] == "complete"]
    assert lines["trials::complete"]["x"] == [int(r["number"]) for r in done]
    assert lines["trials::complete"]["y"] == pytest.approx([float(r["value"]) for r in done])
    assert max(lines["trials::best_so_far"]["y"]) == pytest.approx(max(float(r["value"]) for r in done))
    assert (out / "report" / "tune_importance.png").exists() and (out / "report" / "tune_slices.png").exists()
    assert "best configuration on test" in (out / "report" / "report.html").read_text()


def test_two_processes_share_one_study_without_repeating_a_trial(cli, tmp_path):
    out = tmp_path / "t"
    code, _, err = cli(*tune_argv(out, 6, "--jobs", "2", "--final-seeds", ""))
    assert code == 0, err
    trials = trials_of(out)
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert (out / "worker1.log").exists()  # the second process ran a share
    folders = sorted(p.name for p in (out / "trials").iterdir())
    assert folders == [f"{n:04d}-s0" for n in range(6)]  # one run folder per trial, none trained twice
    assert not (out / "final").exists()


def test_a_killed_trial_is_failed_and_rerun_never_counted_as_finished(tmp_path):
    out = tmp_path / "t"
    argv = [sys.executable, "-m", "modgap", *tune_argv(out, 3, "--final-seeds", "", "--heartbeat", "1")]
    # 2 epochs x 23 steps a trial: the 60th step is in the middle of the second trial
    killed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MODGAP_FAULT": "train_step:60"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [t.state.name for t in trials_of(out)] == ["COMPLETE", "RUNNING"]
    time.sleep(4)  # past the grace period (3 heartbeats) of the dead trial
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = trials_of(out)
    assert trials[1].state.name == "FAIL"  # the killed one: failed, not finished
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == trials[1].params  # re-run with the same values
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 1 + 3 and all(t.number != 1 for t in finished)


def test_pruning_stops_a_planted_bad_learning_rate(tmp_path):
    spec = TuneSpec(out=str(tmp_path / "t"), space=parse_space(["optim.lr=loguniform(1e-7,1e-1)"]),
                    data="mfeat:pix+fou", method="joint", epochs=4, sets=["model.hidden=[16]",
                    "model.feature_dim=8", "train.threads=1", "train.probe=false"], final_seeds=[])
    Path(spec.out).mkdir()
    study = open_study(spec)
    for lr in (0.05, 0.04, 0.06, 1e-7):  # three good trials, then one that cannot learn in 4 epochs
        study.enqueue_trial({"optim.lr": lr})
    run_trials(spec, 4, None, progress=False)
    trials = open_study(spec).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    bad = trials[3]
    assert bad.user_attrs["pruned_epoch"] == 1 and max(bad.intermediate_values) == 1  # stopped after epoch 1
    metrics = (Path(spec.out) / "trials" / "0003-s0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and not (Path(spec.out) / "trials" / "0003-s0" / "summary.json").exists()


@pytest.mark.parametrize("space, message", [
    ("optim.lrr=loguniform(1e-3,1e-1)", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("method.w00=uniform(0.1,0.9)", "unknown key 'method.w00' (did you mean 'method.w0'?)"),
    ("method.w0=unifrm(0.1,0.9)", "unknown distribution 'unifrm' for method.w0 (did you mean 'uniform'?)"),
    ("method.w0=uniform(0.9,0.1)", "low must be below high"),
    ("optim.lr=loguniform(0,1)", "a log scale needs low > 0"),
    ("optim.name=choice(sgd,adamm)", "unknown optim.name 'adamm' (did you mean 'adam'?)"),
    ("method.schedule=uniform(0,1)", "method.schedule"),
    ("optim.lr", "neither KEY=KIND(ARGS) nor a YAML file"),
])
def test_a_bad_space_is_one_line_before_any_trial(cli, tmp_path, space, message):
    out = tmp_path / "t"
    code, _, err = cli("tune", *BASE, "--space", space, "--out", str(out), *TINY)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_searched_key_also_fixed_is_refused(cli, tmp_path):
    code, _, err = cli("tune", *BASE, "--space", "method.w0=uniform(0.1,0.9)", "--set", "method.w0=0.5",
                       "--out", str(tmp_path / "t"))
    assert code == 2 and "also fixed by --set method.w0" in err


def test_space_from_yaml_with_sections_and_lists(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim:\n  lr: loguniform(1e-4, 1e-1)\nmethod:\n  schedule: [paper, exp, cosine]\n"
                    "  w0: uniform(0.05, 0.95)\nmodel.hidden_layers: int(1, 3)\n")
    space = parse_space([str(path)])
    assert space == {
        "optim.lr": Param("optim.lr", "loguniform", (1e-4, 1e-1)),
        "method.schedule": Param("method.schedule", "choice", ("paper", "exp", "cosine")),
        "method.w0": Param("method.w0", "uniform", (0.05, 0.95)),
        "model.hidden_layers": Param("model.hidden_layers", "int", (1, 3)),
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: gaussian(0, 1)\n")
    with pytest.raises(Exception, match=f"{bad}: unknown distribution 'gaussian' for optim.lr"):
        parse_space([str(bad)])


def test_another_search_in_the_same_study_is_refused(cli, tmp_path):
    out = tmp_path / "t"
    assert cli(*tune_argv(out, 1, "--final-seeds", ""))[0] == 0
    code, _, err = cli("tune", *BASE, "--space", "method.w0=uniform(0.2,0.8)", "--trials", "1", "--out", str(out),
                       *TINY, *NO_PROBE)
    assert code == 2 and "started with other settings (space differ)" in err


def test_every_trial_and_final_run_is_tracked(cli, tmp_path):
    out = tmp_path / "t"
    code, _, err = cli(*tune_argv(out, 2, "--final-seeds", "0", "--set", "log.backends=[tensorboard]"))
    assert code == 0, err
    runs = [*(out / "trials").iterdir(), *(out / "final").glob("trial-*/s0")]
    assert len(runs) == 3
    for run in runs:
        assert list((run / "tensorboard").glob("events.out.tfevents.*")), run
