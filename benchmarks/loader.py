"""Input pipeline for CREMA-D-shaped data: decoding every step (as the public code does) vs the prepared cache.

A raw download in CREMA-D's layout is generated in a temp folder (benchmarks/fake_cremad.py: per clip
a 2 s 16 kHz wav and 3 JPEG frames of 480x360), then two training-mode loaders are timed, each
in-process and with DataLoader workers:

(a) decode per step, the public OGM-GE/LFM way: per sample, read_wav + the ``ogmge_stft`` preset
    (resample to 22050 Hz, tile to 3 s, STFT 512/353, log magnitude), one of the 3 frames chosen at
    random (segment choice), PIL decode and resize to 224x224, then modgap's own online augmentation
    (RandomResizedCrop box, flip) and ImageNet normalisation in the worker; a torch Dataset per
    sample with the default collate.
(b) the prepared cache: ``modgap prepare cremad`` once (its time is printed), then
    ``PreparedDataset.batch(rows, train=True)`` on shuffled global batches; with workers, through
    modgap's own BatchLoader (train/loader.py), as the trainer uses it. Frames leave the loader as
    uint8 and are normalised where they land (``Batch.to``); the timing includes that step on the
    CPU, as CPU training pays it (on a GPU it runs on the device).

Both give the model the same tensors per batch: audio (B, 257, 188) float32, frames (B, 1, 3, 224, 224)
float32.
Throughput is samples/s over --passes full passes after one warm-up batch; prints a table and the
speedups (goal >= 5x, aim 20x), then where the time of one sample goes (decoding, which only (a) pays,
against the online augmentation both pay). Asserts nothing.

    python benchmarks/loader.py                       # 300 clips, batch 64, workers 0 and 1
    python benchmarks/loader.py --clips 600 --workers 0,1,2 --passes 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modgap.config import DataConfig
from modgap.data.audio import get_audio_preset, read_wav
from modgap.data.base import pixels_to_model
from modgap.data.kinds import augment, load_image, segment_indices
from modgap.data.prepared import PreparedDataset
from modgap.train.loader import BatchLoader

from fake_cremad import prepared_folder


class DecodeEveryStep(Dataset):
    """One training sample decoded from the raw files, as the public code's Dataset does."""

    def __init__(self, raw: Path, ids: list[str], size: int = 224, frames: int = 1) -> None:
        self.raw, self.ids, self.size, self.frames = raw, ids, size, frames
        self.preset = get_audio_preset("ogmge_stft")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        clip = self.ids[i]
        wave, sr = read_wav(self.raw / "AudioWAV" / f"{clip}.wav")
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
        audio = self.preset(wave, sr, train=True, rng=rng)
        files = sorted((self.raw / "Image-01-FPS" / clip).iterdir())
        idx = segment_indices(np.array([len(files)]), self.frames, train=True)[0]
        images = np.stack([load_image(files[k], self.size) for k in idx])[None]  # (1, T, H, W, C)
        visual = pixels_to_model(augment(torch.from_numpy(images), True)[0])
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), visual


def breakdown(raw: Path, ids: list[str], data: PreparedDataset, n: int = 64) -> dict[str, float]:
    """ms per sample of each part, in-process: what decoding adds and what both loaders share."""
    preset = get_audio_preset("ogmge_stft")
    rng = np.random.default_rng(0)
    ids, rows = ids[:n], data.splits["train"][:n]
    clock = time.perf_counter
    t0 = clock()
    for clip in ids:
        wave, sr = read_wav(raw / "AudioWAV" / f"{clip}.wav")
        preset(wave, sr, train=True, rng=rng)
    t1 = clock()
    images = np.stack([load_image(sorted((raw / "Image-01-FPS" / clip).iterdir())[0], 224) for clip in ids])
    t2 = clock()
    cropped = augment(torch.from_numpy(images)[:, None], True)
    t3 = clock()
    pixels_to_model(cropped)
    t3b = clock()
    audio = np.asarray(data.arrays["audio"][np.sort(rows)])
    np.asarray(data.arrays["visual"][np.sort(rows)])  # the read is what is timed
    t4 = clock()
    torch.from_numpy(audio.astype(np.float32))
    t5 = clock()
    return {"decode audio: read_wav + ogmge_stft (a only)": (t1 - t0), "decode frame: PIL + resize 224 (a only)": (t2 - t1),
            "augment frame: crop, flip (a and b)": (t3 - t2),
            "normalise frame (a: in the worker; b: on the device)": (t3b - t3),
            "read cached rows from the memory map (b only)": (t4 - t3b),
            "cached audio float16 -> float32 (b only)": (t5 - t4), "_n": n}


def plan(n: int, batch: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[s:s + batch] for s in range(0, n, batch)]


def time_passes(make_iter, passes: int, n: int) -> float:
    """samples/s over ``passes`` passes, after one warm-up batch (worker start-up excluded)."""
    it = make_iter(0)
    next(it)
    del it
    started = time.perf_counter()
    seen = 0
    for p in range(passes):
        for audio_or_batch in make_iter(p + 1):
            seen += len(audio_or_batch[0]) if isinstance(audio_or_batch, (list, tuple)) else len(audio_or_batch)
    return seen / (time.perf_counter() - started)


def public_loader(raw: Path, ids: list[str], batch: int, workers: int):
    ds = DecodeEveryStep(raw, ids)

    def make_iter(p: int):
        order = np.concatenate(plan(len(ids), batch, p))
        loader = DataLoader(ds, batch_size=batch, sampler=order.tolist(), num_workers=workers,
                            persistent_workers=False)
        return iter(loader)
    return make_iter


def prepared_loader(folder: Path, batch: int, workers: int):
    data = PreparedDataset(folder, DataConfig(name="cremad", path=str(folder)))
    rows = data.splits["train"]
    loader = BatchLoader(data, workers, pin_memory=False) if workers else None

    def make_iter(p: int):
        batches = [rows[b] for b in plan(len(rows), batch, p)]
        if loader is None:
            return (data.batch(b, train=True).to("cpu") for b in batches)
        return (b.to("cpu") for b in loader.load([(b, True, 1.0, (0, p, k, 0)) for k, b in enumerate(batches)]))
    return make_iter, len(rows), loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", default="0,1", help="comma-separated worker counts")
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--jobs", type=int, default=2, help="processes for modgap prepare")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU cores available: {cores}; torch {torch.__version__}; {args.clips} clips, batch {args.batch}, "
          f"{args.passes} timed pass(es)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, prep_s = prepared_folder(root, args.clips, frames=1, max_frames=3, jobs=args.jobs)
        data = PreparedDataset(folder, DataConfig(name="cremad", path=str(folder)))
        train_ids = [data.ids[i] for i in data.splits["train"]]
        size_mb = sum(f.stat().st_size for f in folder.glob("*.npy")) / 2**20
        raw_mb = sum(f.stat().st_size for f in (root / "raw").rglob("*") if f.is_file()) / 2**20
        print(f"raw download {raw_mb:.1f} MiB; modgap prepare cremad --jobs {args.jobs}: {prep_s:.1f} s "
              f"({args.clips / prep_s:.0f} clips/s), cache {size_mb:.1f} MiB; {len(train_ids)} train clips timed")
        results = {}
        for w in workers:
            results[("decode", w)] = time_passes(public_loader(root / "raw", train_ids, args.batch, w),
                                                 args.passes, len(train_ids))
            make_iter, n, loader = prepared_loader(folder, args.batch, w)
            results[("prepared", w)] = time_passes(make_iter, args.passes, n)
            if loader is not None:
                loader.close()
        print()
        print(f"{'loader':44s} {'workers':>7s} {'samples/s':>10s} {'x decode (same workers)':>24s}")
        for w in workers:
            d, p = results[("decode", w)], results[("prepared", w)]
            print(f"{'(a) decode wav+jpg every step (public way)':44s} {w:7d} {d:10.1f} {'1.0':>24s}")
            print(f"{'(b) prepared cache, PreparedDataset.batch':44s} {w:7d} {p:10.1f} {p / d:24.1f}")
        parts = breakdown(root / "raw", train_ids, data)
        n = parts.pop("_n")
        print(f"\nwhere the time goes, in-process, ms per sample (first {n} train clips):")
        for k, v in parts.items():
            print(f"  {k:56s} {1000 * v / n:7.2f}")
        base = results[("decode", workers[0])]
        best = max(results[("prepared", w)] for w in workers)
        print(f"\nspeedup of the best prepared loader over decoding in-process (workers={workers[0]}): "
              f"{best / base:.1f}x (goal >= 5x, aim 20x)")


if __name__ == "__main__":
    main()
