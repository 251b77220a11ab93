"""`modgap tune`: a hyper-parameter search on Optuna, every trial an ordinary run folder.

    modgap tune --data mfeat:pix+fou --method lfm-h --set method.schedule=constant \\
        --space 'method.w0=uniform(0.05,0.95)' --space 'optim.lr=loguniform(1e-3,1e-1)' \\
        --trials 30 --jobs 2 --out tune/lfm-h

The search space is ``KEY=KIND(ARGS)`` (inline, repeatable) or a YAML file of ``KEY: KIND(ARGS)``
lines, where KEY is anything ``--set`` accepts and KIND is ``uniform(lo,hi)``, ``loguniform(lo,hi)``,
``int(lo,hi)``, ``logint(lo,hi)`` or ``choice(a,b,...)``. Every key, at its bounds and at each choice,
is built into a config and checked before the first trial starts (a mistyped key is one line with the
closest valid one).

The objective is the validation fused accuracy at the run's best epoch (mean over ``--seeds``); the
test split is never read to decide anything. A trial is pruned from its first seed's per-epoch
validation curve, its best value so far (Optuna's median pruner: below the median of earlier trials
at the same epoch, from the 4th trial and the 2nd epoch on); the epoch it stopped at is recorded.

The study lives in Optuna's RDB storage: an SQLite file in the output folder unless ``--storage`` names
another database. The same command again continues the same study (``--trials N`` more trials; earlier
ones are kept), and any number of processes, here (``--jobs``) or on machines sharing the database,
work on one study: Optuna numbers each trial once. A process killed mid-trial leaves its trial RUNNING;
its heartbeat stops, and the next process to start a trial marks it FAIL and queues it again (once).

The output folder:

    tune.json        the search: data, method, space, seeds, study, storage
    study.db         the study (default storage)
    trials/NNNN-sS/  one run folder per trial and seed
    trials.csv       one row per trial: number, state, value, parameters, pruned epoch, seconds
    importance.json  each parameter's importance (Optuna's fANOVA), when it can be computed
    best.yaml        the best trial's configuration: `modgap train --config best.yaml` trains it
    final/trial-NNNN/sS/  the best trial's configuration trained on --final-seeds: the test split, read once
    tune.md          the trials and the final table
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from .config import Config, flatten, load_yaml, make_config, parse_value
from .errors import ConfigError, ModgapError, RunFolderError, closest
from .methods.compose import check_config_methods
from .runs import BEST_FILE, FINAL_DIR, IMPORTANCE_FILE, TRIALS_FILE, TUNE_SPEC_FILE, RunFolder, atomic_write_text
from .tracking import check_backends, train_tracked
from .train.observers import EpochLog, RunObserver

KINDS = ("uniform", "loguniform", "int", "logint", "choice")
PRUNERS = ("median", "hyperband", "none")
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("modgap tune needs Optuna, which is not installed (pip install 'modgap[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Param:
    """One searched key and its distribution."""

    key: str
    kind: str
    args: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, text: Any, where: str) -> Param:
        if isinstance(text, list):  # YAML: a list is a choice
            return cls._checked(key, "choice", tuple(text), where)
        match = _CALL.match(str(text))
        if not match:
            raise ConfigError(f"{where}: '{key}={text}' is not KIND(ARGS), e.g. uniform(0.1,0.9) or choice(a,b)")
        kind, inner = match.group(1), match.group(2)
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown distribution '{kind}' for {key}{closest(kind, KINDS)}")
        args = tuple((parse_value if kind == "choice" else _number)(a.strip()) for a in inner.split(",") if a.strip())
        return cls._checked(key, kind, args, where)

    @classmethod
    def _checked(cls, key: str, kind: str, args: tuple[Any, ...], where: str) -> Param:
        bad = f"{where}: {key}={kind}({', '.join(map(str, args))})"
        if kind == "choice":
            if not args:
                raise ConfigError(f"{bad}: choice needs at least one value")
            if not all(a is None or isinstance(a, (bool, int, float, str)) for a in args):
                raise ConfigError(f"{bad}: choices must be numbers, strings or booleans")
            return cls(key, kind, args)
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{bad}: {kind} takes two numbers, low and high")
        low, high = args
        if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{bad}: {kind} takes integer bounds")
        if not low < high:
            raise ConfigError(f"{bad}: low must be below high")
        if kind.startswith("log") and low <= 0:
            raise ConfigError(f"{bad}: a log scale needs low > 0")
        if kind in ("int", "logint"):
            return cls(key, kind, (int(low), int(high)))
        return cls(key, kind, (float(low), float(high)))

    @property
    def text(self) -> str:
        return f"{self.kind}({','.join(map(str, self.args))})"

    def examples(self) -> tuple[Any, ...]:
        """Values that must each make a valid config: both bounds, or every choice."""
        return self.args

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, self.args[0], self.args[1], log=self.kind == "logint")
        return trial.suggest_float(self.key, self.args[0], self.args[1], log=self.kind == "loguniform")


def _number(text: str) -> Any:
    """A bound: an int, else a float (1e-3 too, which YAML reads as a string), else the text as given."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_space(items: list[str]) -> dict[str, Param]:
    """``--space`` items: KEY=KIND(ARGS) or a YAML file of them (nested sections allowed)."""
    space: dict[str, Param] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and "(" not in key:
            entries, where = {key.strip(): value}, "--space"
        elif item.endswith((".yaml", ".yml")) or Path(item).is_file():
            entries, where = flatten(load_yaml(item)), item
        else:
            raise ConfigError(f"--space: '{item}' is neither KEY=KIND(ARGS) nor a YAML file")
        for k, v in entries.items():
            if k in space:
                raise ConfigError(f"{where}: {k} is searched twice")
            space[k] = Param.parse(k, v, where)
    if not space:
        raise ConfigError("modgap tune needs a search space (--space KEY=KIND(ARGS) or --space FILE.yaml)")
    return space


# ------------------------------------------------------------------------------- the search
@dataclass
class TuneSpec:
    """Everything a tune process needs; tune.json holds it, so every worker runs the same search."""

    out: str
    space: dict[str, Param]
    data: str | None = None
    method: str | None = None
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    epochs: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    final_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    study: str = ""
    storage: str = ""
    pruner: str = "median"
    heartbeat: int = 10
    sampler_seed: int | None = None

    def __post_init__(self) -> None:
        self.study = self.study or default_study_name(self.data, self.method)
        self.storage = self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["space"] = {k: p.text for k, p in self.space.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuneSpec:
        d = dict(d)
        d["space"] = {k: Param.parse(k, v, TUNE_SPEC_FILE) for k, v in d["space"].items()}
        return cls(**d)

    # the config of one trial and seed
    def config(self, values: dict[str, Any], seed: int) -> Config:
        from .data import parse_data_spec

        overrides: dict[str, Any] = {"train": {"seed": seed, "progress": False}}
        if self.data:
            overrides["data"] = parse_data_spec(self.data)
        if self.method:
            overrides["method"] = {"name": self.method}
        if self.epochs is not None:
            overrides["train"]["epochs"] = self.epochs
        searched = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        config = make_config(self.config_file, overrides, [*self.sets, *searched])
        check_config_methods(config)
        return config

    def check(self) -> None:
        """Every searched key, at each bound and choice, makes a valid config (before any trial)."""
        fixed = {s.partition("=")[0] for s in self.sets}
        for key, param in self.space.items():
            if key in fixed:
                raise ConfigError(f"--space {key}: also fixed by --set {key}=...; search it or fix it, not both")
            for value in param.examples():
                try:
                    self.config({key: value}, self.seeds[0])
                except ConfigError as exc:
                    raise ConfigError(f"--space {key}={param.text}: {exc}") from None
        config = self.config({k: p.examples()[0] for k, p in self.space.items()}, self.seeds[0])  # all together too
        check_backends(config.log)  # a tracker named in log.backends but not installed: say so before any trial


def default_study_name(data: str | None, method: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", f"{data or 'data'}__{method or 'method'}").strip("-")


class Pruned(Exception):
    """A trial stopped by the pruner after ``epoch`` (its val fused accuracy there: ``value``)."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"pruned after epoch {epoch} (val fused acc {value:.4f})")
        self.epoch, self.value = epoch, value


class PruneOnValidation(RunObserver):
    """Reports to the trial, after each epoch, the best validation fused accuracy so far (the value
    the objective takes if the run ended there: the best epoch's); stops the run when Optuna prunes it.
    The running best, not the epoch's own value, so one noisy epoch does not prune a good trial."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.best = -math.inf

    def epoch_done(self, log: EpochLog) -> None:
        self.best = max(self.best, float(log.record["val"]["fused"]["acc"]))
        self.trial.report(self.best, log.epoch)
        if self.trial.should_prune():
            raise Pruned(log.epoch, self.best)


def open_study(spec: TuneSpec, worker: int = 0):
    optuna = _optuna()
    from optuna import storages

    kwargs: dict[str, Any] = {}
    if spec.storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes share the file
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
                kwargs["heartbeat_stale_trial_callback"] = storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            else:
                kwargs["failed_trial_callback"] = storages.RetryFailedTrialCallback(max_retry=1)
            storage = storages.RDBStorage(
                spec.storage, heartbeat_interval=spec.heartbeat, grace_period=3 * spec.heartbeat, **kwargs
            )
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server
        raise ConfigError(f"--storage {spec.storage}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    seed = None if spec.sampler_seed is None else spec.sampler_seed + worker  # workers must not propose alike
    return optuna.create_study(
        storage=storage,
        study_name=spec.study,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruners[spec.pruner](),
        load_if_exists=True,
    )


def objective(spec: TuneSpec, trial) -> float:
    """Mean validation fused accuracy (at each run's best epoch) over the spec's seeds."""
    optuna = _optuna()
    values = {key: param.suggest(trial) for key, param in spec.space.items()}
    accs = []
    for i, seed in enumerate(spec.seeds):
        config = spec.config(values, seed)
        out = Path(spec.out) / "trials" / f"{trial.number:04d}-s{seed}"
        trial.set_user_attr("runs", [*trial.user_attrs.get("runs", []), str(out)])
        try:
            summary = train_tracked(config, out, observers=[PruneOnValidation(trial)] if i == 0 else [])
        except Pruned as stop:
            trial.set_user_attr("pruned_epoch", stop.epoch)
            raise optuna.TrialPruned(str(stop)) from None
        except ModgapError as exc:
            trial.set_user_attr("error", str(exc).splitlines()[0])
            raise
        accs.append(float(summary["val"]["fused"]["acc"]))
    trial.set_user_attr("val_per_seed", accs)
    return float(np.mean(accs))


def run_trials(spec: TuneSpec, n_trials: int, timeout: float | None, worker: int = 0, progress: bool = True) -> None:
    """This process's share of the trials (Optuna numbers them across every process on the study)."""
    if n_trials <= 0:
        return
    study = open_study(spec, worker)
    bar = tqdm(total=n_trials, desc=f"tune {spec.study}", unit="trial", disable=not progress)

    def tick(study, trial) -> None:
        bar.update()
        best = _best_value(study)
        bar.set_postfix_str(f"#{trial.number} {trial.state.name.lower()}" + (f", best {best:.4f}" if best else ""))

    try:
        study.optimize(
            lambda t: objective(spec, t), n_trials=n_trials, timeout=timeout, catch=(ModgapError,), callbacks=[tick]
        )
    finally:
        bar.close()


def _best_value(study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no trial completed yet
        return None


def _worker_shares(n_trials: int, jobs: int) -> list[int]:
    return [n_trials // jobs + (1 if i < n_trials % jobs else 0) for i in range(jobs)]


def tune(
    spec: TuneSpec,
    trials: int,
    *,
    jobs: int = 1,
    timeout: float | None = None,
    final: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``trials`` more trials of the study (``jobs`` processes), then write the folder's results."""
    if jobs < 1 or trials < 0:
        raise ConfigError("--jobs must be >= 1 and --trials >= 0")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{spec.pruner}'")
    spec.check()
    root = Path(spec.out)
    root.mkdir(parents=True, exist_ok=True)
    _write_spec(root, spec)
    shares = _worker_shares(trials, jobs)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "modgap.tune", str(root), str(share), str(i), str(timeout or 0)],
            stdout=subprocess.DEVNULL,
            stderr=(root / f"worker{i}.log").open("a", encoding="utf-8"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for i, share in enumerate(shares[1:], start=1)
        if share > 0
    ]
    failed: list[str] = []
    try:
        run_trials(spec, shares[0], timeout, 0, progress)
    finally:
        for i, proc in enumerate(workers, start=1):
            if proc.wait() != 0:
                failed.append(f"worker {i} exited with {proc.returncode} (log: {root / f'worker{i}.log'})")
    for line in failed:
        print(f"modgap tune: {line}", file=sys.stderr)
    return finish(spec, final=final, progress=progress)


SEARCH_FIELDS = ("space", "data", "method", "config_file", "sets", "epochs", "seeds")
"""What defines a study's objective: a second command on the same study must agree on these."""


def _write_spec(root: Path, spec: TuneSpec) -> None:
    path = root / TUNE_SPEC_FILE
    new = spec.to_json()
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in SEARCH_FIELDS if old.get(k) != new[k]]
        if (old.get("study"), old.get("storage")) == (new["study"], new["storage"]) and changed:
            raise ConfigError(
                f"{path}: this study was started with other settings ({', '.join(changed)} differ); "
                f"run the same command, or use another --study or --out"
            )
    atomic_write_text(path, json.dumps(new, indent=1) + "\n")


# ------------------------------------------------------------------------------- the results
def trial_rows(study, space: dict[str, Param]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                **{k: t.params.get(k) for k in space},
                "epochs": len(t.intermediate_values),
                "last_val": last,
                "pruned_epoch": t.user_attrs.get("pruned_epoch"),
                "retried_from": t.system_attrs.get("failed_trial"),
                "seconds": None if seconds is None else round(seconds, 2),
                "error": t.user_attrs.get("error", ""),
            }
        )
    return rows


def importance(study) -> dict[str, float] | str:
    """Each parameter's importance (Optuna's default evaluator, fANOVA), or why there is none."""
    optuna = _optuna()
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2:
        return "fewer than two completed trials"
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as exc:  # e.g. every completed trial has the same parameters
        return str(exc).splitlines()[0]


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trials_markdown(rows: list[dict[str, Any]], space: dict[str, Param], best: int | None) -> str:
    head = ["trial", "state", "val ACC", *space, "epochs", "pruned after", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " ★" if r["number"] == best else ""
        value = "-" if r["value"] is None else f"{100 * r['value']:.2f}"
        cells = [f"{r['number']}{mark}", r["state"], value, *(_fmt(r[k]) for k in space)]
        cells += [str(r["epochs"]), _fmt(r["pruned_epoch"]), _fmt(r["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def finish(spec: TuneSpec, *, final: bool = True, progress: bool = True) -> dict[str, Any]:
    """trials.csv, importance.json, best.yaml, the final runs on test and tune.md."""
    from .report.tables import aggregate, markdown, read_summaries

    root = Path(spec.out)
    study = open_study(spec)
    rows = trial_rows(study, spec.space)
    atomic_write_text(root / TRIALS_FILE, _csv(rows))
    imp = importance(study)
    atomic_write_text(root / IMPORTANCE_FILE, json.dumps(imp if isinstance(imp, dict) else {"none": imp}) + "\n")
    result: dict[str, Any] = {"trials": rows, "importance": imp, "best": None, "final": None}
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    text = [
        f"# Tuning {spec.study}\n",
        f"{len(rows)} trials: {', '.join(f'{n} {s}' for s, n in counts.items() if n)}. Objective: validation "
        f"fused accuracy at the best epoch, mean over seeds {spec.seeds}; storage {spec.storage}.\n",
    ]
    best_value = _best_value(study)
    if best_value is None:
        text.append(trials_markdown(rows, spec.space, None))
        atomic_write_text(root / "tune.md", "\n".join(text))
        return result
    best = study.best_trial
    config = spec.config(best.params, spec.final_seeds[0] if spec.final_seeds else spec.seeds[0]).to_dict()
    config.pop("out", None)
    header = (
        f"# modgap tune {spec.study}: trial {best.number}, val fused acc {best_value:.4f} "
        f"(mean over seeds {spec.seeds})\n# searched: {json.dumps(best.params)}\n"
    )
    atomic_write_text(root / BEST_FILE, header + yaml.safe_dump(config, sort_keys=False))
    result["best"] = {"number": best.number, "value": best_value, "params": dict(best.params)}
    text.append(f"Best: trial {best.number} (★), {json.dumps(best.params)}; its configuration is {BEST_FILE}.\n")
    text.append(trials_markdown(rows, spec.space, best.number))
    if final and spec.final_seeds:
        final_root = final_dir(root, best.number)  # a later, better trial gets its own final runs
        for seed in spec.final_seeds:
            _final_run(root / BEST_FILE, final_root / f"s{seed}", seed, progress)
        agg = aggregate(read_summaries(final_root))
        result["final"] = agg
        result["final_dir"] = str(final_root)
        text.append(
            f"## The best configuration on test (seeds {spec.final_seeds}; test read once, here)\n\n{markdown(agg)}"
        )
    atomic_write_text(root / "tune.md", "\n".join(text))
    return result


def final_dir(root: Path, trial: int) -> Path:
    return root / FINAL_DIR / f"trial-{trial:04d}"


def _final_run(best_yaml: Path, out: Path, seed: int, progress: bool) -> None:
    run = RunFolder(out)
    if run.finished():
        return
    holder = run.holder()
    if holder is not None:  # another tune command on this study is training it: leave it to that one
        print(f"modgap tune: {out} is being trained by process {holder}; its result will be there", file=sys.stderr)
        return
    resume = run.resumable()
    if not resume:
        run.clear_unstarted()
    config = make_config(best_yaml, {"train": {"seed": seed, "progress": progress}})
    train_tracked(config, out, resume=resume)


def load_spec(root: str | Path) -> TuneSpec:
    path = Path(root) / TUNE_SPEC_FILE
    if not path.exists():
        raise RunFolderError(f"{root}: not a tune folder (no {TUNE_SPEC_FILE})")
    return TuneSpec.from_json(json.loads(path.read_text(encoding="utf-8")))


def _worker_main(argv: list[str]) -> int:
    """python -m modgap.tune ROOT N WORKER TIMEOUT: one worker process of `modgap tune --jobs`."""
    root, n, worker, timeout = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    started = time.time()
    try:
        run_trials(load_spec(root), n, timeout or None, worker, progress=False)
    except ModgapError as exc:
        print(f"modgap tune worker {worker}: error: {exc}", file=sys.stderr)
        return 2
    print(f"modgap tune worker {worker}: {n} trials in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
