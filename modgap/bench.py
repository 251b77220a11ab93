"""`modgap bench`: a grid of runs (methods x datasets x seeds), one run folder per cell, then tables.

Each cell is one task (``run_cell``): a cell whose summary.json exists is skipped, one whose folder is
locked by a live process is left to it ("running elsewhere"), one with a checkpoint is resumed, any
other is started; the task runs `modgap train` as its own process, appending its output to the
cell's train.log. So a killed bench, or a killed job, picks up where it stopped. ``--launcher``
(launchers.py) says where the tasks run: here, ``--jobs`` at a time (local, the default), as a Slurm
job array through submitit (slurm), or as submitit's local jobs (submitit-local); submitit's own
files go to ``<bench>/.submitit/``. Afterwards results.csv, table.md and table.tex are written (see
report/tables.py); `modgap bench --collect DIR` rebuilds them from the run folders alone, also while
jobs still run (every cell's cell.json is written first, so it knows which are unfinished).

Method entries may carry options: ``lfm-h[schedule=constant,w0=0.5]`` (the label names the cell).
``--set method.KEY=VALUE`` applies to every method whose options have KEY; it is an error if none has.
Every other ``--set`` goes to every cell (``log.*`` to resumed cells too: ``--set log.backends=[...]``
has every run of the bench tracked, docs/tracking.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import dotted_to_nested, make_config, parse_value
from .errors import ConfigError
from .launchers import LAUNCHERS, get_launcher, job_parameters, launch, slurm_parameters
from .methods.base import method_classes
from .report.tables import collect
from .runs import SUMMARY_FILE, RunFolder, atomic_write_text
from .tracking import check_backends

CELL_FILE = "cell.json"
SUBMITIT_DIR = ".submitit"


@dataclass
class Cell:
    data: str
    method: str
    """The method entry as given, e.g. lfm-h[schedule=exp]."""
    seed: int

    @property
    def name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", f"{self.data}__{self.method}__s{self.seed}")
        return safe.strip("-")


def split_list(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def parse_method(entry: str) -> tuple[str, dict[str, Any]]:
    match = re.fullmatch(r"([A-Za-z0-9_+-]+)(?:\[(.*)\])?", entry)
    if not match:
        raise ConfigError(f"bad method entry '{entry}' (expected NAME or NAME[key=value,...])")
    name, inner = match.group(1), match.group(2)
    method_classes(name)
    options = {}
    for item in split_list(inner or ""):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"bad option '{item}' in '{entry}' (expected key=value)")
        options[key.strip()] = parse_value(value.strip())
    return name, options


def method_sets(sets: list[str], names: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Separate --set method.* (applied per method where it fits) from the rest."""
    general, per_key = [], {}
    for item in sets:
        if item.startswith("method."):
            per_key.update(dotted_to_nested([item])["method"])
        else:
            general.append(item)
    accepted = {
        n: set().union(*({f.name for f in dataclasses.fields(c.Options)} for c in method_classes(n))) for n in names
    }
    for key in per_key:
        if not any(key in a for a in accepted.values()):
            raise ConfigError(f"--set method.{key}: no method of this bench has that option")
    return general, {n: {k: v for k, v in per_key.items() if k in accepted[n]} for n in names}


def cell_command(
    cell: Cell,
    out: Path,
    config: str | None,
    epochs: int | None,
    sets: list[str],
    method_name: str,
    method_options: dict[str, Any],
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "modgap",
        "train",
        "--data",
        cell.data,
        "--method",
        method_name,
        "--seed",
        str(cell.seed),
        "--out",
        str(out),
        "--quiet",
    ]
    if config:
        cmd += ["--config", config]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    for item in sets:
        cmd += ["--set", item]
    for key, value in method_options.items():
        cmd += ["--set", f"method.{key}={json.dumps(value)}"]
    return cmd


def run_cell(cell: Cell, root: Path, config, epochs, general, method_options) -> tuple[Cell, str]:
    """One cell, here or in a job: skipped when finished or held by a live process, else resumed or started."""
    out = root / cell.name
    run = RunFolder(out)
    if run.finished():
        return cell, "done before"
    holder = run.holder()
    if holder:
        return cell, f"running elsewhere (process {holder})"
    name, options = parse_method(cell.method)
    options = {**method_options.get(name, {}), **options}
    resume = run.resumable()
    if resume:
        cmd = [sys.executable, "-m", "modgap", "train", "--out", str(out), "--resume", "--quiet"]
        if epochs is not None:
            cmd += ["--epochs", str(epochs)]
        for item in general:  # a resume keeps the saved configuration, but log.* may change (tracking)
            if item.startswith("log."):
                cmd += ["--set", item]
    else:
        run.clear_unstarted()  # started but killed before its first checkpoint: start over
        cmd = cell_command(cell, out, config, epochs, general, name, options)
    _write_cell(out, cell, cmd[1:])
    with (out / "train.log").open("a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        lines = (out / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return cell, f"failed: {lines[-1] if lines else 'exit code ' + str(proc.returncode)}"
    return cell, "resumed" if resume else "ran"


def _write_cell(out: Path, cell: Cell, command: list[str] | None) -> None:
    """cell.json: the cell's labels (the tables use them) and the command that last ran it."""
    record: dict[str, Any] = {"data_label": cell.data, "method_label": cell.method, "seed": cell.seed}
    if command is not None:
        record["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CELL_FILE, json.dumps(record, indent=2))


def bench(
    methods: list[str],
    data: list[str],
    seeds: list[int],
    out: str | Path,
    *,
    jobs: int = 1,
    epochs: int | None = None,
    sets: list[str] | None = None,
    config: str | None = None,
    progress: bool = True,
    launcher: str = "local",
    slurm: list[str] | None = None,
    slurm_config: str | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    """Run the grid's unfinished cells through ``launcher`` and tabulate. With ``wait=False`` (submitit
    launchers) the jobs are submitted and their ids returned; ``--collect`` tabulates later."""
    chosen = get_launcher(launcher)
    submitters = ", ".join(n for n, one in LAUNCHERS.items() if one.cluster)
    if chosen.cluster is None and (slurm or slurm_config):
        raise ConfigError(f"--slurm and --slurm-config need a launcher that submits jobs ({submitters})")
    if chosen.cluster is None and not wait:
        raise ConfigError(f"--no-wait needs a launcher that submits jobs ({submitters})")
    jobs = max(jobs, 1)
    options = slurm_parameters(slurm or [], slurm_config, jobs) if chosen.cluster else {}
    parameters = job_parameters(chosen, options, "modgap bench")  # before anything is written
    root = Path(out).absolute()  # a job may start elsewhere
    names = [parse_method(m)[0] for m in methods]
    general, method_options = method_sets(sets or [], names)
    check_backends(make_config(config, None, general).log)  # each cell would fail on it: say it once, first
    cells = [Cell(d, m, s) for d in data for m in methods for s in seeds]
    root.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        if not (root / cell.name / CELL_FILE).exists():
            _write_cell(root / cell.name, cell, None)  # --collect counts it as unfinished from now on
    todo = [c for c in cells if not RunFolder(root / c.name).finished()]
    tasks = [(c, root, config, epochs, general, method_options) for c in todo]
    ids, outcomes = (
        launch(
            chosen,
            run_cell,
            tasks,
            jobs=jobs,
            folder=root / SUBMITIT_DIR,
            parameters=parameters,
            wait=wait,
            command="modgap bench",
            name=f"modgap-bench-{root.name}",
        )
        if todo
        else ([], iter([]))
    )
    if not wait:
        return {"cells": len(cells), "submitted": len(todo), "job_ids": ids}
    if ids and progress:
        print(f"modgap bench: {len(todo)} cells submitted, job(s) {', '.join(ids)}", file=sys.stderr)
    failures, elsewhere = [], []
    bar = tqdm(total=len(todo), desc="bench", unit="run", disable=not progress)
    for i, result, error in outcomes:
        cell, status = (todo[i], f"failed: {error}") if error else result
        bar.update()
        bar.set_postfix_str(f"{cell.name}: {status}"[:60])
        if status.startswith("failed"):
            failures.append((cell, status))
        elif status.startswith("running elsewhere"):
            elsewhere.append((cell, status))
    bar.close()
    for cell, status in failures:
        print(f"modgap bench: {cell.name} {status} (log: {root / cell.name / 'train.log'})", file=sys.stderr)
    for cell, status in elsewhere:
        print(f"modgap bench: {cell.name} is {status}: not started twice", file=sys.stderr)
    return {"cells": len(cells), "failed": len(failures), "elsewhere": len(elsewhere), **tabulate(root)}


def tabulate(root: str | Path) -> dict[str, Any]:
    """The tables of a bench folder's finished cells (``collect``; None while no cell has finished), and
    which of its cells are unfinished (queued, running, failed or killed): it may be read while jobs run."""
    root = Path(root)
    cells = sorted(p.parent for p in root.glob(f"*/{CELL_FILE}"))
    unfinished = [c.name for c in cells if not RunFolder(c).finished()]
    waiting = unfinished and not list(root.glob(f"*/{SUMMARY_FILE}"))
    return {"aggregate": None if waiting else collect(root), "unfinished": unfinished, "grid": len(cells)}
