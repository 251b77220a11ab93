"""The trainer: one loop for every method and dataset (protocol.md).

Per epoch: train on the train split (order fixed by seed and epoch), evaluate val and test, log,
keep the epoch with the best validation fused accuracy, checkpoint. The test split is evaluated for
reporting only; nothing is ever decided on it. At the end: test metrics at the best and the last
epoch, a linear probe per modality on frozen features, the modality gap, summary.json.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config, build, check
from ..data import MultimodalDataset
from ..data.base import Batch
from ..errors import ModgapError, RunFolderError
from ..faults import fault_point
from ..methods import Method, StepContext
from ..methods.scores import discrepancy, modality_scores
from ..models import MultimodalClassifier
from ..runs import RunFolder
from .assemble import Assembly, EvalResult, assemble, evaluate
from .distributed import ShareState, TrainForward, wrap_ddp
from .metrics import OutputAccumulator, imbalance_ratio, linear_probe, modality_gap, still_improving
from .observers import EpochLog, RunObserver
from .preemption import Preempted, StopSignals

STOP_CHECK_EVERY = 10
"""On several processes, a stop signal is looked for every this many batches (one small all-reduce;
a scheduler's warning comes a minute or more before it kills)."""

DIAGNOSTICS_EVERY = 5
"""Gradient norms and the discrepancy ratio are sampled every few steps (they cost ~10 % of a
small model's step when taken at every step; the per-epoch means barely change)."""


class TrainingError(ModgapError):
    """Training cannot go on (e.g. a non-finite loss); the message names where it happened."""


@dataclass
class Progress:
    """What a checkpoint must restore besides the modules and the optimiser."""

    epoch: int = 0
    """Epochs finished."""
    step: int = 0
    """Optimiser steps taken."""
    best_epoch: int = -1
    best_val: float = -math.inf
    val_cursor: int = 0
    """Validation batches handed to the method so far (its stream resumes from here)."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss or gradient (train.on_nonfinite=skip)."""
    wall_s: float = 0.0
    batch: int = 0
    """Batches of the current epoch done: 0 at an epoch's end; more in a checkpoint written at a
    preemption signal (preemption.py), where the epoch continues on resume."""


@dataclass
class EpochSoFar:
    """What an epoch has gathered before its end: saved with a checkpoint taken mid-epoch."""

    sums: dict[str, float] = field(default_factory=dict)
    """Training loss terms, summed weighted by batch size."""
    seen: int = 0
    diag: dict[str, list[float]] = field(default_factory=dict)
    """Sampled gradient diagnostics (means taken at the epoch's end)."""
    seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, epochs: int):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class Trainer:
    def __init__(
        self, config: Config, run_dir: str | Path, resume: bool = False, observers: list[RunObserver] | None = None
    ) -> None:
        self.config = config
        self.run = RunFolder(run_dir)
        self.resume = resume
        self.assembly: Assembly = assemble(config)
        a = self.assembly  # the parts the loop uses, under their own names
        self.dist, self.device, self.precision, self.loader, self.plan = a.dist, a.device, a.precision, a.loader, a.plan
        self.observers = list(observers or []) if self.dist.is_main else []  # told on the main process only
        self.data: MultimodalDataset = a.data
        self.model: MultimodalClassifier = a.model
        self.method: Method = a.method
        self.params = a.params
        self.forward = TrainForward(self.model, self.method)
        self._share = ShareState()
        self.ddp = wrap_ddp(self.forward, self.device, self._share) if self.dist.enabled and config.train.ddp else None
        self.optimizer = make_optimizer(self.params, config.optim)
        self.scheduler = make_scheduler(self.optimizer, config.optim, config.train.epochs)
        self.state = Progress()
        self._so_far = EpochSoFar()
        self._diag = self._so_far.diag
        steps = math.ceil(len(self.data.splits["train"]) / config.data.batch_size) * self.method.steps_per_batch()
        self.ctx = StepContext(
            self.model,
            self.optimizer,
            self.params,
            epochs=config.train.epochs,
            steps_per_epoch=steps,
            next_val_batch=self._next_val_batch,
            fixed_val_batch=self._fixed_val_batch,
            iterate=self._iterate,
            all_reduce_mean=self.dist.all_reduce_mean,
            all_reduce_sum=self.dist.all_reduce_sum,
            reduce_weighted=self.dist.reduce_weighted,
            train_batches=lambda epoch: self.batches("train", train=True, epoch=epoch),
        )

    # ---- data --------------------------------------------------------------------------------
    def batches(self, split: str, train: bool, epoch: int = 0) -> Iterator[Batch]:
        """Every pass of the loop and of the method's hooks over a split (plan.py decides the rows)."""
        return self.assembly.batches(split, train, epoch)

    def _next_val_batch(self) -> Batch:
        """The validation split in batches, reshuffled each pass, position kept in the checkpoint."""
        local, share = self.plan.val_stream(self.data.splits["val"], self.state.val_cursor)
        self.state.val_cursor += 1
        return self.assembly.batch(local, share, train=False)

    def _iterate(self, split: str) -> Iterator[Batch]:
        if split == "test":
            raise RuntimeError("a method asked for the test split; the test split is never used for decisions")
        return self.batches(split, train=False)

    def _fixed_val_batch(self, n: int) -> Batch:
        local, share = self.plan.fixed(self.data.splits["val"][:n])
        return self.assembly.batch(local, share, train=False)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": vars(self.state).copy(),
            **({"epoch_so_far": asdict(self._so_far)} if self.state.batch else {}),
            "rng": rng_state(),
            "version": __version__,
            **({"loss_scale": self.precision.state_dict()} if self.precision.loss_scale else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = Progress(**state["progress"])
        self._so_far = EpochSoFar(**state.get("epoch_so_far", {}))
        if not self.dist.is_main:  # the checkpoint's sums are every process's: one process carries them on
            self._so_far.sums, self._so_far.seen = {k: 0.0 for k in self._so_far.sums}, 0
        self._diag = self._so_far.diag
        set_rng_state(state["rng"])
        self.precision.load_state_dict(state.get("loss_scale"))

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: weights, and up to two optimiser buffers per weight."""
        weights = sum(p.numel() * p.element_size() for p in self.params)
        return 3 * weights

    def _start(self) -> None:
        """Check the run folder (every process), then set it up (the main process only)."""
        cfg_dict = {**self.config.to_dict(), "version": __version__, "split_checksum": self.data.split_checksum()}
        if self.resume:
            if not self.run.has_run():
                raise RunFolderError(f"{self.run.path}: nothing to resume (no config.yaml)")
            saved = self.run.read_yaml("config.yaml")
            if saved.get("split_checksum") != self.data.split_checksum():
                raise RunFolderError(f"{self.run.path}: the data split differs from the one this run started with")
        elif self.run.has_run():
            raise RunFolderError(
                f"{self.run.path}: already holds a run; add --resume to continue it, or choose another --out"
            )
        self.dist.barrier()
        if self.dist.is_main:
            self.run.prepare()
        if self.resume:
            state = self.run.load_latest()
            if state is not None:
                self.load_state_dict(state)
            if self.dist.is_main:
                self.run.truncate_logs(
                    self.state.epoch, self.state.step, self.config.train.epochs * self.ctx.steps_per_epoch
                )
                self.run.write_yaml("config.yaml", cfg_dict)  # epochs may have been extended
        elif self.dist.is_main:
            self.run.check_space(4 * self.checkpoint_bytes() + (16 << 20))
            self.run.write_yaml("config.yaml", cfg_dict)
            self.run.write_json("splits.json", {"checksum": self.data.split_checksum(), **self.data.split_ids()})
        self.dist.barrier()

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        outcome = "failed"
        try:
            self._start()  # inside: a failed start gives back the lock it took (never another's)
            if self.dist.is_main:
                for text in self.data.warnings():  # once per run; summary.json keeps them
                    print(f"modgap: warning: {text}", file=sys.stderr)
            for observer in self.observers:
                observer.started(self.run, self.config, self.state.step, self.state.epoch, self.ctx.steps_per_epoch)
            with StopSignals() as signals:
                result = self._fit(signals)
            for observer in self.observers:
                observer.finished(result)
            outcome = "finished"
            return result
        except (Preempted, KeyboardInterrupt):
            outcome = "stopped"  # by a signal or Ctrl-C, resumable
            raise
        finally:
            try:
                for observer in self.observers:
                    observer.close(outcome)
            finally:
                if self.loader is not None:
                    self.loader.close()
                self.run.release()
                self.dist.close(outcome == "finished")

    def _fit(self, signals: StopSignals) -> dict[str, Any]:
        cfg = self.config
        epochs = cfg.train.epochs
        main = self.dist.is_main
        step_logs = self.run.step_logs() if main else None
        bar = tqdm(
            total=epochs * self.ctx.steps_per_epoch,
            initial=self.state.step,
            disable=not (cfg.train.progress and main),
            desc=f"{cfg.method['name']} {self.data.name}",
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        while self.state.epoch < epochs:
            started = time.perf_counter()
            epoch = self.state.epoch
            self.ctx.epoch = epoch
            self.model.train()
            self.method.train()
            first = self.state.batch  # 0, or where a preempted epoch stopped
            if first == 0:
                with self.precision.eager():  # epoch hooks may need double backward (not compiled)
                    self.method.on_epoch_start(self.ctx)
            lr = self.optimizer.param_groups[0]["lr"]
            so_far = self._so_far
            sums, seen = so_far.sums, so_far.seen
            per_batch = self.method.steps_per_batch()
            step_rows: list[tuple[int, dict[str, float]]] = []
            for batch in self.assembly.batches("train", True, epoch, start=first):
                for _ in range(per_batch):  # one optimiser step, or several in turn (e.g. MLA's modalities)
                    self.ctx.step, self.ctx.share = self.state.step, batch.share
                    terms = self.train_step(batch) or {}
                    n = len(batch) if batch.share else 0  # a padded row (share 0) counts for nothing
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v * n
                    seen += n
                    self.state.step += 1
                    values = {f"loss/{k}": v for k, v in terms.items()} | self.method.scalars()
                    if step_logs is not None and values:
                        progress = self.state.step / (epochs * self.ctx.steps_per_epoch)
                        step_logs.add(self.state.step, epoch, progress, values)
                        step_rows.append((self.state.step, values))
                    bar.update()
                    fault_point("train_step")
                self.state.batch += 1
                if self._stop_requested(signals):
                    so_far.seen, so_far.sums = self._global_sums(seen, sums)  # every process's part, once
                    so_far.seconds += time.perf_counter() - started
                    self._preempt(signals, step_logs)
            self.state.batch = 0
            seen, sums = self._global_sums(seen, sums)
            self.dist.average_buffers(self.model)  # BatchNorm statistics: the same model on every process
            self.scheduler.step()
            with self.precision.eager():
                self.method.on_epoch_end(self.ctx)
            val_eval = self.evaluate("val")
            val, test = val_eval.metrics, self.evaluate("test").metrics
            self.state.epoch += 1
            self.state.wall_s += time.perf_counter() - started
            improved = val["fused"]["acc"] > self.state.best_val and _finite_model(self.model)
            if improved:
                self.state.best_val, self.state.best_epoch = val["fused"]["acc"], epoch
            record = {
                "epoch": epoch,
                "lr": lr,
                "alpha": (epoch_scalars := self.method.scalars()).get("alpha"),
                **({"scalars": epoch_scalars} if epoch_scalars else {}),
                "train": {k: v / max(seen, 1) for k, v in sums.items()},
                "val": val,
                "test": test,
                "imbalance_val": imbalance_ratio({m: val[m]["acc"] for m in self.data.modalities}),
                "epoch_s": round(so_far.seconds + time.perf_counter() - started, 3),
            }
            if cfg.train.diagnostics:
                record["diagnostics"] = self._epoch_diagnostics(val_eval.outputs)
            self._so_far = EpochSoFar()  # the next epoch starts from nothing
            self._diag = self._so_far.diag
            # order matters for a crash at any point: logs first, then best, then last (which resumes)
            if main:
                if step_logs is not None:
                    step_logs.flush()
                self.run.append_metrics(record)
                state = self.state_dict()
                if improved and cfg.train.checkpoint_best:
                    self.run.save("best.pt", state)
                self.run.save_last(state)
            self.dist.barrier()
            for observer in self.observers:  # after the checkpoint: they see only what a resume keeps
                observer.epoch_done(EpochLog(epoch, self.state.step, record, step_rows))
            bar.set_postfix(
                loss=f"{record['train'].get('total', record['train'].get('cls', 0)):.3f}",
                val=f"{val['fused']['acc']:.3f}",
                **{k: f"{v:.3f}" for k, v in epoch_scalars.items()},
            )
        bar.close()
        return self.finish()

    def _stop_requested(self, signals: StopSignals) -> bool:
        """A stop signal reached this process. On several processes: any of them, asked every
        STOP_CHECK_EVERY batches only (the same batches on all, so all stop together) to keep a
        synchronising all-reduce out of most steps."""
        if not self.dist.enabled:
            return signals.received is not None
        if self.state.batch % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([1.0 if signals.received else 0.0], device=self.device)
        return float(self.dist.all_reduce_sum(flag).item()) > 0

    def _preempt(self, signals: StopSignals, step_logs) -> None:
        """Write the checkpoint of this batch (the per-step logs first), then stop with Preempted."""
        self.state.wall_s += self._so_far.seconds
        if self.dist.is_main:
            if step_logs is not None:
                step_logs.flush()
            self.run.save_last(self.state_dict())
        self.dist.barrier()
        signum = signals.received or signal.SIGTERM  # another process got it: stop as it does
        raise Preempted(signum, str(self.run.path), self.state.epoch, self.state.step)

    def _epoch_diagnostics(self, val_out: OutputAccumulator) -> dict[str, Any]:
        d = self._diag
        means = {k: float(np.mean(v)) for k, v in d.items()}
        out: dict[str, Any] = {"grad_norm": {m: means.get(f"grad_norm/{m}") for m in self.data.modalities}}
        if "discrepancy" in means:
            out["discrepancy"] = means["discrepancy"]
        if len(self.data.modalities) > 1:
            out["gap_val"] = {"logits": modality_gap({m: val_out.get(f"logits/{m}") for m in self.data.modalities})}
            if f"projection/{self.data.modalities[0]}" in val_out:
                out["gap_val"]["projection"] = modality_gap(
                    {m: val_out.get(f"projection/{m}") for m in self.data.modalities}
                )
        return out

    def _global_sums(self, seen: int, sums: dict[str, float]) -> tuple[int, dict[str, float]]:
        if not self.dist.enabled:
            return seen, sums
        total = self.dist.all_reduce_sum(torch.tensor([float(seen), *sums.values()], dtype=torch.float64))
        return int(total[0]), dict(zip(sums, total[1:].tolist(), strict=True))

    def train_step(self, batch: Batch) -> dict[str, float] | None:
        """One optimiser step; None when a non-finite loss or gradient made it skip (on_nonfinite=skip),
        or an fp16 gradient overflowed (the loss scale backs off; not counted as a skipped step)."""
        self.optimizer.zero_grad(set_to_none=True)
        # several processes: DDP reduces the gradients during the backward pass, unless the method takes
        # its own gradients this step (then: no_sync, and one explicit all-reduce after its backward)
        explicit = self.ddp is None or self.method.takes_own_gradients(self.ctx)
        with self.ddp.no_sync() if self.ddp is not None and explicit else contextlib.nullcontext():
            self._share.share = batch.share
            with self.precision.autocast():  # train.precision: the forward and the losses only
                out, losses = self._forward(batch)
            if not bool(self.dist.all_reduce_sum(torch.isfinite(losses.total.detach()).float()) == self.dist.world):
                if not explicit:  # DDP waits for this forward's backward: give it one, then drop it
                    losses.total.backward()
                self._nonfinite("loss", batch)
                return None
            with self.precision.scaled(losses, self.params) as scaled:  # fp16: gradients arrive unscaled
                self.method.backward(scaled, self.ctx)
        if explicit:
            self.dist.reduce_gradients(self.params, batch.share)
        self.method.after_backward(self.ctx)
        if self.precision.loss_scale is not None:  # fp16: an inf/NaN gradient is the loss scale's business
            finite = _finite_grads(self.params)
            self.precision.loss_scale.update(finite)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.method.on_skipped_step(self.ctx)
                return None
        elif self.config.train.check_grads and not _finite_grads(self.params):
            self._nonfinite("gradient", batch)
            return None
        if self.config.train.diagnostics and self.state.step % DIAGNOSTICS_EVERY == 0:
            self._record_diagnostics(out, batch)
        self.optimizer.step()
        self.method.after_step(self.ctx)
        terms = {k: float(v.detach()) for k, v in losses.terms.items()}
        terms["total"] = float(losses.total.detach())
        return terms

    def _forward(self, batch: Batch) -> tuple[Any, Any]:
        """The model's outputs and the method's losses (through DDP when it reduces the gradients)."""
        if self.ddp is None:
            _, result = self.forward(batch, self.ctx)
            return result.out, result.losses
        try:
            _, result = self.ddp(batch, self.ctx)
            return result.out, result.losses
        except RuntimeError as exc:  # DDP's reducer: the previous step left a parameter without gradient
            if "find_unused_parameters" not in str(exc):
                raise
            raise TrainingError(
                f"method '{self.config.method['name']}' left a parameter without a gradient in a "
                f"step before step {self.state.step}, which DistributedDataParallel must be told: set "
                "leaves_parameters_unused = True on the method or fusion, or train with "
                "--set train.ddp=false"
            ) from None

    @torch.no_grad()
    def _record_diagnostics(self, out, batch: Batch) -> None:
        """Per step: each encoder's gradient norm (as applied) and the OGM-GE discrepancy ratio
        (strongest over weakest sum_i softmax(z_m,i)[y_i]); averaged per epoch into metrics.jsonl."""
        d = self._diag
        for m, encoder in self.model.encoders.items():
            grads = [p.grad.detach() for p in encoder.parameters() if p.grad is not None]
            norm = float(torch.stack(torch._foreach_norm(grads)).norm()) if grads else 0.0
            d.setdefault(f"grad_norm/{m}", []).append(norm)
        scores = {m: float(s) for m, s in modality_scores(out.logits, batch.y).items()}
        if len(scores) > 1:
            d.setdefault("discrepancy", []).append(discrepancy(scores))

    def _nonfinite(self, what: str, batch: Batch) -> None:
        ids = ", ".join(self.data.ids[i] for i in batch.index[:5].tolist())
        where = f"non-finite {what} at epoch {self.state.epoch}, step {self.state.step} (batch starts with ids {ids})"
        if self.config.train.on_nonfinite == "stop":
            raise TrainingError(
                f"{where}; nothing was saved from this epoch (train.on_nonfinite=skip skips such steps)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_skipped_step(self.ctx)
        self.state.skipped_steps += 1
        return None

    def evaluate(self, split: str) -> EvalResult:
        return evaluate(self.assembly, self.batches(split, train=False))

    # ---- the end of the run ------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Test at the best epoch, probes and gap; written by the main process, returned by all."""
        alpha_last = self.method.scalars().get("alpha")
        best_state = self.run.load("best.pt") if (self.run.checkpoints / "best.pt").exists() else None
        if best_state is not None:
            self.model.load_state_dict(best_state["model"])
            self.method.load_state_dict(best_state["method"])
        train_out = self.evaluate("train").outputs
        test_out = self.evaluate("test").outputs
        summary = self._summary(train_out, test_out, alpha_last) if self.dist.is_main else None
        summary = self.dist.broadcast(summary)
        self.dist.barrier()  # no process leaves while another still reads from it (gloo aborts on a reset)
        return summary

    def _summary(
        self, train_out: OutputAccumulator, test_out: OutputAccumulator, alpha_last: float | None
    ) -> dict[str, Any]:
        records = self.run.read_metrics()
        improving = still_improving([r["val"]["fused"]["acc"] for r in records])
        by_epoch = {r["epoch"]: r for r in records}
        last = records[-1]
        best = by_epoch.get(self.state.best_epoch, last)
        y_train, y_test = train_out.get("y").astype(np.int64), test_out.get("y").astype(np.int64)
        probe = {}
        if self.config.train.probe:
            for m in self.data.modalities:
                probe[m] = linear_probe(
                    train_out.get(f"features/{m}"),
                    y_train,
                    test_out.get(f"features/{m}"),
                    y_test,
                    self.config.train.seed,
                )
        gap: dict[str, Any] = {}
        if len(self.data.modalities) > 1:
            gap["logits"] = modality_gap({m: test_out.get(f"logits/{m}") for m in self.data.modalities})
            if f"projection/{self.data.modalities[0]}" in test_out:
                gap["projection"] = modality_gap({m: test_out.get(f"projection/{m}") for m in self.data.modalities})
        summary = {
            "dataset": self.data.name,
            "modalities": list(self.data.modalities),
            "method": self.config.method["name"],
            "seed": self.config.train.seed,
            "best_epoch": best["epoch"],
            "test": best["test"],
            "test_last": last["test"],
            "val": best["val"],
            "probe": probe,
            "gap": gap,
            "alpha_final": alpha_last,
            "alpha_best": self.method.scalars().get("alpha"),
            "imbalance_test": imbalance_ratio({m: best["test"][m]["acc"] for m in self.data.modalities}),
            "wall_s": round(self.state.wall_s, 2),
            "epochs": self.state.epoch,
            "skipped_steps": self.state.skipped_steps,
            "still_improving": improving.pop("still_improving"),
            "still_improving_detail": improving,
            "warnings": self.data.warnings(),
            **({"amp_skipped_steps": self.precision.loss_scale.skipped} if self.precision.loss_scale else {}),
            "split_checksum": self.data.split_checksum(),
            "version": __version__,
        }
        self.run.write_json("summary.json", summary)
        return summary


def _finite_grads(params: list[torch.nn.Parameter]) -> bool:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()))


def _finite_model(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    """runs/<dataset>-<modalities>-<method>-s<seed>, with -2, -3, ... when taken."""
    data = config.data.name + (f"-{'+'.join(config.data.modalities)}" if config.data.modalities else "")
    base = Path(root) / f"{data}-{config.method['name']}-s{config.train.seed}"
    path, n = base, 1
    while (path / "config.yaml").exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def train(
    config: Config, out: str | Path | None = None, resume: bool = False, observers: list[RunObserver] | None = None
) -> dict[str, Any]:
    """Train one run and return its summary (the contents of summary.json). ``observers`` watch it
    (train/observers.py: trackers, a tuner's pruner)."""
    run_dir = Path(out) if out is not None else default_run_dir(config)
    return Trainer(config, run_dir, resume, observers).fit()


def load_run_config(run_dir: str | Path) -> Config:
    """The configuration a run folder was started with."""
    saved = RunFolder(run_dir).read_yaml("config.yaml")
    for key in ("version", "split_checksum"):
        saved.pop(key, None)
    config = build(Config, saved)
    check(config)  # a hand-edited saved config gets the same range checks as a new one
    return config
