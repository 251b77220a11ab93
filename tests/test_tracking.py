"""Trackers (log.backends): TensorBoard and MLflow hold what the run folder holds, a resume continues
the same runs with no step missing or doubled, and a bad name or a missing package is one line."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from modgap.config import make_config
from modgap.errors import ConfigError
from modgap.runs import read_scalars

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

STEPS_PER_EPOCH = 23  # mfeat: 1440 training rows in batches of 64
BOTH = ("--set", "log.backends=[tensorboard,mlflow]")
TIMING = {"epoch_s"}


@pytest.fixture(autouse=True)
def no_tracking_server(monkeypatch):
    """The local default store, whatever the environment says."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_store(_empty_store):
    """new_store(path): an MLflow SQLite store with its tables made, at ``path`` (MLflow's own table
    creation takes seconds for each new store)."""

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store, path)
        return path

    return make


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def expected_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What each name should hold, read from the run folder: scalars.csv's rows as step/<name> at
    their step, each metrics.jsonl record flattened at the step that ended its epoch."""
    series = {f"step/{name}": list(zip(map(int, cols["step"]), cols["value"])) for name, cols in read_scalars(run).items()}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in flatten(record).items():
            series.setdefault(key, []).append(((record["epoch"] + 1) * STEPS_PER_EPOCH, value))
    return series


def tensorboard_series(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def mlflow_run(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("modgap").experiment_id])
    return client, runs


def mlflow_series(client, run_id: str, keys) -> dict[str, list[tuple[int, float]]]:
    """Each key's points by step (MLflow orders them by time; a doubled step stays doubled)."""
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def assert_same_series(got: dict, want: dict, skip=TIMING) -> None:
    assert set(got) == set(want)
    for key in want:
        if key in skip:
            continue
        steps = [s for s, _ in got[key]]
        assert steps == sorted(set(steps)), f"{key}: steps not strictly increasing: {steps}"
        assert steps == [s for s, _ in want[key]], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in want[key]], rel=1e-6, abs=1e-7), key


def store(run: Path) -> str:
    return json.loads((run / "tracking.json").read_text())["mlflow"]["tracking_uri"]


# ------------------------------------------------------------------------------ each backend
def test_tensorboard_holds_the_run_folder_and_the_hyperparameters(cli, tmp_path):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = tmp_path / "r"
    cli.train(run, "--method", "lfm-lb", "--set", "log.backends=[tensorboard]", epochs=3)
    got, acc = tensorboard_series(run)
    want = expected_series(run)
    assert_same_series(got, want)
    ends = [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, values in (
        ("val/fused/acc", [r["val"]["fused"]["acc"] for r in records]),
        ("test/pix/acc", [r["test"]["pix"]["acc"] for r in records]),
        ("train/total", [r["train"]["total"] for r in records]),
        ("epoch", [0, 1, 2]),
    ):
        assert [s for s, _ in got[key]] == ends, key
        assert [v for _, v in got[key]] == pytest.approx(values, rel=1e-6), key
    alpha = read_scalars(run)["alpha"]
    assert [s for s, _ in got["step/alpha"]] == list(range(1, 3 * STEPS_PER_EPOCH + 1)) == alpha["step"]
    assert [v for _, v in got["step/alpha"]] == pytest.approx(alpha["value"], rel=1e-6)
    assert [v for _, v in got["step/loss/cls"]] == pytest.approx(read_scalars(run)["loss/cls"]["value"], rel=1e-6)
    # the configuration through the HPARAMS plugin, in this same run (no second run folder)
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    hparams = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["method.name"].string_value == "lfm-lb" and hparams["optim.lr"].number_value == 0.01
    assert "config/text_summary" in acc.Tags()["tensors"]  # the config YAML as text
    assert {p.parent for p in run.rglob("events.out.tfevents.*")} == {run / "tensorboard"}
    assert json.loads((run / "tracking.json").read_text()) == {"tensorboard": {"last_step": 3 * STEPS_PER_EPOCH}}


def test_mlflow_holds_the_run_folder_params_and_artifacts(cli, tmp_path, new_store):
    run, db = tmp_path / "r", new_store(tmp_path / "store" / "m.db")
    uri = f"sqlite:///{db}"
    cli.train(run, "--method", "lfm-lb", "--set", "log.backends=[mlflow]", "--set", f"log.mlflow_uri={uri}", epochs=3)
    client, runs = mlflow_run(uri)
    assert len(runs) == 1
    found = runs[0]
    assert found.info.status == "FINISHED" and found.info.run_name == "r"
    params = found.data.params
    assert params["method.name"] == "lfm-lb" and float(params["optim.lr"]) == 0.01
    assert params["train.epochs"] == "3" and params["log.backends"] == '["mlflow"]'
    tags = found.data.tags
    assert tags["modgap.method"] == "lfm-lb" and tags["modgap.dataset"] == "mfeat" and tags["modgap.seed"] == "0"
    assert tags["modgap.run_folder"] == str(run.resolve())
    want = expected_series(run)
    assert set(found.data.metrics) == set(want)
    assert_same_series(mlflow_series(client, found.info.run_id, want), want)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "config.yaml", "report"} <= artifacts
    assert "report/report.html" in {a.path for a in client.list_artifacts(found.info.run_id, "report")}
    assert (db.parent / "mlartifacts").is_dir()  # beside the SQLite store, not in the working folder
    summary = json.loads((run / "summary.json").read_text())
    local = client.download_artifacts(found.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == summary
    assert json.loads((run / "tracking.json").read_text())["mlflow"] == {
        "run_id": found.info.run_id, "tracking_uri": uri, "last_step": 3 * STEPS_PER_EPOCH}


# ------------------------------------------------------------------------------ resume
def test_resume_continues_the_same_runs_as_if_never_stopped(cli, tmp_path, new_store):
    full, parts = tmp_path / "a" / "r", tmp_path / "b" / "r"
    new_store(tmp_path / "a" / "mlflow.db"), new_store(tmp_path / "b" / "mlflow.db")
    cli.train(full, "--method", "lfm-lb", *BOTH, epochs=4)
    cli.train(parts, "--method", "lfm-lb", *BOTH, epochs=2)
    cli.resume(parts, epochs=4)  # log.backends comes back with the saved configuration
    assert store(parts) == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"  # the default: beside the run folder
    want = expected_series(full)
    assert_same_series(tensorboard_series(parts)[0], tensorboard_series(full)[0])
    assert_same_series(tensorboard_series(parts)[0], want)
    client, runs = mlflow_run(store(parts))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_same_series(mlflow_series(client, runs[0].info.run_id, want), want)
    assert {p.parent for p in parts.rglob("events.out.tfevents.*")} == {parts / "tensorboard"}


def test_a_crash_before_mirroring_is_filled_in_once_on_resume(cli, tmp_path, monkeypatch, new_store):
    """A run stopped after epoch 2's checkpoint, before MLflow got the epoch (the run is marked
    KILLED), and with TensorBoard's last mirrored step put back to epoch 1 as if it had crashed
    before recording it: the resume fills each in once."""
    from modgap import tracking

    full, crashed = tmp_path / "a" / "r", tmp_path / "b" / "r"
    new_store(tmp_path / "a" / "mlflow.db"), new_store(tmp_path / "b" / "mlflow.db")
    cli.train(full, "--method", "lfm-lb", *BOTH, epochs=4)
    original = tracking.MLflow.epoch_done

    def stop_at_second_epoch(self, log):
        if log.epoch == 1:
            raise KeyboardInterrupt
        original(self, log)

    monkeypatch.setattr(tracking.MLflow, "epoch_done", stop_at_second_epoch)
    code, _, err = cli("train", "--epochs", "4", "--out", str(crashed), "--method", "lfm-lb", *BOTH,
                       "--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--set", "train.threads=1",
                       "--set", "train.probe=false", "--quiet")
    assert code == 130, err
    monkeypatch.setattr(tracking.MLflow, "epoch_done", original)
    client, runs = mlflow_run(store(crashed))
    assert len(runs) == 1 and runs[0].info.status == "KILLED"  # Ctrl-C: stopped, not failed
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "val/fused/acc")] == [STEPS_PER_EPOCH]
    state = json.loads((crashed / "tracking.json").read_text())
    assert state["mlflow"]["last_step"] == STEPS_PER_EPOCH
    assert state["tensorboard"]["last_step"] == 2 * STEPS_PER_EPOCH
    state["tensorboard"]["last_step"] = STEPS_PER_EPOCH
    (crashed / "tracking.json").write_text(json.dumps(state))
    cli.resume(crashed, epochs=4)
    want = expected_series(full)
    assert_same_series(tensorboard_series(crashed)[0], want)
    client, runs = mlflow_run(store(crashed))
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert_same_series(mlflow_series(client, run_id, want), want)


def test_points_deleted_from_mlflow_are_logged_again_from_the_run_folder(cli, tmp_path, new_store):
    run = tmp_path / "r"
    new_store(tmp_path / "mlflow.db")
    cli.train(run, "--method", "joint", "--set", "log.backends=[mlflow]", epochs=2)
    client, runs = mlflow_run(store(run))
    run_id = runs[0].info.run_id
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # lose epoch 2 (as a crash before mirroring it would)
        db.execute("DELETE FROM metrics WHERE run_uuid = ? AND step > ?", (run_id, STEPS_PER_EPOCH))
    assert [m.step for m in client.get_metric_history(run_id, "val/fused/acc")] == [STEPS_PER_EPOCH]
    cli.resume(run, epochs=3)
    want = expected_series(run)
    assert_same_series(mlflow_series(client, run_id, want), want)


def test_tracking_can_be_turned_on_at_resume(cli, tmp_path):
    """log.* is the one section a resume may change (it changes no number): the trackers get the
    epochs trained before from the run folder."""
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", epochs=1)
    code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "2", "--quiet",
                       "--set", "log.backends=[tensorboard]")
    assert code == 0, err
    assert_same_series(tensorboard_series(run)[0], expected_series(run))
    assert "tensorboard" in (run / "config.yaml").read_text()


# ------------------------------------------------------------------------------ bad input
def test_log_section_from_flags_and_file(tmp_path):
    assert make_config().log.backends == ()
    config = make_config(assignments=["log.backends=[tensorboard,mlflow]", "log.experiment=x"])
    assert config.log.backends == ("tensorboard", "mlflow") and config.log.experiment == "x"
    path = tmp_path / "c.yaml"
    path.write_text("log: {backends: [mlflow], mlflow_uri: 'http://localhost:5000'}\n")
    assert make_config(path).log.mlflow_uri == "http://localhost:5000"
    with pytest.raises(ConfigError, match="did you mean 'log.backends'"):
        make_config(assignments=["log.backend=[mlflow]"])
    with pytest.raises(ConfigError, match="twice"):
        make_config(assignments=["log.backends=[mlflow,mlflow]"])


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2 and err.strip().splitlines() == [f"modgap: error: {fragment}"], err


def test_unknown_backend_is_one_line_with_the_closest_name(cli, tmp_path):
    import modgap

    code, out, err = cli("train", "--out", str(tmp_path / "r"), "--set", "log.backends=[tensorbord]")
    assert_one_line_error(code, err, "unknown log.backends entry 'tensorbord' (did you mean 'tensorboard'?)")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="did you mean 'mlflow'"):  # the Python entry point checks the same
        modgap.fit(make_config(assignments=["log.backends=[mlfow]"]), tmp_path / "f")


def test_missing_package_is_one_line_before_any_data_is_read(cli, tmp_path, monkeypatch):
    from modgap.train import assemble

    def no_data(*args):
        raise AssertionError("data was read")

    monkeypatch.setattr(assemble, "load_dataset", no_data)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    code, out, err = cli("train", "--out", str(tmp_path / "r"), "--set", "log.backends=[tensorboard,mlflow]")
    assert_one_line_error(
        code, err, "log.backends has 'mlflow' but mlflow is not installed (pip install 'modgap[mlflow]')"
    )
    assert not (tmp_path / "r").exists()


def test_a_run_stopped_mid_epoch_by_a_signal_resumes_into_the_same_runs(cli, tmp_path, monkeypatch, new_store):
    """Preemption checkpoints mid-epoch (train/preemption.py): the resume mirrors the partial epoch's
    steps once and every epoch at the step that ended it."""
    from modgap.train import trainer

    full, stopped = tmp_path / "a" / "r", tmp_path / "b" / "r"
    new_store(tmp_path / "a" / "mlflow.db"), new_store(tmp_path / "b" / "mlflow.db")
    cli.train(full, "--method", "lfm-lb", *BOTH, epochs=3)
    monkeypatch.setattr(trainer.Trainer, "_stop_requested", lambda self, signals: self.state.step == 23 + 9)
    code, _, err = cli("train", "--epochs", "3", "--out", str(stopped), "--method", "lfm-lb", *BOTH,
                       "--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--set", "train.threads=1",
                       "--set", "train.probe=false", "--quiet")
    assert code == 128 + 15 and "stopped at epoch 1, step 32" in err, err
    assert mlflow_run(store(stopped))[1][0].info.status == "KILLED"
    monkeypatch.undo()
    cli.resume(stopped, epochs=3)
    want = expected_series(full)
    assert_same_series(tensorboard_series(stopped)[0], want)
    client, runs = mlflow_run(store(stopped))
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_same_series(mlflow_series(client, runs[0].info.run_id, want), want)


def test_a_run_that_fails_is_marked_failed(cli, tmp_path, new_store):
    run = tmp_path / "r"
    new_store(tmp_path / "mlflow.db")
    code, _, err = cli("train", "--epochs", "2", "--out", str(run), "--method", "joint", *BOTH,
                       "--set", "optim.lr=1e30", "--set", "model.hidden=[16]", "--set", "train.probe=false", "--quiet")
    assert code == 2 and "non-finite" in err, err
    assert mlflow_run(store(run))[1][0].info.status == "FAILED"
