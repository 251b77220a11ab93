"""`modgap analyze label-fitting`: how fast each modality fits its labels, and whether labels cause the gap.

The motivating experiment of LFM (Yang et al., NeurIPS 2024): modalities differ in how hard it is to
fit the category labels. Each modality is trained alone (method ``unimodal``: each encoder and head
receives its own CE only) with three kinds of targets:

    one-hot   label_mix = 0     the usual labels
    mixed     label_mix = 0.3   0.7 one-hot + 0.3 uniform (``--mix``)
    uniform   label_mix = 1     every target 1/C: the labels carry nothing

and for each modality the table reports, at the last epoch:

- train fit: the mean training loss of the last epoch minus the entropy of the targets, i.e.
  KL(target || prediction), 0 when the targets are fitted exactly (comparable across settings);
- train acc: accuracy on the train split against the true labels (evaluation mode);
- test acc: accuracy on the test split (last epoch: with uniform labels validation cannot select);
- probe: the linear probe accuracy of the frozen features (best epoch; when train.probe is on);

and per setting the gap between modalities (strongest minus weakest for accuracies, weakest minus
strongest fit for the KL, so a larger number always means a larger gap). A plot shows the KL per
epoch for each modality and setting (how fast each modality fits) and the bars of the accuracies.

Runs go to OUT/runs/<setting>-s<seed>; a finished one is reused, an interrupted one resumed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, build
from ..runs import LAST, RunFolder, atomic_write_text
from . import plots
from .tables import write_csv as tables_write_csv

DEFAULT_MIX = 0.3


def settings(mix: float = DEFAULT_MIX) -> list[tuple[str, float]]:
    return [("one-hot", 0.0), (f"mixed ({1 - mix:g} one-hot + {mix:g} uniform)", mix), ("uniform", 1.0)]


def target_entropy(mix: float, classes: int) -> float:
    """Entropy (nats) of t = (1 - mix) onehot + mix / C."""
    hi, lo = 1.0 - mix + mix / classes, mix / classes
    return -(hi * math.log(hi) if hi > 0 else 0.0) - (classes - 1) * (lo * math.log(lo) if lo > 0 else 0.0)


def _slug(name: str) -> str:
    return name.split(" ")[0]


def _train_one(config: Config, run_dir: Path):
    """Train (or reuse, or resume) one run; return it with its last-epoch weights loaded."""
    from ..train.trainer import Trainer
    from .checkpoint import load_trained, with_checkpoint

    run = RunFolder(run_dir)
    if run.finished():
        return load_trained(run_dir, "last", threads=config.train.threads or None)
    resume = run.resumable()
    if not resume:
        run.clear_unstarted()  # started but killed before its first checkpoint: start over
    trainer = Trainer(config, run_dir, resume=resume)
    trainer.fit()
    return with_checkpoint(trainer.assembly, run.checkpoints / LAST)


def label_fitting(
    base: Config, seeds: list[int], out: str | Path, mix: float = DEFAULT_MIX, log=print
) -> dict[str, Any]:
    """Run the three label settings x seeds; write table.md, table.csv, runs.csv, label_fitting.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[list[float]]]] = {}
    modalities: list[str] = []
    for name, m in settings(mix):
        for seed in seeds:
            config = build(Config, {"method": {"name": "unimodal", "label_mix": m}, "train": {"seed": seed}}, base=base)
            run_dir = out / "runs" / f"{_slug(name)}-s{seed}"
            log(f"label-fitting: {name}, seed {seed} -> {run_dir}")
            trained = _train_one(config, run_dir)
            modalities = list(trained.data.modalities)
            classes = trained.data.num_classes
            h = target_entropy(m, classes)
            records = RunFolder(run_dir).read_metrics()
            summary = RunFolder(run_dir).read_summary()
            assert summary is not None  # the run has just finished
            train_metrics = trained.evaluate("train").metrics
            last = records[-1]
            for mod in modalities:
                kl = [r["train"][f"cls_{mod}"] - h for r in records]
                curves.setdefault(name, {}).setdefault(mod, []).append(kl)
                rows.append(
                    {
                        "labels": name,
                        "label_mix": m,
                        "seed": seed,
                        "modality": mod,
                        "train_fit_kl": kl[-1],
                        "train_loss": last["train"][f"cls_{mod}"],
                        "target_entropy": h,
                        "train_acc": train_metrics[mod]["acc"],
                        "test_acc": last["test"][mod]["acc"],
                        "test_acc_best": summary["test"][mod]["acc"],
                        "probe": summary.get("probe", {}).get(mod),
                        "epochs": len(records),
                        "run": str(run_dir),
                    }
                )
    table = aggregate_rows(rows, modalities, mix)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "table.csv", table)
    atomic_write_text(out / "table.md", markdown_table(table, modalities))
    fig = label_fitting_figure(curves, table, modalities, mix)
    plots.save_figure(fig, out / "label_fitting.png")
    result = {"rows": rows, "table": table, "modalities": modalities, "settings": [n for n, _ in settings(mix)]}
    atomic_write_text(out / "label_fitting.json", json.dumps(plots._jsonable(result), indent=1) + "\n")
    return result


def _ms(values: list[float | None]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


METRICS = (("train_fit_kl", "train fit (KL)"), ("train_acc", "train acc"), ("test_acc", "test acc"), ("probe", "probe"))


def aggregate_rows(rows: list[dict[str, Any]], modalities: list[str], mix: float) -> list[dict[str, Any]]:
    """Per setting: one row per modality (mean and std over seeds) and one gap row."""
    table = []
    for name, m in settings(mix):
        mine = [r for r in rows if r["labels"] == name]
        seeds = sorted({r["seed"] for r in mine})
        for mod in modalities:
            rs = [r for r in mine if r["modality"] == mod]
            row: dict[str, Any] = {"labels": name, "label_mix": m, "modality": mod, "seeds": len(seeds)}
            for key, _ in METRICS:
                row[key], row[f"{key}_std"] = _ms([r[key] for r in rs])
            table.append(row)
        gap: dict[str, Any] = {"labels": name, "label_mix": m, "modality": _gap_name(modalities), "seeds": len(seeds)}
        for key, _ in METRICS:
            per_seed = []
            for s in seeds:
                vals = [r[key] for r in mine if r["seed"] == s and r[key] is not None]
                if len(vals) == len(modalities) and len(vals) > 1:
                    per_seed.append(max(vals) - min(vals))
            gap[key], gap[f"{key}_std"] = _ms(per_seed)
        table.append(gap)
    return table


def _gap_name(modalities: list[str]) -> str:
    return "gap (max - min)"


def _cell(mean: float, std: float, seeds: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def markdown_table(table: list[dict[str, Any]], modalities: list[str]) -> str:
    head = ["labels", "modality", *[title for _, title in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        name = f"**{row['modality']}**" if row["modality"].startswith("gap") else row["modality"]
        cells = [row["labels"], name, *[_cell(row[k], row[f"{k}_std"], row["seeds"]) for k, _ in METRICS]]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = table[0]["seeds"] if table else 0
    lines += [
        "",
        f"Each modality trained alone (unimodal) for the same epochs; last epoch; mean ± std over {seeds} "
        "seed(s). train fit (KL) = last epoch's mean training loss minus the entropy of the targets "
        "(0 = targets fitted exactly); train and test acc against the true labels; probe = linear probe "
        "on frozen features (best epoch, when train.probe is on). gap = strongest minus weakest modality.",
        "",
    ]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tables_write_csv(rows, path)


def label_fitting_figure(curves, table, modalities, mix):
    """Top: KL to the targets per epoch, one panel per label setting, one line per modality (mean
    over seeds). Bottom: train and test accuracy per modality per setting."""
    names = [n for n, _ in settings(mix)]
    fig = plots.new_figure(14, 8)
    axes = fig.subplots(2, 3)
    colors = plots.modality_colors(modalities)
    for ax, name in zip(axes[0], names, strict=True):
        for mod in modalities:
            runs = curves.get(name, {}).get(mod, [])
            if not runs:
                continue
            length = min(len(r) for r in runs)
            y = np.mean([r[:length] for r in runs], axis=0)
            plots.plot_series(
                ax,
                list(range(length)),
                y.tolist(),
                mod,
                f"{name}::{mod}::train_fit_kl",
                color=colors[mod],
                marker=".",
                ms=4,
            )
        ax.set(title=f"{name} labels", xlabel="epoch", ylabel="train loss − H(targets) (KL)")
        plots.epoch_axis(ax)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax, (key, title) in zip(
        axes[1],
        (
            ("train_acc", "Train accuracy (true labels)"),
            ("test_acc", "Test accuracy"),
            ("train_fit_kl", "Train fit (KL), last epoch"),
        ),
        strict=True,
    ):
        width = 0.8 / len(modalities)
        pos = np.arange(len(names))
        for k, mod in enumerate(modalities):
            rows = {r["labels"]: r for r in table if r["modality"] == mod}
            means = [rows[n][key] for n in names]
            stds = [rows[n][f"{key}_std"] for n in names]
            plots.grouped_bar(ax, pos, k, len(modalities), width, means, stds, label=mod, color=colors[mod])
        ax.set_xticks(pos, [_slug(n) for n in names])
        ax.set(title=title, xlabel="labels", ylabel=title.split(" (")[0].lower() if key != "train_fit_kl" else "KL")
        if key != "train_fit_kl":
            ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Label fitting per modality (each modality trained alone)")
    fig.modgap_data = {"curves": curves, "table": table}
    return fig
