"""Observers: what watches a run from outside the loop (trackers, a tuner's pruner).

The trainer tells its observers (on the main process) only what is already safe on disk: ``started``
once the run folder is set up (and, on resume, cut back to its checkpoint), ``epoch_done`` after the
epoch's checkpoint, ``finished`` after summary.json. So an observer that mirrors the run elsewhere
never holds something the run folder does not, and a resumed run tells it everything after the
checkpoint again. An observer that raises in ``epoch_done`` stops the run there (e.g. a pruned trial:
the run folder stays resumable); ``close`` is called in every case, with whether the run finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..runs import RunFolder


@dataclass
class EpochLog:
    """One finished epoch, as the run folder holds it."""

    epoch: int
    step: int
    """Optimiser steps taken by the end of this epoch (the step the epoch's metrics belong to)."""
    record: dict[str, Any]
    """The epoch's line of metrics.jsonl."""
    steps: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """Per optimiser step of the epoch: (step, values), the rows of scalars.csv: ``loss/<term>`` and
    the method's own values (``Method.scalars``)."""


class RunObserver:
    def started(self, run: RunFolder, config: Config, steps_done: int, epochs_done: int, steps_per_epoch: int) -> None:
        """The run (new, or resumed after ``epochs_done`` whole epochs and ``steps_done`` steps, more
        than ``epochs_done * steps_per_epoch`` when it stopped mid-epoch at a signal) is set up."""

    def epoch_done(self, log: EpochLog) -> None:
        """An epoch is finished and checkpointed."""

    def finished(self, summary: dict[str, Any]) -> None:
        """summary.json is written."""

    def close(self, outcome: str) -> None:
        """The run ends: ``finished``; ``stopped`` by a stop signal or Ctrl-C (it resumes); or
        ``failed`` (an error, or an observer that stopped it)."""
