"""data.workers: batches built by DataLoader workers are the trainer's own plan (modgap/train/loader.py).

A tiny CREMA-D-layout download (wav + JPEG frames, written here with PIL) is prepared once; runs use
MLP encoders so that the data path, not the model, is what is exercised.
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modgap.config import make_config
from modgap.data.prepare import bundled_split, prepare
from modgap.errors import ConfigError
from modgap.train import loader as loader_mod
from modgap.train.distributed import Distributed
from modgap.train.trainer import Trainer


def write_clip(src: Path, clip: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (src / "AudioWAV").mkdir(parents=True, exist_ok=True)
    t = np.arange(4000) / 8000
    x = 0.3 * np.sin(2 * np.pi * (150 + 40 * (seed % 6)) * t) + 0.05 * rng.standard_normal(t.size)
    with wave.open(str(src / "AudioWAV" / f"{clip}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    frames = src / "Image-01-FPS" / clip
    frames.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(frames / f"{k + 1:05d}.jpg")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A prepared cremad folder: 6 train and 2 test clips per class, 32 x 32 frames, 2 frames per clip."""
    root = tmp_path_factory.mktemp("cremad")
    per_class = {"train.csv": 6, "test.csv": 2}
    for name, n in per_class.items():
        taken: dict[str, int] = {}
        for line in bundled_split("cremad", name)[0]:
            clip, _, label = line.partition(",")
            if taken.get(label, 0) < n:
                taken[label] = taken.get(label, 0) + 1
                write_clip(root / "raw", clip, len(list((root / "raw").glob("AudioWAV/*.wav"))))
    prepare("cremad", root / "raw", root / "prepared", settings={"image_size": 32, "frames": 2},
            on_error="skip", progress=False, val_fraction=0.2)
    return root / "prepared"


def config(folder: Path, workers, modalities=("audio", "visual"), epochs: int = 2):
    return make_config(overrides={
        "data": {"name": "cremad", "path": str(folder), "modalities": list(modalities), "batch_size": 8,
                 "eval_batch_size": 7, "workers": workers},
        "method": {"name": "joint"}, "model": {"encoder": "mlp", "hidden": [16], "feature_dim": 8},
        "optim": {"lr": 0.05}, "train": {"epochs": epochs, "threads": 1, "probe": False, "progress": False}})


def trainer(folder: Path, out: Path, workers, modalities=("audio", "visual"), epochs: int = 2) -> Trainer:
    return Trainer(config(folder, workers, modalities, epochs), out)


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("epoch_s")
        out.append(r)
    return out


def passes(t: Trainer):
    """Every batch of two training epochs and of each evaluation split, in order."""
    for epoch in (0, 1):
        yield from (("train", epoch, b) for b in t.batches("train", True, epoch))
    for split in ("train", "val", "test"):
        yield from ((split, None, b) for b in t.batches(split, False))


def test_default_worker_counts(folder, tmp_path, monkeypatch):
    cores = len(os.sched_getaffinity(0))
    t = trainer(folder, tmp_path / "a", None)
    assert (t.loader.workers if t.loader else 0) == max(0, min(4, cores - 1))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # torchrun: cores shared by the node's processes
    assert loader_mod.default_workers(t.data, None) == 0
    assert loader_mod.default_workers(t.data, 3) == 3
    mfeat = Trainer(make_config(overrides={"train": {"progress": False}}), tmp_path / "m")
    assert mfeat.loader is None  # in memory: built in-process
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        make_config(assignments=["data.workers=-1"])
    with pytest.raises(ConfigError, match="data.prefetch_factor"):
        make_config(assignments=["data.prefetch_factor=0"])
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):  # a saved config, not re-checked
        loader_mod.default_workers(t.data, -2)
    with pytest.raises(ConfigError, match="data.prefetch_factor"):
        loader_mod.BatchLoader(t.data, 1, False, prefetch_factor=0)


@pytest.mark.parametrize("world", [1, 2])
def test_workers_deliver_the_same_rows_order_and_sharding(folder, tmp_path, world):
    """The same row indices, labels and shares batch by batch (each rank of a 2-process run
    as well); evaluation batches, which have no randomness, are identical tensors."""
    for rank in range(world):
        runs = []
        for workers in (0, 2):
            t = trainer(folder, tmp_path / f"r{workers}-{rank}", workers)
            t.dist = Distributed(rank, world)  # sharding only: batches() makes no collective call
            runs.append(list(passes(t)))
            if workers:  # the batches did come from two persistent worker processes
                iterators = [loader._iterator for loader, _ in t.loader._loaders.values()]
                assert len(iterators) == 2 and all(len(it._workers) == 2 for it in iterators)
                t.loader.close()
        (plain, loaded) = runs
        assert len(plain) == len(loaded) > 0
        for (split, epoch, a), (_, _, b) in zip(plain, loaded):
            assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y) and a.share == b.share
            assert {m: x.shape for m, x in a.inputs.items()} == {m: x.shape for m, x in b.inputs.items()}
            if epoch is None:
                assert all(torch.equal(a.inputs[m], b.inputs[m]) for m in a.inputs)
        assert any(not torch.equal(a.inputs["visual"], b.inputs["visual"])  # augmentation: own draws
                   for (_, epoch, a), (_, _, b) in zip(plain, loaded) if epoch is not None)


def test_without_augmentation_the_run_is_the_in_process_run(folder, tmp_path):
    """Audio (the ogmge_stft preset has no online randomness): metrics.jsonl is identical."""
    trainer(folder, tmp_path / "w0", 0, modalities=("audio",)).fit()
    trainer(folder, tmp_path / "w2", 2, modalities=("audio",)).fit()
    assert records(tmp_path / "w0") == records(tmp_path / "w2")


def test_worker_count_does_not_change_the_run_and_resume_is_exact(folder, tmp_path):
    """With augmentation (frames: frame choice, crops, flips): 1 and 2 workers give one run; an
    interrupted run resumed with workers gives the uninterrupted one; evaluation metrics of the
    same model equal the in-process ones."""
    one, two = trainer(folder, tmp_path / "w1", 1), trainer(folder, tmp_path / "w2", 2)
    plain = trainer(folder, tmp_path / "w0", 0)
    for split in ("val", "test"):
        assert plain.evaluate(split).metrics == two.evaluate(split).metrics
    one.fit()
    two.fit()
    assert records(tmp_path / "w1") == records(tmp_path / "w2")
    trainer(folder, tmp_path / "part", 2, epochs=1).fit()
    Trainer(config(folder, 2), tmp_path / "part", resume=True).fit()
    assert records(tmp_path / "part") == records(tmp_path / "w2")


def test_a_pass_inside_a_pass_is_built_in_process_with_the_same_batches(folder, tmp_path):
    t = trainer(folder, tmp_path / "n", 2)
    reference = [b.inputs["visual"] for b in t.batches("train", True, 1)]
    outer = t.batches("train", True, 0)
    next(outer)
    state = torch.get_rng_state()
    nested = [b.inputs["visual"] for b in t.batches("train", True, 1)]  # the train loader is busy
    assert torch.equal(state, torch.get_rng_state())  # in-process fallback leaves the trainer's RNG alone
    assert len(nested) == len(reference) and all(torch.equal(a, b) for a, b in zip(nested, reference))
    assert len(list(outer)) == len(reference) - 1
    t.loader.close()
