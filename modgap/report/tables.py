"""Result tables from run folders: results.csv (one row per run), table.md and table.tex.

Per dataset: one row per method with fused ACC / MAP / macro-F1 as mean +- std over seeds (best in
bold, second underlined), each modality's accuracy, the imbalance ratio (strongest over weakest
modality accuracy) and a dagger on methods whose fused accuracy is below the best unimodal model
(the best single modality of the `unimodal` runs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..methods.base import trains_unimodal_models
from ..runs import SUMMARY_FILE, RunFolder, atomic_write_text

METRICS = ("acc", "map", "f1")


def read_summaries(root: Path) -> list[dict[str, Any]]:
    """summary.json of every finished run under ``root`` (with the cell name and method label)."""
    runs = []
    for path in sorted(root.glob(f"*/{SUMMARY_FILE}")):
        summary = RunFolder(path.parent).read_summary()
        assert summary is not None  # the glob found its summary.json
        cell = json.loads((path.parent / "cell.json").read_text()) if (path.parent / "cell.json").exists() else {}
        summary["cell"] = path.parent.name
        summary["label"] = cell.get("method_label", summary["method"])
        summary["data_label"] = cell.get("data_label", f"{summary['dataset']}:{'+'.join(summary['modalities'])}")
        runs.append(summary)
    return runs


def rows_of(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        row = {
            "data": r["data_label"],
            "method": r["label"],
            "seed": r["seed"],
            "best_epoch": r["best_epoch"],
            **{f"fused_{k}": r["test"]["fused"][k] for k in METRICS},
            **{f"last_fused_{k}": r["test_last"]["fused"][k] for k in METRICS},
            "imbalance": r.get("imbalance_test"),
            "alpha_final": r.get("alpha_final"),
            "wall_s": r["wall_s"],
        }
        for m in r["modalities"]:
            row[f"{m}_acc"] = r["test"][m]["acc"]
            row[f"{m}_probe"] = r.get("probe", {}).get(m)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def mean_std(values: list[float | None]) -> tuple[float, float]:
    present = [v for v in values if v is not None]
    if not present:
        return math.nan, math.nan
    mean = sum(present) / len(present)
    var = sum((v - mean) ** 2 for v in present) / (len(present) - 1) if len(present) > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """data label -> method label -> {metric: (mean, std), 'n': seeds, 'modalities': {m: (mean, std)}}."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        grouped[r["data_label"]][r["label"]].append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for data, methods in grouped.items():
        out[data] = {}
        for method, rs in methods.items():
            modalities = rs[0]["modalities"]
            out[data][method] = {
                **{k: mean_std([r["test"]["fused"][k] for r in rs]) for k in METRICS},
                "n": len(rs),
                "modalities": {m: mean_std([r["test"][m]["acc"] for r in rs]) for m in modalities},
                "probe": {m: mean_std([r.get("probe", {}).get(m) for r in rs]) for m in modalities},
                "imbalance": mean_std([r.get("imbalance_test") for r in rs]),
            }
    return out


def best_unimodal(methods: dict[str, dict[str, Any]]) -> float | None:
    """The best single modality's accuracy among methods that train uni-modal models (unimodal, ume)."""
    accs = [
        mean for name, row in methods.items() if trains_unimodal_models(name) for mean, _ in row["modalities"].values()
    ]
    return max(accs) if accs else None


def ranks(methods: dict[str, dict[str, Any]], metric: str) -> dict[str, int]:
    """1 for the best mean, 2 for the second (ties share a rank)."""
    values = sorted({round(v[metric][0], 10) for v in methods.values() if not math.isnan(v[metric][0])}, reverse=True)
    return {
        name: values.index(round(v[metric][0], 10)) + 1 for name, v in methods.items() if not math.isnan(v[metric][0])
    }


def _cell(value: tuple[float, float], rank: int | None, latex: bool) -> str:
    mean, std = value
    if math.isnan(mean):
        return "-"
    text = f"{100 * mean:.2f} ± {100 * std:.2f}" if not latex else f"{100 * mean:.2f} $\\pm$ {100 * std:.2f}"
    if rank == 1:
        return f"**{text}**" if not latex else f"\\textbf{{{text}}}"
    if rank == 2:
        return f"<u>{text}</u>" if not latex else f"\\underline{{{text}}}"
    return text


def markdown(agg: dict[str, dict[str, dict[str, Any]]]) -> str:
    parts = []
    for data, methods in agg.items():
        modalities = list(next(iter(methods.values()))["modalities"])
        r = {k: ranks(methods, k) for k in METRICS}
        floor = best_unimodal(methods)
        head = [
            "method",
            "seeds",
            "ACC",
            "MAP",
            "F1",
            *[f"{m} acc" for m in modalities],
            *[f"{m} probe" for m in modalities],
            "imbalance",
        ]
        lines = [f"### {data}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in methods.items():
            mark = " †" if floor is not None and not trains_unimodal_models(name) and v["acc"][0] < floor else ""
            cells = [
                f"{name}{mark}",
                str(v["n"]),
                *[_cell(v[k], r[k].get(name), False) for k in METRICS],
                *[_cell(v["modalities"][m], None, False) for m in modalities],
                *[_cell(v["probe"][m], None, False) for m in modalities],
                f"{v['imbalance'][0]:.2f}" if not math.isnan(v["imbalance"][0]) else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        note = "Test metrics (%) at the epoch of best validation fused accuracy, mean ± std over seeds. "
        note += "**Best**, <u>second</u>."
        if floor is not None:
            note += f" † below the best unimodal model ({100 * floor:.2f})."
        lines += [note, ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def latex(agg: dict[str, dict[str, dict[str, Any]]]) -> str:
    parts = []
    for data, methods in agg.items():
        r = {k: ranks(methods, k) for k in METRICS}
        floor = best_unimodal(methods)
        lines = [
            "\\begin{tabular}{lccc}",
            "\\toprule",
            f"\\multicolumn{{4}}{{c}}{{{_tex(data)}}} \\\\",
            "Method & ACC & MAP & F1 \\\\",
            "\\midrule",
        ]
        for name, v in methods.items():
            mark = (
                "$^\\dagger$" if floor is not None and not trains_unimodal_models(name) and v["acc"][0] < floor else ""
            )
            lines.append(
                f"{_tex(name)}{mark} & " + " & ".join(_cell(v[k], r[k].get(name), True) for k in METRICS) + " \\\\"
            )
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _tex(text: str) -> str:
    for a, b in (("_", "\\_"), ("&", "\\&"), ("%", "\\%"), ("#", "\\#")):
        text = text.replace(a, b)
    return text


def collect(root: str | Path) -> dict[str, Any]:
    """Rebuild results.csv, table.md and table.tex of a bench folder from its run folders."""
    root = Path(root)
    runs = read_summaries(root)
    if not runs:
        from ..errors import RunFolderError

        raise RunFolderError(f"{root}: no finished runs (no */summary.json)")
    write_csv(rows_of(runs), root / "results.csv")
    agg = aggregate(runs)
    atomic_write_text(root / "table.md", markdown(agg))
    atomic_write_text(root / "table.tex", latex(agg))
    return agg
