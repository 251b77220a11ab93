"""`modgap bench --launcher`: submitit's jobs run the cells the local launcher runs, a killed job's cell is
resumed and never run twice, --collect while jobs run, the Slurm options and what submitit hands sbatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modgap.errors import ConfigError
from modgap.launchers import slurm_parameters

from conftest import NO_PROBE, TINY, read_metrics, summary_of

STEPS_PER_EPOCH = 23  # mfeat's train split in batches of 64
CELL = "mfeat-pix+fou__joint__s0"


def bench_args(out, methods="joint,lfm-h", seeds="0,1", *extra):
    return ["bench", "--methods", methods, "--data", "mfeat:pix+fou", "--seeds", seeds, "--epochs", "3",
            "--out", str(out), "--jobs", "2", *TINY, *NO_PROBE, *extra]


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    """The 2-method x 1-data x 2-seed grid through the local launcher (each cell uninterrupted)."""
    from modgap.cli import main

    out = tmp_path_factory.mktemp("local") / "b"
    assert main(bench_args(out)) == 0
    return out


def same_run(a, b):
    assert summary_of(a) == summary_of(b)
    assert read_metrics(a) == read_metrics(b)


def test_submitit_local_grid_equals_the_local_launchers(cli, tmp_path, local_grid):
    out = tmp_path / "b"
    code, _, err = cli(*bench_args(out, "joint,lfm-h", "0,1", "--launcher", "submitit-local"))
    assert code == 0, err
    cells = sorted(p.name for p in local_grid.glob("*/summary.json"))
    assert len(cells) == 4 and sorted(p.name for p in out.glob("*/summary.json")) == cells
    for cell in (p.parent.name for p in local_grid.glob("*/summary.json")):
        same_run(out / cell, local_grid / cell)
    assert len(list((out / ".submitit").glob("*_0_result.pkl"))) == 4  # four jobs ran them, one cell each


def test_killed_job_is_resumed_by_the_next_invocation_and_never_run_twice(cli, tmp_path, local_grid, monkeypatch):
    """The cell's training is killed mid-epoch 2 inside its job; the next invocation (--no-wait) resumes it
    from the epoch-1 checkpoint; --collect meanwhile counts it as unfinished, then tabulates it."""
    out = tmp_path / "b"
    args = bench_args(out, "joint", "0", "--launcher", "submitit-local")
    monkeypatch.setenv("MODGAP_FAULT", f"train_step:{STEPS_PER_EPOCH + 5}")
    code, _, err = cli(*args)
    assert code == 1 and f"{CELL} failed: modgap: fault injected: kill at train_step" in err
    assert [r["epoch"] for r in read_metrics(out / CELL)] == [0] and not (out / CELL / "summary.json").exists()
    monkeypatch.delenv("MODGAP_FAULT")
    code, _, err = cli("bench", "--collect", str(out))
    assert code == 2 and "no finished runs yet (1 of 1 cells unfinished)" in err

    code, printed, err = cli(*args, "--no-wait")
    assert code == 0, err
    assert "1 of 1 cells submitted, job(s) " in printed and f"modgap bench --collect {out}" in printed
    job = int(printed.split("job(s) ")[1].split(" ")[0])
    os.waitpid(job, 0)  # submitit-local's job id is its controller's pid, a child of this process
    code, table, err = cli("bench", "--collect", str(out))
    assert code == 0 and "| joint | 1 |" in table and "unfinished" not in err
    assert "--resume" in json.loads((out / CELL / "cell.json").read_text())["command"]  # continued, not restarted
    same_run(out / CELL, local_grid / CELL)  # one continuous metrics.jsonl, as if never killed
    log = (out / CELL / "train.log").read_text()
    assert log.count("fault injected") == 1 and log.count("best val epoch") == 1


def test_a_cell_locked_by_a_live_process_is_not_started_twice(cli, tmp_path):
    out = tmp_path / "b"
    run = out / CELL
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("someone: else\n")  # a run started elsewhere, before its first checkpoint
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        code, _, err = cli(*bench_args(out, "joint", "0"))
        assert code == 1
        assert f"{CELL} is running elsewhere (process {holder.pid}): not started twice" in err
        assert (run / "config.yaml").read_text() == "someone: else\n" and (run / ".lock").read_text() == str(holder.pid)
        assert not (run / "train.log").exists()
        code, _, err = cli("bench", "--collect", str(out))
        assert code == 2 and "(1 of 1 cells unfinished)" in err
    finally:
        holder.kill()
        holder.wait()


def test_slurm_options_map_to_submitit_parameters(tmp_path):
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: cpu\ntime: '1-02:00:30'\ncpus: 8\nmem_gb: 32\naccount: 1234\nconstraint: a100\n")
    assert slurm_parameters(["partition=gpu,time=120", "gpus=1"], str(config), jobs=3) == {
        "slurm_array_parallelism": 3, "slurm_partition": "gpu", "timeout_min": 120, "gpus_per_node": 1,
        "cpus_per_task": 8, "mem_gb": 32, "slurm_account": "1234", "slurm_constraint": "a100"}
    assert slurm_parameters([], str(config))["timeout_min"] == 24 * 60 + 120 + 1  # D-HH:MM:SS, seconds rounded up
    assert slurm_parameters(["time=2:00:00,mem_gb=7.5"]) == {"slurm_array_parallelism": 1, "timeout_min": 120,
                                                              "mem_gb": 7.5}
    with pytest.raises(ConfigError, match=r"^--slurm: unknown Slurm option 'partiton' \(did you mean 'partition'\?\)$"):
        slurm_parameters(["partiton=gpu"])
    config.write_text("gpu: 1\n")
    with pytest.raises(ConfigError, match=rf"^{config}: unknown Slurm option 'gpu' \(did you mean 'gpus'\?\)$"):
        slurm_parameters([], str(config))
    for bad, why in (("time=2h", "time must be minutes"), ("gpus=0", "gpus must be a positive integer"),
                     ("partition", "expects KEY=VALUE")):
        with pytest.raises(ConfigError, match=why):
            slurm_parameters([bad])


def test_slurm_job_array_as_sbatch_gets_it(cli, tmp_path, monkeypatch):
    """Through a stand-in sbatch: one job array, --jobs at a time, the options in its header; --no-wait
    prints the job id; every cell is written first, so --collect counts them as unfinished."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: cpu\ncpus: 8\nmem_gb: 32\naccount: abc\n")
    out = tmp_path / "b"
    code, _, err = cli(*bench_args(out, "joint,lfm-h", "0,1", "--launcher", "slurm", "--no-wait"))
    assert code == 2 and err.startswith("modgap: error: --launcher slurm needs a time limit") and err.count("\n") == 1
    assert not out.exists()  # refused before anything was written
    code, printed, err = cli(*bench_args(out, "joint,lfm-h", "0,1", "--launcher", "slurm", "--no-wait",
                                         "--slurm", "partition=gpu,time=2:00:00", "--slurm", "gpus=1",
                                         "--slurm-config", str(config)))
    assert code == 0, err
    assert "4 of 4 cells submitted, job(s) 4242 " in printed
    header = set((out / ".submitit" / "4242_submission.sh").read_text().splitlines())
    for line in ("--array=0-3%2", "--partition=gpu", "--time=120", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--account=abc", "--job-name=modgap-bench-b"):
        assert f"#SBATCH {line}" in header
    assert len(list((out / ".submitit").glob("4242_*_submitted.pkl"))) == 4
    code, _, err = cli("bench", "--collect", str(out))
    assert code == 2 and "no finished runs yet (4 of 4 cells unfinished)" in err


def test_launcher_mistakes_are_one_line(cli, tmp_path, monkeypatch):
    out = tmp_path / "b"
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    code, _, err = cli(*bench_args(out, "joint", "0", "--launcher", "slurm", "--slurm", "time=60"))
    assert (code, err) == (2, "modgap: error: modgap bench --launcher slurm needs submitit "
                              "(pip install 'modgap[slurm]')\n")
    assert not out.exists()
    code, _, err = cli(*bench_args(out, "joint", "0", "--slurm", "time=60"))
    assert code == 2 and "--slurm and --slurm-config need a launcher that submits jobs (slurm, submitit-local)" in err
    code, _, err = cli(*bench_args(out, "joint", "0", "--no-wait"))
    assert code == 2 and "--no-wait needs a launcher that submits jobs" in err
    code, _, err = cli(*bench_args(out, "joint", "0", "--launcher", "slurm", "--slurm", "partiton=gpu"))
    assert code == 2 and err.count("\n") == 1 and "did you mean 'partition'" in err
