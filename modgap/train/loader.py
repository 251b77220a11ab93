"""Batches built in worker processes (``data.workers`` > 0): a torch DataLoader over the trainer's plan.

The trainer decides every batch exactly as without workers (train/plan.py: the rows of each global
batch in an order fixed by (seed, epoch), this process's shard, its share; or the evaluation chunks)
and hands the list to ``BatchLoader.load`` (train/assemble.py ``Assembly.batches``). A sampler
yields one item per batch, (rows, train, share, key), and a worker calls ``dataset.batch(rows,
train)`` on it: the same rows, the same order and the same sharding as in-process loading; only where
the work runs changes.

Randomness: in-process, online augmentation (random crops, flips, frame choice) draws from the
training process's global torch generator. In a worker, each training batch first seeds the
worker's generators from (train.seed, epoch, batch index, rank), so the draws depend on neither the
worker count (1, 2, ... workers give identical runs) nor which worker builds which batch, and a
resumed run sees the same draws. They do differ from the in-process (0 workers) draws: changing
between 0 and >= 1 workers changes augmentation, as a different seed would. The training process's
own generator is not touched by the loader (it has its own generator for DataLoader bookkeeping).

Workers start with ``fork`` where the platform has it (the prepared arrays are memory maps the workers
share; spawning would pickle them), use one torch thread each, prefetch ``data.prefetch_factor``
batches, stay alive between epochs (``data.persistent_workers``) and return pinned memory when the
trainer runs on CUDA (so host-to-device copies are asynchronous).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.base import Batch, MultimodalDataset
from ..errors import ConfigError

Item = tuple[np.ndarray, bool, float, tuple[int, ...] | None]
"""rows, train, share, seed key (None: no reseeding, for evaluation batches)."""


def default_workers(data: MultimodalDataset, requested: int | None) -> int:
    """``data.workers``, or when unset: min(4, cores - 1) for prepared folders (per-sample Python
    work: frame choice, crops, flips, normalisation), 0 for in-memory datasets. Under torchrun the
    cores are divided among the processes of a node."""
    if requested is not None:
        if requested < 0:  # a saved config on resume is not range-checked by make_config
            raise ConfigError(f"data.workers must be >= 0 (or null: automatic), got {requested}")
        return requested
    from ..data.prepared import PreparedDataset

    if not isinstance(data, PreparedDataset):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(0, min(4, per_process - 1))


def seed_of(key: tuple[int, ...]) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0])


Layout = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def build(
    data: MultimodalDataset, item: Item, layout: Layout | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, float]:
    """One batch, as a worker builds it (also used in-process when a loader is busy); ``layout``
    puts the inputs in the trainer's memory format here, in the worker."""
    rows, train, share, key = item
    if key is not None:
        seed = seed_of(key)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
    b = data.batch(rows, train=train)
    return (layout(b.inputs) if layout else b.inputs), b.y, b.index, share


class _Batches(Dataset):
    def __init__(self, data: MultimodalDataset, layout: Layout | None) -> None:
        self.data, self.layout = data, layout

    def __getitem__(self, item: Item):
        return build(self.data, item, self.layout)

    def __len__(self) -> int:  # not used by the sampler; DataLoader may ask
        return len(self.data.labels)


class _Plan(Sampler):
    """The items of the current pass, set by ``BatchLoader.load`` before each iteration."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _identity(x: Any) -> Any:
    return x


class BatchLoader:
    """Two DataLoaders (training, evaluation) over a dataset, created on first use."""

    def __init__(
        self,
        data: MultimodalDataset,
        workers: int,
        pin_memory: bool,
        prefetch_factor: int = 2,
        persistent_workers: bool = True,
        seed: int = 0,
        layout: Layout | None = None,
    ) -> None:
        if prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1, got {prefetch_factor}")
        self.data, self.workers, self.pin_memory, self.layout = data, workers, pin_memory, layout
        self.prefetch_factor, self.persistent_workers, self.seed = prefetch_factor, persistent_workers, seed
        self._loaders: dict[bool, tuple[DataLoader, _Plan]] = {}
        self._busy: set[bool] = set()

    def _loader(self, train: bool) -> tuple[DataLoader, _Plan]:
        if train not in self._loaders:
            plan = _Plan()
            context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            loader = DataLoader(
                _Batches(self.data, self.layout),
                batch_size=None,
                sampler=plan,
                num_workers=self.workers,
                collate_fn=_identity,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=self.persistent_workers,
                multiprocessing_context=context,
                generator=torch.Generator().manual_seed(self.seed + int(train)),
            )
            self._loaders[train] = (loader, plan)
        return self._loaders[train]

    def load(self, items: list[Item]) -> Iterator[Batch]:
        """The batches of ``items``, in order."""
        if not items:
            return
        train = items[0][1]
        if train in self._busy:  # a pass of the same kind inside another (a method's hook): in-process
            with torch.random.fork_rng(devices=[]):
                state = np.random.get_state(), random.getstate()
                try:
                    for item in items:
                        yield _batch(build(self.data, item, self.layout))
                finally:
                    np.random.set_state(state[0])
                    random.setstate(state[1])
            return
        loader, plan = self._loader(train)
        plan.items = list(items)
        self._busy.add(train)
        try:
            for parts in loader:
                yield _batch(parts)
        finally:
            self._busy.discard(train)

    def close(self) -> None:
        """Stop the worker processes."""
        for loader, _ in self._loaders.values():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self._loaders.clear()


def _batch(parts) -> Batch:
    inputs, y, index, share = parts
    return Batch(inputs, y, index, share)
