"""Several processes (torchrun), one result: the same numbers as one process with the global batch.

Started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment), modgap
joins a torch.distributed process group (gloo on CPU, NCCL on CUDA). ``data.batch_size`` is the
GLOBAL batch: every process takes an interleaved shard of each global batch, and each process
weights its local-mean gradient by its share n_r / N of the global batch before the sum over
processes. For losses that are means over samples this gives exactly the global-batch gradient, also
for an uneven last batch (a process with no sample runs one padded sample at weight 0, so every
process makes the same collective calls).

Gradients are reduced by PyTorch's DistributedDataParallel (``train.ddp``, on by default): the
training forward (model + the method's losses, ``TrainForward``) runs inside DDP, whose bucketed
all-reduce overlaps the backward pass; a communication hook (``weighted_allreduce``) applies the
share weighting instead of DDP's plain mean. One kind of step cannot use DDP's reducer: a step in
which the method takes its gradients with ``torch.autograd.grad`` (``Method.takes_own_gradients``:
lfm-lb's hypergradient steps, which need g_cls and g_match apart; MMPareto, one gradient per loss),
which DDP's hooks never see. Such a step runs under ``DDP.no_sync()`` and its gradients are reduced by
one explicit flattened all-reduce after the method's backward (``reduce_gradients``), the rule every
step follows with ``train.ddp=false``. Gradient-modulating methods (OGM-GE, AGM, Greedy, ...) need
nothing special: they act in ``after_backward`` on the reduced gradient, which DDP has written by then.
Components whose steps can leave parameters without a gradient say so (``leaves_parameters_unused``),
and DDP then looks for them each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..methods.base import Method


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
    def from_env(cls, device: str) -> Distributed:
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
            raise ConfigError(
                f"train.device '{requested}' is not a device (modgap trains on cpu, cuda[:N] or mps)"
            ) from None
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
        local = rows[self.rank :: self.world]
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
        flat = (
            torch.cat(
                [
                    t.detach().reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                    for t in tensors
                ]
            )
            * share
        )
        tdist.all_reduce(flat)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def reduce_gradients(self, params: list[torch.nn.Parameter], share: float) -> None:
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.reduce_weighted(grads, share)

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

    def close(self, finished: bool = True) -> None:
        """Leave the process group; after a finished run, together: without the barrier a process that
        finishes first tears its connections down while a peer's last collective may still be reading
        from them, and gloo aborts that peer (SIGABRT at exit, seen now and then on a loaded machine).
        After an error no barrier: the peers may never reach it, and torchrun stops them."""
        if self.enabled and tdist.is_initialized():
            try:
                if finished:
                    tdist.barrier()
            finally:
                tdist.destroy_process_group()


# ------------------------------------------------------------------ DistributedDataParallel
class TrainForward(nn.Module):
    """The training step's forward as one module, for DDP to wrap: the model's outputs and the
    method's losses. It returns ``(total loss, TrainResult)``: DDP's search for unused parameters
    starts from the tensors it finds in what the forward returns, and must start from the total loss
    alone, so that heads and encoders no loss reaches this step count as unused."""

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch, ctx) -> tuple[torch.Tensor, TrainResult]:
        out = self.model(batch.inputs)
        ctx.out, ctx.batch = out, batch  # for hooks of methods composed after the first
        losses = self.method.losses(out, batch, ctx)
        return losses.total, TrainResult(out, losses)


class TrainResult:
    """The model's outputs and the method's losses of one training forward. A plain class, not a
    tuple or dataclass: DDP looks for tensors inside those (and would search for unused parameters
    from every logit and feature), while it passes this through untouched."""

    __slots__ = ("out", "losses")

    def __init__(self, out: Any, losses: Any) -> None:
        self.out, self.losses = out, losses


@dataclass
class ShareState:
    """The communication hook's state: this process's share of the current global batch."""

    share: float = 1.0


def weighted_allreduce(state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP communication hook: sum over processes of share * local gradient (DDP's own hook takes
    the plain mean, which is wrong for an uneven last batch)."""
    buffer = bucket.buffer()
    buffer.mul_(state.share)
    return tdist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap_ddp(forward: TrainForward, device: torch.device, state: ShareState) -> DistributedDataParallel:
    """DDP over the training forward; buffers are not synchronised in the forward (BatchNorm statistics
    are averaged once per epoch instead: ``Distributed.average_buffers``). DDP searches the graph
    for unused parameters only where a component says some step can leave parameters without a
    gradient (``leaves_parameters_unused`` of the method, a composite's parts, or the fusion); elsewhere
    that search would cost a graph traversal per step and DDP warns about it."""
    unused = any(getattr(m, "leaves_parameters_unused", False) for m in forward.modules())
    ddp = DistributedDataParallel(
        forward,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
        find_unused_parameters=unused,
    )
    ddp.register_comm_hook(state, weighted_allreduce)
    return ddp
