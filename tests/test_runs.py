"""Determinism, resume equivalence, crash recovery, corrupt checkpoints and the run-folder lock."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from modgap.errors import RunFolderError
from modgap.runs import RunFolder, load_checkpoint, read_scalars

from conftest import summary_of

STEPS_PER_EPOCH = 23  # mfeat: 1440 training rows in batches of 64
# lr drops at epoch 2 and 4 (so the scheduler state must survive a resume)
SCHED = ["--set", "optim.scheduler=step", "--set", "optim.step_size=2", "--set", "optim.gamma=0.5"]
VARIANTS = {
    "joint": ["--method", "joint"],
    "lfm-lb": ["--method", "lfm-lb", "--set", "method.every=4", "--set", "method.lr_alpha=5"],
    "lfm-lb-official": ["--method", "lfm-lb", "--set", "method.variant=official",
                        "--set", "method.official_lr=0.5", "--set", "method.official_halve_every=2"],
    "ogm-ge": ["--method", "ogm-ge", "--set", "method.alpha=0.5"],  # reports k/<m> but has no alpha
}
HAS_ALPHA = {"lfm-lb", "lfm-lb-official"}


def alpha_lines(run: Path) -> list[str]:
    return (run / "alpha.csv").read_text().splitlines()


def scalar_lines(run: Path) -> list[str]:
    return (run / "scalars.csv").read_text().splitlines()


def without_progress(lines: list[str]) -> list[tuple[str, ...]]:
    """alpha.csv or scalars.csv rows without their progress column (the 3rd)."""
    return [tuple(r[:2] + r[3:]) for r in (line.split(",") for line in lines)]


def model_state(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -------------------------------------------------------------------------------- determinism
def test_same_seed_same_run_other_seed_differs(cli, tmp_path, metrics_of):
    args = ["--method", "lfm-lb", "--set", "method.every=2"]
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    cli.train(runs["a"], *args, epochs=2, probe=True)
    cli.train(runs["b"], *args, epochs=2, probe=True)
    cli.train(runs["c"], *args, "--seed", "1", epochs=2, probe=True)
    assert metrics_of(runs["a"]) == metrics_of(runs["b"])
    assert summary_of(runs["a"]) == summary_of(runs["b"])
    assert alpha_lines(runs["a"]) == alpha_lines(runs["b"])
    assert_same_weights(runs["a"], runs["b"])
    assert metrics_of(runs["a"]) != metrics_of(runs["c"])
    assert summary_of(runs["c"])["seed"] == 1
    assert summary_of(runs["a"])["test"] != summary_of(runs["c"])["test"]
    # the split depends on data.split_seed only, never on the training seed
    assert (runs["a"] / "splits.json").read_bytes() == (runs["c"] / "splits.json").read_bytes()


# -------------------------------------------------------------------------- resume equivalence
@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


def test_resume_equals_uninterrupted(cli, tmp_path, variant, metrics_of):
    args = [*VARIANTS[variant], *SCHED]
    full, parts = tmp_path / "full", tmp_path / "parts"
    cli.train(full, *args, epochs=6)
    cli.train(parts, *args, epochs=3)
    assert len(metrics_of(parts)) == 3
    cli.resume(parts, epochs=6)
    a, b = metrics_of(full), metrics_of(parts)
    assert [r["epoch"] for r in b] == list(range(6))
    assert a == b
    assert [r["lr"] for r in a] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    sa, sb = summary_of(full), summary_of(parts)
    assert sa["epochs"] == sb["epochs"] == 6
    assert (sa["best_epoch"], sa["test"], sa["test_last"], sa["val"]) == (sb["best_epoch"], sb["test"], sb["test_last"], sb["val"])
    assert sa == sb
    assert_same_weights(full, parts)
    if variant in HAS_ALPHA:
        la, lb = alpha_lines(full), alpha_lines(parts)
        assert len(la) == 1 + 6 * STEPS_PER_EPOCH
        assert without_progress(la) == without_progress(lb)
        assert len({row[2] for row in without_progress(la)[1:]}) > 1  # alpha did move
    else:
        assert not (parts / "alpha.csv").exists()
    sa_rows, sb_rows = without_progress(scalar_lines(full)), without_progress(scalar_lines(parts))
    assert sa_rows == sb_rows and len(sa_rows) > 6 * STEPS_PER_EPOCH  # loss/<term> and the method's values
    assert len({row[3] for row in sa_rows[1:]}) > 1  # the values did move
    assert not (parts / ".lock").exists()


def test_resume_with_more_epochs_keeps_alpha_csv_identical(cli, tmp_path):
    args = [*VARIANTS["lfm-lb"], *SCHED]
    full, parts = tmp_path / "full", tmp_path / "parts"
    cli.train(full, *args, epochs=4)
    cli.train(parts, *args, epochs=2)
    cli.resume(parts, epochs=4)
    assert alpha_lines(full) == alpha_lines(parts)
    assert scalar_lines(full) == scalar_lines(parts)  # progress column rewritten for the new total


# ----------------------------------------------------------------------------- crash recovery
def add_crash_debris(run: Path, epochs_done: int) -> None:
    """What a process killed during the next epoch may leave: rows and a torn line past the checkpoint."""
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": %d, "lr": 0.01, "train": {"cls": 2.3' % epochs_done)
    first = epochs_done * STEPS_PER_EPOCH + 1
    for name, value, rows in (("alpha.csv", "0.123", 7), ("scalars.csv", "k/x,0.123", 5)):
        if (run / name).exists():
            with (run / name).open("a") as f:
                for step in range(first, first + rows):
                    f.write(f"{step},{epochs_done},0.500000,{value}\n")
                f.write(f"{first + rows},{epochs_done},0.5")  # cut short


def test_resume_after_crash_debris(cli, tmp_path, variant, metrics_of):
    args = [*VARIANTS[variant], *SCHED]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    cli.train(full, *args, epochs=6)
    cli.train(crashed, *args, epochs=3)
    add_crash_debris(crashed, 3)
    cli.resume(crashed, epochs=6)
    assert metrics_of(full) == metrics_of(crashed)
    assert summary_of(full) == summary_of(crashed)
    assert_same_weights(full, crashed)
    if variant in HAS_ALPHA:
        assert without_progress(alpha_lines(full)) == without_progress(alpha_lines(crashed))
        assert all(line.count(",") == 3 for line in alpha_lines(crashed))
    assert scalar_lines(full) == scalar_lines(crashed)
    assert all(line.count(",") == 4 for line in scalar_lines(crashed))


def test_resume_after_real_interrupt_mid_epoch(cli, tmp_path, monkeypatch, metrics_of):
    """A run of 6 epochs interrupted in epoch 4 (index 3), with debris, then resumed: byte-identical
    alpha.csv and equal records, as if it had never stopped."""
    from modgap.train import trainer

    args = [*VARIANTS["lfm-lb"], *SCHED]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    cli.train(full, *args, epochs=6)

    original = trainer.Trainer.train_step

    def interrupted(self, batch):
        if self.state.step == 3 * STEPS_PER_EPOCH + 5:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(trainer.Trainer, "train_step", interrupted)
    code, _, err = cli("train", "--epochs", "6", "--out", str(crashed), "--set", "model.hidden=[16]",
                       "--set", "model.feature_dim=8", "--set", "train.threads=1", "--quiet",
                       "--set", "train.probe=false", *args)
    assert code == 130 and "--resume" in err
    assert not (crashed / ".lock").exists()
    assert not (crashed / "summary.json").exists()
    assert len(metrics_of(crashed)) == 3
    monkeypatch.setattr(trainer.Trainer, "train_step", original)
    add_crash_debris(crashed, 3)
    cli.resume(crashed, epochs=6)
    assert metrics_of(full) == metrics_of(crashed)
    assert summary_of(full) == summary_of(crashed)
    assert alpha_lines(full) == alpha_lines(crashed)
    assert scalar_lines(full) == scalar_lines(crashed)
    assert_same_weights(full, crashed)


def test_step_logs_write_truncate_and_read_back(tmp_path):
    run = RunFolder(tmp_path)
    logs = run.step_logs()
    logs.add(1, 0, 0.25, {"k/a": 0.5, "k/b": 1.0})
    logs.flush()
    assert not (tmp_path / "alpha.csv").exists()  # created by the first alpha only
    logs.add(2, 0, 0.5, {"alpha": 0.4, "k/a": 0.75})
    logs.add(3, 1, 0.75, {"alpha": 0.3})
    logs.flush()
    assert (tmp_path / "alpha.csv").read_text() == "step,epoch,progress,alpha\n2,0,0.500000,0.4\n3,1,0.750000,0.3\n"
    assert read_scalars(tmp_path) == {
        "k/a": {"step": [1, 2], "epoch": [0, 0], "progress": [0.25, 0.5], "value": [0.5, 0.75]},
        "k/b": {"step": [1], "epoch": [0], "progress": [0.25], "value": [1.0]},
        "alpha": {"step": [2, 3], "epoch": [0, 1], "progress": [0.5, 0.75], "value": [0.4, 0.3]},
    }
    with (tmp_path / "scalars.csv").open("a") as f:
        f.write("4,1,1.0,k/a")  # cut short by a crash: skipped when read, dropped on resume
    assert read_scalars(tmp_path)["k/a"]["step"] == [1, 2]
    run.truncate_logs(epochs_done=1, steps_done=2, total_steps=8)
    assert (tmp_path / "alpha.csv").read_text() == "step,epoch,progress,alpha\n2,0,0.250000,0.4\n"
    assert (tmp_path / "scalars.csv").read_text().splitlines() == [
        "step,epoch,progress,name,value", "1,0,0.125000,k/a,0.5", "1,0,0.125000,k/b,1", "2,0,0.250000,alpha,0.4",
        "2,0,0.250000,k/a,0.75",
    ]


# --------------------------------------------------------------------------- corrupt checkpoint
def damage_file(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "flip":
        for i in (len(blob) // 2, len(blob) - 10):
            blob[i] ^= 0xFF
    elif how == "truncate":
        blob = blob[: len(blob) // 3]
    else:
        blob = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_checkpoint_is_refused(cli, tmp_path, damage):
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", epochs=1)  # one epoch: last.pt is the only checkpoint to resume from
    last = run / "checkpoints" / "last.pt"
    assert not (run / "checkpoints" / "last.prev.pt").exists()
    damage_file(last, damage)
    metrics_before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFolderError) as info:
        load_checkpoint(last)
    assert str(last) in str(info.value) and "\n" not in str(info.value)
    code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "3", "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modgap: error: ") and str(last) in lines[0]
    assert (run / "metrics.jsonl").read_bytes() == metrics_before


def test_corrupt_last_checkpoint_with_previous_one(cli, tmp_path, metrics_of):
    """With a checkpoint before last.pt kept (last.prev.pt), resume warns in one line naming last.pt
    and replays from the older one, ending where an uninterrupted run ends; without one, it stops."""
    args = [*VARIANTS["lfm-lb"], *SCHED]
    full, run = tmp_path / "full", tmp_path / "r"
    cli.train(full, *args, epochs=4)
    cli.train(run, *args, epochs=3)
    last = run / "checkpoints" / "last.pt"
    damage_file(last, "flip")
    code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "4", "--quiet")
    if not (run / "checkpoints" / "last.prev.pt").exists():
        assert code == 2 and str(last) in err and len(err.strip().splitlines()) == 1
        return
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and str(last) in warnings[0] and "last.prev.pt" in warnings[0]
    assert metrics_of(full) == metrics_of(run)
    assert summary_of(full) == summary_of(run)
    assert without_progress(alpha_lines(full)) == without_progress(alpha_lines(run))
    assert_same_weights(full, run)
    # both damaged: a one-line error naming the checkpoint folder
    for name in ("last.pt", "last.prev.pt"):
        damage_file(run / "checkpoints" / name, "truncate")
    code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "5", "--quiet")
    lines = [line for line in err.splitlines() if line.startswith("modgap: error: ")]
    assert code == 2 and len(lines) == 1 and str(run / "checkpoints") in lines[0]


def test_failed_resume_releases_the_lock(cli, tmp_path):
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", epochs=1)
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[:-5] + b"XXXXX")
    code, _, _ = cli("train", "--resume", "--out", str(run), "--epochs", "2", "--quiet")
    assert code == 2
    last.write_bytes(good)  # the user restores the checkpoint and tries again
    assert not (run / ".lock").exists()
    code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "2", "--quiet")
    assert code == 0, err


# ------------------------------------------------------------------------------------------ lock
def test_live_lock_refuses(cli, tmp_path):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        (fresh / ".lock").write_text(str(holder.pid))
        code, _, err = cli("train", "--epochs", "1", "--out", str(fresh), "--quiet", "--method", "joint")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"process {holder.pid}" in err and str(fresh) in err
        assert not (fresh / "config.yaml").exists()
        assert (fresh / ".lock").read_text() == str(holder.pid)  # someone else's lock is left alone

        run = tmp_path / "run"
        cli.train(run, "--method", "joint", epochs=1)
        (run / ".lock").write_text(str(holder.pid))
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        code, _, err = cli("train", "--resume", "--out", str(run), "--epochs", "2", "--quiet")
        assert code == 2 and f"process {holder.pid}" in err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over(cli, tmp_path, metrics_of):
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = tmp_path / "r"
    cli.train(run, "--method", "joint", epochs=1)
    (run / ".lock").write_text(str(dead.pid))
    summary = cli.resume(run, epochs=2)
    assert summary["epochs"] == 2 and len(metrics_of(run)) == 2
    assert not (run / ".lock").exists()
    # an unreadable lock (empty, or not a pid) counts as stale too
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text("")
    cli.train(fresh, "--method", "joint", epochs=1)
    assert not (fresh / ".lock").exists()
