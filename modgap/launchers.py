"""Where the tasks of a grid run: in threads of this process, or as submitit jobs (Slurm, or local processes).

    local            the task runs in a thread here (a bench cell's task starts its own `modgap train`
                     process), --jobs at a time
    slurm            one Slurm job array through submitit, one array task per task, --jobs at a time
                     (slurm_array_parallelism); submitit's pickles and logs in the folder given
    submitit-local   the same jobs with submitit's LocalExecutor: real processes here, no Slurm (a dry
                     run of a Slurm setup); modgap hands it --jobs at a time

Slurm options, from ``--slurm KEY=VALUE,...`` and/or a YAML file of the same keys (the command line
wins), are checked here and mapped to submitit's parameters (``SLURM_OPTIONS``). submitit is imported
only when a submitit launcher is used (the `slurm` extra).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import load_yaml
from .errors import ConfigError, closest


@dataclass(frozen=True)
class Launcher:
    name: str
    summary: str
    cluster: str | None = None
    """submitit's executor (AutoExecutor's ``cluster``); None: threads of this process."""
    array: bool = True
    """All tasks go in at once and the scheduler runs --jobs of them at a time (a Slurm job array). False:
    the executor would start every job at once, so modgap submits a job each time one ends."""
    default_timeout_min: int | None = None
    """A job's time limit when the options give no ``time``; None: ``time`` is required (submitit's own
    default on Slurm is 5 minutes)."""
    poll_s: float = 1.0
    """Seconds between two looks at the jobs while waiting."""


LAUNCHERS = {
    launcher.name: launcher
    for launcher in (
        Launcher("local", "processes on this machine, --jobs at a time"),
        Launcher("slurm", "a Slurm job array through submitit, --jobs tasks at a time", "slurm", poll_s=15.0),
        Launcher(
            "submitit-local",
            "submitit's jobs on this machine, --jobs at a time: the slurm path without Slurm (a dry run)",
            "local",
            array=False,
            default_timeout_min=7 * 24 * 60,
            poll_s=0.5,
        ),
    )
}


def _text(value: str) -> str:
    if not value:
        raise ValueError("a non-empty value")
    return value


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError("a positive integer")
    return int(value)


def _gigabytes(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not (number > 0 and math.isfinite(number)):
        raise ValueError("a positive number")
    return int(number) if number.is_integer() else number


def _minutes(value: str) -> int:
    """Minutes, or Slurm's [DAYS-]HH:MM:SS (seconds rounded up to a minute)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", value)
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        total = days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
    else:
        total = int(value) if value.isdigit() else 0
    if total < 1:
        raise ValueError("minutes (e.g. 120) or [DAYS-]HH:MM:SS")
    return total


SLURM_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "partition": ("slurm_partition", _text),
    "time": ("timeout_min", _minutes),
    "gpus": ("gpus_per_node", _count),
    "cpus": ("cpus_per_task", _count),
    "mem_gb": ("mem_gb", _gigabytes),
    "account": ("slurm_account", _text),
    "constraint": ("slurm_constraint", _text),
}
"""--slurm key -> (submitit's parameter, the reader of its value). On Slurm they become sbatch's
--partition, --time, --gpus-per-node, --cpus-per-task, --mem (mem_gb per node), --account, --constraint."""


def get_launcher(name: str) -> Launcher:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{name}'{closest(name, LAUNCHERS)}")
    return LAUNCHERS[name]


def slurm_parameters(items: list[str], config_file: str | None = None, jobs: int = 1) -> dict[str, Any]:
    """submitit's parameters from ``--slurm`` items (``KEY=VALUE,...``, repeatable) over a YAML file of the
    same keys; ``slurm_array_parallelism`` is ``jobs``."""
    given: dict[str, tuple[str, str]] = {}
    if config_file:
        given.update((key, (value, config_file)) for key, value in _read_options(config_file).items())
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--slurm expects KEY=VALUE, got '{part}'")
            given[key.strip()] = (value.strip(), "--slurm")
    parameters: dict[str, Any] = {"slurm_array_parallelism": jobs}
    for key, (value, where) in given.items():
        if key not in SLURM_OPTIONS:
            raise ConfigError(f"{where}: unknown Slurm option '{key}'{closest(key, SLURM_OPTIONS)}")
        name, read = SLURM_OPTIONS[key]
        try:
            parameters[name] = read(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key} must be {exc}, got '{value}'") from None
    return parameters


def _read_options(path: str) -> dict[str, str]:
    """A YAML file of KEY: VALUE, every value read as text (YAML would turn 2:00:00 into 7200)."""
    load_yaml(path)  # the one-line errors of a missing or broken file
    data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a single value, got {value!r}")
    return data


def _submitit(launcher: Launcher, command: str):
    try:
        import submitit
    except ImportError:
        needs = f"{command} --launcher {launcher.name} needs submitit"
        raise ConfigError(f"{needs} (pip install 'modgap[slurm]')") from None
    return submitit


def job_parameters(launcher: Launcher, parameters: dict[str, Any], command: str) -> dict[str, Any]:
    """The parameters the launcher's jobs get, checked before anything is written: submitit is
    installed and there is a time limit (``time``, or the launcher's default)."""
    if launcher.cluster is None:
        return {}
    _submitit(launcher, command)
    if "timeout_min" in parameters:
        return parameters
    if launcher.default_timeout_min is None:
        raise ConfigError(
            f"--launcher {launcher.name} needs a time limit: --slurm time=MINUTES or 'time: MINUTES' in "
            f"--slurm-config (submitit's default is 5 minutes)"
        )
    return {**parameters, "timeout_min": launcher.default_timeout_min}


def _executor(launcher: Launcher, folder: Path, parameters: dict[str, Any], command: str, name: str):
    submitit = _submitit(launcher, command)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=launcher.cluster)
    except RuntimeError as exc:  # SlurmExecutor: 'Could not detect "srun", are you indeed on a slurm cluster?'
        why = str(exc).splitlines()[0]
        raise ConfigError(f"--launcher {launcher.name}: {why} (--launcher submitit-local runs the jobs here)") from None
    executor.update_parameters(name=name, **parameters)
    return executor


Outcome = tuple[int, Any, "str | None"]
"""(the task's index, what the task returned, None) or (index, None, why its job ended without a result)."""


def launch(
    launcher: Launcher,
    fn: Callable[..., Any],
    tasks: list[tuple[Any, ...]],
    *,
    jobs: int,
    folder: Path,
    parameters: dict[str, Any] | None = None,
    wait: bool = True,
    command: str = "modgap",
    name: str = "modgap",
) -> tuple[list[str], Iterator[Outcome]]:
    """Run ``fn(*task)`` for every task. Returns the submitted jobs' ids (none for threads) and an
    iterator of the outcomes as tasks end; with ``wait=False`` everything is submitted now and the
    iterator is not needed. ``fn`` and the tasks are pickled for jobs: a module-level function."""
    jobs = max(jobs, 1)
    if launcher.cluster is None:
        return [], _in_threads(fn, tasks, jobs)
    executor = _executor(launcher, folder, parameters or {}, command, name)
    calls = [functools.partial(fn, *task) for task in tasks]
    first = len(calls) if launcher.array or not wait else jobs
    submitted = executor.submit_array(calls[:first]) if calls[:first] else []
    ids = list(dict.fromkeys(job.job_id.split("_")[0] for job in submitted))  # an array's tasks share its id
    return ids, _wait(executor, dict(enumerate(submitted)), list(enumerate(calls))[first:], launcher.poll_s)


def _in_threads(fn: Callable[..., Any], tasks: list[tuple[Any, ...]], jobs: int) -> Iterator[Outcome]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.result(), None


def _wait(executor, running: dict[int, Any], queue: list[tuple[int, Any]], poll_s: float) -> Iterator[Outcome]:
    while running:
        ended = [i for i, job in running.items() if job.done()]
        for i in ended:
            job = running.pop(i)
            if queue:
                k, call = queue.pop(0)
                running[k] = executor.submit(call)
            try:
                outcome: Outcome = (i, job.result(), None)
            except Exception:  # killed, timed out, cancelled, or the task raised: its log says which
                outcome = (i, None, f"job {job.job_id} ended without a result ({job.state}; log: {job.paths.stderr})")
            yield outcome
        if not ended:
            time.sleep(poll_s)
