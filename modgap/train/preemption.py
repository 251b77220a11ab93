"""Preemption: stopping cleanly when a scheduler says so.

Slurm sends SIGTERM (a time limit, ``scancel``, a preemption with GraceTime) or the signal of
``--signal=USR1@<seconds>`` some time before it kills a job; submitit asks for SIGUSR2 90 s before a
time limit. While a run trains, these three signals only set a flag; the trainer finishes the batch
it is on, writes a checkpoint of that point of the epoch (atomically, as every checkpoint), and stops
with ``Preempted``. The CLI then exits with 128 + the signal's number (143 for SIGTERM, 138 for
SIGUSR1, 140 for SIGUSR2), the code of a process the signal had killed, and with ``--requeue`` asks
Slurm to requeue the job first. ``modgap train --resume`` continues from that batch, with the same
numbers as a run that never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """The run stopped at a signal after writing its checkpoint (not an error: it resumes)."""

    def __init__(self, signum: int, run: str, epoch: int, step: int) -> None:
        self.signum, self.run, self.epoch, self.step = signum, run, epoch, step
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received: stopped at epoch {epoch}, step {step}, checkpoint written; "
            f"continue with `modgap train --resume --out {run}`"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While entered (in the main thread): the stop signals set ``received`` instead of killing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal.signal returned before
        self._previous = {}


def request_requeue() -> str:
    """Ask Slurm to requeue this job (``scontrol requeue $SLURM_JOB_ID``); returns what happened, in words."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job
        else os.environ.get("SLURM_JOB_ID")
    )
    if not job_id:
        return "not requeued: not running under Slurm (no SLURM_JOB_ID)"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"not requeued: scontrol not found (requeue job {job_id} by hand)"
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        return f"not requeued: scontrol requeue {job_id} failed ({(done.stderr or done.stdout).strip()})"
    return f"job {job_id} requeued"
