"""Train-step time of joint, lfm-h and lfm-lb, measured on modgap's own Trainer.

Same model and batches for every method: mfeat pix+fou, batch 64, once with the default MLP
(hidden 256, features 128) and once with a larger one (--hidden / --feature-dim, default
1024,1024 / 512) that stands in for heavier encoders:

    python benchmarks/step_time.py                      # both models, 1 thread
    python benchmarks/step_time.py --models large --threads 2 --steps 500

Per method: a Trainer is built from a config (its run folder is a temp dir; train_step writes
nothing), a few fixed batches are taken from trainer.batches('train', True), then
trainer.train_step(batch) runs in a loop with trainer.ctx.step set before each step, as fit() does
(so lfm-lb updates alpha when ctx.step % every == 0). Warm-up --warmup steps, then --repeats
timed blocks of --steps steps each, methods interleaved block by block; the median block gives
ms/step. Two clocks: CPU time of this process (time.process_time; with one torch thread all the
work runs in it) and wall time (with the minimum block in brackets). On a shared machine the wall
clock also counts time spent waiting for a core, so the ratios and goals use the CPU clock unless
--clock wall.

Then where the time goes: the same trainer.train_step loop with the functions it calls wrapped by
timers (model forward, method hooks, the matching loss, optimizer.step, the trainer's gradient check
and diagnostics, torch.autograd.grad / Tensor.backward, the AlphaLearner's pieces, the validation
batch), for joint, lfm-h and an lfm-lb update step (every=1), so that the matching loss and every
part of the hypergradient step have a price. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import modgap
from modgap.train.trainer import Trainer

GOALS = {"lfm-h": 1.05, "lfm-lb": 1.20}  # ratio to joint; lfm-lb at its default every
LB_DEFAULT_EVERY = 10  # the default of LFMLearned.Options.every (read back from the method below)


# ------------------------------------------------------------------------------ the trainers
def variants(methods: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for m in methods:
        if m == "lfm-lb":
            out += [("lfm-lb K=1", {"name": "lfm-lb", "every": 1}), ("lfm-lb", {"name": "lfm-lb"})]
        else:
            out.append((m, {"name": m}))
    return out


def make_trainer(method: dict[str, Any], model: dict[str, Any], batch_size: int, root: Path) -> Trainer:
    config = modgap.make_config(overrides={
        "data": {"name": "mfeat", "modalities": ["pix", "fou"], "batch_size": batch_size},
        "model": model, "method": method, "train": {"progress": False}})
    trainer = Trainer(config, root / f"{method['name']}-{method.get('every', 'd')}")
    trainer.model.train()
    trainer.method.train()
    trainer.ctx.epoch = 0
    trainer.method.on_epoch_start(trainer.ctx)  # lfm-h: alpha of epoch 0
    return trainer


def fixed_batches(trainer: Trainer, n: int) -> list:
    size = trainer.config.data.batch_size
    out = []
    for batch in trainer.batches("train", True):
        if len(batch) == size:  # full batches only (the last one of an epoch is short)
            out.append(batch)
        if len(out) == n:
            break
    return out


def run_steps(trainer: Trainer, batches: list, n: int) -> None:
    for _ in range(n):
        trainer.ctx.step = trainer.state.step
        trainer.train_step(batches[trainer.state.step % len(batches)])
        trainer.state.step += 1


# --------------------------------------------------------------------------------- breakdown
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class Instrument:
    """Exclusive time per named phase, measured by wrapping the functions the real train_step
    calls (on this trainer's objects, plus torch.autograd.grad / Tensor.backward while active).

    A phase's time excludes the wrapped calls made inside it, so the phases add up to the whole
    train_step; "Trainer.train_step (rest)" is what is left in the trainer itself.
    """

    def __init__(self, trainer: Trainer, clock=time.process_time) -> None:
        self.trainer, self.clock = trainer, clock
        self.excl: dict[str, float] = defaultdict(float)
        self.order: list[str] = []
        self.stack: list[str] = []
        self._t = 0.0
        self._grads_in_backward = 0
        self._undo: list = []

    # timing ------------------------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        now = self.clock()
        if self.stack:
            self.excl[self.stack[-1]] += now - self._t
        if name not in self.excl:
            self.order.append(name)
            self.excl[name] += 0.0
        self.stack.append(name)
        self._t = now

    def _exit(self) -> None:
        now = self.clock()
        self.excl[self.stack.pop()] += now - self._t
        self._t = now

    def _wrap(self, fn, name):
        def wrapper(*args, **kwargs):
            label = name() if callable(name) else name
            if label is None:
                return fn(*args, **kwargs)
            self._enter(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self._exit()
        return wrapper

    def _patch(self, owner, attr: str, name) -> None:
        if owner is None or not hasattr(owner, attr):
            return  # the code has no such function (any more): nothing to time there
        had_own = attr in getattr(owner, "__dict__", {})
        old = getattr(owner, attr)
        setattr(owner, attr, self._wrap(old, name))
        self._undo.append((owner, attr, old if had_own else None))

    # names by context ----------------------------------------------------------------------------
    def _in(self, phase: str) -> bool:
        return any(s.startswith(phase) for s in self.stack)

    def _forward_name(self) -> str:
        return "val forward (model)" if self._in("method.after_step") else "forward (model)"

    def _grad_name(self) -> str:
        if self._in("method.after_step"):
            return "val backward (autograd.grad)"
        if self._in("method.backward"):
            self._grads_in_backward += 1
            return {1: "grad L (backward 1)", 2: "grad L_cls - L_match (backward 2)"}.get(
                self._grads_in_backward, f"autograd.grad #{self._grads_in_backward}")
        return "autograd.grad (elsewhere)"

    def _method_backward_name(self) -> str:
        self._grads_in_backward = 0
        return "method.backward (rest: p.grad and d)"

    def _tensor_backward_name(self) -> str | None:
        return "backward (total)"

    def __enter__(self) -> "Instrument":
        # (`import modgap.train.trainer as m` fails: modgap.train is the train() function there)
        trainer_module = sys.modules[Trainer.__module__]
        tr = self.trainer
        method, learner = tr.method, getattr(tr.method, "learner", None)
        self._patch(tr, "train_step", "Trainer.train_step (rest)")
        self._patch(tr.model, "forward", self._forward_name)
        self._patch(method, "losses", "method.losses (CE + objective)")
        self._patch(getattr(method, "matching", None), "forward", "L_match (JS) forward")
        self._patch(method, "backward", self._method_backward_name)
        self._patch(method, "after_backward", "method.after_backward (capture)")
        self._patch(tr.optimizer, "step", "optimizer.step")
        self._patch(method, "after_step", "method.after_step (rest: mode switches, val CE, alpha update)")
        self._patch(tr.ctx, "next_val_batch", "val batch (ctx.next_val_batch)")
        self._patch(learner, "direction", "hypergradient: d theta'/d alpha")
        self._patch(learner, "hypergradient", "hypergradient: dot products")
        self._patch(learner, "capture", "capture optimiser state")
        self._patch(tr, "_record_diagnostics", "train.diagnostics (grad norms, discrepancy)")
        self._patch(trainer_module, "_finite_grads", "train.check_grads (finite gradients)")
        self._patch(torch.autograd, "grad", self._grad_name)
        self._patch(torch.Tensor, "backward", self._tensor_backward_name)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, old in reversed(self._undo):
            if old is None:
                delattr(owner, attr)  # it was the class's: uncover it again
            else:
                setattr(owner, attr, old)
        self._undo.clear()


def breakdown(trainer: Trainer, batches: list, n: int, repeats: int,
              clock=time.process_time) -> tuple[list[str], dict[str, float]]:
    """Median over repeats of the mean ms per step of each phase of trainer.train_step."""
    per_rep: list[dict[str, float]] = []
    order: list[str] = []
    for _ in range(repeats):
        with Instrument(trainer, clock) as ins:
            run_steps(trainer, batches, n)
        per_rep.append({k: 1e3 * v / n for k, v in ins.excl.items()})
        order = list(dict.fromkeys([*order, *ins.order]))
    return order, {k: statistics.median(r.get(k, 0.0) for r in per_rep) for k in order}


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="default,large",
                   help="default (hidden 256, features 128) and/or large (--hidden/--feature-dim)")
    p.add_argument("--hidden", default="1024,1024", help="hidden sizes of the large model (default %(default)s)")
    p.add_argument("--feature-dim", type=int, default=512, help="feature size of the large model (default %(default)s)")
    p.add_argument("--methods", default="joint,lfm-h,lfm-lb",
                   help="lfm-lb is timed twice: every=1 and its default every (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="fixed training batches, cycled (default %(default)s)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=300, help="steps per timed block (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per method; the median is reported")
    p.add_argument("--breakdown-steps", type=int, default=100, help="steps per breakdown block (0: no breakdown)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default %(default)s)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="clock of the ratios, goals and breakdown (default %(default)s; both are printed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    models = {"default": {}, "large": {"hidden": [int(h) for h in args.hidden.split(",") if h],
                                       "feature_dim": args.feature_dim}}
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"# step time: mfeat pix+fou, batch {args.batch_size}, SGD (modgap defaults), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); warm-up {args.warmup}, {args.repeats} x {args.steps} steps, "
          f"median block\n")
    for model_name in chosen:
        model = models[model_name]
        with tempfile.TemporaryDirectory(prefix="modgap-steptime-") as tmp:
            trainers = {name: make_trainer(spec, model, args.batch_size, Path(tmp)) for name, spec in variants(methods)}
            any_tr = next(iter(trainers.values()))
            n_params = sum(p.numel() for p in any_tr.model.parameters())
            hidden = ",".join(map(str, any_tr.config.model.hidden))
            batches = fixed_batches(any_tr, args.batches)
            every = trainers["lfm-lb"].method.options.every if "lfm-lb" in trainers else LB_DEFAULT_EVERY
            for tr in trainers.values():
                run_steps(tr, batches, args.warmup)
            blocks: dict[str, dict[str, list[float]]] = {c: defaultdict(list) for c in CLOCKS}
            for _ in range(args.repeats):
                for name, tr in trainers.items():  # interleaved, so drifts of the machine hit all alike
                    t0 = {c: f() for c, f in CLOCKS.items()}
                    run_steps(tr, batches, args.steps)
                    for c, f in CLOCKS.items():
                        blocks[c][name].append(1e3 * (f() - t0[c]) / args.steps)
            meds = {c: {k: statistics.median(v) for k, v in b.items()} for c, b in blocks.items()}
            med = meds[args.clock]
            print(f"## model '{model_name}': MLP hidden {hidden}, features {any_tr.config.model.feature_dim}, "
                  f"{n_params / 1e6:.2f} M parameters\n")
            print("| method | CPU ms/step | ratio (CPU) | wall ms/step [min] | ratio (wall) | goal (ratio on the "
                  f"{args.clock} clock) |")
            print("|---|---:|---:|---:|---:|---|")
            for name in med:
                ratio = {c: meds[c][name] / meds[c]["joint"] if "joint" in meds[c] else float("nan") for c in CLOCKS}
                key = "lfm-lb" if name == "lfm-lb" else name
                goal = ""
                if key in GOALS and name != "lfm-lb K=1":
                    r = ratio[args.clock]
                    goal = f"<= {GOALS[key]:.2f}: {'met' if r <= GOALS[key] else 'NOT met'}"
                label = f"lfm-lb K={every}" if name == "lfm-lb" else name
                print(f"| {label} | {meds['cpu'][name]:.3f} | {ratio['cpu']:.3f} | {meds['wall'][name]:.3f} "
                      f"[{min(blocks['wall'][name]):.3f}] | {ratio['wall']:.3f} | {goal} |")
            print()

            if args.breakdown_steps <= 0:
                continue
            clock = CLOCKS[args.clock]
            cols: dict[str, tuple[list[str], dict[str, float]]] = {}
            for name, label in (("joint", "joint"), ("lfm-h", "lfm-h"), ("lfm-lb K=1", "lfm-lb update step")):
                if name in trainers:
                    cols[label] = breakdown(trainers[name], batches, args.breakdown_steps, args.repeats, clock)
            order = list(dict.fromkeys(k for o, _ in cols.values() for k in o))
            print(f"### where the time goes, model '{model_name}' ({args.clock} ms per step of Trainer.train_step, "
                  f"exclusive time of each wrapped call, median of "
                  f"{args.repeats} x {args.breakdown_steps} steps)\n")
            print("| phase | " + " | ".join(cols) + " |")
            print("|---|" + "---:|" * len(cols))
            for k in order:
                print(f"| {k} | " + " | ".join(f"{c[1][k]:.3f}" if k in c[1] else "" for c in cols.values()) + " |")
            sums = {n: sum(c[1].values()) for n, c in cols.items()}
            print("| **sum** | " + " | ".join(f"**{v:.3f}**" for v in sums.values()) + " |\n")

            notes = []
            if "lfm-h" in cols and "joint" in cols:
                jh, jj = cols["lfm-h"][1], cols["joint"][1]
                fwd = jh.get("L_match (JS) forward", 0.0) + jh.get("method.losses (CE + objective)", 0.0) \
                    - jj.get("method.losses (CE + objective)", 0.0)
                bwd = jh.get("backward (total)", 0.0) - jj.get("backward (total)", 0.0)
                notes.append(f"lfm-h: the matching loss costs {fwd:.3f} ms in the forward (JS + objective) and "
                             f"{bwd:+.3f} ms in the backward, {fwd + bwd:.3f} ms in all = "
                             f"{(fwd + bwd) / sums['joint']:.1%} of a joint step (timed: lfm-h/joint "
                             f"{med['lfm-h'] / med['joint']:.3f}).")
            if "lfm-lb update step" in cols and "lfm-lb K=1" in med:
                u = cols["lfm-lb update step"][1]
                notes.append(f"lfm-lb update step: phases sum to {sums['lfm-lb update step']:.3f} ms (instrumented) vs "
                             f"{med['lfm-lb K=1']:.3f} ms timed for every=1 above.")
                plain = med.get("lfm-h", med.get("joint"))
                if "lfm-lb" in med and "joint" in med:
                    predicted = (plain * (every - 1) + med["lfm-lb K=1"]) / every
                    notes.append(f"lfm-lb K={every}: an update step costs {med['lfm-lb K=1'] - plain:.3f} ms more than "
                                 f"an lfm-h step; amortised over K that predicts {predicted:.3f} ms/step = "
                                 f"{predicted / med['joint']:.3f}x joint (timed: {med['lfm-lb']:.3f} ms = "
                                 f"{med['lfm-lb'] / med['joint']:.3f}x).")
                extra = {k: v - cols.get("lfm-h", ([], {}))[1].get(k, 0.0) for k, v in u.items()}
                top = sorted(((v, k) for k, v in extra.items()), reverse=True)[:5]
                notes.append("largest costs of an update step over an lfm-h step: "
                             + ", ".join(f"{k} +{v:.3f} ms" for v, k in top) + ".")
            for line in notes:
                print(f"- {line}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
