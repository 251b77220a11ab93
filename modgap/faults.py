"""Fault injection for the reliability tests (docs/reliability.md): die, or freeze, at a named point.

    MODGAP_FAULT="checkpoint_write:3"        SIGKILL this process the 3rd time it reaches checkpoint_write
    MODGAP_FAULT="train_step:5:stop"         SIGSTOP it there instead (the test sends SIGCONT)

Points (each one line in the code it names):
    train_step        trainer.py, the training loop, after an optimiser step (mid-epoch)
    evaluate          trainer.py, evaluate(), after each batch's forward (mid-evaluation)
    metrics_append    runs.py, append_metrics(), once the record is on disk (its checkpoint is not)
    checkpoint_write  runs.py, atomic_write_bytes() of a .pt file: temp file written, not yet renamed
    file_write        the same for any other file (config.yaml, summary.json, ...)

Unset, ``fault_point`` costs one dict lookup. Counts are per process, from 1.
"""

from __future__ import annotations

import os
import signal
import sys

from .errors import ConfigError

_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("MODGAP_FAULT")
    if not spec:
        return
    point, count, action = _parse(spec)
    if name != point:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == count:
        print(f"modgap: fault injected: {action} at {name} #{count}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def _parse(spec: str) -> tuple[str, int, str]:
    parts = spec.split(":")
    if len(parts) == 2:
        parts.append("kill")
    point, count, action = parts if len(parts) == 3 else ("", "", "")
    if not point or not count.isdigit() or int(count) < 1 or action not in ("kill", "stop"):
        raise ConfigError(f"MODGAP_FAULT={spec!r}: expected point:count[:kill|stop], e.g. checkpoint_write:3")
    return point, int(count), action
