"""Reliability, tested as an adversary would (docs/reliability.md): full and unwritable disks, NaN/inf,
alpha under any hypergradient, random configurations and bad data files, two processes on one run folder.

Every bad input must end in one line ``modgap: error: ...`` and exit code 2 (never a traceback), with
nothing valid lost or overwritten. Kills at chosen and random points are in tests/test_faults.py; corrupt
checkpoints and the lock against a dead or live holder in tests/test_runs.py; a killed bench in
tests/test_bench.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import time
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import NO_PROBE, TINY, read_metrics
from modgap.cli import main
from modgap.config import Config
from modgap.errors import ConfigError
from modgap.methods.base import METHODS, method_classes
from modgap.methods.hypergrad import AlphaLearner
from modgap import runs
from modgap.faults import _parse, fault_point
from modgap.runs import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
LFM = ["--method", "lfm-lb", "--set", "method.every=4", "--set", "method.lr_alpha=5"]
EPOCHS = 4
TMP = re.compile(r"^\..+\.tmp$")


def run_cli(*argv: str) -> tuple[int, str, str]:
    """modgap.cli.main in-process, capturing stdout and stderr (usable inside hypothesis tests too); a
    warning that the command would print (RuntimeWarning, UserWarning, ...) is one more line of stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)  # not shown by python by default either
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
    shown = "".join(f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})\n" for w in caught)
    return code, out.getvalue(), err.getvalue() + shown


def one_line_error(code: int, err: str, *fragments: str) -> str:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modgap: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def outcome(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("wall_s")
    alpha = run / "alpha.csv"
    rows = [tuple(line.split(",")[i] for i in (0, 1, 3)) for line in alpha.read_text().splitlines()] if alpha.exists() else []
    return {"summary": summary, "metrics": read_metrics(run), "alpha": rows}


def train_argv(run: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return ["train", "--epochs", str(epochs), "--out", str(run), *TINY, *NO_PROBE, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted lfm-lb run, the outcome every interrupted one must reach."""
    run = tmp_path_factory.mktemp("ref") / "r"
    code, _, err = run_cli(*train_argv(run, *LFM))
    assert code == 0, err
    return outcome(run)


# ------------------------------------------------------------------------------ the fault hook
def test_fault_hook_is_inert_unless_asked(monkeypatch):
    monkeypatch.delenv("MODGAP_FAULT", raising=False)
    fault_point("checkpoint_write")  # unset: nothing
    monkeypatch.setenv("MODGAP_FAULT", "some_other_point:1")
    fault_point("checkpoint_write")  # another point: nothing
    assert _parse("checkpoint_write:3") == ("checkpoint_write", 3, "kill")
    assert _parse("train_step:5:stop") == ("train_step", 5, "stop")
    for bad in ("checkpoint_write", "x:0", "x:-1", "x:y", ":3", "x:1:explode", "a:1:kill:2"):
        with pytest.raises(ConfigError, match="MODGAP_FAULT"):
            _parse(bad)


# ------------------------------------------------------------------------ full and unwritable disks
def test_low_disk_space_is_refused_before_training(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: free._replace(free=1 << 20))
    run = tmp_path / "r"
    code, _, err = run_cli(*train_argv(run, *LFM))
    one_line_error(code, err, str(run), "1 MiB free", "checkpoints")
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    assert not list((run / "checkpoints").glob("*"))


def failing_fsync(monkeypatch, target: str, nth: int) -> list[str]:
    """os.fsync raises ENOSPC the nth time it flushes ``target`` (or a temp file that becomes it)."""
    real, seen, hits = os.fsync, [], []

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if TMP.match(name):
            name = name[1:-4].rsplit(".", 1)[0]  # .last.pt.k2j3.tmp -> last.pt
        if name == target:
            seen.append(name)
            if len(seen) == nth:
                hits.append(name)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


@pytest.mark.parametrize("target, nth", [
    ("last.pt", 3),        # epoch 2's checkpoint: last.pt was just rotated to last.prev.pt
    ("best.pt", 1),        # the very first checkpoint: nothing to resume from, the resume starts over
    ("metrics.jsonl", 2),  # epoch 1's record
    ("alpha.csv", 3),      # epoch 1's alpha rows (the 1st fsync is the header's)
    ("summary.json", 1),   # the end of the run
])
def test_disk_full_mid_run_keeps_what_was_written(tmp_path, monkeypatch, reference, target, nth):
    run = tmp_path / "r"
    hits = failing_fsync(monkeypatch, target, nth)
    code, _, err = run_cli(*train_argv(run, *LFM))
    assert hits == [target]
    one_line_error(code, err, target, "disk full")
    monkeypatch.undo()  # space is freed
    assert not [p for p in run.rglob("*") if TMP.match(p.name)]
    assert not (run / ".lock").exists()
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        load_checkpoint(checkpoint)  # whole, checksum intact
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert len(read_metrics(run)) == {"last.pt": 3, "best.pt": 1, "metrics.jsonl": 2, "alpha.csv": 1}.get(target, EPOCHS)
    assert not (run / "summary.json").exists()
    code, _, err = run_cli("train", "--resume", "--out", str(run), "--quiet")
    assert code == 0, err
    assert outcome(run) == reference


def test_unwritable_run_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    for out, why in ((blocker / "run", "Not a directory"), (blocker, "")):
        code, _, err = run_cli(*train_argv(out, "--method", "joint"))
        one_line_error(code, err, str(out), "cannot write the run folder", why)
    assert blocker.read_text() == "keep me"


@contextlib.contextmanager
def immutable(path: Path):
    """chattr +i: unwritable even for root (the tests run as root, so chmod would not do)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_folder_before_and_at_resume(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    with immutable(parent):
        code, _, err = run_cli(*train_argv(parent / "run", "--method", "joint"))
        one_line_error(code, err, str(parent / "run"), "cannot write the run folder")
    assert list(parent.iterdir()) == []
    run = tmp_path / "done"
    code, _, err = run_cli(*train_argv(run, "--method", "joint", epochs=1))
    assert code == 0, err
    before = digest(run)
    with immutable(run):
        code, _, err = run_cli("train", "--resume", "--out", str(run), "--epochs", "2", "--quiet")
        one_line_error(code, err, str(run), "cannot write the run folder")
    assert digest(run) == before


def test_corrupt_best_checkpoint_is_named_at_the_end(tmp_path):
    """best.pt has no second copy: damaged, the final evaluation stops in one line naming it."""
    run = tmp_path / "r"
    code, _, err = run_cli(*train_argv(run, "--method", "joint", epochs=2))
    assert code == 0, err
    (run / "summary.json").unlink()
    best = run / "checkpoints" / "best.pt"
    blob = bytearray(best.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    best.write_bytes(bytes(blob))
    last = (run / "checkpoints" / "last.pt").read_bytes()
    code, _, err = run_cli("train", "--resume", "--out", str(run), "--quiet")
    one_line_error(code, err, str(best), "checksum")
    assert (run / "checkpoints" / "last.pt").read_bytes() == last and len(read_metrics(run)) == 2
    assert not (run / ".lock").exists()


# ----------------------------------------------------------------------------------- NaN and inf
def test_non_finite_loss_stops_naming_epoch_step_and_ids(tmp_path):
    from modgap.train.plan import permutation

    run = tmp_path / "r"
    code, _, err = run_cli(*train_argv(run, "--method", "joint", "--set", "optim.lr=1e9"))
    line = one_line_error(code, err, "non-finite loss", "epoch 0", "train.on_nonfinite=skip")
    match = re.search(r"step (\d+) \(batch starts with ids ([^)]*)\)", line)
    assert match, line
    step, ids = int(match.group(1)), match.group(2).split(", ")
    train_ids = json.loads((run / "splits.json").read_text())["train"]
    order = permutation(len(train_ids), 0, 0)  # the order of epoch 0 under seed 0
    assert ids == [train_ids[i] for i in order[step * 64: step * 64 + 5]]
    assert not list((run / "checkpoints").glob("*.pt")) and not (run / "summary.json").exists()
    assert not (run / "metrics.jsonl").exists() or read_metrics(run) == []
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("lr", ["1e9", ".inf"])
def test_non_finite_steps_skipped_counted_and_never_best(tmp_path, lr):
    run = tmp_path / "r"
    code, _, err = run_cli(*train_argv(run, *LFM, "--set", f"optim.lr={lr}", "--set", "train.on_nonfinite=skip", epochs=2))
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 0 < summary["skipped_steps"] == last["progress"]["skipped_steps"] < 2 * 23
    finite = lambda state: all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())  # noqa: E731
    best = run / "checkpoints" / "best.pt"
    assert not best.exists() or finite(load_checkpoint(best))
    if lr == ".inf":
        assert not finite(last) and not best.exists()  # the model did go non-finite; it was never "best"
    else:
        assert best.exists()
    alphas = [float(line.split(",")[3]) for line in (run / "alpha.csv").read_text().splitlines()[1:]]
    assert alphas and all(math.isfinite(a) and 0.05 <= a <= 1.0 for a in alphas)
    assert math.isfinite(summary["alpha_final"])


def write_table(root: Path, big: float) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    y = np.arange(90) % 3
    (root / "labels.csv").write_text("id,label\n" + "".join(f"r{i},c{c}\n" for i, c in enumerate(y)))
    x = rng.normal(size=(90, 4)) + y[:, None]
    x[7, 2] = big
    np.save(root / "x.npy", x)
    np.save(root / "z.npy", rng.normal(size=(90, 2)) + y[:, None])


def test_huge_feature_value(tmp_path):
    """Raw, 1e30 overflows the network: a one-line stop; standardised (the default), even 3e38 (near the
    float32 limit) stays finite and keeps its column (its statistics are taken in float64 when needed)."""
    from modgap.config import make_config
    from modgap.data import load_dataset

    write_table(tmp_path / "t30", 1e30)
    code, _, err = run_cli(*train_argv(tmp_path / "r", "--data", f"tables:{tmp_path / 't30'}", "--method", "joint",
                                       "--set", "data.standardize=false", "--set", "data.batch_size=16"))
    one_line_error(code, err, "non-finite", "epoch", "step", "ids r")
    write_table(tmp_path / "t38", 3e38)
    data = load_dataset(make_config(assignments=["data.name=tables", f"data.path={tmp_path / 't38'}"]).data)
    x = data.batch(np.arange(90), train=False).inputs["x"].numpy()
    assert np.isfinite(x).all() and x[:, 2].std() > 0
    code, _, err = run_cli(*train_argv(tmp_path / "r2", "--data", f"tables:{tmp_path / 't38'}", "--method", "joint",
                                       "--set", "data.batch_size=16", epochs=2))
    assert code == 0 and "Warning" not in err, err


bounds = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(lambda b: (min(b), max(b)))
rates = st.one_of(st.floats(0, 1e308), st.sampled_from([0.0, 1e-300, 1e300, math.inf]))
hypergradients = st.lists(st.one_of(st.floats(), st.sampled_from([0.0, math.nan, math.inf, -math.inf, 1e308, -1e308])),
                          max_size=40)


@settings(max_examples=400, deadline=None)
@given(alpha0=st.floats(-1, 2), lr=rates, limits=bounds, parametrization=st.sampled_from(["clip", "sigmoid"]),
       hs=hypergradients)
def test_alpha_never_leaves_its_bounds_nor_becomes_nan(alpha0, lr, limits, parametrization, hs):
    learner = AlphaLearner(alpha0, lr, limits, parametrization)
    lo, hi = limits
    assert lo <= learner.alpha <= hi
    for h in hs:
        before = learner.alpha
        alpha = learner.update(h)
        assert alpha == learner.alpha and math.isfinite(alpha) and lo <= alpha <= hi, (h, before, alpha)
        assert math.isfinite(learner.logit)
        if not math.isfinite(h):
            assert alpha == before  # a non-finite hypergradient never moves alpha


# ------------------------------------------------------------------- random configurations (hypothesis)
# Integers: small (the model is really built, so no huge layers), or beyond 64 bits (must be refused);
# floats: anything but integral values that would become huge layer sizes.
ints = st.one_of(st.integers(-3, 48), st.sampled_from([2**63, -2**63 - 1, 10**40, 10**400]))
floats = st.floats().filter(lambda f: not (f.is_integer() and 48 < abs(f) < 2**64))
texts = st.text(max_size=12)
words = st.sampled_from(["mfeat", "tables", "manifest", "synth-av", "lfm-lb", "joint", "cpu", "cuda", "sgd", "adam",
                         "cosine", "skip", "stop", "mean", "cls", "mlp", "exp", "infonce", "official", "fp32", "bf16",
                         "2001-13-45", ""])
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, words)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(texts, scalars, max_size=2))


def of_type(hint) -> st.SearchStrategy:
    """Values of a field's own type, in and out of range (plus the odd None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return ints
    if hint is float:
        return st.one_of(floats, st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e300]))
    if hint is str:
        return st.one_of(words, texts)
    if origin is tuple:
        return st.lists(of_type(args[0]), max_size=3)
    if origin is dict or hint is dict:
        return st.dictionaries(st.one_of(words, texts), scalars, max_size=2)
    if args and type(None) in args:
        return st.one_of(st.none(), *(of_type(a) for a in args if a is not type(None)))
    return values


def _fields() -> dict[str, object]:
    hints = {"out": str | None, "method.name": str}
    for section in ("data", "model", "optim", "train", "log"):
        for name, hint in typing.get_type_hints(typing.get_type_hints(Config)[section]).items():
            hints[f"{section}.{name}"] = hint
    return hints


FIELDS = _fields()
METHOD_OPTIONS = {n: {name: hint for c in method_classes(n) for name, hint in typing.get_type_hints(c.Options).items()}
                  for n in METHODS}
random_keys = st.one_of(st.text(string.ascii_letters + "._", min_size=1, max_size=16),
                        st.sampled_from(["data", "model", "optim", "train", "log", "method"]).flatmap(
                            lambda s: st.text(string.ascii_lowercase + "_.", min_size=1, max_size=10).map(lambda k: f"{s}.{k}")))


@st.composite
def assignments(draw) -> list[str]:
    """--set KEY=VALUE items: typed keys of every section, a method with its own option keys, random keys;
    values of the field's type (in and out of range) or of random types, rendered as YAML, or random text."""

    def value(hint) -> str:
        return draw(st.one_of(of_type(hint).map(yaml_text), rendered) if hint is not None else rendered)

    items = []
    if draw(st.booleans()):
        method = draw(st.sampled_from(sorted(METHOD_OPTIONS)))
        items.append(f"method.name={method}")
        options = METHOD_OPTIONS[method]
        for key in draw(st.lists(st.sampled_from(sorted(options) or ["none"]), max_size=3)):
            items.append(f"method.{key}={value(options.get(key))}")
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(FIELDS)), random_keys))
        items.append(f"{key}={value(FIELDS.get(key))}")
    return draw(st.permutations(items))


def yaml_text(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


rendered = st.one_of(values.map(yaml_text), st.text(max_size=20))


@contextlib.contextmanager
def no_training():
    """train() builds the Trainer (data, model, method, optimiser: where a bad value fails) and stops there."""
    from modgap.train import trainer

    calls = []

    def fake_train(config, out=None, resume=False, observers=None):
        threads = torch.get_num_threads()
        try:
            trainer.Trainer(config, out or "never-written", resume)
        finally:
            torch.set_num_threads(threads)
        calls.append(config)
        return {}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "train", fake_train)
        mp.setattr("modgap.cli.format_summary", lambda summary: "")
        yield calls


def clear_or_fine(code: int, err: str, calls: list) -> None:
    event(f"exit {code}")
    assert "Traceback" not in err, err
    if code == 0:
        assert calls, "exit 0 without building the run"
    else:
        one_line_error(code, err)


SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(sets=assignments())
def test_random_set_values_give_one_line_or_a_valid_run(tmp_path_factory, sets):
    out = tmp_path_factory.getbasetemp() / "never-written"
    with no_training() as calls:
        code, _, err = run_cli("train", "--out", str(out), "--quiet", *[f"--set={s}" for s in sets])
    clear_or_fine(code, err, calls)
    assert not out.exists()


@st.composite
def documents(draw) -> bytes:
    """A config file: random sections of known and random keys, a random YAML value, random text or bytes."""
    kind = draw(st.sampled_from(["sections", "sections", "value", "text", "bytes"]))
    if kind == "sections":
        doc: dict = {}
        for item in draw(assignments()):
            key, _, raw = item.partition("=")
            node = doc
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            try:
                node[leaf] = yaml.safe_load(raw) if draw(st.booleans()) else raw
            except Exception:  # e.g. !!float abc: kept as text
                node[leaf] = raw
        return yaml.safe_dump(doc, allow_unicode=True).encode()
    if kind == "value":
        return yaml_text(draw(values)).encode()
    if kind == "text":
        return draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=60))


@SLOW
@given(doc=documents())
def test_random_config_files_give_one_line_or_a_valid_run(tmp_path_factory, doc):
    base = tmp_path_factory.getbasetemp()
    path = base / "random.yaml"
    path.write_bytes(doc)
    with no_training() as calls:
        code, _, err = run_cli("train", "--config", str(path), "--out", str(base / "never-written"), "--quiet")
    clear_or_fine(code, err, calls)


@settings(max_examples=100, deadline=None)
@given(doc=documents())
def test_random_saved_config_at_resume_gives_one_line(tmp_path_factory, doc):
    run = tmp_path_factory.getbasetemp() / "saved"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_bytes(doc)
    with no_training() as calls:
        code, _, err = run_cli("train", "--resume", "--out", str(run), "--quiet")
    clear_or_fine(code, err, calls)
    assert (run / "config.yaml").read_bytes() == doc


@pytest.mark.parametrize("argv", [["train", "--epochs", "abc"], ["train", "--bogus"], ["bogus"], ["train", "--set"],
                                  ["bench", "--jobs", "x"], ["list", "nothing"]])
def test_usage_errors_are_one_line_too(argv):
    code, _, err = run_cli(*argv)
    one_line_error(code, err, "--help")


@pytest.mark.parametrize("sets, fragment", [
    (["train.seed=-1"], "train.seed"), (["data.split_seed=-5"], "split_seed"),
    (["train.threads=100000"], "train.threads"), (["train.epochs=18446744073709551616"], "out of range"),
    (["optim.lr=1" + "0" * 400], "out of range"), (["optim.name=adam", "optim.betas=[2, 0.5]"], "optim.betas"),
    (["optim.gamma=-1"], "optim.gamma"), (["data.batch_size=2001-13-45"], "data.batch_size"),
    (["data.options=&a {x: *a}"], "itself"), (["train.device=bogus"], "train.device"),
    (["train.device=cuda:99"], "train.device"), (["train.device=meta"], "train.device"),
    (['optim.name="a\\nb\\x85c\\u2028d"'], "optim.name"), (['model.encoder="x\\ry"'], "unknown encoder"),
])
def test_values_that_used_to_end_in_a_traceback(tmp_path, sets, fragment):
    """Each of these crashed (a traceback, or a segfault for 100000 threads) or printed several lines."""
    with no_training() as calls:
        code, _, err = run_cli("train", "--out", str(tmp_path / "r"), "--quiet", *[f"--set={s}" for s in sets])
    one_line_error(code, err, fragment)
    assert not calls and not (tmp_path / "r").exists()


@pytest.mark.parametrize("text", ["!!float abc\n", "train: !!int abc\n", "a: !!timestamp 2001-13-45\n",
                                  "[" * 5000 + "]" * 5000 + "\n", "- 1\n- 2\n", "\xff\xfe"])
def test_config_files_that_used_to_end_in_a_traceback(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("latin-1"))
    code, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "r"))
    one_line_error(code, err, str(path))
    run = tmp_path / "saved"
    run.mkdir()
    (run / "config.yaml").write_bytes(text.encode("latin-1"))
    code, _, err = run_cli("train", "--resume", "--out", str(run))
    one_line_error(code, err, str(run / "config.yaml"))


# ---------------------------------------------------------------------------------- bad data files
def tables(root: Path) -> Path:
    """A valid feature-table folder: labels.csv, a.csv (3 features), b.npy (2 features), 30 rows, 3 classes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:03d}" for i in range(30)]
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{i},{'abc'[k % 3]}\n" for k, i in enumerate(ids)))
    (root / "a.csv").write_text("id,f1,f2,f3\n" + "".join(f"{i},{rng.normal()},{rng.normal()},{rng.normal()}\n" for i in ids))
    np.save(root / "b.npy", rng.normal(size=(30, 2)))
    return root


def edit_line(name: str, index: int, new: str):
    def edit(root: Path) -> None:
        lines = (root / name).read_text().splitlines()
        lines[index] = new
        (root / name).write_text("\n".join(lines) + "\n")
    return edit


def replace_with_folder(name: str):
    def edit(root: Path) -> None:
        (root / name).unlink()
        (root / name).mkdir()
    return edit


def cut_npy(keep: int):
    def edit(root: Path) -> None:
        blob = (root / "b.npy").read_bytes()
        (root / "b.npy").write_bytes(blob[:keep])
    return edit


# Cases not already in tests/data/test_tables.py (which has: missing labels/folder/label column, duplicate ids,
# an id missing in a modality, non-number cell, empty files, .npy row count / not an array, non-UTF-8,
# unknown split, .csv and .npy for one modality, NaN in a table).
TABLE_CASES = {
    "ragged row": (edit_line("a.csv", 3, "s002,1,2,3,4"), ["a.csv", "line 4 has 5 fields"]),
    "labels header only": (lambda r: (r / "labels.csv").write_text("id,label\n"), ["labels.csv", "no rows"]),
    "empty id": (edit_line("labels.csv", 3, ",b"), ["labels.csv", "line 4", "empty id"]),
    "empty label": (edit_line("labels.csv", 3, "s002,"), ["labels.csv", "line 4", "empty label"]),
    "first column not id": (edit_line("a.csv", 0, "key,f1,f2,f3"), ["a.csv", "first column must be 'id'"]),
    "no feature column": (lambda r: (r / "a.csv").write_text("id\n" + "".join(f"s{i:03d}\n" for i in range(30))),
                          ["a.csv", "no feature columns"]),
    "npy 1-D": (lambda r: np.save(r / "b.npy", np.zeros(30)), ["b.npy", "expected shape (30, features)"]),
    "npy 3-D": (lambda r: np.save(r / "b.npy", np.zeros((30, 2, 2))), ["b.npy", "(30, 2, 2)"]),
    "npy 0-D": (lambda r: np.save(r / "b.npy", np.zeros(())), ["b.npy", "expected shape"]),
    "npy no features": (lambda r: np.save(r / "b.npy", np.zeros((30, 0))), ["b.npy", "no feature columns"]),
    "npy strings": (lambda r: np.save(r / "b.npy", np.full((30, 2), "x")), ["b.npy", "real numbers"]),
    "npy complex": (lambda r: np.save(r / "b.npy", np.zeros((30, 2), complex)), ["b.npy", "real numbers"]),
    "npy bool": (lambda r: np.save(r / "b.npy", np.zeros((30, 2), bool)), ["b.npy", "real numbers"]),
    "npy pickled objects": (lambda r: np.save(r / "b.npy", np.full((30, 2), None, object), allow_pickle=True),
                            ["b.npy", "not a readable .npy"]),
    "npy cut short": (cut_npy(-40), ["b.npy", "not a readable .npy"]),
    "npy header cut": (cut_npy(20), ["b.npy", "not a readable .npy"]),
    "npy infinite": (lambda r: np.save(r / "b.npy", np.full((30, 2), np.inf)), ["b.npy", "non-finite", "s000"]),
    "csv value beyond float32": (edit_line("a.csv", 1, "s000,1e39,0,0"), ["a.csv", "non-finite", "s000"]),
    "folder for a table": (replace_with_folder("a.csv"), ["a.csv", "cannot read"]),
    "NUL byte": (lambda r: (r / "a.csv").write_bytes(b"id,f1\x00\n"), ["a.csv"]),
    "oversized field": (lambda r: (r / "a.csv").write_text("id,f1\n" + "x" * 200_000 + ",1\n"), ["a.csv", "malformed CSV"]),
    "UTF-16": (lambda r: (r / "labels.csv").write_bytes((r / "labels.csv").read_text().encode("utf-16")),
               ["labels.csv", "not UTF-8"]),
    "one class": (lambda r: (r / "labels.csv").write_text("id,label\n" + "".join(f"s{i:03d},a\n" for i in range(30))),
                  ["train split holds 1 class", "at least two"]),
    "split without train": (lambda r: (r / "labels.csv").write_text(
        "id,label,split\n" + "".join(f"s{i:03d},{'abc'[i % 3]},{'val' if i % 2 else 'test'}\n" for i in range(30))),
        ["labels.csv", "no 'train' rows"]),
    "unknown modality chosen": (lambda r: None, ["has no modality 'zz'"]),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_feature_tables(tmp_path, case):
    edit, fragments = TABLE_CASES[case]
    root = tables(tmp_path / "t")
    edit(root)
    extra = ["--set", "data.modalities=[a,zz]"] if case == "unknown modality chosen" else []
    code, _, err = run_cli(*train_argv(tmp_path / "r", "--data", f"tables:{root}", "--method", "joint", *extra))
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_bad_data_at_resume_leaves_the_run_untouched(tmp_path):
    root = tables(tmp_path / "t")
    run = tmp_path / "r"
    code, _, err = run_cli(*train_argv(run, "--data", f"tables:{root}", "--method", "joint", "--set", "data.batch_size=8",
                                       epochs=1))
    assert code == 0, err
    before = digest(run)
    edit_line("a.csv", 5, "s004,1,2")(root)
    code, _, err = run_cli("train", "--resume", "--out", str(run), "--epochs", "3", "--quiet")
    one_line_error(code, err, "a.csv", "line 6")
    assert digest(run) == before


MANIFEST_CASES = {
    "empty file": ({"manifest.csv": b""}, ["empty file"]),
    "not UTF-8": ({"manifest.csv": b"id,label,note\n\xff\xfe,a,b\n"}, ["not UTF-8"]),
    "ragged row": ({"manifest.csv": b"id,label,note\na,x,hi,extra\n"}, ["line 2 has 4 fields"]),
    "header only": ({"manifest.csv": b"id,label,note\n"}, ["no rows after the header"]),
    "no modality column": ({"manifest.csv": b"id,label\na,x\n"}, ["no modality columns"]),
    "empty column name": ({"manifest.csv": b"id,label,,note\na,x,1,hi\n"}, ["empty column name"]),
    "repeated column": ({"manifest.csv": b"id,label,note,note\na,x,hi,ho\n"}, ["'note' appears twice"]),
    "column empty everywhere": ({"manifest.csv": b"id,label,note,other\na,x,hi,\nb,y,ho,\n"}, ["'other' is empty"]),
    "empty id": ({"manifest.csv": b"id,label,note\n,x,hi\n"}, ["line 2: empty id"]),
    "split without test": ({"manifest.csv": b"id,label,split,note\na,x,train,hi\nb,y,val,ho\n"}, ["no test rows"]),
    "classes.txt empty": ({"manifest.csv": b"id,label,note\na,x,hi\n", "classes.txt": b"\n\n"}, ["no class names"]),
    "classes.txt repeated": ({"manifest.csv": b"id,label,note\na,x,hi\n", "classes.txt": b"x\ny\nx\n"}, ["'x' listed twice"]),
    "classes.txt not UTF-8": ({"manifest.csv": b"id,label,note\na,x,hi\n", "classes.txt": b"\xff\n"}, ["classes.txt", "cannot read"]),
    "no manifest in folder": ({}, ["no manifest.csv"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifests(tmp_path, case):
    files, fragments = MANIFEST_CASES[case]
    root = tmp_path / "m"
    root.mkdir()
    for name, blob in files.items():
        (root / name).write_bytes(blob)
    code, _, err = run_cli(*train_argv(tmp_path / "r", "--data", f"manifest:{root}", "--method", "joint"))
    one_line_error(code, err, *fragments)
    assert not (root / ".modgap-cache").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------ two processes, one run folder
def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def test_second_process_on_the_same_run_folder_is_refused(tmp_path):
    """The first process is frozen (SIGSTOP from its fault hook) right after taking the lock, before
    config.yaml exists; a second, identical one is refused naming the lock; the first then finishes."""
    run = tmp_path / "r"
    argv = [sys.executable, "-m", "modgap", *train_argv(run, "--method", "joint", epochs=2)]
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "MODGAP_FAULT": "file_write:1:stop"})
    try:
        deadline = time.time() + 180
        while not stopped(first.pid) and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert stopped(first.pid), "the first process never reached its stop point"
        assert (run / ".lock").read_text() == str(first.pid)
        second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        one_line_error(second.returncode, second.stderr, str(run), f"in use by process {first.pid}", str(run / ".lock"))
        assert (run / ".lock").read_text() == str(first.pid)  # left alone
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    assert (run / "summary.json").exists() and not (run / ".lock").exists()
    assert len(read_metrics(run)) == 2
