"""Shared helpers for the CPU tests, one copy each: tiny training runs through the CLI entry point
(and the joint run a method's run must differ from), tiny encoders and gradients on fixed problems,
the float64 problems of the hypergradient tests, readers of run and prepared folders."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgap.config import ModelConfig
from modgap.data.base import Batch
from modgap.methods import StepContext, build_method
from modgap.methods.hypergrad import lfm_objective
from modgap.methods.matching import MATCHING
from modgap.models import build_model

REPO = Path(__file__).resolve().parents[1]

# A model small enough that a 2-epoch run on the bundled mfeat data takes a fraction of a second.
# One torch thread: faster than two on a small shared CPU, and the same in every run.
TINY = ["--set", "model.hidden=[16]", "--set", "model.feature_dim=8", "--set", "train.threads=1", "--quiet"]
NO_PROBE = ["--set", "train.probe=false"]
TIMING_KEYS = {"epoch_s", "wall_s"}


def _strip_timing(value):
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


class Runner:
    """Calls modgap.cli.main in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        from modgap.cli import main

        self.capsys.readouterr()  # drop anything printed before
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def train(self, out: Path, *extra: str, epochs: int = 2, probe: bool = False) -> dict:
        """A tiny training run into ``out``; asserts success and returns summary.json."""
        argv = ["train", "--epochs", str(epochs), "--out", str(out), *TINY, *([] if probe else NO_PROBE), *extra]
        code, _, err = self(*argv)
        assert code == 0, err
        return json.loads((out / "summary.json").read_text())

    def resume(self, out: Path, epochs: int) -> dict:
        code, _, err = self("train", "--resume", "--out", str(out), "--epochs", str(epochs), "--quiet")
        assert code == 0, err
        return json.loads((out / "summary.json").read_text())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    return Runner(capsys)


def read_metrics(run: Path, strip_timing: bool = True) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [_strip_timing(r) for r in records] if strip_timing else records


@pytest.fixture
def metrics_of():
    return read_metrics


def train_losses(run: Path) -> list[dict]:
    """The per-epoch training losses of a run (what a method changes first)."""
    return [r["train"] for r in read_metrics(run)]


@pytest.fixture(scope="session")
def _joint_runs(tmp_path_factory):
    return {}, tmp_path_factory


@pytest.fixture
def joint_twin(cli, _joint_runs):
    """joint_twin(*extra, epochs=2): train_losses of a joint run with the same data, model and seed
    (cached for the session). A method's end-to-end run is compared with it: equal losses would mean
    the method did nothing joint does not do."""
    cache, factory = _joint_runs

    def twin(*extra: str, epochs: int = 2) -> list[dict]:
        key = (extra, epochs)
        if key not in cache:
            run = factory.mktemp("joint") / "r"
            cli.train(run, "--method", "joint", *extra, epochs=epochs)
            cache[key] = train_losses(run)
        return cache[key]

    return twin


def method_values(run: Path) -> dict[str, dict[str, list[float]]]:
    """scalars.csv of a run without the trainer's loss/<term> rows: what the method itself reported."""
    from modgap.runs import read_scalars

    return {name: cols for name, cols in read_scalars(run).items() if not name.startswith("loss/")}


def summary_of(run: Path) -> dict:
    """summary.json without its wall-clock time (the one field two equal runs differ in)."""
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_s")
    return summary


# ------------------------------------------------------------------- the README's demo table
def readme_demo_table() -> str:
    """The table README.md shows at the end of `make demo` (the block after "It ends with a table")."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"It ends with a table.*?```\n(.*?)```", readme, flags=re.S)
    assert found, "README.md has no demo table after 'It ends with a table'"
    return found.group(1)


def table_shape(text: str) -> list[list[str]]:
    """Each line's words with every number, and every empty cell ('-'), written '#': what the tables of
    two runs of `modgap train` with the same data and method have in common."""
    number = re.compile(r"(?<![A-Za-z])\d+(?:\.\d+)?")  # not the 1 of "F1"
    return [["#" if w == "-" else w for w in number.sub("#", line).split()] for line in text.strip().splitlines()]


# ------------------------------------------------------------------- methods on fixed small problems
class Enc(nn.Linear):
    """A linear encoder that says its feature size, as the model's encoders do."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.out_dim = o


class Ident(nn.Module):
    """An encoder that passes its input through as the feature."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x):
        return x


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in plain numpy (hand computations do not use modgap's helpers)."""
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def joint_gradients(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The gradient joint gives every parameter on ``batch``: CE of the fused logits (zeros where none)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch.inputs).fused, batch.y).backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def method_gradients(method, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
    """The gradient ``method`` leaves on every parameter after one step's hooks, as the trainer runs them."""
    model.zero_grad(set_to_none=True)
    out = model(batch.inputs)
    ctx.out, ctx.batch = out, batch
    method.backward(method.losses(out, batch, ctx), ctx)
    method.after_backward(ctx)
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


# ------------------------------------------------- float64 problems of the hypergradient tests
SCALE = 2.0  # the released loss scale s in L = s (alpha L_cls + (1 - alpha) L_match)
DIMS = [5, 7, 4]


def float64_toy(num_modalities: int, matching: str, seed: int = 0, dims=(5, 7, 4)):
    """A float64 model + matching module, and batch(n, seed) of float64 inputs with 3 classes."""
    torch.manual_seed(seed)
    dims = list(dims)[:num_modalities]
    names = [f"m{i}" for i in range(num_modalities)]
    model = build_model({n: (d,) for n, d in zip(names, dims)}, 3,
                        ModelConfig(encoder="mlp", hidden=(6,), feature_dim=4)).double()
    match = MATCHING.get(matching)({n: 4 for n in names}, 3, 3, 0.5).double()

    def batch(n: int, s: int):
        g = torch.Generator().manual_seed(s)
        x = {name: torch.randn(n, d, generator=g, dtype=torch.float64) for name, d in zip(names, dims)}
        return x, torch.randint(0, 3, (n,), generator=g)

    return torch.nn.ModuleList([model, match]), batch


def lfm_losses(modules, batch):
    """(L_cls, L_match) of the float64 problem on one batch."""
    model, match = modules
    x, y = batch
    out = model(x)
    return F.cross_entropy(out.fused, y), match(out)


def make_optimizer(kind: str, params):
    # Adam's eps is raised from 1e-8 so that a fresh Adam's first, sign-like step still depends
    # smoothly on alpha (otherwise the hypergradient is ~1e-8 and the finite difference is noise).
    return {
        "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
        "sgd-nesterov": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.8, weight_decay=1e-3, nesterov=True),
        "sgd-dampening": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-3),
        "sgd-plain": lambda: torch.optim.SGD(params, lr=0.1),
        "sgd-maximize": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3, maximize=True),
        "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=1e-3, eps=1e-3),
        "adam-maximize": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=1e-3, eps=1e-3, maximize=True),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01, weight_decay=1e-2, eps=1e-3),
    }[kind]()


def warm(modules, optimizer, batch, steps: int) -> None:
    """Give the optimiser a non-trivial state (momentum buffers, Adam moments)."""
    for _ in range(steps):
        optimizer.zero_grad()
        lfm_objective(*lfm_losses(modules, batch), 0.4, SCALE).backward()
        optimizer.step()


def make_problem(num_modalities: int, matching: str, steps: int, seed: int = 0):
    """A float64 model + matching module, ``steps`` training batches, a validation and a warm-up batch."""
    modules, batch = float64_toy(num_modalities, matching, seed, DIMS)
    train = [batch(16, 10 + i) for i in range(steps)]
    return modules, train, batch(12, 2), batch(16, 3)


def method_problem(options: dict, steps_per_epoch: int = 100, matching: str = "js"):
    """lfm-lb on the float64 problem with its own hooks, as the trainer drives them."""
    modules, train, val, _ = make_problem(2, matching, 12)
    model = modules[0]
    # issue 8's learner (alpha itself, the raw step, the fused objective) unless the options say otherwise
    base = {"parametrization": "clip", "step": "raw", "val_objective": "fused", "alpha0": 0.5}
    method = build_method({"name": "lfm-lb", "matching": matching, **base, **options}, ("m0", "m1"), 3,
                          {"m0": 4, "m1": 4}).double()
    params = [*model.parameters(), *method.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    as_batch = lambda b: Batch(b[0], b[1], torch.arange(len(b[1])))
    ctx = StepContext(model, optimizer, params, epochs=10, steps_per_epoch=steps_per_epoch,
                      next_val_batch=lambda: as_batch(val))
    return model, method, optimizer, params, ctx, [as_batch(b) for b in train], as_batch(val)


def trainer_step(model, method, optimizer, ctx, batch, step):
    """What Trainer.train_step does, hook by hook."""
    ctx.step, ctx.epoch = step, step // ctx.steps_per_epoch
    optimizer.zero_grad(set_to_none=True)
    losses_ = method.losses(model(batch.inputs), batch, ctx)
    method.backward(losses_, ctx)
    method.after_backward(ctx)
    optimizer.step()
    method.after_step(ctx)


# ------------------------------------------------------------------ prepared folders and threads
def read_skipped(out: Path) -> dict[str, str]:
    """skipped.csv of a prepared folder: id -> reason."""
    with (out / "skipped.csv").open(newline="", encoding="utf-8") as f:
        return {row["id"]: row["reason"] for row in csv.DictReader(f)}


def read_samples(out: Path) -> list[dict[str, str]]:
    """samples.csv of a prepared folder, one dict a row."""
    with (out / "samples.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def restore_torch_threads():
    """train.threads=1 (used to keep these runs quick on a busy machine) is process-wide: undo it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def save_tiny_bert(root: Path, words: list[str], max_positions: int) -> str:
    """A BERT tokenizer (vocab: the special tokens, then ``words``) and a tiny random BERT, saved in
    root/model; returns that folder, as the text kind's ``text_model`` takes it."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    out = root / "model"
    BertTokenizer(vocab=str(vocab)).save_pretrained(out)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=max_positions)
    BertModel(config).save_pretrained(out)
    return str(out)
