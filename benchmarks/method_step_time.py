"""Step time of every registered method relative to joint, on the same model and batches.

    python benchmarks/method_step_time.py [--steps 200] [--repeats 3] [--hidden 256] [--feature-dim 128]

Each method trains through modgap's own Trainer.train_step on the same fixed batches of mfeat
pix+fou (batch 64, SGD). The per-step time (CPU clock, one thread, median of the repeats) is the
step itself; work a method does once per epoch (prototypes, held-out estimates, teachers) is timed
separately from on_epoch_start + on_epoch_end and shown amortised over the epoch's 23 steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import fixed_batches, make_trainer, run_steps  # noqa: E402

from modgap.methods import METHODS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", default="256")
    parser.add_argument("--feature-dim", type=int, default=128)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = {"hidden": [int(h) for h in args.hidden.split(",")], "feature_dim": args.feature_dim}
    names = [m for m in args.methods.split(",") if m]
    if "joint" in names:
        names.remove("joint")
    names.insert(0, "joint")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            trainer = make_trainer({"name": name}, model, 64, Path(tmp))
            batches = fixed_batches(trainer, 8)
            started = time.process_time()
            trainer.method.on_epoch_end(trainer.ctx)
            trainer.method.on_epoch_start(trainer.ctx)
            epoch_hooks = time.process_time() - started
            run_steps(trainer, batches, 20)  # warm-up
            times = []
            for _ in range(args.repeats):
                started = time.process_time()
                run_steps(trainer, batches, args.steps)
                times.append((time.process_time() - started) / args.steps)
            step = statistics.median(times)
            rows.append((name, step, epoch_hooks / trainer.ctx.steps_per_epoch))
    base = rows[0][1]
    print(f"# step time per method, mfeat pix+fou, MLP hidden {args.hidden}, batch 64, SGD, 1 thread, "
          f"torch {torch.__version__}; median of {args.repeats} x {args.steps} steps (CPU clock)\n")
    print("| method | ms/step | ratio to joint | per-epoch hooks, ms per step | ratio incl. hooks |")
    print("|---|---:|---:|---:|---:|")
    for name, step, hooks in rows:
        print(f"| {name} | {1000 * step:.3f} | {step / base:.2f} | {1000 * hooks:.3f} | {(step + hooks) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
