"""Trackers: a run mirrored into TensorBoard or MLflow as it trains (``log.backends``, docs/tracking.md).

The run folder stays the record. A tracker is a RunObserver (train/observers.py): it is told only
what is already on disk, and it logs the same names in every backend:

    step/<name>     every optimiser step, at that step: the rows of scalars.csv (loss/<term>, alpha, k/<m>, ...)
    <record path>   every epoch, at the optimiser steps taken by its end: the metrics.jsonl record
                    flattened with '/' (epoch, lr, alpha, train/total, val/fused/acc, test/pix/f1,
                    imbalance_val, diagnostics/grad_norm/pix, scalars/alpha, ...)

tracking.json in the run folder holds MLflow's run id and tracking URI and, per backend, the last
optimiser step it mirrored. A resumed run continues the same TensorBoard run and the same MLflow
run: TensorBoard reopens its folder with ``purge_step`` just after its last mirrored step (its
reader then hides whatever was written after that point), MLflow is asked key by key for the last
step it holds; each then catches up from the run folder's files, so no step is missing or doubled.

A backend is a class registered in ``BACKENDS``; its package is imported only when a run uses it.
This module sits with report (it builds the report MLflow keeps): the CLI and ``modgap.fit`` hand
its trackers to the trainer, which knows them only as observers.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import yaml

from . import __version__
from .config import Config, LogConfig, flatten
from .errors import ConfigError, ModgapError
from .registry import Registry
from .runs import CONFIG_FILE, SUMMARY_FILE, TENSORBOARD_DIR, TRACKING_FILE, RunFolder, read_scalars
from .train import trainer
from .train.observers import EpochLog, RunObserver

Point = tuple[int, str, float]
"""(optimiser step, name, value): one value a tracker logs."""

HPARAM_METRICS = ("val/fused/acc", "test/fused/acc", "test/fused/map", "test/fused/f1", "imbalance_val")
"""The epoch values TensorBoard's HPARAMS tab shows beside each run's hyper-parameters."""


class TrackingError(ModgapError):
    """A tracking backend refused what the run sent it (unreachable server, deleted run, ...)."""


# ------------------------------------------------------------------------------ what is logged
def epoch_points(step: int, record: dict[str, Any]) -> list[Point]:
    """An epoch's metrics.jsonl record, its numbers flattened, at the step that ended the epoch."""
    leaves = flatten(record, "/")
    return [(step, k, float(v)) for k, v in leaves.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def step_points(rows: list[tuple[int, dict[str, float]]]) -> list[Point]:
    """Per-step values (scalars.csv's rows) as step/<name>."""
    return [(step, f"step/{name}", float(value)) for step, values in rows for name, value in values.items()]


def points_on_disk(run: RunFolder, steps_done: int, epochs_done: int, steps_per_epoch: int) -> list[Point]:
    """What the run folder holds up to its checkpoint, named as the trackers log it. Every epoch
    takes the same number of optimiser steps, so epoch e ended at step (e + 1) * steps_per_epoch
    (a checkpoint taken mid-epoch at a stop signal has more steps than its whole epochs)."""
    points = [
        (int(step), f"step/{name}", value)
        for name, cols in read_scalars(run.path).items()
        for step, value in zip(cols["step"], cols["value"], strict=True)
        if step <= steps_done
    ]
    for record in run.read_metrics():
        if record["epoch"] < epochs_done:
            points += epoch_points((record["epoch"] + 1) * steps_per_epoch, record)
    return sorted(points, key=lambda p: p[0])


def flat_config(config: Config) -> dict[str, str | int | float | bool]:
    """The resolved configuration as dotted keys (optim.lr, method.name, ...): numbers, booleans and
    strings as they are, anything else (lists, None, empty mappings) as JSON text."""
    return {
        key: value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        for key, value in flatten(config.to_dict()).items()
    }


# ------------------------------------------------------------------------------ the backends
BACKENDS: Registry[type[Tracker]] = Registry("log.backends entry")


class Tracker(RunObserver):
    """Mirrors one run into one backend. A subclass opens the backend (``open``), writes points
    (``write``), says which points of the run folder it lacks after a restart (``missing``) and
    makes what it wrote durable (``sync``); this class walks the run through them and keeps its
    entry of tracking.json."""

    summary: ClassVar[str]
    """The line `modgap list trackers` prints."""
    packages: ClassVar[tuple[str, ...]]
    """The Python packages the backend needs (checked before a run starts)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.run: RunFolder | None = None
        self.entry: dict[str, Any] = {}

    # ---- what a backend provides
    def open(self, run: RunFolder, config: Config, entry: dict[str, Any] | None) -> dict[str, Any]:
        """Start the backend's run, or reopen the one ``entry`` (its tracking.json entry) names;
        returns the entry to keep (besides last_step)."""
        raise NotImplementedError

    def write(self, points: list[Point]) -> None:
        raise NotImplementedError

    def missing(self, points: list[Point], entry: dict[str, Any] | None) -> list[Point]:
        """Which of the run folder's ``points`` the backend does not hold yet."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make everything written so far durable."""

    # ---- the run, told by the trainer
    def started(self, run: RunFolder, config: Config, steps_done: int, epochs_done: int, steps_per_epoch: int) -> None:
        self.run = run
        entry = (run.read_json(TRACKING_FILE) or {}).get(self.name)
        if entry is not None and entry["last_step"] > steps_done:  # resumed from last.prev.pt: redo what follows
            entry = {**entry, "last_step": steps_done}
        self.entry = self.open(run, config, entry)
        if steps_done:
            self.write(self.missing(points_on_disk(run, steps_done, epochs_done, steps_per_epoch), entry))
        self.flush(steps_done)

    def epoch_done(self, log: EpochLog) -> None:
        self.write(step_points(log.steps) + epoch_points(log.step, log.record))
        self.flush(log.step)

    def flush(self, step: int) -> None:
        """Sync the backend, then record in tracking.json that it holds everything up to ``step``."""
        assert self.run is not None
        self.sync()
        state = self.run.read_json(TRACKING_FILE) or {}
        state[self.name] = {**self.entry, "last_step": step}
        self.run.write_json(TRACKING_FILE, state)


def _after_existing_files(folder: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second its
    writer opened: wait, if need be, until a second later than every file there, so that a reopened
    writer's events (its purge first) are read after the ones they replace."""
    names = [p.name.split(".") for p in folder.glob("events.out.tfevents.*.*")]
    stamps = [int(parts[3]) for parts in names if parts[3].isdigit()]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.05)


@BACKENDS.register("tensorboard")
class TensorBoard(Tracker):
    """Event files in <run>/tensorboard/: the points as scalars, the configuration through the
    HPARAMS plugin (in this same run, not in a run of its own as add_hparams makes) and as text."""

    summary = "TensorBoard event files in <run>/tensorboard/: scalars, the config as hyper-parameters and text"
    packages = ("tensorboard",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.writer: Any = None

    def open(self, run: RunFolder, config: Config, entry: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        folder = run.path / TENSORBOARD_DIR
        if entry is not None:
            _after_existing_files(folder)
        self.writer = SummaryWriter(str(folder), purge_step=entry["last_step"] + 1 if entry else None)
        if entry is None:
            # the metric values are not used: the HPARAMS tab reads these tags' scalars
            for summary in hparams(flat_config(config), dict.fromkeys(HPARAM_METRICS, 0.0)):
                self.writer.file_writer.add_summary(summary)
            text = yaml.safe_dump(config.to_dict(), sort_keys=False)
            self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))
        return {}

    def write(self, points: list[Point]) -> None:
        for step, name, value in points:
            self.writer.add_scalar(name, value, step)

    def missing(self, points: list[Point], entry: dict[str, Any] | None) -> list[Point]:
        last = entry["last_step"] if entry else 0
        return [p for p in points if p[0] > last]

    def sync(self) -> None:
        self.writer.flush()

    def close(self, outcome: str) -> None:
        if self.writer is not None:
            self.writer.close()


def mlflow_uri(log: LogConfig, run: Path) -> str:
    """log.mlflow_uri, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run folder."""
    if log.mlflow_uri:
        return log.mlflow_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run.resolve().parent / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite tracking URI (sqlite:///relative or sqlite:////absolute)."""
    path = uri.removeprefix("sqlite:///")
    return Path(path).resolve() if path != uri and path not in ("", ":memory:") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Several runs at once (bench --jobs) on one local SQLite store: MLflow creating its tables, or
    the experiment, from two processes at once fails, so one process at a time does (a lock on the
    store's folder)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _mlflow_errors(uri: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else type(exc).__name__
        raise TrackingError(f"mlflow at {uri}: {first}") from None


def _mlflow_key(name: str) -> str:
    """A name as MLflow accepts it (letters, digits, _ - . / space)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@BACKENDS.register("mlflow")
class MLflow(Tracker):
    """One MLflow run per run folder: the configuration as params, labels as tags, the points as
    metrics, and at the end summary.json, config.yaml and the report as artifacts."""

    summary = "an MLflow run per run folder: config as params, metrics, summary.json and the report as artifacts"
    packages = ("mlflow", "sqlalchemy", "alembic")  # mlflow-skinny's SQLite store needs the other two

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.client: Any = None
        self.run_id: str | None = None
        self.uri = ""
        self.held: dict[str, int] = {}
        """A reopened run's last step per key: never logged again, not even by an epoch redone after
        a resume from last.prev.pt."""

    def open(self, run: RunFolder, config: Config, entry: dict[str, Any] | None) -> dict[str, Any]:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        self.uri = entry["tracking_uri"] if entry else mlflow_uri(config.log, run.path)
        with _store_lock(self.uri), _mlflow_errors(self.uri):
            client = MlflowClient(tracking_uri=self.uri)
            if entry is not None:
                run_id = entry["run_id"]
                client.update_run(run_id, status="RUNNING")  # resumed, perhaps after FINISHED or FAILED
            else:
                run_id = client.create_run(self._experiment(client, config.log), run_name=run.path.name).info.run_id
        self.client, self.run_id = client, run_id
        kept = {"run_id": run_id, "tracking_uri": self.uri}
        state = run.read_json(TRACKING_FILE) or {}  # the run id first: a crash now still finds this run
        run.write_json(TRACKING_FILE, {**state, self.name: {**(entry or {"last_step": 0}), **kept}})
        data = config.data
        tags = {
            "modgap.version": __version__,
            "modgap.dataset": data.name + (f":{'+'.join(data.modalities)}" if data.modalities else ""),
            "modgap.method": str(config.method["name"]),
            "modgap.seed": str(config.train.seed),
            "modgap.run_folder": str(run.path.resolve()),
        }
        with _mlflow_errors(self.uri):
            logged = client.get_run(run_id).data.params  # a param cannot change: those of the first start stay
            config_params = {_mlflow_key(k): str(v) for k, v in flat_config(config).items()}
            params = [Param(k, v) for k, v in config_params.items() if k not in logged]
            for chunk in _chunks(params, 100):
                client.log_batch(run_id, params=chunk)
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return kept

    @staticmethod
    def _experiment(client: Any, log: LogConfig) -> str:
        """log.experiment's id, created (artifacts beside a local SQLite store) if it is new."""
        experiment = client.get_experiment_by_name(log.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        db = _sqlite_file(client.tracking_uri)
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        return str(client.create_experiment(log.experiment, artifact_location=location))

    def write(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keyed = [(step, _mlflow_key(name), value) for step, name, value in points]
        metrics = [Metric(key, value, now, step) for step, key, value in keyed if step > self.held.get(key, 0)]
        with _mlflow_errors(self.uri):
            for chunk in _chunks(metrics, 1000):
                self.client.log_batch(self.run_id, metrics=chunk)

    def missing(self, points: list[Point], entry: dict[str, Any] | None) -> list[Point]:
        if entry is not None:
            with _mlflow_errors(self.uri):
                self.held = {
                    key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)
                    for key in {_mlflow_key(name) for _, name, _ in points}
                }
        return [p for p in points if p[0] > self.held.get(_mlflow_key(p[1]), 0)]

    def finished(self, summary: dict[str, Any]) -> None:
        from .report.build import run_report

        assert self.run is not None
        report = run_report(self.run.path, model=False).parent  # from the logs only, into <run>/report/
        with _mlflow_errors(self.uri):
            for name in (SUMMARY_FILE, CONFIG_FILE):
                self.client.log_artifact(self.run_id, str(self.run.path / name))
            self.client.log_artifacts(self.run_id, str(report), "report")
            self.client.set_terminated(self.run_id, "FINISHED")

    def close(self, outcome: str) -> None:
        if outcome == "finished" or self.run_id is None:
            return
        status = "KILLED" if outcome == "stopped" else "FAILED"  # a killed process never gets here: RUNNING
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # never hide the error that ended the run
            print(f"modgap: warning: mlflow run {self.run_id} not marked {status} ({exc})", file=sys.stderr)


# ------------------------------------------------------------------------------ for the entry points
def check_backends(log: LogConfig) -> list[type[Tracker]]:
    """log.backends' classes; a ConfigError for an unknown name or a package that is not installed
    (called before any data is read)."""
    classes = [BACKENDS.get(name) for name in log.backends]
    for name, cls in zip(log.backends, classes, strict=True):
        for package in cls.packages:
            try:
                importlib.import_module(package)
            except ImportError:
                raise ConfigError(
                    f"log.backends has '{name}' but {package} is not installed (pip install 'modgap[{name}]')"
                ) from None
    return classes


def trackers(config: Config) -> list[RunObserver]:
    """One tracker per name in config.log.backends."""
    return [cls(name) for name, cls in zip(config.log.backends, check_backends(config.log), strict=True)]


def train_tracked(
    config: Config, out: str | Path | None = None, resume: bool = False, observers: list[RunObserver] | None = None
) -> dict[str, Any]:
    """train.trainer.train with the trackers config.log.backends names (what `modgap train` runs;
    ``modgap.fit``). Returns the run's summary."""
    return trainer.train(config, out, resume, [*(observers or []), *trackers(config)])
