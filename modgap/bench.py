"""`modgap bench`: a grid of runs (methods x datasets x seeds), one run folder per cell, then tables.

Cells run as separate `modgap train` processes (``--jobs`` at a time), each logging to its own
train.log. A cell whose summary.json exists is skipped; one with a checkpoint is resumed; so a
killed bench picks up where it stopped. Afterwards results.csv, table.md and table.tex are written
(see report/tables.py); `modgap bench --collect DIR` rebuilds them from the run folders alone.

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import dotted_to_nested, make_config, parse_value
from .errors import ConfigError
from .methods.base import method_classes
from .report.tables import collect
from .runs import RunFolder, atomic_write_text
from .tracking import check_backends


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
    out = root / cell.name
    run = RunFolder(out)
    if run.finished():
        return cell, "done before"
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
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "cell.json",
        json.dumps(
            {"data_label": cell.data, "method_label": cell.method, "seed": cell.seed, "command": cmd[1:]}, indent=2
        ),
    )
    with (out / "train.log").open("a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        lines = (out / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return cell, f"failed: {lines[-1] if lines else 'exit code ' + str(proc.returncode)}"
    return cell, "resumed" if resume else "ran"


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
) -> dict[str, Any]:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    names = [parse_method(m)[0] for m in methods]
    general, method_options = method_sets(sets or [], names)
    check_backends(make_config(config, None, general).log)  # each cell would fail on it: say it once, first
    cells = [Cell(d, m, s) for d in data for m in methods for s in seeds]
    failures = []
    bar = tqdm(total=len(cells), desc="bench", unit="run", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(run_cell, c, root, config, epochs, general, method_options) for c in cells]
        for future in as_completed(futures):
            cell, status = future.result()
            bar.update()
            bar.set_postfix_str(f"{cell.name}: {status}"[:60])
            if status.startswith("failed"):
                failures.append((cell, status))
    bar.close()
    for cell, status in failures:
        print(f"modgap bench: {cell.name} {status} (log: {root / cell.name / 'train.log'})", file=sys.stderr)
    agg = collect(root)
    return {"cells": len(cells), "failed": len(failures), "aggregate": agg}
