"""`modgap report PATH`: the figures of a run folder or a bench folder, and one report.html.

A run folder (it has config.yaml): learning curves, alpha against progress (alpha.csv), the balance
diagnostics per epoch (imbalance, gradient norm per encoder, discrepancy ratio, val modality gap),
and, from the checkpoint (best.pt) evaluated on the test split: the modality-gap picture, per-class
accuracy per modality, Shapley contributions of the modalities and Grad-CAM of ResNet encoders.

A bench folder (run folders below it): the results table (report/tables.py), fused accuracy with
error bars per method per dataset, per-modality accuracy, alpha(t) per method (mean and band over
seeds) and every run's alpha overlaid, and per-run
curves overlaid; ``per_run=True`` adds each run's own section.

Every PNG has a JSON beside it with the data it plots (report/plots.py); report.html embeds the
PNGs as data URIs and needs nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ModgapError, RunFolderError
from ..runs import (
    ALPHA_FILE,
    BEST_FILE,
    FINAL_DIR,
    IMPORTANCE_FILE,
    METRICS_FILE,
    TRIALS_FILE,
    TUNE_SPEC_FILE,
    RunFolder,
    atomic_write_text,
    read_scalars,
)
from ..train.metrics import still_improving_note
from . import plots
from .html import Page


def is_run(path: Path) -> bool:
    return RunFolder(path).has_run()


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run(p) and (p / METRICS_FILE).exists())


def run_info(run: Path) -> dict[str, Any]:
    """method, data and seed labels of a run (cell.json of a bench, else config.yaml)."""
    cfg = RunFolder(run).read_config()
    data = cfg.get("data", {})
    mods = data.get("modalities") or []
    info = {
        "method": cfg.get("method", {}).get("name", "?"),
        "data": data.get("name", "?") + (f":{'+'.join(mods)}" if mods else ""),
        "seed": cfg.get("train", {}).get("seed", 0),
    }
    cell = run / "cell.json"
    if cell.exists():
        c = json.loads(cell.read_text(encoding="utf-8"))
        info.update(
            method=c.get("method_label", info["method"]),
            data=c.get("data_label", info["data"]),
            seed=c.get("seed", info["seed"]),
        )
    info["label"] = f"{info['method']} / {info['data']} / s{info['seed']}"
    return info


def _modalities(run: Path, records: list[dict[str, Any]], summary: dict[str, Any] | None) -> list[str]:
    if summary:
        return list(summary["modalities"])
    if records:
        return [k for k in records[0].get("test", {}) if k != "fused"]
    return []


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _summary_table(page: Page, summary: dict[str, Any]) -> None:
    mods = summary["modalities"]
    rows = []
    for name in ["fused", *mods]:
        t = summary["test"][name]
        rows.append(
            [
                name,
                _fmt(summary["val"][name]["acc"]),
                _fmt(t["acc"]),
                _fmt(t["map"]),
                _fmt(t["f1"]),
                _fmt(summary["test_last"][name]["acc"]),
                _fmt(summary.get("probe", {}).get(name)),
            ]
        )
    page.table(["", "val acc", "test acc", "test MAP", "test F1", "test acc (last epoch)", "probe"], rows)
    facts = [
        f"best val epoch {summary['best_epoch']} of {summary['epochs']}",
        f"imbalance (test acc strongest / weakest) {_fmt(summary.get('imbalance_test'), 2)}",
    ]
    if summary.get("alpha_final") is not None:
        facts.append(f"final alpha {summary['alpha_final']:.3f}")
    for space, pairs in summary.get("gap", {}).items():
        for pair, g in pairs.items():
            facts.append(f"test modality gap {pair} ({space}): centroid {g['centroid']:.3f}, paired {g['paired']:.3f}")
    facts.append(f"{summary['wall_s']:.1f} s")
    page.paragraph("; ".join(facts) + ".")


def _add_figure(page: Page, fig, path: Path, caption: str, made: dict[str, str]) -> None:
    plots.save_figure(fig, path)
    page.image(path, caption, alt=path.stem)
    made[path.stem] = str(path)


def run_sections(
    page: Page,
    run: Path,
    out: Path,
    *,
    checkpoint: str = "best",
    model: bool = True,
    replace: str = "zero",
    gradcam_samples: int = 2,
    threads: int | None = None,
    split: str = "test",
    heading_level: int = 2,
    title_prefix: str = "",
) -> dict[str, Any]:
    """Append a run's sections to ``page``; figures go to ``out``. Returns what was made."""
    records = RunFolder(run).read_metrics()
    summary = RunFolder(run).read_summary()
    info = run_info(run)
    mods = _modalities(run, records, summary)
    best = summary["best_epoch"] if summary else None
    label = info["label"]
    made: dict[str, Any] = {"run": str(run), "label": label, "figures": {}}
    made["still_improving"] = summary.get("still_improving") if summary else None
    made["warnings"] = summary.get("warnings", []) if summary else []
    figs = made["figures"]
    h = heading_level
    page.heading(f"{title_prefix}Summary", h)
    page.paragraph(f"Run {run} — method {info['method']}, data {info['data']}, seed {info['seed']}.")
    if summary:
        _summary_table(page, summary)
        for text in summary.get("warnings", []):  # what the run printed about its data (e.g. upscaled images)
            page.paragraph(f"Warning: {text}.", note=True)
    else:
        page.paragraph(f"The run has not finished (no summary.json): {len(records)} epochs recorded.", note=True)
    if not records:
        page.paragraph("metrics.jsonl holds no epoch yet: nothing to plot.", note=True)
        return made

    page.heading(f"{title_prefix}Learning curves", h)
    _add_figure(
        page,
        plots.learning_curves(records, mods, best, label),
        out / "curves.png",
        "Training loss terms per epoch (left); val and test accuracy, fused and per modality (right). "
        "The dotted line marks the epoch of best validation fused accuracy (the reported one).",
        figs,
    )
    note = still_improving_note(summary) if summary else None
    if note is not None:
        page.paragraph(f"Note: {note}.", note=True)

    page.heading(f"{title_prefix}Alpha", h)
    alpha_csv = run / ALPHA_FILE
    cols = plots.read_alpha_csv(alpha_csv) if alpha_csv.exists() else None
    if cols and cols["alpha"]:
        _add_figure(
            page,
            plots.alpha_curves([(label, cols)], title=f"alpha during training: {label}"),
            out / "alpha.png",
            "alpha (the weight on classification; 1 - alpha on matching) after every "
            "optimiser step, against training progress = epoch / #epochs (alpha.csv).",
            figs,
        )
    else:
        page.paragraph(f"Method {info['method']} has no alpha (no alpha.csv).", note=True)

    own = {name: cols for name, cols in read_scalars(run).items() if name != "alpha" and not name.startswith("loss/")}
    if own:
        page.heading(f"{title_prefix}The method's own values", h)
        _add_figure(
            page,
            plots.method_scalars(own, title=f"{info['method']}: values it set after each step"),
            out / "scalars.png",
            "What the method itself set after every optimiser step (scalars.csv): k/<modality> a "
            "gradient coefficient (OGM-GE, AGM), weight/<head> a loss weight (G-Blend), "
            "beta/<modality> a prototype-loss weight (PMR).",
            figs,
        )

    page.heading(f"{title_prefix}Balance during training", h)
    _add_figure(
        page,
        plots.balance_curves(records, mods, best, label),
        out / "balance.png",
        "Per epoch: imbalance ratio (strongest over weakest per-modality val accuracy), each encoder's "
        "gradient norm and the OGM-GE discrepancy ratio (means over the epoch's steps), and the modality "
        "gap on val (train.diagnostics).",
        figs,
    )

    if not model:
        return made
    try:
        from .checkpoint import load_trained

        trainer = load_trained(run, checkpoint, threads=threads)
    except (ModgapError, OSError) as exc:
        page.paragraph(f"Figures from the checkpoint skipped: {exc}", note=True)
        print(f"modgap report: warning: {run}: checkpoint figures skipped ({exc})", file=sys.stderr)
        return made
    ckpt = f"{trainer.checkpoint_file.name} (epoch {trainer.checkpoint_epoch})"
    evaluation = trainer.evaluate(split)
    outputs = evaluation.outputs
    y = outputs.get("y").astype("int64")
    made["checkpoint"] = str(trainer.checkpoint_file)

    if len(mods) > 1:
        page.heading(f"{title_prefix}Modality gap", h)
        for space, stem in (("logits", "gap"), ("projection", "gap_projection")):
            if f"{space}/{mods[0]}" not in outputs:
                continue
            features = {m: outputs.get(f"{space}/{m}") for m in mods}
            fig = plots.gap_picture(features, space, title=f"{label}: {split} split, {ckpt}")
            _add_figure(
                page,
                fig,
                out / f"{stem}.png",
                f"Paired {space} of the {split} samples, L2-normalised, projected to 2-D by PCA; faint lines "
                "join the two modalities of one sample, crosses mark the centroids. The gap in the title is "
                "measured in the full space (the projection can only shorten it).",
                figs,
            )

    page.heading(f"{title_prefix}Per-class accuracy", h)
    logits = {"fused": outputs.get("fused"), **{m: outputs.get(f"logits/{m}") for m in mods}}
    _add_figure(
        page,
        plots.per_class_figure(logits, y, trainer.data.classes, title=f"Per-class {split} accuracy: {label}, {ckpt}"),
        out / "per_class.png",
        f"Accuracy on each class of the {split} split: the fused prediction and each modality's own logits.",
        figs,
    )

    from .shapley import MAX_MODALITIES, modality_shapley, shapley_markdown

    if len(mods) <= MAX_MODALITIES:
        page.heading(f"{title_prefix}Modality contributions (Shapley)", h)
        result = modality_shapley(trainer, split, replace)
        atomic_write_text(out / "shapley.json", json.dumps(result, indent=1) + "\n")
        _add_figure(
            page,
            plots.shapley_figure(
                result, title=f"Shapley contributions: {label} ({replace}-replaced, {split} split, {ckpt})"
            ),
            out / "shapley.png",
            "Exact Shapley value of each modality for the fused accuracy and the fused "
            "logit of the true class; a modality outside a coalition has its inputs replaced "
            f"({replace}). The contributions add up to v(all) - v(none).",
            figs,
        )
        page.markdown(shapley_markdown(result))
        made["shapley"] = result

    from .gradcam import resnet_modalities, run_gradcam

    resnets = resnet_modalities(trainer.model)
    if resnets and gradcam_samples > 0:
        page.heading(f"{title_prefix}Grad-CAM", h)
        records_cam = run_gradcam(trainer, out, samples=gradcam_samples, split=split)
        for r in records_cam:
            page.image(
                r["path"],
                f"{r['modality']}, sample {r['id']}: true {r['label']}, predicted {r['predicted']}",
                alt=Path(r["path"]).stem,
            )
            figs[Path(r["path"]).stem] = r["path"]
    return made


def run_report(run: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    run = Path(run)
    out = Path(out) if out is not None else run / "report"
    page = Page(f"modgap report: {run.name}")
    made = run_sections(page, run, out, **options)
    atomic_write_text(out / "report.json", json.dumps(made, indent=1, default=str) + "\n")
    return page.write(out / "report.html")


def bench_report(root: str | Path, out: str | Path | None = None, per_run: bool = False, **options: Any) -> Path:
    from .tables import aggregate, markdown, read_summaries

    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs = run_dirs(root)
    if not runs:
        raise RunFolderError(f"{root}: neither a run folder (config.yaml) nor a bench folder (run folders in it)")
    page = Page(f"modgap report: bench {root.name}")
    made: dict[str, Any] = {"bench": str(root), "figures": {}, "runs": {}}
    figs = made["figures"]
    summaries = read_summaries(root)
    infos = {r: run_info(r) for r in runs}

    page.heading("Results")
    if summaries:
        agg = aggregate(summaries)
        page.markdown(markdown(agg))
        _add_figure(
            page,
            plots.bench_accuracy_figure(agg),
            out / "bench_accuracy.png",
            "Fused test accuracy at the epoch of best validation accuracy: mean over seeds, error bars one "
            "standard deviation.",
            figs,
        )
        _add_figure(
            page,
            plots.bench_modality_figure(agg),
            out / "bench_modalities.png",
            "Fused and per-modality test accuracy per method (mean ± std over seeds).",
            figs,
        )
    else:
        page.paragraph("No run has finished yet (no summary.json).", note=True)
    unfinished = [r.name for r in runs if not RunFolder(r).finished()]
    if unfinished:
        page.paragraph(f"Not finished: {', '.join(unfinished)}.", note=True)

    alpha_runs = []
    by_method: dict[str, dict[str, list[dict[str, list[float]]]]] = {}  # dataset -> method -> alpha.csv columns
    for r in runs:
        if (r / ALPHA_FILE).exists():
            cols = plots.read_alpha_csv(r / ALPHA_FILE)
            if cols["alpha"]:
                alpha_runs.append((infos[r]["label"], cols))
                by_method.setdefault(infos[r]["data"], {}).setdefault(infos[r]["method"], []).append(cols)
    page.heading("Alpha")
    if alpha_runs:
        _add_figure(
            page,
            plots.alpha_by_method(by_method),
            out / "bench_alpha_by_method.png",
            "alpha(t) of each method (learned, scheduled, constant), one panel per dataset: the mean over "
            "its seeds against training progress, the band from the lowest to the highest seed; the "
            "number of runs in brackets.",
            figs,
        )
        _add_figure(
            page,
            plots.alpha_curves(alpha_runs, title="alpha during training, every run"),
            out / "bench_alpha.png",
            "alpha against training progress (epoch / #epochs), one line per run "
            "(colour: method; line style: the run within its method).",
            figs,
        )
    else:
        page.paragraph("No run of this bench has an alpha.", note=True)

    page.heading("Curves of every run")
    curves = [(infos[r]["label"], RunFolder(r).read_metrics()) for r in runs]
    _add_figure(
        page,
        plots.bench_curves([c for c in curves if c[1]]),
        out / "bench_curves.png",
        "Per run: val fused accuracy, val imbalance ratio and val modality gap per epoch.",
        figs,
    )

    page.heading("Runs")
    rows = []
    improving = made["still_improving"] = {}
    for r in runs:
        s = RunFolder(r).read_summary()
        improving[r.name] = s.get("still_improving") if s else None
        rows.append(
            [
                r.name,
                infos[r]["label"],
                s["best_epoch"] if s else "-",
                _fmt(s["test"]["fused"]["acc"]) if s else "-",
                _fmt(s.get("imbalance_test"), 2) if s else "-",
                {True: "yes", False: "no"}.get(improving[r.name], "-"),
                "finished" if s else "running or stopped",
            ]
        )
    header = ["run folder", "method / data / seed", "best epoch", "test acc", "imbalance", "still improving", "state"]
    page.table(header, rows)
    if any(improving.values()):
        page.paragraph(
            "still improving: validation accuracy peaked in the run's last max(2, 10 %) epochs; more epochs "
            "may help (--epochs N).",
            note=True,
        )

    if per_run:
        for r in runs:
            page.heading(f"Run {infos[r]['label']}")
            made["runs"][r.name] = run_sections(
                page, r, out / "runs" / r.name, heading_level=3, title_prefix=f"{infos[r]['label']}: ", **options
            )
    atomic_write_text(out / "report.json", json.dumps(made, indent=1, default=str) + "\n")
    return page.write(out / "report.html")


def tune_report(root: str | Path, out: str | Path | None = None) -> Path:
    """The page of a tune folder (modgap tune): the search, every trial, the optimisation history,
    the parameters' importance and the objective against each, the best configuration, and the final
    runs on test. Read from the folder's files only (no Optuna needed)."""
    import csv

    from .tables import aggregate, markdown, read_summaries

    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    spec = json.loads((root / TUNE_SPEC_FILE).read_text(encoding="utf-8"))
    page = Page(f"modgap report: tune {spec['study']}")
    made: dict[str, Any] = {"tune": str(root), "figures": {}}
    figs = made["figures"]
    page.heading("The search")
    searched = ", ".join(f"{k} = {v}" for k, v in spec["space"].items())
    page.paragraph(
        f"Study {spec['study']} in {spec['storage']}. Data {spec.get('data') or '(config)'}, method "
        f"{spec.get('method') or '(config)'}; searched: {searched}; fixed: {', '.join(spec['sets']) or 'nothing'}. "
        f"Objective: validation fused accuracy at each run's best epoch, mean over seeds {spec['seeds']}; "
        f"the test split is read only by the final runs below."
    )
    rows: list[dict[str, Any]] = []
    if (root / TRIALS_FILE).exists():
        with (root / TRIALS_FILE).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        page.paragraph(f"No trial recorded yet ({TRIALS_FILE} is written when `modgap tune` ends).", note=True)
    else:
        params = list(spec["space"])
        page.heading("Trials")
        _add_figure(
            page,
            plots.tune_history(rows),
            out / "tune_history.png",
            "The objective of each trial (pruned trials: their last validation accuracy) and the best so far.",
            figs,
        )
        _add_figure(
            page,
            plots.tune_slices(rows, params, [k for k, v in spec["space"].items() if v.startswith("log")]),
            out / "tune_slices.png",
            "The objective against each searched parameter.",
            figs,
        )
        importance = json.loads((root / IMPORTANCE_FILE).read_text()) if (root / IMPORTANCE_FILE).exists() else {}
        if importance and "none" not in importance:
            _add_figure(
                page,
                plots.param_importance(importance),
                out / "tune_importance.png",
                "Each parameter's importance for the objective (Optuna's fANOVA over the completed trials).",
                figs,
            )
        else:
            page.paragraph(f"No parameter importance: {importance.get('none', 'not computed')}.", note=True)
        header = ["trial", "state", "val ACC", *params, "epochs", "pruned after", "seconds"]
        table = [
            [r["number"], r["state"], _fmt(plots.tune_value(r)), *(r.get(p, "") for p in params), r["epochs"]]
            + [r["pruned_epoch"] or "-", r["seconds"] or "-"]
            for r in rows
        ]
        page.table(header, table)
    if (root / BEST_FILE).exists():
        page.heading("The best configuration")
        text = (root / BEST_FILE).read_text(encoding="utf-8")
        page.paragraph(" ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#")))
        page.paragraph(f"`modgap train --config {root / BEST_FILE}` trains it.")
    # a later best trial has a higher number: the last folder is the current best's
    finals = sorted((root / FINAL_DIR).glob("trial-*")) if (root / FINAL_DIR).is_dir() else []
    summaries = read_summaries(finals[-1]) if finals else []
    page.heading("The best configuration on test")
    if summaries:
        page.markdown(markdown(aggregate(summaries)))
    else:
        page.paragraph("No final run has finished yet.", note=True)
    atomic_write_text(out / "report.json", json.dumps(made, indent=1, default=str) + "\n")
    return page.write(out / "report.html")


def report(path: str | Path, out: str | Path | None = None, per_run: bool = False, **options: Any) -> Path:
    """report.html (and the PNGs) of a run, bench or tune folder; returns the path of report.html."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such folder")
    if is_run(path):
        return run_report(path, out, **options)
    if (path / TUNE_SPEC_FILE).exists():
        return tune_report(path, out)
    return bench_report(path, out, per_run=per_run, **options)
