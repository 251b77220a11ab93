"""A run's parts built from its config: data, model, method, and what feeds them batches.

``assemble(config)`` is the one place that turns a config into a run's parts; the trainer, the
analyses of a trained run (report/checkpoint.py) and label fitting (report/analyze.py) all start
from it, so a run rebuilt from its folder is the run that trained. The method's options are checked
first, before any data is read: a mistyped ``method.*`` key costs no data loading.

The order of the steps is part of the result: the seed is set before the dataset and the model are
built, and the model before the method (both draw initial weights from the global generator).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from ..config import Config, build
from ..data import MultimodalDataset, load_dataset
from ..data.base import Batch
from ..faults import fault_point
from ..methods import Method, build_method
from ..methods.base import required_fusion
from ..methods.compose import check_method_options
from ..models import MultimodalClassifier, build_model
from .distributed import Distributed
from .loader import BatchLoader, Item, default_workers
from .metrics import OutputAccumulator, classification_metrics
from .plan import BatchPlan
from .precision import Precision


@dataclass
class Assembly:
    """A config's run, built: everything the trainer and the analyses share."""

    config: Config
    dist: Distributed
    device: torch.device
    precision: Precision
    data: MultimodalDataset
    loader: BatchLoader | None
    """Worker processes that build batches (data.workers > 0), else None."""
    model: MultimodalClassifier
    method: Method
    params: list[torch.nn.Parameter]
    """The trainable parameters of the model and the method (what the optimiser steps)."""
    plan: BatchPlan

    def batches(self, split: str, train: bool, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Training: this process's shard of each global batch, in an order fixed by (seed, epoch).
        Evaluation: this process's contiguous part of the split, in order. Nothing is dropped.
        ``start``: skip the first batches without building them (an epoch resumed where it stopped)."""
        rows = self.data.splits[split]
        plan = list(self.plan.train(rows, epoch) if train else self.plan.evaluation(rows))[start:]
        if self.loader is not None:  # data.workers > 0: the same plan, built in worker processes
            seed = (self.config.train.seed, epoch, self.dist.rank)
            items: list[Item] = [
                (local, train, share, (*seed, k) if train else None)
                for k, (local, share) in enumerate(plan, start=start)
            ]
            for batch in self.loader.load(items):
                yield self.on_device(batch)
            return
        for local, share in plan:
            yield self.batch(local, share, train)

    def batch(self, rows: np.ndarray, share: float, train: bool) -> Batch:
        """One batch of ``rows``, built in this process."""
        batch = self.on_device(self.data.batch(rows, train=train))
        batch.share = share
        return batch

    def on_device(self, batch: Batch) -> Batch:
        batch = batch.to(self.device)
        batch.inputs = self.precision.inputs(batch.inputs)
        return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def assemble(config: Config) -> Assembly:
    """Build the run ``config`` describes (the method's options are checked before any data loads)."""
    check_method_options(config.method)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dist = Distributed.from_env(config.train.device)
    device = dist.device(config.train.device)
    precision = Precision(config.train, device)
    seed_everything(config.train.seed)
    data = load_dataset(config.data)
    workers = default_workers(data, config.data.workers)
    loader = (
        BatchLoader(
            data,
            workers,
            device.type == "cuda",
            config.data.prefetch_factor,
            config.data.persistent_workers,
            config.train.seed,
            precision.inputs,
        )
        if workers
        else None
    )
    shapes = {m: data.input_shape(m) for m in data.modalities}
    suggested = {m: data.encoder_for(m) for m in data.modalities}
    model_cfg = config.model
    fusion = required_fusion(config.method["name"])
    if fusion is not None:
        model_cfg = build(type(model_cfg), {"fusion": fusion}, base=model_cfg)
    model = precision.prepare_model(build_model(shapes, data.num_classes, model_cfg, suggested).to(device))
    dims = {m: cast(int, e.out_dim) for m, e in model.encoders.items()}  # every encoder has an int out_dim
    method = build_method(config.method, data.modalities, data.num_classes, dims).to(device)
    params = [p for p in [*model.parameters(), *method.parameters()] if p.requires_grad]
    plan = BatchPlan(dist, config.train.seed, config.data.batch_size, config.data.eval_batch_size)
    return Assembly(config, dist, device, precision, data, loader, model, method, params, plan)


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]
    outputs: OutputAccumulator = field(repr=False)


@torch.no_grad()
def evaluate(run: Assembly, batches: Iterable[Batch]) -> EvalResult:
    """Metrics of the fused prediction and of each modality's head over ``batches`` (every process's
    part gathered), and the outputs they came from (logits, features, projections)."""
    run.model.eval()
    run.method.eval()
    modalities = run.data.modalities
    acc = OutputAccumulator()
    for batch in batches:
        out = run.model(batch.inputs)
        fault_point("evaluate")
        acc.add("y", batch.y)
        acc.add("fused", run.method.predict(out))
        for m in modalities:
            acc.add(f"logits/{m}", out.logits[m])
            acc.add(f"features/{m}", out.features[m])
        for name, values in run.method.eval_outputs(out).items():
            acc.add(name, values)
    acc.gather(run.dist.gather_arrays)
    y = acc.get("y").astype(np.int64)
    metrics = {"fused": classification_metrics(acc.get("fused"), y)}
    for m in modalities:
        metrics[m] = classification_metrics(acc.get(f"logits/{m}"), y)
    return EvalResult(metrics, acc)
