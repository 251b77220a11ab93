"""Draw docs/images/architecture.png: modgap's layers (left) and one batch's journey (right).

    python scripts/architecture_figure.py [--out docs/images/architecture.png]

The layer order is tests/test_layers.py's LAYERS; redraw after changing it (the script checks that
the two agree, so a stale picture is a failed run, not a silent one). Matplotlib only, no data.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: (modules of the layer, what lives there). Each may import its own layer and those below.
LAYERS = [
    (["errors"], "ModgapError, ConfigError, DataError: one-line messages"),
    (["config", "registry", "faults", "runs"],
     "Config dataclasses, make_config; Registry; fault points; the run folder on disk"),
    (["models"], "encoders, fusions, MultimodalClassifier -> ModelOutput"),
    (["data"], "DATASETS, one file per dataset; Batch; splits; prepare / prepared caches"),
    (["methods"], "METHODS, one file per method; Method hooks, Options; compose (a+b)"),
    (["train"], "assemble, BatchPlan, BatchLoader, Trainer loop, metrics, precision, distributed"),
    (["report", "tracking"], "tables, plots, report.html, analyses of a trained run; TensorBoard, MLflow trackers"),
    (["bench", "tune", "launchers"], "grids of runs (methods x datasets x seeds), results tables; here or Slurm"),
    (["cli", "__main__", "__init__"], "modgap train / prepare / bench / report / analyze / list"),
]
COLOURS = ["#e0e0e0", "#d9d2e9", "#cfe2f3", "#d9ead3", "#fff2cc", "#fce5cd", "#f4cccc", "#ead1dc", "#c9daf8"]
LAYER_COLOUR = {name: COLOURS[i] for i, (names, _) in enumerate(LAYERS) for name in names}


def check_against_tests() -> None:
    """The drawn order must be the one tests/test_layers.py enforces."""
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "LAYERS":
            enforced = ast.literal_eval(node.value)
            drawn = [names for names, _ in LAYERS]
            if enforced != drawn:
                raise SystemExit(f"tests/test_layers.py LAYERS changed: {enforced}; update this script")
            return
    raise SystemExit("LAYERS not found in tests/test_layers.py")


def box(ax, x: float, y: float, w: float, h: float, title: str, text: str, colour: str, size: float = 8.5) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.2,rounding_size=0.8",
                                facecolor=colour, edgecolor="#555555", linewidth=0.8))
    if text:
        ax.text(x + 1.2, y + h * 0.66, title, ha="left", va="center", fontsize=size + 0.5, weight="bold",
                family="monospace")
        ax.text(x + 1.2, y + h * 0.28, text, ha="left", va="center", fontsize=size - 0.5, color="#222222")
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=size, family="monospace")


def arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str = "", colour: str = "#333333",
          rad: float = 0.0, lw: float = 1.1) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=colour, linewidth=lw,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))
    if label:
        ax.text((start[0] + end[0]) / 2 + 1.0, (start[1] + end[1]) / 2, label, fontsize=7.2, color=colour,
                ha="left", va="center", style="italic")


def draw_layers(ax) -> None:
    ax.set_title("Layers: a module imports its own layer or lower ones, never in a cycle\n"
                 "(enforced by tests/test_layers.py)", fontsize=9.5)
    h, gap, x, w = 7.6, 3.3, 6.0, 88.0
    for i, (names, text) in enumerate(LAYERS):
        y = 2 + i * (h + gap)
        box(ax, x, y, w, h, "  ".join(names), text, COLOURS[i])
        if i:
            arrow(ax, (x + 4, y - 0.3), (x + 4, y - gap + 0.3))
    top = 2 + (len(LAYERS) - 1) * (h + gap) + h
    ax.annotate("", xy=(2.5, 2), xytext=(2.5, top), arrowprops={"arrowstyle": "-|>", "color": "#888888", "lw": 2})
    ax.text(1.2, top / 2, "imports point down", rotation=90, ha="center", va="center", fontsize=8, color="#666666")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, top + 2)


def column(ax, x: float, w: float, top: float, steps: list[tuple[str, str]], gap: float = 2.7) -> list[float]:
    """Boxes top to bottom, one per (layer, text), joined by arrows; returns each box's (top, bottom)."""
    spans = []
    for layer, text in steps:
        height = 3.4 + 2.4 * (text.count("\n") + 1)
        box(ax, x, top - height, w, height, text, "", LAYER_COLOUR[layer], size=7.4)
        spans.append((top, top - height))
        top -= height + gap
    for (_, bottom), (below, _) in zip(spans, spans[1:], strict=False):
        arrow(ax, (x + w / 2, bottom - 0.2), (x + w / 2, below + 0.2))
    return spans


def draw_journey(ax) -> None:
    ax.set_title("A config and a batch, through one training step", fontsize=9.5)
    config = column(ax, 1.0, 34.0, 98.0, [
        ("cli", "CLI flags, --config FILE.yaml,\n--set section.key=value"),
        ("config", "make_config: defaults <- YAML\n<- flags <- --set; the config's\nmethods: entry under method.*"),
        ("methods", "check_method_options:\nmethod.* against Options"),
        ("train", "assemble(config): seed, data,\nmodel, method, params, plan"),
    ])
    batch = column(ax, 42.0, 56.0, 98.0, [
        ("data", "DATASETS.get(name).load(cfg) -> MultimodalDataset"),
        ("train", "BatchPlan: the rows of each batch (seed, epoch), shard\n"
                  "[BatchLoader workers] -> Batch(inputs, y, index)"),
        ("models", "model(batch.inputs): encoders -> features h_m,\nfusion -> logits z_m and fused z: ModelOutput"),
        ("methods", "method.losses(out, batch, ctx) -> Losses(total, terms)"),
        ("methods", "method.backward, then after_backward (gradient hooks)"),
        ("train", "optimizer.step(), then method.after_step"),
        ("methods", "each epoch: on_epoch_start ... on_epoch_end"),
        ("train", "evaluate val and test: method.predict(out) -> metrics;\nbest epoch = best val fused accuracy"),
        ("runs", "RunFolder: config.yaml, splits.json, metrics.jsonl,\nalpha.csv, checkpoints/, summary.json"),
    ])
    # the assembly builds the dataset, the model and the method the batch goes through
    top, bottom = config[-1]
    start = (35.0, (top + bottom) / 2)
    for i in (0, 2, 3):
        arrow(ax, start, (42.0, (batch[i][0] + batch[i][1]) / 2), colour="#a61c00", rad=-0.15, lw=0.9)
    ax.text(35.6, bottom - 1.5, "builds", fontsize=7.2, color="#a61c00", style="italic", va="top")
    # which colour is which layer
    legend = [("cli", "modgap/cli.py"), ("runs", "modgap/config.py, runs.py"), ("models", "modgap/models/"),
              ("data", "modgap/data/"), ("methods", "modgap/methods/"), ("train", "modgap/train/")]
    y0 = bottom - 8
    ax.text(1.5, y0, "colour = the layer of the code", fontsize=7.4, va="center")
    for i, (layer, where) in enumerate(legend):
        y = y0 - 4.0 * (i + 1)
        ax.add_patch(FancyBboxPatch((1.5, y - 1.3), 3, 2.6, boxstyle="square,pad=0",
                                    facecolor=LAYER_COLOUR[layer], edgecolor="#555555", linewidth=0.6))
        ax.text(6, y, where, fontsize=7.2, va="center", family="monospace")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "architecture.png")
    args = parser.parse_args()
    check_against_tests()
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 7.6), gridspec_kw={"width_ratios": [1.0, 1.15]})
    for ax in (left, right):
        ax.set_axis_off()
    draw_layers(left)
    draw_journey(right)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, metadata={"Software": None})
    print(args.out)


if __name__ == "__main__":
    main()
