"""`modgap prepare`: from a raw download to a cached, versioned, checksummed dataset folder.

A dataset family describes its raw layout with a ``RawFormat`` (one file per family, registered
with ``@register_raw``): which modalities of which kind, and ``index(src)``, the list of samples with
their raw sources, labels and official splits, plus every listed id that has no raw files. The
rest is shared: processing in parallel with a progress bar, stop-or-skip on bad input, the
validation carve-out, and the folder (its files: prepared_format.py), written beside its target
and renamed into place only when complete, so an existing prepared folder is never half-overwritten.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ConfigError, DataError, ModgapError
from ..registry import Registry
from ..runs import process_alive
from .base import SPLITS
from .kinds import KINDS, SIZE_SAMPLES, ModalityKind, upscale_warning
from .prepared import PreparedLoader
from .prepared_format import (
    CLASSES_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SAMPLES_FILE,
    SKIPPED_FILE,
    SPLITS_FILE,
    array_file,
    count_file,
    file_sha256,
)
from .registry import DATASETS
from .splits import make_splits


@dataclass
class RawSample:
    id: str
    label: str
    """Class name (must be in the index's class list)."""
    split: str | None
    """Official split (train, val, test), or None where the dataset has none."""
    sources: dict[str, Any]
    """Per modality: a path, a text string, or (video, start, end) for a frame range."""


@dataclass
class RawIndex:
    classes: list[str]
    samples: list[RawSample]
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(id, reason) for listed samples that cannot be used (no raw files, unknown label, ...)."""
    source_files: dict[str, str] = field(default_factory=dict)
    """Split / label files read, name -> sha256 (recorded in the manifest)."""
    notes: dict[str, Any] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(id, reason) for listed samples left out by a documented convention of the dataset (duplicated
    ids, classes filtered out): recorded in skipped.csv like problems, but never a reason to stop."""


class RawFormat:
    """One dataset family's raw layout. Subclasses set the class attributes and ``index``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # not ClassVars: the manifest format sets these three per instance, from its file
    modalities: dict[str, str] = {}
    """modality -> kind name (audio, frames, image, text)."""
    defaults: dict[str, dict[str, Any]] = {}
    """Per modality, the kind's default settings (preset, frames, ...)."""
    has_val: bool = False
    """Whether the official split has a validation part (else one is carved from train)."""

    def index(self, src: Path, options: dict[str, Any]) -> RawIndex:
        raise NotImplementedError

    def for_source(self, src: Path) -> RawFormat:
        """This format fitted to one raw download. A fixed layout needs a folder and returns itself;
        a generic format (the file manifest) reads its columns here and returns a fitted copy."""
        if not src.is_dir():
            raise DataError(f"{src}: raw download folder not found")
        return self

    def kinds(self, settings: dict[str, Any]) -> dict[str, ModalityKind]:
        """Each modality's kind, with the user's settings (preset, frames, ...) over the defaults."""
        out = {}
        for m, kind_name in self.modalities.items():
            kind = KINDS.get(kind_name)
            params = dict(self.defaults.get(m, {}))
            accepted = kind.__init__.__code__.co_varnames[1 : kind.__init__.__code__.co_argcount]
            params.update({k: v for k, v in settings.items() if k in accepted and v is not None})
            out[m] = kind(**params)
        return out


RAW_FORMATS: Registry[RawFormat] = Registry("dataset")


def register_raw(cls: type[RawFormat]) -> type[RawFormat]:
    """Register a raw format for `modgap prepare` and its prepared folders for `--data NAME:DIR`."""
    RAW_FORMATS.register(cls.name)(cls())
    DATASETS.register(cls.name)(PreparedLoader(cls.name, cls.summary, set(cls.modalities)))
    return cls


# ------------------------------------------------------------------------------ split lists
def bundled_split(dataset: str, filename: str) -> tuple[list[str], str]:
    """Lines of a standard split list shipped in modgap/data/splits/<dataset>/, and its sha256."""
    blob = resources.files("modgap.data").joinpath(f"splits/{dataset}/{filename}").read_bytes()
    lines = blob.decode("utf-8-sig").splitlines()
    return [line.strip() for line in lines if line.strip()], hashlib.sha256(blob).hexdigest()


# ------------------------------------------------------------------------------ processing
_WORKER: dict[str, Any] = {}


def _init_worker(kinds: dict[str, ModalityKind], samples: list[RawSample]) -> None:
    _WORKER["kinds"], _WORKER["samples"] = kinds, samples


def _process(i: int) -> tuple[int, dict[str, tuple[np.ndarray, int]] | None, str | None]:
    sample = _WORKER["samples"][i]
    out = {}
    for m, kind in _WORKER["kinds"].items():
        try:
            out[m] = kind.process(sample.sources[m])
        except ModgapError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decoder's own exception: still one line, naming the source
            return i, None, f"{sample.sources[m]}: {type(exc).__name__}: {exc}".splitlines()[0]
    return i, out, None


@dataclass
class PrepareReport:
    out: Path
    counts: dict[str, dict[str, int]]
    skipped: list[tuple[str, str]]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    """One-line warnings about the data (images upscaled more than 2x), for stderr."""

    def format(self) -> str:
        lines = [f"prepared {self.out} in {self.seconds:.1f} s"]
        classes = sorted({c for per in self.counts.values() for c in per})
        head = f"{'class':24s}" + "".join(f"{s:>8s}" for s in SPLITS)
        lines += [head] + [f"{c:24s}" + "".join(f"{self.counts[s].get(c, 0):8d}" for s in SPLITS) for c in classes]
        lines.append(f"{'total':24s}" + "".join(f"{sum(self.counts[s].values()):8d}" for s in SPLITS))
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} ids (listed with reasons in {self.out / SKIPPED_FILE}):")
            lines += [f"  {i}: {why}" for i, why in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def prepare(
    dataset: str,
    src: str | Path,
    out: str | Path,
    *,
    settings: dict[str, Any] | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    jobs: int = 1,
    on_error: str = "stop",
    force: bool = False,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> PrepareReport:
    started = time.perf_counter()
    fmt = RAW_FORMATS.get(dataset)
    src, out = Path(src), Path(out)
    if on_error not in ("stop", "skip"):
        raise ConfigError(f"--on-error must be stop or skip, got '{on_error}'")
    if not 0 < val_fraction < 1:
        raise ConfigError("--val-fraction must be in (0, 1)")
    fmt = fmt.for_source(src)
    if (out / MANIFEST_FILE).exists() and not force:
        raise DataError(f"{out}: already a prepared folder; add --force to rebuild it")
    kinds = fmt.kinds(settings or {})
    index = fmt.index(src, options or {})
    skipped: list[tuple[str, str]] = list(index.problems)
    if skipped and on_error == "stop":
        raise DataError(
            f"{skipped[0][1]} (id {skipped[0][0]}; {len(skipped)} problem(s) in all; "
            f"--on-error skip records them and goes on)"
        )
    skipped += index.dropped
    class_of = {c: i for i, c in enumerate(index.classes)}
    samples = []
    for s in index.samples:
        if s.label not in class_of:
            problem = (s.id, f"label '{s.label}' is not in the class list")
            if on_error == "stop":
                raise DataError(f"{problem[1]} (id {s.id})")
            skipped.append(problem)
        else:
            samples.append(s)
    if not samples:
        raise DataError(f"{src}: no usable samples found for {dataset}")
    source_sizes = sample_source_sizes(kinds, samples)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        arrays = {
            m: np.lib.format.open_memmap(
                tmp / array_file(m), mode="w+", dtype=k.dtype, shape=(len(samples), *k.cache_shape)
            )
            for m, k in kinds.items()
        }
        counts = {m: np.zeros(len(samples), dtype=np.int32) for m in kinds}
        ok = np.zeros(len(samples), dtype=bool)
        bar = tqdm(total=len(samples), desc=f"prepare {dataset}", unit="sample", disable=not progress)
        results = _run(kinds, samples, jobs)
        for i, arrays_i, error in results:
            bar.update()
            if error is not None:
                if on_error == "stop":
                    raise DataError(f"{error} (id {samples[i].id})")
                skipped.append((samples[i].id, error))
                continue
            for m, (array, count) in arrays_i.items():
                arrays[m][i], counts[m][i] = array, count
            ok[i] = True
        bar.close()
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            raise DataError(f"{src}: every sample failed; first problem: {skipped[0][1]}")
        _write_folder(
            tmp,
            fmt,
            kinds,
            index,
            [samples[i] for i in keep],
            arrays,
            counts,
            keep,
            skipped,
            val_fraction,
            split_seed,
            class_of,
            source_sizes,
        )
        del arrays
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():  # move the old folder aside first: a kill now leaves it whole, beside the new one
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    warnings = [
        text
        for m, sizes in source_sizes.items()
        if (text := upscale_warning(m, kinds[m], sizes, PREPARE_FIX)) is not None
    ]
    return PrepareReport(out, manifest["counts"], skipped, time.perf_counter() - started, warnings)


PREPARE_FIX = "prepare with --image-size {size}"
"""How `modgap prepare` says to keep images at their size (upscale_warning's ``fix``)."""


def sample_source_sizes(kinds: dict[str, ModalityKind], samples: list[RawSample]) -> dict[str, list[list[int]]]:
    """Per modality with images, (width, height) of up to SIZE_SAMPLES raw sources spread evenly over
    the samples, read from their headers: what the upscaling warning needs, recorded in manifest.json
    (every image is decoded by the processing anyway; this reads only a few headers more)."""
    picks = sorted({round(i) for i in np.linspace(0, len(samples) - 1, min(SIZE_SAMPLES, len(samples)))})
    out = {}
    for m, kind in kinds.items():
        sizes = [list(size) for i in picks if (size := kind.source_size(samples[i].sources[m])) is not None]
        if sizes:
            out[m] = sizes
    return out


def remove_dead_partials(out: Path) -> None:
    """Delete what a killed prepare left beside ``out`` (.NAME.partial-PID of dead processes), and
    put back a folder a killed ``--force`` had moved aside (.NAME.old-PID) if ``out`` is missing."""
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if kind.endswith(".old") and not out.exists():
            os.replace(leftover, out)
        elif kind.endswith((".partial", ".old")):
            shutil.rmtree(leftover, ignore_errors=True)


def _run(kinds, samples, jobs):
    if jobs <= 1:
        _init_worker(kinds, samples)
        yield from map(_process, range(len(samples)))
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(kinds, samples)) as pool:
        yield from pool.imap_unordered(_process, range(len(samples)), chunksize=4)


def _write_folder(
    tmp: Path,
    fmt: RawFormat,
    kinds,
    index: RawIndex,
    samples: list[RawSample],
    arrays,
    counts,
    keep: np.ndarray,
    skipped,
    val_fraction: float,
    split_seed: int,
    class_of,
    source_sizes: dict[str, list[list[int]]],
) -> None:
    labels = np.asarray([class_of[s.label] for s in samples], dtype=np.int64)
    # compact the arrays to the samples that were processed (in place: rows only move forward)
    for m in kinds:
        if len(keep) < len(arrays[m]):
            for new, old in enumerate(keep):
                arrays[m][new] = arrays[m][old]
            arrays[m].flush()
            data = np.load(tmp / array_file(m), mmap_mode="r")[: len(keep)]
            np.save(tmp / f"{m}.npy.tmp.npy", data)
            del data
            os.replace(tmp / f"{m}.npy.tmp.npy", tmp / array_file(m))
        else:
            arrays[m].flush()
        np.save(tmp / count_file(m), counts[m][keep])
    official = {s: np.asarray([i for i, smp in enumerate(samples) if smp.split == s], dtype=np.int64) for s in SPLITS}
    official = {s: rows for s, rows in official.items() if len(rows)}
    if "test" not in official:
        raise DataError(f"{fmt.name}: the raw index gave no test samples")
    splits = make_splits(labels, official, val_fraction, 0.0 if "test" in official else 0.2, split_seed)
    split_ids = {s: [samples[i].id for i in splits[s]] for s in SPLITS}
    split_blob = json.dumps(split_ids, sort_keys=True).encode()
    (tmp / SPLITS_FILE).write_bytes(split_blob)
    with (tmp / SAMPLES_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", "label", "split"])
        split_of = {i: s for s in SPLITS for i in splits[s]}
        for i, s in enumerate(samples):
            writer.writerow([i, s.id, s.label, split_of[i]])
    with (tmp / SKIPPED_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "reason"])
        writer.writerows(skipped)
    (tmp / CLASSES_FILE).write_text("".join(c + "\n" for c in index.classes), encoding="utf-8")
    counts_by_split = {s: dict(Counter(index.classes[labels[i]] for i in splits[s])) for s in SPLITS}
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": fmt.name,
        "modgap_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": index.classes,
        "num_samples": len(samples),
        "modalities": {
            m: {
                **k.describe(),
                "shape": list(k.cache_shape),
                "dtype": k.dtype,
                "file": array_file(m),
                "sha256": file_sha256(tmp / array_file(m)),
                **({"source_sizes": source_sizes[m]} if m in source_sizes else {}),
            }
            for m, k in kinds.items()
        },
        "splits_sha256": hashlib.sha256(split_blob).hexdigest(),
        "val_carved": not fmt.has_val,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "source_files": index.source_files,
        "counts": counts_by_split,
        "skipped": len(skipped),
        "notes": index.notes,
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
