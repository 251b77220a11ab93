"""Step time of lfm-lb's short-horizon remedies (issue 8) relative to joint, on modgap's own Trainer.

The approach of benchmarks/step_time.py (its fixed batches and step loop are reused): one Trainer
per method variant, the same fixed training batches for all, trainer.train_step in a loop with
ctx.step set as fit() does it, warm-up, then --repeats timed blocks of --steps steps per variant,
variants interleaved block by block, median block. --steps is rounded up to a multiple of lfm-lb's
`every` so each block holds whole update cycles (the per-step figure is then the amortised cost).
CPU time of this process (time.process_time, one torch thread) unless --clock wall.

    python benchmarks/lfm_lb_cost.py --model mlp            # MLP stand-in, hidden 1024,1024, features 512 (mfeat)
    python benchmarks/lfm_lb_cost.py --model resnet         # synth-av real shapes, ResNet-18 width 16

Variants (method specs as in `modgap bench`): joint, lfm-h (constant weight), lfm-lb (one-step,
every 10), lfm-lb with horizon 2/5/10, with val_objective=fused+modalities, with hyper_momentum.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_time

import modgap
from modgap.bench import parse_method
from modgap.train.trainer import Trainer

VARIANTS = ("joint,lfm-h[schedule=constant,w0=0.5],lfm-lb,lfm-lb[horizon=2],lfm-lb[horizon=5],lfm-lb[horizon=10],"
            "lfm-lb[val_objective=fused+modalities],lfm-lb[hyper_momentum=0.9],"
            "lfm-lb[horizon=10,val_objective=fused+modalities,hyper_momentum=0.9]")


def make_trainer(spec: str, args: argparse.Namespace, root: Path, index: int) -> Trainer:
    name, options = parse_method(spec)
    if args.model == "mlp":
        data = {"name": "mfeat", "modalities": ["pix", "fou"], "batch_size": args.batch_size}
        model = {"hidden": [int(h) for h in args.hidden.split(",") if h], "feature_dim": args.feature_dim}
    else:
        data = {"name": "synth-av", "batch_size": args.batch_size,
                "options": {"n": args.n, "size": args.size, "frames": args.frames}}
        model = {"width": args.width}
    config = modgap.make_config(overrides={"data": data, "model": model, "method": {"name": name, **options},
                                           "train": {"progress": False, "threads": args.threads}})
    trainer = Trainer(config, root / f"v{index}")
    trainer.model.train()
    trainer.method.train()
    trainer.ctx.epoch = 0
    trainer.method.on_epoch_start(trainer.ctx)
    return trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("mlp", "resnet"), default="mlp")
    p.add_argument("--variants", default=VARIANTS, help="method specs, comma-separated (default: all)")
    p.add_argument("--hidden", default="1024,1024", help="mlp: hidden sizes (default %(default)s)")
    p.add_argument("--feature-dim", type=int, default=512, help="mlp: feature size (default %(default)s)")
    p.add_argument("--width", type=int, default=16, help="resnet: channels of the first stage (default %(default)s)")
    p.add_argument("--size", type=int, default=224, help="resnet: frame size (default %(default)s)")
    p.add_argument("--frames", type=int, default=3, help="resnet: frames per clip (default %(default)s)")
    p.add_argument("--n", type=int, default=30, help="resnet: synth-av samples per class (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=4, help="fixed training batches, cycled (default %(default)s)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=100, help="steps per timed block, rounded up to a multiple of every")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from modgap.bench import split_list

    specs = split_list(args.variants)
    with tempfile.TemporaryDirectory(prefix="modgap-lbcost-") as tmp:
        trainers = {s: make_trainer(s, args, Path(tmp), i) for i, s in enumerate(specs)}
        first = next(iter(trainers.values()))
        every = max((t.method.options.every for t in trainers.values() if hasattr(t.method.options, "every")),
                    default=1)
        steps = -(-args.steps // every) * every
        warmup = -(-args.warmup // every) * every
        batches = step_time.fixed_batches(first, args.batches)
        n_params = sum(p.numel() for p in first.model.parameters())
        what = (f"MLP hidden {args.hidden}, features {args.feature_dim}, mfeat pix+fou" if args.model == "mlp" else
                f"ResNet-18 width {args.width} per modality, synth-av real shapes "
                f"{ {m: first.data.input_shape(m) for m in first.data.modalities} }")
        print(f"# lfm-lb remedies, step time: {what}, {n_params / 1e6:.2f} M parameters, batch {len(batches[0])}, "
              f"SGD (modgap defaults), torch {torch.__version__}, {torch.get_num_threads()} thread(s); warm-up {warmup}, "
              f"{args.repeats} x {steps} steps per variant (whole update cycles of every={every}), median block\n")
        for tr in trainers.values():
            step_time.run_steps(tr, batches, warmup)
        blocks: dict[str, dict[str, list[float]]] = {c: defaultdict(list) for c in step_time.CLOCKS}
        for _ in range(args.repeats):
            for name, tr in trainers.items():
                t0 = {c: f() for c, f in step_time.CLOCKS.items()}
                step_time.run_steps(tr, batches, steps)
                for c, f in step_time.CLOCKS.items():
                    blocks[c][name].append(1e3 * (f() - t0[c]) / steps)
        meds = {c: {k: statistics.median(v) for k, v in b.items()} for c, b in blocks.items()}
        base = specs[0]
        print(f"| method | CPU ms/step | ratio to {base} (CPU) | wall ms/step [min] | ratio (wall) |")
        print("|---|---:|---:|---:|---:|")
        for name in specs:
            print(f"| {name} | {meds['cpu'][name]:.2f} | {meds['cpu'][name] / meds['cpu'][base]:.2f} | "
                  f"{meds['wall'][name]:.2f} [{min(blocks['wall'][name]):.2f}] | "
                  f"{meds['wall'][name] / meds['wall'][base]:.2f} |")
        spread = {n: (max(v) - min(v)) / statistics.median(v) for n, v in blocks[args.clock].items()}
        print(f"\nlargest spread of the {args.clock} blocks (max - min) / median: "
              f"{max(spread.values()):.1%} ({max(spread, key=spread.get)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
