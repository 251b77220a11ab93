"""Share of a training step spent waiting for data, measured in the trainer's own loop (CPU).

The data: synth-av's real shapes (audio 257 x 188 ogmge_stft spectrograms; 3 RGB frames of 224 x 224
per clip) in a prepared folder: a CREMA-D-layout raw download is generated (benchmarks/fake_cremad.py)
and prepared with `modgap prepare cremad --frames 3 --max-frames 3`, so every batch takes the
prepared path: memory-mapped reads, frame choice, RandomResizedCrop, flip, normalisation.
The model: the default audio-visual ResNet-18 pair at model.width=8 (a tiny ResNet; the real width 64
makes the model, not the data, even more dominant), method joint.

Timing: ``Trainer.fit`` runs as usual; its ``batches('train', ...)`` iterator is wrapped so that the
time spent inside ``next()`` (waiting for the batch: building it in-process, or for a worker to hand
it over) is summed, against the wall time of the whole training loop of the epoch (first ``next`` to
exhaustion: data + train_step + logging). Evaluation is not counted. Epoch 0 includes the
workers' start-up; each epoch's first batch is waited for in full (it is asked for after the
evaluation), so its wait is also shown apart. Goal: < 5 % waiting. Prints a table.

    python benchmarks/data_wait.py                           # 480 clips, batch 32, workers 0 and 1
    python benchmarks/data_wait.py --workers 0,1,2 --threads 2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from modgap.config import make_config
from modgap.train.trainer import Trainer

from fake_cremad import prepared_folder


class TimedTrainer(Trainer):
    """The trainer, with the training pass's data iterator timed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timings: list[dict[str, float]] = []

    def batches(self, split, train, epoch=0):
        inner = super().batches(split, train, epoch)
        if not (train and split == "train"):
            yield from inner
            return
        wait, first, steps, samples = 0.0, 0.0, 0, 0
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(inner)
            except StopIteration:
                wait += time.perf_counter() - t0
                break
            wait += time.perf_counter() - t0
            if steps == 0:
                first = wait
            steps += 1
            samples += len(batch)
            yield batch
        total = time.perf_counter() - started
        self.timings.append({"epoch": epoch, "wait": wait, "first": first, "total": total, "steps": steps,
                             "samples": samples})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=480)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--workers", default="0,1", help="comma-separated data.workers values")
    ap.add_argument("--threads", type=int, default=1, help="train.threads (torch threads of the training process)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU cores available: {cores}; torch {torch.__version__}; train.threads={args.threads}; "
          f"{args.clips} clips, batch {args.batch}, model.width={args.width}, method joint")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, prep_s = prepared_folder(Path(tmp), args.clips, frames=3, max_frames=3, jobs=2)
        print(f"prepared folder (frames 3 x 224 x 224, audio 257 x 188) in {prep_s:.1f} s")
        for w in [int(x) for x in args.workers.split(",")]:
            cfg = make_config(overrides={
                "data": {"name": "cremad", "path": str(folder), "batch_size": args.batch, "workers": w},
                "method": {"name": "joint"}, "model": {"width": args.width},
                "train": {"epochs": args.epochs, "threads": args.threads, "probe": False, "progress": False,
                          "diagnostics": False, "checkpoint_best": False}})
            t = TimedTrainer(cfg, Path(tmp) / f"run-w{w}")
            shape = {m: tuple(t.data.input_shape(m)) for m in t.data.modalities}
            t.fit()
            for r in t.timings:
                rows.append((w, r))
    print(f"inputs per sample: {shape}")
    print()
    print(f"{'workers':>7s} {'epoch':>5s} {'steps':>5s} {'loop s':>8s} {'wait s':>8s} {'wait %':>7s} "
          f"{'1st batch s':>11s} {'wait % after 1st':>16s} {'ms/step':>8s} {'samples/s':>9s}")
    for w, r in rows:
        after = (r["wait"] - r["first"]) / max(r["total"] - r["first"], 1e-9)
        print(f"{w:7d} {r['epoch']:5d} {r['steps']:5d} {r['total']:8.2f} {r['wait']:8.3f} "
              f"{100 * r['wait'] / r['total']:6.1f}% {r['first']:11.3f} {100 * after:15.1f}% "
              f"{1000 * r['total'] / r['steps']:8.0f} {r['samples'] / r['total']:9.1f}")
    print("\ngoal: < 5 % of the step waiting for data. '1st batch': an epoch's first batch is built after the")
    print("previous evaluation (nothing is prefetched across epochs); it weighs 1/steps of an epoch, so with")
    print("real epoch lengths (CREMA-D: ~95 steps of 64) the 'after 1st' column approaches the steady state.")


if __name__ == "__main__":
    main()
