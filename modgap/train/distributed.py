"""Several processes (torchrun), one result: the same numbers as one process with the global batch.

Started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment), modgap
joins a torch.distributed process group (gloo on CPU, NCCL on CUDA). ``data.batch_size`` is the
GLOBAL batch: every process takes an interleaved shard of each global batch, and gradients are
combined with one flattened all-reduce per step, each process weighting its local-mean gradient by
its share n_r / N of the global batch. For losses that are means over samples this gives exactly the
global-batch gradient, also for an uneven last batch (a process with no sample runs one padded
sample at weight 0, so every process makes the same collective calls).

Why not wrap the model in DistributedDataParallel: LFM-LB's update steps take the two gradients
g_cls and g_match with torch.autograd.grad, which DDP's reducer does not see, and gradient-modulating
methods must act on the reduced gradient before the optimiser step. Reducing explicitly after the
method's backward hook covers every method with one rule; the price is that communication does not
overlap the backward pass (docs/scaling.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from ..errors import ConfigError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not tdist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            tdist.init_process_group(backend=backend)
        return cls(rank, world, local)

    def device(self, requested: str) -> torch.device:
        if requested.startswith("cuda") and self.enabled:
            return torch.device("cuda", self.local_rank)
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"train.device '{requested}' is not a device (modgap trains on cpu, cuda[:N] or mps)") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise ConfigError(f"train.device '{requested}': this machine has {count} CUDA device(s)")
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"train.device '{requested}': MPS is not available here")
        elif device.type not in ("cpu", "mps"):
            raise ConfigError(f"train.device '{requested}': modgap trains on cpu, cuda[:N] or mps")
        return device

    # ---- sharding ----------------------------------------------------------------------------
    def shard_batch(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """This process's rows of a global batch and its share of the batch (pads one row at share 0)."""
        if not self.enabled:
            return rows, 1.0
        local = rows[self.rank::self.world]
        if len(local) == 0:
            return rows[:1], 0.0
        return local, len(local) / len(rows)

    def shard_split(self, rows: np.ndarray) -> np.ndarray:
        """A contiguous part of a split for evaluation (gathered back in rank order)."""
        return np.array_split(rows, self.world)[self.rank] if self.enabled else rows

    # ---- collectives -------------------------------------------------------------------------
    def reduce_weighted(self, tensors: list[torch.Tensor], share: float) -> None:
        """In place: sum over processes of share * tensor (one flattened all-reduce)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                          for t in tensors]) * share
        tdist.all_reduce(flat)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def reduce_gradients(self, params: list[torch.nn.Parameter], share: float) -> None:
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.reduce_weighted([p.grad for p in params], share)

    def average_buffers(self, module: torch.nn.Module) -> None:
        """In place: every floating-point buffer of ``module`` (BatchNorm running mean and variance)
        averaged over processes, so that all of them evaluate and save the same model. Called once per
        epoch after training: running statistics are exponential averages, linear in each step's batch
        statistics, so averaging them once equals averaging the per-shard statistics at every step.
        (Integer buffers such as num_batches_tracked are equal on every process already.)"""
        if self.enabled:
            self.reduce_weighted([b for b in module.buffers() if torch.is_floating_point(b)], 1.0 / self.world)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            tdist.all_reduce(tensor)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor) / self.world if self.enabled else tensor

    def gather_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Concatenate each named array over processes, in rank order."""
        if not self.enabled:
            return arrays
        parts: list[Any] = [None] * self.world
        tdist.all_gather_object(parts, arrays)
        return {k: np.concatenate([p[k] for p in parts]) for k in arrays}

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def close(self) -> None:
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()
