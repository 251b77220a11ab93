"""What is on disk: the run folder contract (protocol.md), its checkpoint format and safe writes.

    config.yaml        the full resolved configuration (+ package version, split checksum)
    splits.json        the ids of each split
    metrics.jsonl      one JSON object per finished epoch
    alpha.csv          alpha after every optimiser step (methods that have an alpha)
    scalars.csv        every per-step value (loss terms, Method.scalars), long format
    summary.json       the final record
    checkpoints/       last.pt (and last.prev.pt, the one before it) and best.pt
    tracking.json      with log.backends: what the trackers mirrored (tracking.py), tensorboard/ their events

Every whole-file write goes to a temporary file in the same folder, is flushed to disk and renamed
over the target, so a crash leaves the old file or the new one, never half of one. Checkpoints
carry a SHA-256 of their contents and are refused when it does not match.

This is the bottom layer for files: the trainer writes run folders through it, and everything that
reads one (report, bench, teachers taken from another run) reads it through it, so the names and
the format live here once. It imports nothing of modgap but errors and faults.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import RunFolderError
from .faults import fault_point

MAGIC = b"MODGAPCK1\n"

CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.json"
METRICS_FILE = "metrics.jsonl"
ALPHA_FILE = "alpha.csv"
SCALARS_FILE = "scalars.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
PREVIOUS = "last.prev.pt"
BEST = "best.pt"
LOCK_FILE = ".lock"
TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"

# a tune folder (modgap tune; tune.py): the search, its trials' table, the best configuration, final runs
TUNE_SPEC_FILE = "tune.json"
TRIALS_FILE = "trials.csv"
IMPORTANCE_FILE = "importance.json"
BEST_FILE = "best.yaml"
FINAL_DIR = "final"

UNSTARTED_LEFTOVERS = (CONFIG_FILE, SPLITS_FILE, METRICS_FILE, ALPHA_FILE, SCALARS_FILE, LOCK_FILE)
"""What a run killed before its first checkpoint leaves: with no checkpoint to resume from, these
are removed and the run starts over (``RunFolder.clear_unstarted``)."""


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        fault_point("checkpoint_write" if path.suffix == ".pt" else "file_write")
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError while writing ``path`` into a one-line RunFolderError (disk full named as such)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RunFolderError(
                f"{path}: disk full; what was written before is intact (free space, then continue with --resume)"
            ) from None
        raise RunFolderError(f"{path}: cannot write ({exc.strerror or exc})") from None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    head = len(MAGIC) + 65
    if not blob.startswith(MAGIC) or len(blob) < head:
        raise RunFolderError(f"{path}: not a modgap checkpoint or truncated")
    digest, payload = blob[len(MAGIC) : head - 1].decode(), blob[head:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise RunFolderError(f"{path}: checksum mismatch (the file is truncated or corrupt)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self._lock_held = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def has_run(self) -> bool:
        return (self.path / CONFIG_FILE).exists()

    def finished(self) -> bool:
        return (self.path / SUMMARY_FILE).exists()

    def resumable(self) -> bool:
        """Whether a run was started here and left a checkpoint to continue from."""
        return (self.checkpoints / LAST).exists()

    def clear_unstarted(self) -> None:
        """A run started here but killed before its first checkpoint: remove what it wrote, so that
        a new start does not take the folder for a run to resume (or one held by a dead process)."""
        if self.has_run() and not self.resumable():
            for name in UNSTARTED_LEFTOVERS:
                (self.path / name).unlink(missing_ok=True)

    def prepare(self) -> None:
        """Create the folder, check it is writable and take the lock (one process per run)."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot write the run folder ({exc.strerror})") from None
        self._lock()
        for leftover in [*self.path.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)  # a temp file of a process killed mid-write (ours now: we hold the lock)

    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._lock_pid()
                if pid and process_alive(pid):
                    raise RunFolderError(
                        f"{self.path}: in use by process {pid} (remove {lock} if that is wrong)"
                    ) from None
                lock.unlink(missing_ok=True)  # left behind by a process that died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._lock_held = True
            return
        raise RunFolderError(f"{self.path}: cannot take the lock {lock}")

    def _lock_pid(self) -> int:
        """The pid in the lock file; 0 when there is none or it cannot be read."""
        try:
            return int((self.path / LOCK_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def holder(self) -> int | None:
        """The pid of a live process that holds this folder's lock (another job is training the run), else
        None. A pid is checked on this machine only (docs/reliability.md: the lock is for one machine)."""
        pid = self._lock_pid()
        return pid if pid and not self._lock_held and process_alive(pid) else None

    def release(self) -> None:
        if self._lock_held:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self._lock_held = False

    # ---- files -------------------------------------------------------------------------------
    def write_yaml(self, name: str, data: dict[str, Any]) -> None:
        with writing(self.path / name):
            atomic_write_text(self.path / name, yaml.safe_dump(data, sort_keys=False))

    def read_yaml(self, name: str) -> dict[str, Any]:
        try:
            data = yaml.safe_load((self.path / name).read_text(encoding="utf-8")) or {}
        except Exception as exc:  # OSError, not UTF-8, not YAML, or a YAML tag's own error (!!float abc)
            raise RunFolderError(f"{self.path / name}: cannot read ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict):
            raise RunFolderError(f"{self.path / name}: expected a mapping, got {type(data).__name__}")
        return data

    def read_config(self) -> dict[str, Any]:
        """config.yaml as saved (a mapping; RunFolderError when unreadable)."""
        return self.read_yaml(CONFIG_FILE)

    def read_summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run has not finished."""
        path = self.path / SUMMARY_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def read_json(self, name: str) -> Any:
        """A JSON file of the run folder, or None when there is none (RunFolderError when unreadable)."""
        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None

    def write_json(self, name: str, data: Any) -> None:
        with writing(self.path / name):
            atomic_write_text(self.path / name, json.dumps(data, indent=2) + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        with writing(self.path / METRICS_FILE), (self.path / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fault_point("metrics_append")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a crash: everything after it is rewritten on resume
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                break  # not a record of ours (an edited or damaged file): treated the same way
            records.append(record)
        return records

    def truncate_logs(self, epochs_done: int, steps_done: int, total_steps: int | None = None) -> None:
        """On resume: keep only what the checkpoint already accounts for. ``total_steps`` (when the
        resume changes the number of epochs) rewrites the per-step logs' progress column for the new total."""
        kept = [r for r in self.read_metrics() if r["epoch"] < epochs_done]
        with writing(self.path / METRICS_FILE):
            atomic_write_text(self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        for name in (ALPHA_FILE, SCALARS_FILE):
            path = self.path / name
            if not path.exists():
                continue
            with writing(path), path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            width = len(rows[0])
            good = [r for r in rows[1:] if len(r) == width and r[0].isdigit() and int(r[0]) <= steps_done]  # from 1
            if total_steps:
                good = [[r[0], r[1], f"{int(r[0]) / total_steps:.6f}", *r[3:]] for r in good]
            with writing(path):
                atomic_write_text(path, _csv_text([rows[0], *good]))

    def step_logs(self) -> StepLogs:
        """The per-step logs (alpha.csv, scalars.csv), appended to by the trainer."""
        return StepLogs(self.path)

    def save(self, name: str, state: dict[str, Any]) -> None:
        try:
            save_checkpoint(self.checkpoints / name, state)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise RunFolderError(
                    f"{self.checkpoints / name}: disk full; the previous checkpoint is intact "
                    f"(free space, then continue with --resume)"
                ) from None
            raise RunFolderError(f"{self.checkpoints / name}: cannot write ({exc.strerror})") from None

    def load(self, name: str) -> dict[str, Any]:
        return load_checkpoint(self.checkpoints / name)

    def best_or_last(self) -> Path | None:
        """checkpoints/best.pt, else last.pt (a run that kept no best); None when it has neither."""
        return next((self.checkpoints / n for n in (BEST, LAST) if (self.checkpoints / n).exists()), None)

    def save_last(self, state: dict[str, Any]) -> None:
        """last.pt, keeping the one before it as last.prev.pt (used if last.pt turns out corrupt)."""
        last = self.checkpoints / LAST
        if last.exists():
            with writing(last):
                os.replace(last, self.checkpoints / PREVIOUS)
        self.save(LAST, state)

    def load_latest(self) -> dict[str, Any] | None:
        """The newest good checkpoint: last.pt, or last.prev.pt when last.pt is missing or corrupt."""
        problems = []
        for name in (LAST, PREVIOUS):
            if not (self.checkpoints / name).exists():
                continue
            try:
                state = self.load(name)
            except RunFolderError as exc:
                problems.append(str(exc))
                continue
            for problem in problems:
                print(f"modgap: warning: {problem}; resuming from {name} instead", file=sys.stderr)
            return state
        if problems:
            raise RunFolderError(problems[-1] + "; no good checkpoint left to resume from")
        return None

    def check_space(self, needed_bytes: int) -> None:
        """Refuse to start when the disk cannot hold a few checkpoints."""
        free = shutil.disk_usage(self.path).free
        if free < needed_bytes:
            raise RunFolderError(
                f"{self.path}: only {free / 2**20:.0f} MiB free, a run needs about "
                f"{needed_bytes / 2**20:.0f} MiB for its checkpoints"
            )


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


class StepLogs:
    """The two per-step logs of a run, appended once per epoch (after the epoch's steps, before its
    checkpoint, so a resume finds at least what the checkpoint accounts for and truncates the rest):

    - scalars.csv: step, epoch, progress (epoch fraction of the run), name, value; one row per value
      of a step: its loss terms (loss/<term>) and what the method reports (``Method.scalars``: alpha,
      OGM-GE's k/<m>, G-Blend's weights, ...);
    - alpha.csv: step, epoch, progress, alpha; the protocol's file, for methods that report an alpha.

    A file is created with its header on the first row it gets (no alpha.csv without an alpha)."""

    HEADERS = {
        SCALARS_FILE: ["step", "epoch", "progress", "name", "value"],
        ALPHA_FILE: ["step", "epoch", "progress", "alpha"],
    }

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows: dict[str, list[list[str]]] = {name: [] for name in self.HEADERS}

    def add(self, step: int, epoch: int, progress: float, scalars: dict[str, float]) -> None:
        where = [str(step), str(epoch), f"{progress:.6f}"]
        self.rows[SCALARS_FILE].extend([*where, k, f"{v:.8g}"] for k, v in scalars.items())
        if "alpha" in scalars:
            self.rows[ALPHA_FILE].append([*where, f"{scalars['alpha']:.8g}"])

    def flush(self) -> None:
        for name, rows in self.rows.items():
            if not rows:
                continue
            path = self.folder / name
            if not path.exists():
                with writing(path):
                    atomic_write_text(path, _csv_text([self.HEADERS[name]]))
            with writing(path), path.open("a", encoding="utf-8", newline="") as f:
                f.write(_csv_text(rows))
                f.flush()
                os.fsync(f.fileno())
            self.rows[name] = []


def read_scalars(folder: Path) -> dict[str, dict[str, list[float]]]:
    """scalars.csv of a run folder as name -> columns (step, epoch, progress, value); {} without one."""
    path = Path(folder) / SCALARS_FILE
    series: dict[str, dict[str, list[float]]] = {}
    if not path.exists():
        return series
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                values = {k: float(row[k]) for k in ("step", "epoch", "progress", "value")}
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a crash
            cols = series.setdefault(row["name"], {k: [] for k in values})
            for k, v in values.items():
                cols[k].append(v)
    return series


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
