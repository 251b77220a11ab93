"""Quality benchmark on the bundled mfeat view pairs: unimodal vs joint vs LFM (lfm-h, lfm-lb).

Every cell is one `modgap train` run, made through the public API with the defaults of
`modgap train` (30 epochs, SGD, ...) except what the options below change:

    python benchmarks/mfeat_quality.py                       # 2 pairs x 4 methods x 3 seeds
    python benchmarks/mfeat_quality.py --epochs 10 --seeds 0 --pairs pix+fou --methods joint,lfm-lb
    python benchmarks/mfeat_quality.py --set method.every=5  # passed to every run (like --set of modgap train)

Run folders go under --out (one per pair/method/seed; the name also carries --epochs and a hash of
the --set values, so different settings never share a folder). A run whose summary.json exists is
reused, so a rerun only trains what is missing; a folder with a configuration other than the one
asked for is refused; an interrupted run is resumed.

Printed (stdout; progress goes to stderr): one markdown table per pair, rows = methods, columns =
fused test ACC / MAP / F1 and, per view, the head's test accuracy (summary test[<view>].acc) and the
linear probe accuracy (summary probe[<view>]), each mean +- sample std over seeds; then, for the
weak view (the one whose unimodal head accuracy is lower), the probe gap of every method to
unimodal as mean +- std of the paired (same-seed) differences. The same tables go to
<out>/table.md and one row per run to <out>/results.csv. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PAIRS = ("pix+fou", "fac+mor")
DEFAULT_METHODS = ("unimodal", "joint", "lfm-h", "lfm-lb")
IGNORED_KEYS = {("train", "progress"), ("out",)}  # settings that do not change a run's result


# ----------------------------------------------------------------------------------- one run
def make_run_config(pair: str, method: str, seed: int, epochs: int | None, assignments: list[str]):
    import modgap

    overrides: dict[str, Any] = {
        "data": {"name": "mfeat", "modalities": pair.split("+")},
        "method": {"name": method},
        "train": {"seed": seed, "progress": False},
    }
    if epochs is not None:
        overrides["train"]["epochs"] = epochs
    return modgap.make_config(overrides=overrides, assignments=assignments)


def run_dir(out: Path, pair: str, method: str, seed: int, epochs: int | None, assignments: list[str]) -> Path:
    name = f"{method}-s{seed}"
    if epochs is not None:
        name += f"-e{epochs}"
    if assignments:
        name += "-" + hashlib.sha1("\n".join(assignments).encode()).hexdigest()[:8]
    return out / pair / name


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(config_dict))  # tuples -> lists, as in config.yaml
    for key in IGNORED_KEYS:
        node = d
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    d.pop("version", None)
    d.pop("split_checksum", None)
    return d


def _differences(saved: dict[str, Any], wanted: dict[str, Any], where: str = "") -> list[str]:
    """Settings whose saved value differs from the wanted one. A setting the saved file lacks is
    one that modgap gained after the run was made: not a difference."""
    out = []
    for key, value in wanted.items():
        if key not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[key], dict) and key != "method":
            out += _differences(saved[key], value, f"{where}{key}.")
        elif saved[key] != value:
            out.append(f"{where}{key}: {saved[key]!r} there, {value!r} here")
    return out


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse, or resume) one cell; returns its summary plus bookkeeping."""
    import torch
    import yaml

    import modgap

    torch.set_num_threads(job["threads"])
    config = make_run_config(job["pair"], job["method"], job["seed"], job["epochs"], job["set"])
    folder = Path(job["dir"])
    summary_path = folder / "summary.json"
    config_path = folder / "config.yaml"
    if config_path.exists():
        saved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        differ = _differences(_comparable(saved), _comparable(config.to_dict()))
        if differ:
            raise RuntimeError(f"{folder}: holds a run with another configuration ({differ[0]}); use another --out")
    started = time.perf_counter()
    # BLAS threads too (the linear probe's lbfgs): with 2 runs on 2 cores, multi-threaded OpenBLAS
    # makes the probe several times slower than one thread.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=job["threads"]):
        if summary_path.exists():
            summary, status = json.loads(summary_path.read_text(encoding="utf-8")), "reused"
        elif config_path.exists():
            summary, status = modgap.fit(config, out=folder, resume=True), "resumed"
        else:
            summary, status = modgap.fit(config, out=folder), "trained"
    return {**job, "summary": summary, "status": status, "elapsed": time.perf_counter() - started}


# ------------------------------------------------------------------------------------ tables
def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], signed: bool = False) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:+.3f} ± {s:.3f}" if signed else f"{m:.3f} ± {s:.3f}"


def pair_report(pair: str, methods: list[str], seeds: list[int], results: dict[tuple, dict]) -> str:
    views = pair.split("+")
    lines = [f"### mfeat {pair} (test split, best-val epoch; mean ± std over seeds {','.join(map(str, seeds))})", ""]
    head = ["method", "ACC", "MAP", "F1"]
    for v in views:
        head += [f"{v} head acc", f"{v} probe"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")

    def col(method: str, getter) -> list[float]:
        return [getter(results[(pair, method, s)]) for s in seeds if (pair, method, s) in results]

    for method in methods:
        row = [method]
        for metric in ("acc", "map", "f1"):
            row.append(fmt(col(method, lambda r, k=metric: r["test"]["fused"][k])))
        for v in views:
            row.append(fmt(col(method, lambda r, v=v: r["test"][v]["acc"])))
            row.append(fmt(col(method, lambda r, v=v: r["probe"].get(v, float("nan")))))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    if "unimodal" not in methods:
        lines.append("(no unimodal runs: the weak view and the gaps to unimodal are not defined)")
        return "\n".join(lines)
    uni_head = {v: mean_std(col("unimodal", lambda r, v=v: r["test"][v]["acc"]))[0] for v in views}
    weak = min(views, key=lambda v: uni_head[v])
    lines.append(f"Weak view: **{weak}** (unimodal head acc "
                 + ", ".join(f"{v} {uni_head[v]:.3f}" for v in views) + ").")
    lines.append("")
    lines.append(f"| paired difference on {weak} (same seed) | probe | head acc | n |")
    lines.append("|---|---:|---:|---:|")
    for method in methods:
        if method == "unimodal":
            continue
        probe_d, head_d = [], []
        for s in seeds:
            a, b = results.get((pair, method, s)), results.get((pair, "unimodal", s))
            if a is None or b is None:
                continue
            probe_d.append(a["probe"][weak] - b["probe"][weak])
            head_d.append(a["test"][weak]["acc"] - b["test"][weak]["acc"])
        lines.append(f"| {method} - unimodal | {fmt(probe_d, True)} | {fmt(head_d, True)} | {len(probe_d)} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-runs/mfeat-quality", help="folder of the run folders (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: modgap's, 30)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default %(default)s)")
    p.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="mfeat view pairs A+B, comma-separated (default %(default)s)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="methods, comma-separated (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads per run (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every run as `modgap train --set` (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out)

    # fail fast on a bad pair, method or --set before starting any process
    from modgap.data import load_dataset
    from modgap.errors import ModgapError
    from modgap.methods import METHODS

    try:
        for pair in pairs:
            for method in methods:
                METHODS.get(method)
                config = make_run_config(pair, method, seeds[0], args.epochs, args.set)
            load_dataset(config.data)  # names a bad view (cheap: the bundle is small)
    except ModgapError as exc:
        print(f"mfeat_quality: error: {exc}", file=sys.stderr)
        return 2

    jobs = [{"pair": pair, "method": method, "seed": seed, "epochs": args.epochs, "set": list(args.set),
             "threads": args.threads, "dir": str(run_dir(out, pair, method, seed, args.epochs, args.set))}
            for pair in pairs for method in methods for seed in seeds]
    results: dict[tuple, dict] = {}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))  # the workers' BLAS pools, from their start
    ctx = mp.get_context("spawn")
    finished = [job for job in jobs if (Path(job["dir"]) / "summary.json").exists()]
    todo = [job for job in jobs if job not in finished]

    def outcomes():
        for job in finished:  # reused in this process: no worker to start
            try:
                yield job, run_one(job), None
            except Exception as exc:
                yield job, None, exc
        if not todo:
            return
        with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = {pool.submit(run_one, job): job for job in todo}
            for fut in cf.as_completed(futures):
                try:
                    yield futures[fut], fut.result(), None
                except Exception as exc:
                    yield futures[fut], None, exc

    for i, (job, r, error) in enumerate(outcomes(), 1):
        if error is not None:  # report and go on: the tables show what finished
            print(f"[{i}/{len(jobs)}] FAILED {job['pair']} {job['method']} s{job['seed']}: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
            continue
        s = r["summary"]
        results[(r["pair"], r["method"], r["seed"])] = s
        print(f"[{i}/{len(jobs)}] {r['status']:8s} {r['pair']:8s} {r['method']:9s} s{r['seed']}  "
              f"fused acc {s['test']['fused']['acc']:.3f}  {r['elapsed']:.1f} s", file=sys.stderr)
        rows.append({"pair": r["pair"], "method": r["method"], "seed": r["seed"], "status": r["status"],
                     "best_epoch": s["best_epoch"], "epochs": s["epochs"], "wall_s": s["wall_s"],
                     "alpha_best_epoch": s.get("alpha_final"),
                     **{f"fused_{k}": s["test"]["fused"][k] for k in ("acc", "map", "f1")},
                     **{f"{v}_head_acc": s["test"][v]["acc"] for v in s["modalities"]},
                     **{f"{v}_probe": s["probe"].get(v) for v in s["modalities"]},
                     "dir": r["dir"]})
    total = time.perf_counter() - started

    settings = f"epochs {args.epochs if args.epochs is not None else 'default (30)'}"
    if args.set:
        settings += ", --set " + " ".join(args.set)
    report = [f"## mfeat quality benchmark ({settings}; {len(results)}/{len(jobs)} runs, {total:.0f} s)", ""]
    for pair in pairs:
        report += [pair_report(pair, methods, seeds, results), ""]
    text = "\n".join(report)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text, encoding="utf-8")
    rows.sort(key=lambda r: (pairs.index(r["pair"]), methods.index(r["method"]), r["seed"]))
    fields = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return 0 if len(results) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
