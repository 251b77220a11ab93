"""Figures of a run or a bench folder (matplotlib Figures on the Agg canvas; no pyplot, no display).

Every function returns a ``matplotlib.figure.Figure`` built from plain data (records of
metrics.jsonl, rows of alpha.csv, arrays of logits), so a test can read the plotted series back:

- each line that shows a recorded series carries, as its gid, the path of the value it plots in
  a metrics.jsonl record ("test/fused/acc", "train/cls", "diagnostics/grad_norm/pix",
  "imbalance_val", ...; "alpha.csv" for alpha), prefixed with "<run label>::" in figures that
  overlay runs; its x data are the recorded epochs (or the progress column of alpha.csv);
- bars are BarContainers labelled with the series they show;
- ``fig.modgap_data`` holds the numbers behind the figure (e.g. per-class accuracies, the 2-D
  coordinates of the modality-gap picture), and ``save_figure`` writes them, with every line and
  bar read back from the axes, to a JSON file next to the PNG (x.png -> x.plot.json).

Values a record lacks (None) are plotted as NaN (a break in the line).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..train.metrics import modality_gap

DPI = 100
NAN = float("nan")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FUSED_COLOR = "#000000"
LINESTYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------------- helpers
def dig(record: dict[str, Any], path: str) -> Any:
    """record["a"]["b"]["c"] for path "a/b/c"; None where any part is missing."""
    value: Any = record
    for part in path.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def series(records: Sequence[dict[str, Any]], path: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one recorded series; a missing or None value becomes NaN."""
    x = [float(r["epoch"]) for r in records]
    y = [NAN if not isinstance(v := dig(r, path), (int, float)) or isinstance(v, bool) else float(v) for r in records]
    return x, y


def modality_colors(names: Sequence[str]) -> dict[str, str]:
    """Fused in black, modalities in a fixed colour order."""
    out, k = {}, 0
    for name in names:
        if name == "fused":
            out[name] = FUSED_COLOR
        else:
            out[name] = COLORS[k % len(COLORS)]
            k += 1
    return out


class DataFigure(Figure):
    """A Figure that carries ``modgap_data``, the numbers behind it (declared here for the type checker)."""

    modgap_data: dict[str, Any]


def new_figure(width: float, height: float) -> DataFigure:
    fig = DataFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # rendered by Agg; pyplot and the global backend are left alone
    fig.modgap_data = {}
    return fig


def plot_series(ax, x, y, label: str, gid: str, **style):
    (line,) = ax.plot(x, y, label=label, **style)
    line.set_gid(gid)
    return line


def grouped_bar(ax, pos: np.ndarray, k: int, groups: int, width: float, means, stds, **style):
    """Bar ``k`` of ``groups`` side-by-side bars of ``width`` at each x in ``pos``, with error bars."""
    return ax.bar(pos + (k - (groups - 1) / 2) * width, means, width, yerr=stds, capsize=3, **style)


def empty_panel(ax, text: str, title: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(values: Sequence[float]) -> bool:
    return any(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def describe(fig: Figure) -> dict[str, Any]:
    """Every axes' title, labels, lines (label, gid, x, y) and bars (label, x, height), and
    fig.modgap_data: what the figure shows, as numbers."""
    axes = []
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        lines = [
            {
                "label": line.get_label(),
                "gid": line.get_gid(),
                "x": np.asarray(line.get_xdata(), dtype=float),
                "y": np.asarray(line.get_ydata(), dtype=float),
            }
            for line in ax.get_lines()
        ]
        bars = []
        for c in ax.containers:
            if isinstance(c, BarContainer):
                bars.append(
                    {
                        "label": c.get_label(),
                        "x": [p.get_x() + p.get_width() / 2 for p in c.patches],
                        "height": [p.get_height() for p in c.patches],
                    }
                )
        axes.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "xticklabels": [t.get_text() for t in ax.get_xticklabels()] if bars else [],
                "lines": lines,
                "bars": bars,
            }
        )
    suptitle = fig._suptitle  # type: ignore[attr-defined]  # private; Figure.get_suptitle needs matplotlib 3.8
    title = suptitle.get_text() if suptitle is not None else ""
    return _jsonable({"title": title, "axes": axes, "data": getattr(fig, "modgap_data", {})})


def sidecar_path(png: str | Path) -> Path:
    """The JSON with a PNG's plotted data: x.png -> x.plot.json."""
    return Path(png).with_suffix(".plot.json")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """The PNG (nothing clipped: bbox_inches='tight') and the JSON of its plotted data beside it."""
    from ..runs import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    atomic_write_text(sidecar_path(path), json.dumps(describe(fig), indent=1) + "\n")
    return path


def run_styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Overlaid runs labelled "method / data / seed": colour by method, and within a method a line
    style (then a marker) per run, so that no two runs look alike."""
    colors: dict[str, str] = {}
    counts: dict[str, int] = {}
    out = {}
    markers = (None, "o", "s", "^", "v", "D")
    for label in labels:
        method = label.split(" / ")[0]
        color = colors.setdefault(method, COLORS[len(colors) % len(COLORS)])
        k = counts.get(method, 0)
        counts[method] = k + 1
        style: dict[str, Any] = {"color": color, "ls": LINESTYLES[k % len(LINESTYLES)]}
        marker = markers[(k // len(LINESTYLES)) % len(markers)]
        if marker:
            style.update(marker=marker, ms=3, markevery=0.1)
        out[label] = style
    return out


def epoch_axis(ax) -> None:
    """Whole epochs on the x axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_best(ax, best_epoch: int | None) -> None:
    if best_epoch is not None and best_epoch >= 0:
        line = ax.axvline(best_epoch, color="#999999", lw=1, ls=":", label=f"best val epoch ({best_epoch})")
        line.set_gid("best_epoch")


def _legend(ax, outside: bool = False, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, **kw)
    else:
        ax.legend(fontsize=8, **kw)


# ---------------------------------------------------------------------------------- one run
def learning_curves(
    records: Sequence[dict[str, Any]], modalities: Sequence[str], best_epoch: int | None = None, title: str = ""
) -> Figure:
    """Left: the train loss terms per epoch. Right: val (dashed) and test (solid) accuracy, fused and
    per modality."""
    fig = new_figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    terms: list[str] = []
    for r in records:
        terms += [k for k in r.get("train", {}) if k not in terms]
    for k, term in enumerate(terms):
        x, y = series(records, f"train/{term}")
        plot_series(ax_loss, x, y, term, f"train/{term}", color=COLORS[k % len(COLORS)], marker=".", ms=4)
    ax_loss.set(title="Training loss terms (mean over the epoch)", xlabel="epoch", ylabel="loss")
    epoch_axis(ax_loss)
    _mark_best(ax_loss, best_epoch)
    _legend(ax_loss)
    names = ["fused", *modalities]
    colors = modality_colors(names)
    for split, style in (("test", "-"), ("val", "--")):
        for name in names:
            x, y = series(records, f"{split}/{name}/acc")
            plot_series(
                ax_acc,
                x,
                y,
                f"{split} {name}",
                f"{split}/{name}/acc",
                color=colors[name],
                ls=style,
                lw=2.2 if name == "fused" else 1.5,
            )
    _mark_best(ax_acc, best_epoch)
    ax_acc.set(title="Accuracy (test solid, val dashed)", xlabel="epoch", ylabel="accuracy")
    epoch_axis(ax_acc)
    _legend(ax_acc, outside=True)
    if title:
        fig.suptitle(title)
    fig.modgap_data = {"epochs": [r["epoch"] for r in records], "loss_terms": terms, "best_epoch": best_epoch}
    return fig


def read_alpha_csv(path: str | Path) -> dict[str, list[float]]:
    """alpha.csv as columns: step, epoch, progress, alpha."""
    import csv

    cols: dict[str, list[float]] = {"step": [], "epoch": [], "progress": [], "alpha": []}
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                values = {k: float(row[k]) for k in cols}
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a crash
            for k, v in values.items():
                cols[k].append(v)
    return cols


def alpha_curves(runs: Sequence[tuple[str, dict[str, list[float]]]], title: str = "") -> Figure:
    """alpha against training progress (epoch / #epochs, the progress column of alpha.csv), one
    line per run, labelled by the run (as the paper's figure of the learned alpha)."""
    fig = new_figure(7.5 if len(runs) > 1 else 6.5, 4.2)
    ax = fig.subplots()
    styles = run_styles([label for label, _ in runs])
    for label, cols in runs:
        plot_series(
            ax,
            cols["progress"],
            cols["alpha"],
            label,
            f"{label}::alpha.csv" if len(runs) > 1 else "alpha.csv",
            lw=1.5,
            **styles[label],
        )
    ax.set(
        xlabel="training progress (epoch / #epochs)",
        ylabel="alpha (weight on classification)",
        title=title or "alpha during training",
        xlim=(0, 1),
    )
    lo = min((min(c["alpha"]) for _, c in runs if c["alpha"]), default=0.0)
    ax.set_ylim(min(0.0, lo - 0.02), 1.02)
    ax.grid(alpha=0.3)
    _legend(ax, outside=len(runs) > 3)
    fig.modgap_data = {"runs": [label for label, _ in runs]}
    return fig


def method_scalars(series: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Figure:
    """The values a method reports after each step (scalars.csv) against training progress, one panel
    per kind of name (the part before '/': k, weight, beta, ...) and one line per name in it."""
    kinds: dict[str, list[str]] = {}
    for name in series:
        kinds.setdefault(name.split("/", 1)[0], []).append(name)
    fig = new_figure(6.5, 2.8 * len(kinds) + 0.6)
    axes = fig.subplots(len(kinds), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (kind, names) in zip(axes, kinds.items(), strict=True):
        for name in names:
            plot_series(ax, series[name]["progress"], series[name]["value"], name, f"scalars.csv::{name}", lw=1.2)
        ax.set(ylabel=kind, xlim=(0, 1))
        ax.grid(alpha=0.3)
        _legend(ax, outside=len(names) > 4)
    axes[-1].set_xlabel("training progress (epoch / #epochs)")
    fig.suptitle(title or "the method's own values during training")
    fig.modgap_data = {"names": list(series)}
    return fig


def alpha_by_method(groups: Mapping[str, Mapping[str, Sequence[dict[str, list[float]]]]], points: int = 200) -> Figure:
    """alpha(t) of each method next to the others, one panel per dataset: the mean over its runs
    (seeds) on a common grid of training progress, with the band from the lowest to the highest run.
    ``groups``: dataset -> method label -> the alpha.csv columns of its runs. Lines' gids are
    "<dataset>::<method>"; fig.modgap_data has the grid and, per line, mean, low, high and #runs."""
    datasets = sorted(groups)
    methods = sorted({m for d in datasets for m in groups[d]})
    style = {
        m: {"color": COLORS[k % len(COLORS)], "ls": LINESTYLES[(k // len(COLORS)) % len(LINESTYLES)]}
        for k, m in enumerate(methods)
    }  # one style per method in every panel
    fig = new_figure(6.0 * max(len(datasets), 1), 4.2 + 0.22 * len(methods))
    axes = np.atleast_1d(fig.subplots(1, max(len(datasets), 1)))
    grid = np.linspace(0.0, 1.0, points)
    data: dict[str, Any] = {"progress": grid, "lines": {}}
    for ax, dataset in zip(axes, datasets, strict=False):  # one blank axis when there is no dataset
        for method in sorted(groups[dataset]):
            runs = [c for c in groups[dataset][method] if c["alpha"]]
            if not runs:
                continue
            curves = np.stack([np.interp(grid, c["progress"], c["alpha"]) for c in runs])
            mean, lo, hi = curves.mean(0), curves.min(0), curves.max(0)
            plot_series(ax, grid, mean, f"{method} ({len(runs)})", f"{dataset}::{method}", lw=1.6, **style[method])
            if len(runs) > 1:
                ax.fill_between(grid, lo, hi, color=style[method]["color"], alpha=0.12, lw=0)
            data["lines"][f"{dataset}::{method}"] = {"mean": mean, "low": lo, "high": hi, "runs": len(runs)}
        ax.set(
            xlabel="training progress (epoch / #epochs)",
            ylabel="alpha (weight on classification)",
            title=f"alpha by method: {dataset}",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
    handles = {h.get_label().rsplit(" (", 1)[0]: h for ax in axes for h in ax.get_lines()}
    if handles:  # one legend for all panels, below them (the run counts are in each line's label)
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=1 if len(datasets) < 2 else 2,
            fontsize=8,
            frameon=False,
        )
    fig.modgap_data = data
    return fig


def balance_curves(
    records: Sequence[dict[str, Any]], modalities: Sequence[str], best_epoch: int | None = None, title: str = ""
) -> Figure:
    """Imbalance ratio (val), per-encoder gradient norm, OGM-GE discrepancy ratio and the val
    modality gap, per epoch (train.diagnostics)."""
    fig = new_figure(11, 7.5)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    x, y = series(records, "imbalance_val")
    plot_series(ax, x, y, "imbalance (val)", "imbalance_val", color=COLORS[0], marker=".", ms=4)
    ax.axhline(1.0, color="#999999", lw=0.8, ls="--").set_gid("reference")
    ax.set(title="Imbalance: strongest / weakest modality val accuracy", xlabel="epoch", ylabel="ratio")
    _mark_best(ax, best_epoch)
    _legend(ax)
    has_diag = any("diagnostics" in r for r in records)
    colors = modality_colors(modalities)
    ax = axes[0, 1]
    if has_diag:
        for m in modalities:
            x, y = series(records, f"diagnostics/grad_norm/{m}")
            plot_series(ax, x, y, m, f"diagnostics/grad_norm/{m}", color=colors[m], marker=".", ms=4)
        ax.set(title="Gradient norm per encoder (mean over steps)", xlabel="epoch", ylabel="L2 norm")
        _legend(ax)
    else:
        empty_panel(ax, "not recorded\n(train.diagnostics=false)", "Gradient norm per encoder")
    ax = axes[1, 0]
    x, y = series(records, "diagnostics/discrepancy")
    if has_diag and _finite(y):
        plot_series(ax, x, y, "discrepancy ratio", "diagnostics/discrepancy", color=COLORS[3], marker=".", ms=4)
        ax.axhline(1.0, color="#999999", lw=0.8, ls="--").set_gid("reference")
        ax.set(title="OGM-GE discrepancy ratio (train, strongest / weakest)", xlabel="epoch", ylabel="ratio")
        _legend(ax)
    else:
        empty_panel(ax, "not recorded (needs train.diagnostics\nand at least two modalities)", "Discrepancy ratio")
    ax = axes[1, 1]
    gap_paths = []
    for r in records:
        for space, pairs in (dig(r, "diagnostics/gap_val") or {}).items():
            for pair in pairs:
                p = f"diagnostics/gap_val/{space}/{pair}/centroid"
                if p not in gap_paths:
                    gap_paths.append(p)
    if gap_paths:
        for k, p in enumerate(gap_paths):
            _, _, space, pair, _ = p.split("/")
            x, y = series(records, p)
            plot_series(ax, x, y, f"{pair} ({space})", p, color=COLORS[(k + 4) % len(COLORS)], marker=".", ms=4)
        ax.set(title="Modality gap on val (centroid distance)", xlabel="epoch", ylabel="distance")
        _legend(ax)
    else:
        empty_panel(ax, "not recorded (needs train.diagnostics\nand at least two modalities)", "Modality gap (val)")
    for ax in axes.ravel():
        if ax.get_xlabel() == "epoch":
            epoch_axis(ax)
    if title:
        fig.suptitle(title)
    fig.modgap_data = {"epochs": [r["epoch"] for r in records]}
    return fig


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA coordinates and the explained variance ratio of the two components."""
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    if comps.shape[0] < 2:
        comps = np.vstack([comps, np.zeros_like(comps)])
    var = s**2
    ratio = var[:2] / max(var.sum(), 1e-30)
    return centred @ comps.T, np.pad(ratio, (0, 2 - len(ratio)))


def gap_picture(
    features: dict[str, np.ndarray], space: str = "logits", max_points: int = 600, title: str = "", seed: int = 0
) -> Figure:
    """Paired features of each pair of modalities, L2-normalised and projected to 2-D by a PCA fitted
    on both modalities together; faint lines join the two features of each sample, crosses mark the
    centroids. The title gives the centroid gap (distance between the centroids of the normalised
    features, in the full space: modgap.train.metrics.modality_gap) and the mean paired distance."""
    names = list(features)
    pairs = list(itertools.combinations(names, 2))
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = new_figure(5.2 * cols, 4.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    colors = modality_colors(names)
    gap = modality_gap(features)
    data: dict[str, Any] = {"space": space, "pairs": {}}
    for ax, (m, n) in zip(axes, pairs, strict=False):  # the grid may have more axes than pairs
        a = features[m] / np.maximum(np.linalg.norm(features[m], axis=1, keepdims=True), 1e-12)
        b = features[n] / np.maximum(np.linalg.norm(features[n], axis=1, keepdims=True), 1e-12)
        coords, ratio = _pca2(np.concatenate([a, b]).astype(np.float64))
        ca, cb = coords[: len(a)], coords[len(a) :]
        shown = np.arange(len(a))
        if len(a) > max_points:
            shown = np.sort(np.random.default_rng(seed).choice(len(a), max_points, replace=False))
        links = np.stack([ca[shown], cb[shown]], axis=1)
        # an (n, 2, 2) array is a sequence of segments; the stubs ask for a Sequence
        joins = LineCollection(links, colors="#777777", linewidths=0.5, alpha=0.15, zorder=1)  # type: ignore[arg-type]
        ax.add_collection(joins)
        ax.scatter(ca[shown, 0], ca[shown, 1], s=9, color=colors[m], alpha=0.7, label=f"{m} (n={len(a)})", zorder=2)
        ax.scatter(cb[shown, 0], cb[shown, 1], s=9, color=colors[n], alpha=0.7, label=f"{n} (n={len(b)})", zorder=2)
        centroids = np.stack([ca.mean(0), cb.mean(0)])
        ax.scatter(
            centroids[:, 0],
            centroids[:, 1],
            s=140,
            marker="X",
            c=[colors[m], colors[n]],
            edgecolors="white",
            linewidths=1.2,
            zorder=4,
            label="centroids",
        )
        plot_series(
            ax,
            centroids[:, 0],
            centroids[:, 1],
            "centroid gap (projected)",
            f"centroid/{m}-{n}",
            color="#333333",
            lw=1.5,
            zorder=3,
        )
        g = gap[f"{m}-{n}"]
        ax.set_title(
            f"{m} vs {n} ({space}): centroid gap {g['centroid']:.3f}\nmean paired distance {g['paired']:.3f}",
            fontsize=10,
        )
        ax.set(xlabel=f"PC 1 ({100 * ratio[0]:.0f}% of variance)", ylabel=f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.2)
        ax.legend(fontsize=8, loc="best", markerscale=0.8)
        data["pairs"][f"{m}-{n}"] = {
            "centroid": g["centroid"],
            "paired": g["paired"],
            "explained": ratio,
            "coords": {m: ca, n: cb},
            "shown": shown,
        }
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.modgap_data = data
    return fig


def per_class_accuracy(logits: dict[str, np.ndarray], y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Support per class and, per name, the accuracy on each class (NaN where a class has no sample)."""
    classes = max(max(z.shape[1] for z in logits.values()), int(y.max()) + 1)
    support = np.bincount(y, minlength=classes)
    out = {}
    for name, z in logits.items():
        correct = np.bincount(y, weights=(z.argmax(1) == y).astype(float), minlength=classes)
        out[name] = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    return support, out


def per_class_figure(
    logits: dict[str, np.ndarray], y: np.ndarray, class_names: Sequence[str], max_classes: int = 40, title: str = ""
) -> Figure:
    """Grouped bars: per class, the accuracy of the fused prediction and of each modality's own
    logits. With more than ``max_classes`` classes, the ones where the modalities differ most."""
    support, acc = per_class_accuracy(logits, y)
    classes = np.arange(len(support))
    note = ""
    modal = [k for k in acc if k != "fused"]
    if len(classes) > max_classes:
        stack = np.stack([acc[k] for k in modal]) if len(modal) > 1 else np.stack([acc[k] for k in acc])
        spread = np.nan_to_num(np.nanmax(stack, 0) - np.nanmin(stack, 0), nan=-1.0)
        classes = np.sort(np.argsort(-spread, kind="stable")[:max_classes])
        note = f" ({max_classes} of {len(support)} classes: the largest spread between modalities)"
    names = list(acc)
    width = 0.8 / len(names)
    fig = new_figure(min(max(6.0, 0.28 * len(classes) * len(names) + 2.5), 22.0), 4.6)
    ax = fig.subplots()
    colors = modality_colors(names)
    pos = np.arange(len(classes))
    for k, name in enumerate(names):
        ax.bar(
            pos + (k - (len(names) - 1) / 2) * width,
            acc[name][classes],
            width,
            label=name,
            color=colors[name],
            alpha=0.9 if name == "fused" else 0.8,
        )
    labels = [str(class_names[int(c)]) if c < len(class_names) else str(c) for c in classes]
    ax.set_xticks(
        pos,
        labels,
        rotation=45 if max(map(len, labels)) > 3 or len(labels) > 12 else 0,
        ha="right" if max(map(len, labels)) > 3 or len(labels) > 12 else "center",
        fontsize=8,
    )
    ax.set(xlabel="class", ylabel="accuracy", ylim=(0, 1.05), title=(title or "Per-class accuracy") + note)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, outside=True)
    fig.modgap_data = {"classes": [str(c) for c in class_names], "shown": classes, "support": support, "accuracy": acc}
    return fig


def shapley_figure(result: dict[str, Any], title: str = "") -> Figure:
    """Bars of each modality's Shapley contribution to the fused accuracy and to the fused logit of
    the true class (modgap.report.shapley)."""
    mods = list(result["modalities"])
    fig = new_figure(max(8.0, 1.2 * len(mods) + 5), 4.0)
    axes = fig.subplots(1, 2)
    colors = modality_colors(mods)
    for ax, key, ylabel in (
        (axes[0], "acc", "contribution to fused accuracy"),
        (axes[1], "true_logit", "contribution to true-class fused logit"),
    ):
        values = [result["shapley"][key][m] for m in mods]
        ax.bar(mods, values, color=[colors[m] for m in mods], label=key)
        ax.axhline(0, color="#333333", lw=0.8).set_gid("reference")
        full, empty = result["full"][key], result["empty"][key]
        ax.set(
            xlabel="modality",
            ylabel=ylabel,
            title=f"v(all) = {full:.3f}, v(none) = {empty:.3f}\nsum of contributions = {full - empty:.3f}",
        )
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"Shapley contributions ({result['replace']}-replaced modalities, {result['split']} split)")
    fig.modgap_data = {"shapley": result["shapley"], "full": result["full"], "empty": result["empty"]}
    return fig


# ---------------------------------------------------------------------------------- a bench
def bench_accuracy_figure(agg: dict[str, dict[str, dict[str, Any]]]) -> Figure:
    """Fused test accuracy, mean with the std over seeds as error bars, per method (bars) per dataset
    (groups)."""
    datasets = list(agg)
    methods: list[str] = []
    for d in datasets:
        methods += [m for m in agg[d] if m not in methods]
    width = 0.8 / max(len(methods), 1)
    fig = new_figure(min(max(5.0, 0.75 * len(datasets) * len(methods) + 3.0), 22.0), 4.6)
    ax = fig.subplots()
    pos = np.arange(len(datasets))
    data: dict[str, Any] = {}
    for k, method in enumerate(methods):
        means = [agg[d][method]["acc"][0] if method in agg[d] else NAN for d in datasets]
        stds = [agg[d][method]["acc"][1] if method in agg[d] else NAN for d in datasets]
        bars = grouped_bar(
            ax,
            pos,
            k,
            len(methods),
            width,
            means,
            stds,
            label=method,
            color=COLORS[k % len(COLORS)],
            error_kw={"elinewidth": 1},
        )
        if len(datasets) * len(methods) <= 24:
            ax.bar_label(
                bars,
                labels=[f"{100 * m:.1f}" if math.isfinite(m) else "" for m in means],
                fontsize=8,
                label_type="center",
                color="white",
                fontweight="bold",
            )
        data[method] = {
            "mean": means,
            "std": stds,
            "n": [agg[d][method]["n"] if method in agg[d] else 0 for d in datasets],
        }
    ax.set_xticks(pos, datasets, rotation=0 if len(datasets) < 4 else 20)
    ax.set(
        xlabel="dataset",
        ylabel="fused test accuracy",
        ylim=(0, 1.08),
        title="Fused test accuracy (mean ± std over seeds, %)",
    )
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, outside=True, title="method")
    fig.modgap_data = {"datasets": datasets, "methods": data}
    return fig


def bench_modality_figure(agg: dict[str, dict[str, dict[str, Any]]]) -> Figure:
    """Per dataset, per method: fused and per-modality test accuracy (mean ± std over seeds)."""
    datasets = list(agg)
    fig = new_figure(max(6.5, 3.2 + 1.6 * max(len(m) for m in agg.values())), 4.3 * len(datasets))
    axes = np.atleast_1d(fig.subplots(len(datasets), 1)).ravel()
    data: dict[str, Any] = {}
    for ax, d in zip(axes, datasets, strict=True):
        methods = list(agg[d])
        modalities = list(next(iter(agg[d].values()))["modalities"])
        names = ["fused", *modalities]
        colors = modality_colors(names)
        width = 0.8 / len(names)
        pos = np.arange(len(methods))
        data[d] = {}
        for k, name in enumerate(names):
            means = [agg[d][m]["acc"][0] if name == "fused" else agg[d][m]["modalities"][name][0] for m in methods]
            stds = [agg[d][m]["acc"][1] if name == "fused" else agg[d][m]["modalities"][name][1] for m in methods]
            grouped_bar(
                ax, pos, k, len(names), width, means, stds, label=name, color=colors[name], error_kw={"elinewidth": 1}
            )
            data[d][name] = {"methods": methods, "mean": means, "std": stds}
        ax.set_xticks(pos, methods, rotation=0 if len(methods) < 5 else 20)
        ax.set(
            xlabel="method", ylabel="test accuracy", ylim=(0, 1.05), title=f"{d}: fused and per-modality test accuracy"
        )
        ax.grid(axis="y", alpha=0.3)
        _legend(ax, outside=True)
    fig.modgap_data = data
    return fig


def bench_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> Figure:
    """Per run (one line each): val fused accuracy, val imbalance and val modality gap per epoch."""
    fig = new_figure(15, 4.4)
    axes = fig.subplots(1, 3)
    styles = run_styles([label for label, _ in runs])
    for label, records in runs:
        gap_path = None
        for r in records:
            pairs = dig(r, "diagnostics/gap_val/logits") or {}
            if pairs:
                gap_path = f"diagnostics/gap_val/logits/{next(iter(pairs))}/centroid"
                break
        for ax, path in zip(axes, ("val/fused/acc", "imbalance_val", gap_path), strict=True):
            if path is None:
                continue
            x, y = series(records, path)
            plot_series(ax, x, y, label, f"{label}::{path}", lw=1.3, **styles[label])
    titles = ("Val fused accuracy", "Imbalance (val, strongest / weakest)", "Modality gap on val (logits, first pair)")
    for ax, t, yl in zip(axes, titles, ("accuracy", "ratio", "centroid distance"), strict=True):
        ax.set(title=t, xlabel="epoch", ylabel=yl)
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    _legend(axes[2], outside=True)
    fig.modgap_data = {"runs": [label for label, _ in runs]}
    return fig


def tune_value(row: Mapping[str, Any]) -> float:
    """A trial's objective (a pruned trial: its last reported validation accuracy), NaN without one."""
    for key in ("value", "last_val"):
        try:
            v = float(row.get(key) or "nan")
        except ValueError:
            continue
        if math.isfinite(v):
            return v
    return NAN


def tune_history(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The objective of every trial by trial number (completed: dots; pruned: crosses at their last
    validation accuracy), and the best completed value so far (a step line)."""
    fig = new_figure(6.5, 4.0)
    ax = fig.subplots()
    best, best_so_far, numbers = -math.inf, [], []
    for state, marker, color in (("complete", "o", COLORS[0]), ("pruned", "x", COLORS[3])):
        picked = [r for r in rows if r["state"] == state]
        xs = [int(r["number"]) for r in picked]
        ys = [tune_value(r) for r in picked]
        if xs:
            plot_series(ax, xs, ys, f"{state} ({len(xs)})", f"trials::{state}", ls="", marker=marker, color=color)
    for r in sorted(rows, key=lambda r: int(r["number"])):
        if r["state"] == "complete":
            best = max(best, tune_value(r))
        if math.isfinite(best):
            numbers.append(int(r["number"]))
            best_so_far.append(best)
    if numbers:
        plot_series(ax, numbers, best_so_far, "best so far", "trials::best_so_far", drawstyle="steps-post", color="k")
    ax.set(xlabel="trial", ylabel="val fused accuracy (objective)", title="optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.modgap_data = {"trials": len(rows)}
    return fig


def param_importance(importance: Mapping[str, float]) -> Figure:
    """Each searched parameter's importance (Optuna's fANOVA: its share of the objective's variance)."""
    names = sorted(importance, key=lambda k: importance[k])
    fig = new_figure(6.0, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    bars = ax.barh(names, [importance[k] for k in names], color=COLORS[0])
    ax.bar_label(bars, labels=[f"{importance[k]:.2f}" for k in names], fontsize=8, padding=2)
    ax.set(xlabel="importance (share of the objective's variance)", xlim=(0, 1.1), title="parameter importance")
    fig.modgap_data = {"importance": dict(importance)}
    return fig


def tune_slices(rows: Sequence[Mapping[str, Any]], params: Sequence[str], log: Sequence[str] = ()) -> Figure:
    """The objective against each searched parameter (one panel each; pruned trials as crosses); the
    parameters in ``log`` (searched on a log scale) on a log axis."""
    fig = new_figure(3.3 * len(params) + 0.5, 3.4)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, name in zip(axes, params, strict=True):
        for state, marker, color in (("complete", "o", COLORS[0]), ("pruned", "x", COLORS[3])):
            picked = [r for r in rows if r["state"] == state and r.get(name) not in (None, "")]
            xs = [_param_value(r[name]) for r in picked]
            plot_series(
                ax, xs, [tune_value(r) for r in picked], state, f"{name}::{state}", ls="", marker=marker, color=color
            )
        if name in log:
            ax.set_xscale("log")
        ax.set(xlabel=name, title=name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val fused accuracy")
    _legend(axes[-1])
    fig.modgap_data = {"params": list(params)}
    return fig


def _param_value(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
