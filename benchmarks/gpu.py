"""GPU training throughput: ResNet-18 audio-visual (synth-av at real shapes, model.width=64).

Needs CUDA; on a machine without it, prints so and exits 0. Every figure is printed with
torch.cuda.get_device_name() of the GPU that produced it.

1. One GPU: samples/s of Trainer.train_step for train.precision fp32 and bf16, each with
   train.channels_last off and on (method joint by default; --methods joint,lfm-lb adds lfm-lb at
   its default every=10). Compute only: a few training batches are built first and kept on the GPU,
   so the figure is the model's (the input pipeline is measured by benchmarks/data_wait.py).
2. All visible GPUs: the same step under torchrun (one process per GPU, NCCL, DistributedDataParallel
   as modgap uses it by default, train.ddp=true), global batch = --batch x GPUs (weak scaling), against the same launcher
   with one process; scaling efficiency = samples/s(G) / (G x samples/s(1)). Skipped with 1 GPU.

Data: synth-av, 6 classes, audio 257 x 188 spectrograms, 3 frames of 224 x 224 per clip (its
defaults), enough clips for a few global batches. Timing: --warmup steps, then --steps steps
between torch.cuda.synchronize() calls. cudnn.benchmark stays as the trainer leaves it (off).

    python benchmarks/gpu.py                          # default: 20 timed steps per configuration
    python benchmarks/gpu.py --quick                  # 8 steps (scripts/gpu_check.sh)
    python benchmarks/gpu.py --methods joint,lfm-lb --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from modgap.config import make_config
from modgap.train.trainer import Trainer


def config(method: str, precision: str, channels_last: bool, batch: int, clips_per_class: int, device: str,
           size: int = 224, width: int = 64):
    return make_config(overrides={
        "data": {"name": "synth-av", "options": {"n": clips_per_class, "size": size}, "batch_size": batch},
        "method": {"name": method}, "model": {"width": width},
        "train": {"device": device, "precision": precision, "channels_last": channels_last, "epochs": 1,
                  "progress": False, "probe": False, "diagnostics": False}})


def measure(trainer: Trainer, warmup: int, steps: int) -> dict[str, float]:
    """samples/s (this process's samples) of train_step on pre-built batches."""
    batches = []
    epoch = 0
    while len(batches) < 4:
        for b in trainer.batches("train", True, epoch):
            if len(batches) < 4 and b.share > 0:
                batches.append(b)
        epoch += 1
    trainer.model.train()
    trainer.method.train()
    trainer.method.on_epoch_start(trainer.ctx)
    cuda = trainer.device.type == "cuda"

    def run(n: int) -> int:
        seen = 0
        for _ in range(n):
            b = batches[trainer.state.step % len(batches)]
            trainer.ctx.step = trainer.state.step
            trainer.train_step(b)
            trainer.state.step += 1
            seen += len(b)
        return seen

    run(warmup)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    seen = run(steps)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"samples_per_s": seen / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU (dry run)"


def clips_for(global_batch: int) -> int:
    """Clips per class so that the train split (about 72 % of 6 x n) holds two global batches."""
    return max(20, math.ceil(2 * global_batch / (6 * 0.7)))


# ------------------------------------------------------------------------- torchrun worker
def worker(args) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = "cuda" if not args.cpu_dry_run else "cpu"
    cfg = config(args.methods.split(",")[0], args.precision, args.channels_last, args.batch * world,
                 clips_for(args.batch * world), device, args.size, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        local = measure(trainer, args.warmup, args.steps)
        totals = trainer.dist.all_reduce_sum(torch.tensor([local["samples_per_s"]], dtype=torch.float64,
                                                          device=trainer.device))
        if trainer.dist.is_main:
            Path(args.worker_out).write_text(json.dumps({
                "gpus": world, "device": device_name(str(trainer.device)), "global_batch": args.batch * world,
                "samples_per_s": float(totals[0]), "ms_per_step": local["ms_per_step"]}))
        trainer.dist.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, procs: int) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
               "--worker-out", str(out), "--methods", args.methods, "--precision", args.ddp_precision,
               "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--size", str(args.size), "--width", str(args.width)]
        if args.ddp_channels_last:
            cmd.append("--channels-last")
        if args.cpu_dry_run:
            cmd.append("--cpu-dry-run")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            print(f"torchrun with {procs} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return None
        return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="joint")
    ap.add_argument("--batch", type=int, default=64, help="batch per GPU")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 warm-up and 8 timed steps")
    ap.add_argument("--size", type=int, default=224, help="frame size (224: real shapes)")
    ap.add_argument("--width", type=int, default=64, help="model.width (64: ResNet-18)")
    ap.add_argument("--ddp-precision", default="bf16", help="precision of the multi-GPU comparison")
    ap.add_argument("--ddp-channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run the script's code on the CPU at tiny sizes (checks the script; no figures)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.steps = 3, 8
    if args.worker:
        worker(args)
        return 0
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("benchmarks/gpu.py needs CUDA (torch.cuda.is_available() is False here); nothing measured. "
              "Run it on a GPU machine, or run scripts/gpu_check.sh there.")
        return 0
    if args.cpu_dry_run:
        args.size, args.width, args.batch, args.warmup, args.steps = 32, 4, 8, 1, 2
        args.ddp_precision, args.ddp_channels_last = "bf16", False
    device = "cpu" if args.cpu_dry_run else "cuda"
    gpus = torch.cuda.device_count() if not args.cpu_dry_run else 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version() if torch.cuda.is_available() else None}; visible GPUs: {gpus}; "
          f"{', '.join(device_name(f'cuda:{i}') for i in range(gpus)) if not args.cpu_dry_run else 'CPU dry run'}")
    print(f"synth-av real shapes: audio 257x188, 3 frames x 3 x {args.size} x {args.size}; ResNet-18 width "
          f"{args.width} per modality; batch {args.batch} per GPU; {args.warmup} warm-up + {args.steps} timed steps")
    print()
    head = f"{'device':28s} {'method':8s} {'precision':9s} {'ch_last':7s} {'GPUs':>4s} {'batch':>5s} " \
           f"{'samples/s':>10s} {'ms/step':>8s} {'peak GiB':>8s}"
    print(head)
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for precision in ("fp32", "bf16"):
                for cl in (False, True) if device == "cuda" else (False,):
                    cfg = config(method, precision, cl, args.batch, clips_for(args.batch), device, args.size, args.width)
                    trainer = Trainer(cfg, Path(tmp) / f"{method}-{precision}-{cl}")
                    r = measure(trainer, args.warmup, args.steps)
                    name = device_name(str(trainer.device))
                    rows.append((name, method, precision, cl, r["samples_per_s"]))
                    print(f"{name:28s} {method:8s} {precision:9s} {str(cl):7s} {1:4d} {args.batch:5d} "
                          f"{r['samples_per_s']:10.1f} {r['ms_per_step']:8.1f} {r['peak_gib']:8.2f}", flush=True)
                    del trainer
                    if device == "cuda":
                        torch.cuda.empty_cache()
    base = {(m, p, c): s for _, m, p, c, s in rows}
    for m in args.methods.split(","):
        fp32 = base[(m, "fp32", False)]
        print(f"{m}: bf16 / fp32 = {base[(m, 'bf16', False)] / fp32:.2f}x; "
              f"bf16+channels_last / fp32 = {base.get((m, 'bf16', True), math.nan) / fp32:.2f}x  ({rows[0][0]})")
    print()
    if gpus < 2:
        print(f"multi-GPU scaling: skipped ({gpus} GPU visible; needs 2 or more)")
        return 0
    one, many = torchrun(args, 1), torchrun(args, gpus)
    if one is None or many is None:
        return 1
    eff = many["samples_per_s"] / (gpus * one["samples_per_s"])
    print(f"multi-GPU (torchrun, NCCL, {args.ddp_precision}, channels_last={args.ddp_channels_last}, "
          f"batch {args.batch} per GPU):")
    for r in (one, many):
        print(f"  {r['device']:28s} GPUs {r['gpus']}: global batch {r['global_batch']:4d}, "
              f"{r['samples_per_s']:10.1f} samples/s, {r['ms_per_step']:.1f} ms/step")
    print(f"  scaling efficiency over {gpus} GPUs: {100 * eff:.0f} %  ({many['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
