"""Which rows each batch holds on this process: one plan for every pass the trainer makes.

Every batch of every split comes from ``BatchPlan.chunks``: the rows in an order fixed by seeds (or
as stored), cut into batches, and this process's part of each batch with its share of it. The passes
differ only in their arguments:

- training: a fresh order per (seed, epoch), each global batch sharded interleaved; a process left
  without a row pads one at share 0 (distributed.py);
- evaluation: the split as stored, one contiguous part per process (gathered back in rank order);
- the validation stream a method draws from (lfm-lb): reshuffled each pass, sharded as in training;
- a fixed validation batch (the first n rows), sharded as in training.

Orders depend only on seeds, so a resumed run sees the batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .distributed import Distributed

VAL_STREAM = 1_000_003
"""Seed part that keeps the validation stream's orders apart from the training epochs' orders."""

Plan = list[tuple[np.ndarray, float]]
"""Per batch: this process's rows and its share of the global batch."""


def permutation(n: int, *seed: int) -> np.ndarray:
    """A permutation that depends only on the seeds (so a resumed run sees the same order)."""
    return np.random.default_rng(list(seed)).permutation(n)


@dataclass(frozen=True)
class BatchPlan:
    dist: Distributed
    seed: int
    """train.seed."""
    batch_size: int
    """data.batch_size: the global training batch."""
    eval_batch_size: int

    def chunks(
        self, rows: np.ndarray, size: int, order: tuple[int, ...] | None = None, interleave: bool = True
    ) -> Plan:
        """``rows`` (permuted by the seeds ``order`` when given) in batches of ``size``: each batch
        sharded over processes (``interleave``), or the split cut into contiguous parts first."""
        if order is not None:
            rows = rows[permutation(len(rows), *order)]
        if not interleave:
            part = self.dist.shard_split(rows)
            return [(part[start : start + size], 1.0) for start in range(0, len(part), size)]
        return [self.dist.shard_batch(rows[start : start + size]) for start in range(0, len(rows), size)]

    def train(self, rows: np.ndarray, epoch: int) -> Plan:
        return self.chunks(rows, self.batch_size, (self.seed, epoch))

    def evaluation(self, rows: np.ndarray) -> Plan:
        return self.chunks(rows, self.eval_batch_size, interleave=False)

    def val_stream(self, rows: np.ndarray, cursor: int) -> tuple[np.ndarray, float]:
        """Batch number ``cursor`` of the validation stream: pass after pass over ``rows``, each
        pass in its own order."""
        cycle, k = divmod(cursor, math.ceil(len(rows) / self.batch_size))
        return self.chunks(rows, self.batch_size, (self.seed, VAL_STREAM, cycle))[k]

    def fixed(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """All of ``rows`` as one global batch."""
        plan = self.chunks(rows, max(len(rows), 1))
        return plan[0] if plan else self.dist.shard_batch(rows)
