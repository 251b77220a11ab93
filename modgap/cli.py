"""The `modgap` command: train, prepare, bench, report, analyze, list. (`python -m modgap` is the same command.)"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, ModgapError, RunFolderError

if TYPE_CHECKING:
    from .config import Config

EPILOG_TRAIN = """examples:
  modgap train                                   # lfm-lb on the bundled mfeat data, pix + fou
  modgap train --method joint --epochs 10
  modgap train --data mfeat:fac+mor --method lfm-h --set method.schedule=exp
  modgap train --data tables:my_folder --method lfm-lb --set method.matching=infonce
  modgap train --out runs/x --resume              # continue an interrupted run
  modgap train --set log.backends=[tensorboard,mlflow]   # also mirror it (docs/tracking.md)
"""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too (exit code 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"modgap: error: {one_line(message)} (see '{self.prog} --help')\n")


def one_line(message: object) -> str:
    """The message with line breaks and other control characters escaped (a bad value may hold them)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modgap", description="Balanced multimodal classification (LFM and baselines).")
    parser.add_argument("--version", action="version", version=f"modgap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train one run",
        description="Train one run and write its run folder.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--config", metavar="FILE", help="YAML file with any of the sections data, model, optim, train, log, method"
    )
    t.add_argument(
        "--data", metavar="NAME[:ARG]", help="dataset, e.g. mfeat, mfeat:pix+fou, tables:PATH (default mfeat)"
    )
    t.add_argument("--modalities", metavar="A,B", help="modalities to use, comma-separated (default: the dataset's)")
    t.add_argument("--method", metavar="NAME", help="training method (default lfm-lb; `modgap list methods`)")
    t.add_argument("--epochs", type=int, metavar="N", help="number of epochs")
    t.add_argument("--seed", type=int, metavar="S", help="training seed (the split seed is data.split_seed)")
    t.add_argument("--out", metavar="DIR", help="run folder (default runs/<data>-<method>-s<seed>)")
    t.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        metavar="auto",
        help="continue the run in --out from its last checkpoint (the original command plus --resume works; "
        "only --epochs may change); --resume auto starts it when --out holds no run (one line for every requeue)",
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set optim.lr=0.05 --set method.every=5",
    )
    t.add_argument(
        "--requeue",
        action="store_true",
        help="under Slurm: when a stop signal (TERM, USR1, USR2) ends the run with a checkpoint, requeue the job",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "prepare",
        help="prepare a dataset from its raw download",
        description="Read a raw download, compute the presets and write a cached dataset folder.",
        epilog="example:\n  modgap prepare cremad --src ~/data/CREMA-D --out data/cremad --jobs 4\n"
        "  modgap train --data cremad:data/cremad --config configs/cremad.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="dataset name (`modgap list datasets`)")
    p.add_argument("--src", required=True, metavar="RAW_DIR", help="the raw download (layout: docs/datasets/<name>.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="the prepared folder to write")
    p.add_argument("--preset", metavar="NAME", help="audio preset (`modgap list presets`)")
    p.add_argument("--frames", type=int, metavar="T", help="frames sampled per clip at training time")
    p.add_argument("--max-frames", type=int, metavar="K", help="frames stored per clip (1 fps, spread evenly if more)")
    p.add_argument("--image-size", type=int, metavar="S", help="stored image/frame side (default 224)")
    p.add_argument("--text-model", metavar="NAME_OR_PATH", help="tokenizer for text modalities")
    p.add_argument("--max-len", type=int, metavar="L", help="text truncation length in tokens")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="val carved from train where there is no official val (default 0.1)",
    )
    p.add_argument("--split-seed", type=int, default=0, metavar="S", help="seed of the val carve-out (default 0)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel worker processes (default 1)")
    p.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        default="stop",
        help="stop at the first bad sample (default), or skip and record it in skipped.csv",
    )
    p.add_argument("--force", action="store_true", help="rebuild an existing prepared folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    from .launchers import LAUNCHERS, SLURM_OPTIONS

    b = sub.add_parser(
        "bench",
        help="run a grid of methods x datasets x seeds and tabulate it",
        description="Run every cell of the grid as its own run folder (finished cells are skipped, "
        "interrupted ones resumed), then write results.csv, table.md and table.tex.",
        epilog="examples:\n  modgap bench --methods unimodal,joint,lfm-h,lfm-lb --data mfeat:pix+fou,mfeat:fac+mor "
        "--seeds 0,1,2 --out bench/mfeat\n"
        "  modgap bench --methods 'lfm-h[schedule=constant,w0=0.5],lfm-lb' --data mfeat --seeds 0,1 --out bench/x\n"
        "  modgap bench --methods joint,lfm-lb --data mfeat --seeds 0,1,2 --out bench/x --jobs 6 \\\n"
        "      --launcher slurm --slurm partition=gpu,time=120,gpus=1,cpus=8 --no-wait   (docs/cluster.md)\n"
        "  modgap bench --collect bench/mfeat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--methods", metavar="M1,M2", help="methods, optionally with options: lfm-h[schedule=exp]")
    b.add_argument("--data", metavar="D1,D2", help="datasets as in train --data (mfeat:pix+fou, tables:PATH, ...)")
    b.add_argument("--seeds", default="0,1,2", metavar="S1,S2", help="training seeds (default 0,1,2)")
    b.add_argument("--out", metavar="DIR", help="bench folder")
    b.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    b.add_argument("--epochs", type=int, metavar="N", help="epochs for every run")
    b.add_argument("--config", metavar="FILE", help="a YAML config applied to every run")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    b.add_argument(
        "--collect",
        metavar="DIR",
        help="only rebuild the tables of a bench folder (its finished cells, while jobs still run too)",
    )
    b.add_argument(
        "--launcher",
        default="local",
        choices=list(LAUNCHERS),
        help="where the cells run (default local): " + "; ".join(f"{n}: {one.summary}" for n, one in LAUNCHERS.items()),
    )
    b.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help=f"Slurm options ({', '.join(SLURM_OPTIONS)}; time in minutes or [D-]HH:MM:SS), e.g. "
        "partition=gpu,time=120,gpus=1",
    )
    b.add_argument("--slurm-config", metavar="FILE", help="a YAML file of the same keys (--slurm wins)")
    b.add_argument("--no-wait", action="store_true", help="submit the jobs, print their ids and return (collect later)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    tu = sub.add_parser(
        "tune",
        help="search hyper-parameters on validation with Optuna, then train the best on seeds",
        description="Run an Optuna study whose trials are run folders (objective: validation fused accuracy; "
        "the test split is read once, by the final runs of the best configuration). The same command again "
        "continues the study; several processes (--jobs, or machines sharing --storage) share it.",
        epilog="examples:\n  modgap tune --data mfeat:pix+fou --method lfm-h --set method.schedule=constant \\\n"
        "      --space 'method.w0=uniform(0.05,0.95)' --space 'optim.lr=loguniform(1e-3,1e-1)' --trials 30 --jobs 2\n"
        "  modgap tune --data mfeat --method ogm-ge --space space.yaml --trials 20 --seeds 0,1 --out tune/ogm\n"
        "distributions: uniform(lo,hi) loguniform(lo,hi) int(lo,hi) logint(lo,hi) choice(a,b,...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tu.add_argument("--data", metavar="NAME[:ARG]", help="dataset, as in train --data")
    tu.add_argument("--method", metavar="NAME", help="training method")
    tu.add_argument("--config", metavar="FILE", help="a YAML config every trial starts from")
    tu.add_argument("--epochs", type=int, metavar="N", help="epochs of every trial and final run")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override for every run")
    tu.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=DIST|FILE",
        help="a searched key, e.g. 'optim.lr=loguniform(1e-3,1e-1)', or a YAML file of them (repeatable)",
    )
    tu.add_argument("--trials", type=int, default=20, metavar="N", help="trials to run now (default 20)")
    tu.add_argument("--seeds", default="0", metavar="S1,S2", help="seeds per trial, objective = mean (default 0)")
    tu.add_argument(
        "--final-seeds",
        default="0,1,2",
        metavar="S1,S2",
        help="seeds the best configuration is trained on and tested with (default 0,1,2; '' for none)",
    )
    tu.add_argument("--out", metavar="DIR", help="tune folder (default tune/<data>__<method>)")
    tu.add_argument("--storage", metavar="URL", help="Optuna RDB storage (default sqlite:///<out>/study.db)")
    tu.add_argument("--study", metavar="NAME", help="study name (default <data>__<method>)")
    tu.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (default 1)")
    tu.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    tu.add_argument("--pruner", default="median", help="median (default), hyperband or none")
    tu.add_argument("--sampler-seed", type=int, metavar="S", help="seed of the TPE sampler (default: random)")
    tu.add_argument(
        "--heartbeat", type=int, default=10, metavar="S", help="trial heartbeat; a silent trial fails after 3x S"
    )
    tu.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser(
        "report",
        help="figures and one self-contained report.html of a run or bench folder",
        description="Plot a run folder (learning curves, alpha, balance diagnostics, modality gap, "
        "per-class accuracy, Shapley contributions, Grad-CAM) or a bench folder (results "
        "table, accuracy bars, alpha of every run) into PNGs (each with a JSON of its data) "
        "and one report.html with the images embedded.",
        epilog="examples:\n  modgap report runs/mfeat-pix+fou-lfm-lb-s0\n"
        "  modgap report bench/mfeat --runs --out reports/mfeat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("path", metavar="PATH", help="a run folder or a bench folder")
    r.add_argument("--out", metavar="DIR", help="where the PNGs and report.html go (default PATH/report)")
    r.add_argument(
        "--checkpoint", default="best", metavar="best|last|FILE", help="checkpoint for the model figures (default best)"
    )
    r.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split the model figures use (default test)"
    )
    r.add_argument(
        "--replace",
        default="zero",
        choices=["zero", "mean"],
        help="Shapley: how a left-out modality is replaced (zeros, or its train-split mean input)",
    )
    r.add_argument(
        "--gradcam-samples", type=int, default=2, metavar="N", help="Grad-CAM samples for ResNet encoders (0: none)"
    )
    r.add_argument("--no-model", action="store_true", help="only the figures from the logs (no checkpoint is loaded)")
    r.add_argument("--runs", action="store_true", help="bench folder: add every run's own section")
    r.add_argument("--threads", type=int, metavar="N", help="torch CPU threads for the model figures")

    a = sub.add_parser(
        "analyze",
        help="analyses: label fitting per modality, Shapley contributions, Grad-CAM",
        description="Analyses of modality imbalance.",
    )
    asub = a.add_subparsers(dest="analysis", metavar="ANALYSIS")
    lf = asub.add_parser(
        "label-fitting",
        help="train each modality alone with one-hot, mixed and uniform labels",
        description="The LFM paper's motivating experiment: each modality trained alone (unimodal) "
        "with one-hot labels, 0.7 one-hot + 0.3 uniform, and uniform labels (every "
        "target 1/C); per modality the fit to the targets, train and test accuracy, "
        "and the gap between modalities (table.md, table.csv, label_fitting.png).",
        epilog="example:\n  modgap analyze label-fitting --data mfeat --modalities pix,fou "
        "--epochs 10 --seeds 0,1 --out analysis/labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lf.add_argument("--data", metavar="NAME[:ARG]", help="dataset as in train --data (default mfeat)")
    lf.add_argument("--modalities", metavar="A,B", help="modalities (default: the dataset's)")
    lf.add_argument("--epochs", type=int, metavar="N", help="epochs per run")
    lf.add_argument("--seeds", default="0", metavar="S1,S2", help="training seeds (default 0)")
    lf.add_argument(
        "--mix", type=float, default=0.3, metavar="F", help="uniform share of the mixed setting (default 0.3)"
    )
    lf.add_argument("--out", required=True, metavar="DIR", help="output folder (runs in DIR/runs)")
    lf.add_argument("--config", metavar="FILE", help="YAML config for the runs (the method is always unimodal)")
    lf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting of every run")
    lf.add_argument("--quiet", action="store_true", help="no progress bar")
    sh = asub.add_parser(
        "shapley",
        help="exact Shapley contribution of each modality of a trained run",
        description="Fused accuracy and true-class fused logit with every subset of modalities "
        "replaced (zeros or train-split mean inputs); exact Shapley values (M <= 6).",
        epilog="example:\n  modgap analyze shapley runs/mfeat-pix+fou-lfm-lb-s0 --replace mean",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sh.add_argument("run", metavar="RUN", help="a run folder")
    sh.add_argument(
        "--replace", default="zero", choices=["zero", "mean"], help="replacement of a left-out modality (default zero)"
    )
    sh.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default test)")
    sh.add_argument("--checkpoint", default="best", metavar="best|last|FILE", help="checkpoint (default best)")
    sh.add_argument("--out", metavar="DIR", help="output folder (default RUN/analysis)")
    sh.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    gc = asub.add_parser(
        "gradcam",
        help="Grad-CAM maps of the ResNet (image, frame, spectrogram) encoders of a run",
        description="Heat maps of a ResNet encoder's last stage for the true class of the fused "
        "logits, overlaid on each input frame (PNGs, each with a JSON of its maps).",
        epilog="example:\n  modgap analyze gradcam runs/cremad-joint-s0 --samples 4 --checkpoint last",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument("run", metavar="RUN", help="a run folder")
    gc.add_argument("--samples", type=int, default=4, metavar="N", help="first N samples of the split (default 4)")
    gc.add_argument("--checkpoint", default="best", metavar="best|last|FILE", help="checkpoint (default best)")
    gc.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default test)")
    gc.add_argument("--modality", action="append", metavar="M", help="modality (repeatable; default every ResNet one)")
    gc.add_argument("--stage", type=int, metavar="K", help="ResNet stage whose maps are used (default the last, 4)")
    gc.add_argument("--out", metavar="DIR", help="output folder (default RUN/analysis/gradcam)")
    gc.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")

    ls = sub.add_parser(
        "list",
        help="list datasets, methods, schedules, encoders, fusions, trackers",
        description="List the registered components.",
    )
    ls.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "datasets", "methods", "schedules", "presets", "encoders", "fusions", "matching", "trackers"],
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "tune":
            return cmd_tune(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "analyze":
            return cmd_analyze(args, parser)
        if args.command == "list":
            return cmd_list(args.what)
        parser.print_help()
        return 0
    except ModgapError as exc:
        print(f"modgap: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .train.preemption import Preempted

        if not isinstance(exc, Preempted):
            raise
        print(f"modgap: {exc}", file=sys.stderr)  # a stop signal: the checkpoint is written, the run resumes
        return exc.exit_code
    except KeyboardInterrupt:
        print("modgap: interrupted; continue with `modgap train --resume --out <run folder>`", file=sys.stderr)
        return 130


def overrides_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    from .data import parse_data_spec

    overrides: dict[str, Any] = {}
    if args.data:
        overrides["data"] = parse_data_spec(args.data)
    if args.modalities:
        overrides.setdefault("data", {})["modalities"] = [m for m in args.modalities.split(",") if m]
    if args.method:
        overrides["method"] = {"name": args.method}
    if args.epochs is not None:
        overrides["train"] = {"epochs": args.epochs}
    if args.seed is not None:
        overrides.setdefault("train", {})["seed"] = args.seed
    if args.quiet:
        overrides.setdefault("train", {})["progress"] = False
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .config import make_config
    from .tracking import train_tracked
    from .train.trainer import load_run_config

    resume = bool(args.resume)
    if args.resume not in (None, "yes", "auto"):
        raise ConfigError(f"--resume takes no value or 'auto', got '{args.resume}'")
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out DIR, the run folder to continue")
        has_run = (Path(args.out) / "config.yaml").exists()
        if not has_run and args.resume != "auto":
            raise RunFolderError(
                f"{args.out}: nothing to resume (no config.yaml); start a run there without --resume "
                f"(or use --resume auto, which starts it when there is none)"
            )
        resume = has_run
    if resume:
        config = resumed_config(args, load_run_config(args.out))
    else:
        config = make_config(args.config, overrides_from_flags(args), args.set)
    from .methods.base import check_method_settings, method_classes
    from .methods.compose import check_method_options

    method_classes(config.method["name"])  # an unknown method fails here, before any data is read
    try:
        check_method_settings(config.methods)
    except ConfigError as exc:
        from_flags = any(item.startswith("methods.") for item in args.set)  # else the file holds the bad entry
        raise ConfigError(f"{args.config}: {exc}" if args.config and not from_flags else str(exc)) from None
    check_method_options(config.method)  # and so does a mistyped method.* key
    from .train.preemption import Preempted, request_requeue

    try:
        # train_tracked checks log.backends (an unknown name, a package not installed) before any data is read
        summary = train_tracked(config, out=args.out or config.out, resume=resume)
    except Preempted:
        if args.requeue:
            print(f"modgap: {request_requeue()}", file=sys.stderr)
        raise
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one table
        print(format_summary(summary))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A finished process of a torchrun job leaves without C++ static destructors: one of torch's
        # distributed background threads is now and then still joinable at interpreter teardown, and
        # std::terminate then aborts the process (SIGABRT, "terminate called without an active
        # exception", no Python frame) after everything was done and saved; torchrun reports the job
        # as failed. Seen in about 1 run in 10 on a loaded 2-core machine (torch 2.13, gloo).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


RESUME_MAY_CHANGE = ("train.epochs", "train.progress", "log.")
"""What a resumed run may set differently from its saved configuration (the rest would change its numbers;
log.* only changes where the run is mirrored)."""


def _at(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def resumed_config(args: argparse.Namespace, saved: Config) -> Config:
    """The saved configuration of the run in --out, with --epochs (and --quiet) applied. Any other setting the
    command gives (the original command, retyped) must equal the saved one: the first that differs is refused,
    named with both values."""
    from .config import build, check, dotted_to_nested, flatten, load_yaml, make_config

    given: dict[str, Any] = {}
    for layer in (
        load_yaml(args.config) if args.config else {},
        overrides_from_flags(args),
        dotted_to_nested(args.set),
    ):
        given.update(flatten(layer))
    if given:
        typed = make_config(args.config, overrides_from_flags(args), args.set).to_dict()  # also checks the keys
        before = saved.to_dict()
        for path in given:
            if path.startswith(RESUME_MAY_CHANGE) or path == "out":
                continue
            new, old = _at(typed, path), _at(before, path)
            if new != old:
                raise ConfigError(
                    f"--resume: {path} is {new!r} here but {old!r} in the run in {args.out}; a resumed run keeps "
                    f"its settings (only --epochs and --set log.* may change): drop it or start another --out"
                )
    logging = dotted_to_nested([item for item in args.set if item.startswith("log.")])
    config = build(
        type(saved),
        {"train": {"epochs": args.epochs or saved.train.epochs, "progress": not args.quiet}} | logging,
        base=saved,
    )
    check(config)
    return config


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data import prepare as prep

    settings = {
        "preset": args.preset,
        "frames": args.frames,
        "max_frames": args.max_frames,
        "image_size": args.image_size,
        "text_model": args.text_model,
        "max_len": args.max_len,
    }
    for key in ("frames", "max_frames", "image_size", "max_len", "jobs"):
        value = settings.get(key, getattr(args, key, None))
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    report = prep.prepare(
        args.dataset,
        args.src,
        args.out,
        settings=settings,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        jobs=args.jobs,
        on_error=args.on_error,
        force=args.force,
        progress=not args.quiet,
    )
    for text in report.warnings:
        print(f"modgap: warning: {one_line(text)}", file=sys.stderr)
    print(report.format())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import SUBMITIT_DIR, bench, split_list, tabulate
    from .report.tables import markdown

    if args.collect:
        table = tabulate(args.collect)
        if table["aggregate"] is None:
            unfinished = f"{len(table['unfinished'])} of {table['grid']} cells unfinished"
            raise RunFolderError(f"{args.collect}: no finished runs yet ({unfinished})")
        print(markdown(table["aggregate"]))
        _unfinished(table, args.collect)
        return 0
    missing = [
        flag for flag, value in (("--methods", args.methods), ("--data", args.data), ("--out", args.out)) if not value
    ]
    if missing:
        raise ConfigError(f"modgap bench needs {', '.join(missing)} (or --collect DIR)")
    seeds = _seed_list("--seeds", args.seeds)
    try:
        result = bench(
            split_list(args.methods),
            split_list(args.data),
            seeds,
            args.out,
            jobs=args.jobs,
            epochs=args.epochs,
            sets=args.set,
            config=args.config,
            progress=not args.quiet,
            launcher=args.launcher,
            slurm=args.slurm,
            slurm_config=args.slurm_config,
            wait=not args.no_wait,
        )
    except KeyboardInterrupt:
        print(
            f"modgap bench: interrupted; the same command again continues the grid (jobs already submitted to "
            f"Slurm keep running: `modgap bench --collect {args.out}` tabulates them)",
            file=sys.stderr,
        )
        return 130
    if args.no_wait:
        if not result["submitted"]:
            print(f"modgap bench: nothing to submit, the {result['cells']} cells are finished")
        else:
            print(
                f"modgap bench: {result['submitted']} of {result['cells']} cells submitted, job(s) "
                f"{', '.join(result['job_ids'])} (submitit's logs: {Path(args.out) / SUBMITIT_DIR}); "
                f"tabulate with `modgap bench --collect {args.out}`, while they run too"
            )
        return 0
    if result["aggregate"] is not None:
        print(markdown(result["aggregate"]))
    if result["failed"]:
        print(f"modgap: {result['failed']} of {result['cells']} runs failed; see their train.log", file=sys.stderr)
    if result["elsewhere"]:
        print(
            f"modgap: {result['elsewhere']} of {result['cells']} runs are running elsewhere; "
            f"tabulate them later with `modgap bench --collect {args.out}`",
            file=sys.stderr,
        )
    return 1 if result["failed"] or result["elsewhere"] else 0


def _unfinished(table: dict[str, Any], folder: str) -> None:
    names = table["unfinished"]
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        print(
            f"modgap bench: {len(names)} of {table['grid']} cells of {folder} unfinished ({shown}): queued, running "
            f"or failed (their train.log says which)",
            file=sys.stderr,
        )


def _seed_list(flag: str, text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects integers separated by commas, got '{text}'") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"{flag}: seeds must be >= 0")
    return seeds


def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import TuneSpec, default_study_name, parse_space, trials_markdown, tune

    seeds = _seed_list("--seeds", args.seeds)
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if args.heartbeat < 1:
        raise ConfigError("--heartbeat must be >= 1 second")
    spec = TuneSpec(
        out=args.out or str(Path("tune") / default_study_name(args.data, args.method)),
        space=parse_space(args.space),
        data=args.data,
        method=args.method,
        config_file=args.config,
        sets=args.set,
        epochs=args.epochs,
        seeds=seeds,
        final_seeds=_seed_list("--final-seeds", args.final_seeds),
        study=args.study or "",
        storage=args.storage or "",
        pruner=args.pruner,
        heartbeat=args.heartbeat,
        sampler_seed=args.sampler_seed,
    )
    result = tune(spec, args.trials, jobs=args.jobs, timeout=args.timeout, progress=not args.quiet)
    best = result["best"]["number"] if result["best"] else None
    print(trials_markdown(result["trials"], spec.space, best))
    if result["final"]:
        from .report.tables import markdown

        print(markdown(result["final"]))
    print(f"tune folder: {spec.out} (best configuration: {Path(spec.out) / 'best.yaml'})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import report

    _check_threads(args)
    if args.gradcam_samples < 0:
        raise ConfigError(f"--gradcam-samples must be >= 0, got {args.gradcam_samples}")
    path = report(
        args.path,
        args.out,
        per_run=args.runs,
        checkpoint=args.checkpoint,
        model=not args.no_model,
        replace=args.replace,
        gradcam_samples=args.gradcam_samples,
        threads=args.threads,
        split=args.split,
    )
    print(f"report: {path}")
    return 0


def _check_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")


def cmd_analyze(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_threads(args)
    if args.analysis == "label-fitting":
        return cmd_label_fitting(args)
    if args.analysis == "shapley":
        return cmd_shapley(args)
    if args.analysis == "gradcam":
        return cmd_gradcam(args)
    raise ConfigError("modgap analyze needs an analysis: label-fitting, shapley or gradcam")


def cmd_label_fitting(args: argparse.Namespace) -> int:
    from .config import make_config
    from .report.analyze import label_fitting

    if not 0.0 < args.mix < 1.0:
        raise ConfigError(f"--mix must be in (0, 1), got {args.mix}")
    if any(s.startswith("method.") for s in args.set):
        raise ConfigError("label-fitting always trains the unimodal method; --set method.* does not apply")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects integers separated by commas, got '{args.seeds}'") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    args.method, args.seed = None, None
    config = make_config(args.config, overrides_from_flags(args), args.set)
    result = label_fitting(config, seeds, args.out, mix=args.mix, log=(lambda _msg: None) if args.quiet else print)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    print(f"written: {Path(args.out) / 'table.md'}, table.csv, label_fitting.png ({len(result['rows'])} rows)")
    return 0


def cmd_shapley(args: argparse.Namespace) -> int:
    import json

    from .report.checkpoint import load_trained
    from .report.plots import save_figure, shapley_figure
    from .report.shapley import modality_shapley, shapley_markdown
    from .runs import atomic_write_text

    trainer = load_trained(args.run, args.checkpoint, threads=args.threads)
    result = modality_shapley(trainer, args.split, args.replace)
    result["checkpoint"] = str(trainer.checkpoint_file)
    out = Path(args.out) if args.out else Path(args.run) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    text = shapley_markdown(result)
    atomic_write_text(out / "shapley.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "shapley.md", text)
    save_figure(shapley_figure(result), out / "shapley.png")
    print(text)
    print(f"written: {out / 'shapley.md'}, shapley.json, shapley.png")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    from .report.checkpoint import load_trained
    from .report.gradcam import run_gradcam

    trainer = load_trained(args.run, args.checkpoint, threads=args.threads)
    out = Path(args.out) if args.out else Path(args.run) / "analysis" / "gradcam"
    records = run_gradcam(
        trainer, out, samples=args.samples, split=args.split, modalities=args.modality, stage=args.stage
    )
    for r in records:
        print(f"{r['path']}: {r['modality']} {r['id']} (true {r['label']}, predicted {r['predicted']})")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("fused", summary["test"]["fused"], summary["val"]["fused"]["acc"], None)]
    for m in summary["modalities"]:
        rows.append((m, summary["test"][m], summary["val"][m]["acc"], summary["probe"].get(m)))
    head = f"{'':10s} {'val acc':>8s} {'test acc':>9s} {'test MAP':>9s} {'test F1':>8s} {'probe':>7s}"
    lines = [
        f"{summary['method']} on {summary['dataset']} ({'+'.join(summary['modalities'])}), seed {summary['seed']}: "
        f"best val epoch {summary['best_epoch']} of {summary['epochs']}, {summary['wall_s']:.1f} s",
        head,
    ]
    for name, t, val_acc, probe in rows:
        p = f"{probe:7.3f}" if probe is not None else f"{'-':>7s}"
        lines.append(f"{name:10s} {val_acc:8.3f} {t['acc']:9.3f} {t['map']:9.3f} {t['f1']:8.3f} {p}")
    extra = [f"imbalance (test acc strongest/weakest) {summary['imbalance_test']:.2f}"]
    if summary.get("alpha_final") is not None:
        extra.append(
            f"alpha: {summary['alpha_final']:.3f} at the end, {summary.get('alpha_best', summary['alpha_final']):.3f} "
            f"at the best epoch"
        )
    lines.append("; ".join(extra))
    from .train.metrics import still_improving_note

    note = still_improving_note(summary)
    if note is not None:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def cmd_list(what: str) -> int:
    from .data import DATASETS
    from .methods import METHODS
    from .methods.matching import MATCHING
    from .methods.schedules import SCHEDULES
    from .models import ENCODERS, FUSIONS
    from .tracking import BACKENDS

    def first_line(doc: str | None) -> str:
        return (doc or "").strip().splitlines()[0] if doc else ""

    sections = {
        "methods": [(n, c.summary) for n, c in METHODS.items()],
        "datasets": [(n, c.summary) for n, c in DATASETS.items()],
        "schedules": [(n, first_line(f.__doc__)) for n, f in SCHEDULES.items()],
        "matching": [(n, first_line(c.__doc__) or "") for n, c in MATCHING.items()],
        "encoders": [(n, first_line(f.__doc__) or "") for n, f in ENCODERS.items()],
        "fusions": [(n, first_line(c.__doc__)) for n, c in FUSIONS.items()],
        "presets": _presets(),
        "trackers": [(n, c.summary) for n, c in BACKENDS.items()],
    }
    chosen = sections if what == "all" else {what: sections[what]}
    for title, rows in chosen.items():
        if what == "all":
            print(f"{title}:")
        width = max((len(n) for n, _ in rows), default=0)
        for name, text in rows:
            print(f"{'  ' if what == 'all' else ''}{name:{width}s}  {text}".rstrip())
    return 0


def _presets() -> list[tuple[str, str]]:
    try:
        from .data.audio import AUDIO_PRESETS
    except ImportError:
        return []
    return [(n, f"audio, {'x'.join(map(str, p.output_shape))}") for n, p in sorted(AUDIO_PRESETS.items())]


if __name__ == "__main__":
    sys.exit(main())
