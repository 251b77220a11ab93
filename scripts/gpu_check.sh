#!/usr/bin/env bash
# CUDA smoke check of modgap, for a machine with one or more NVIDIA GPUs (a few minutes at most).
#
#   scripts/gpu_check.sh                 # from anywhere; uses $PYTHON, else .venv/bin/python, else python
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh    # dry run of the script's own code on the CPU (fp16 and
#                                                # NCCL checks are skipped there; not a GPU check)
#
# Prints the device name and one line per check: PASS, FAIL (with the reason) or SKIP (why), then a
# summary; exits 1 if any check failed. Checks:
#   methods      a few CUDA training steps (1 epoch of tiny synth-av, ResNets width 8) per method
#                family: joint, lfm-h, lfm-lb exact, lfm-lb official, ogm-ge, mmpareto, pmr
#   amp          first training loss in bf16 and fp16 against fp32 (joint, lfm-lb); an fp16 and a
#                bf16 epoch of lfm-lb (every=1) with a finite alpha; the loss scale's skipped steps
#   channels     channels_last: same first loss as the default layout; a bf16 + channels_last epoch
#   loader       data.workers=2 with pinned memory on a small prepared folder: same rows as in-process
#   ddp          torchrun over all visible GPUs (NCCL) against one GPU: same metrics and alpha, with
#                DistributedDataParallel and with train.ddp=false; mla (unused parameters) runs
#                (mfeat, as tests/train/test_distributed.py on CPU); a ResNet bf16 run over all GPUs
#   compile      train.compile (inductor), bf16, lfm-lb every=1 on mfeat: alpha as in eager mode (last:
#                compilation time varies most)
#   benchmark    python benchmarks/gpu.py --quick (its table is printed)
# Not collected by pytest (tests/ holds the CPU suite).
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" = "cpu" ]; then LIMIT=900; else LIMIT=190; fi   # the CPU dry run is slow; the GPU check is not
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
started=$(date +%s)

timeout "$LIMIT" "$PY" - "$TMP" "$DEVICE" <<'PYEOF'
import json, math, os, socket, subprocess, sys, time, traceback
from pathlib import Path

import torch

tmp, device = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(Path.cwd() / "benchmarks"))
from modgap.config import make_config  # noqa: E402
from modgap.train.trainer import Trainer  # noqa: E402

cuda = device.startswith("cuda")
results = []
if cuda and not torch.cuda.is_available():
    print("FAIL cuda: torch.cuda.is_available() is False (torch %s, built for CUDA %s)" % (torch.__version__, torch.version.cuda))
    sys.exit(1)
gpus = torch.cuda.device_count() if cuda else 0
name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
print(f"device: {name}; visible GPUs: {gpus}; torch {torch.__version__}, CUDA {torch.version.cuda}")


def check(label):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "SKIP" if isinstance(detail, str) and detail.startswith("SKIP") else "PASS"
            detail = detail[5:] if status == "SKIP" else detail
            print(f"{status} {label} ({time.perf_counter() - t0:.0f} s){': ' + detail if detail else ''}", flush=True)
            results.append(status)
        except Exception as exc:
            print(f"FAIL {label} ({time.perf_counter() - t0:.0f} s): {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
            results.append("FAIL")
        return fn
    return wrap


SMALL = {"name": "synth-av", "options": {"n": 10, "size": 64, "frames": 2}, "batch_size": 16}
run_id = [0]


def trainer(method=None, data=None, model=None, **train):
    method = method or {"name": "joint"}
    cfg = make_config(overrides={"data": data or SMALL, "method": method, "model": model or {"width": 8},
                                 "train": {"device": device, "epochs": 1, "progress": False, "probe": False, **train}})
    run_id[0] += 1
    return Trainer(cfg, tmp / f"run{run_id[0]}")


def finite(summary):
    assert math.isfinite(summary["test"]["fused"]["acc"]), summary["test"]
    if summary["alpha_final"] is not None:
        assert math.isfinite(summary["alpha_final"]), summary["alpha_final"]


for spec in ({"name": "joint"}, {"name": "lfm-h"}, {"name": "lfm-lb", "every": 1},
             {"name": "lfm-lb", "variant": "official"}, {"name": "ogm-ge"}, {"name": "mmpareto"}, {"name": "pmr"}):
    label = "methods " + spec["name"] + (" " + spec.get("variant", "exact") if spec["name"] == "lfm-lb" else "")

    @check(label)
    def _(spec=spec):
        t = trainer(spec)
        assert all(p.device.type == device.split(":")[0] for p in t.params)
        s = t.fit()
        finite(s)
        return f"test acc {s['test']['fused']['acc']:.3f}" + (f", alpha {s['alpha_final']:.4f}" if s["alpha_final"] is not None else "")


def first_loss(method, **train):
    t = trainer(method, model={"width": 16}, **train)
    return t.train_step(next(t.batches("train", True, 0)))


for spec in ({"name": "joint"}, {"name": "lfm-lb", "every": 1}):
    @check(f"amp first loss {spec['name']}")
    def _(spec=spec):
        ref = first_loss(spec)
        out = [f"fp32 {ref['total']:.5f}"]
        for precision, rel in (("bf16", 2e-2), ("fp16", 1e-2)):
            if precision == "fp16" and not cuda:
                out.append("fp16 skipped on CPU")
                continue
            got = first_loss(spec, precision=precision)
            for k, v in ref.items():
                assert abs(got[k] - v) <= rel * abs(v) + 1e-4, f"{precision} {k}: {got[k]} vs fp32 {v}"
            out.append(f"{precision} {got['total']:.5f}")
        return ", ".join(out)


@check("amp epochs lfm-lb (bf16, fp16)")
def _():
    out = []
    for precision in ("bf16", "fp16") if cuda else ("bf16",):
        s = trainer({"name": "lfm-lb", "every": 1}, precision=precision).fit()
        finite(s)
        assert s["skipped_steps"] == 0
        out.append(f"{precision}: alpha {s['alpha_final']:.4f}" +
                   (f", loss-scale skipped steps {s['amp_skipped_steps']}" if precision == "fp16" else ""))
    return "; ".join(out)


@check("channels_last")
def _():
    if not cuda:
        return "SKIP channels_last is refused on the CPU"
    a = first_loss({"name": "joint"})["total"]
    b = first_loss({"name": "joint"}, channels_last=True)["total"]
    assert abs(a - b) <= 5e-3 * abs(a), (a, b)  # TF32 / algorithm choice may differ slightly
    s = trainer({"name": "lfm-lb", "every": 1}, precision="bf16", channels_last=True).fit()
    finite(s)
    return f"first loss {a:.5f} vs {b:.5f}; bf16 + channels_last epoch ok"


@check("loader workers + pinned memory")
def _():
    from fake_cremad import write_raw
    from modgap.data.prepare import prepare
    write_raw(tmp / "raw", 36, width=64, height=48)
    prepare("cremad", tmp / "raw", tmp / "prepared", on_error="skip", progress=False,
            settings={"image_size": 32, "frames": 1, "max_frames": 3})
    data = {"name": "cremad", "path": str(tmp / "prepared"), "batch_size": 8}
    rows = {}
    for workers in (0, 2):
        t = trainer(data={**data, "workers": workers})
        batches = list(t.batches("train", True, 0))
        assert all(x.device.type == device.split(":")[0] for b in batches for x in b.inputs.values())
        rows[workers] = [b.index.tolist() for b in batches]
        s = t.fit()
        finite(s)
    assert rows[0] == rows[2]
    return f"{sum(map(len, rows[2]))} train rows in {len(rows[2])} batches, same as in-process; pin_memory={cuda}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modgap_train(out, procs, *args):
    if procs == 1:
        cmd = [sys.executable, "-m", "modgap", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "modgap", "train"]
    proc = subprocess.run([*cmd, "--out", str(out), "--quiet", "--set", f"train.device={device}", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@check("ddp torchrun (nccl) vs one GPU")
def _():
    if cuda and gpus < 2:
        return f"SKIP only {gpus} GPU visible: NCCL needs one GPU per process (2 or more to compare)"
    procs = gpus if cuda else 2
    tiny = ["--method", "lfm-lb", "--epochs", "2", "--set", "method.every=3", "--set", "model.hidden=[32]",
            "--set", "model.feature_dim=16", "--set", "train.probe=false", "--set", "data.batch_size=50"]
    one = modgap_train(tmp / "ddp1", 1, *tiny)
    # DistributedDataParallel (default) and the explicit all-reduce (train.ddp=false) both match one GPU
    for label, extra in (("ddpN", []), ("allreduceN", ["--set", "train.ddp=false"])):
        many = modgap_train(tmp / label, procs, *tiny, *extra)
        for a, b in zip(one, many, strict=True):  # GPU sums differ in order: allow a couple of flipped predictions
            for split in ("val", "test"):
                for part in a[split]:
                    for metric in ("acc", "map", "f1"):
                        assert abs(a[split][part][metric] - b[split][part][metric]) <= 1.2e-2, (label, split, part, metric)
            for term in a["train"]:
                assert abs(a["train"][term] - b["train"][term]) <= 1e-3 * abs(a["train"][term]) + 1e-6, (label, term)
        alphas = [a["alpha"] for a in one], [b["alpha"] for b in many]
        assert all(abs(x - y) <= 1e-3 * abs(x) + 1e-6 for x, y in zip(*alphas)), (label, alphas)
    modgap_train(tmp / "ddp-mla", procs, "--method", "mla", "--epochs", "1", "--set", "model.hidden=[32]",
                 "--set", "train.probe=false")  # parameters without gradient in a step (declared to DDP)
    modgap_train(tmp / "ddp-resnet", procs, "--data", "synth-av:n=20,size=64,frames=2", "--method", "lfm-lb",
                 "--epochs", "1", "--set", "model.width=8", "--set", "train.precision=bf16",
                 "--set", f"train.channels_last={'true' if cuda else 'false'}", "--set", "train.probe=false",
                 "--set", "data.batch_size=32")
    return (f"{procs} processes, DDP and train.ddp=false: metrics and alpha match one process; mla ok; "
            f"ResNet bf16 + channels_last run over {procs} ok")


@check("compile (inductor) lfm-lb")
def _():
    if not cuda and os.environ.get("GPU_CHECK_COMPILE") != "1":
        return "SKIP inductor takes minutes on a small CPU (GPU_CHECK_COMPILE=1 runs it)"
    mfeat = {"name": "mfeat", "batch_size": 60, "eval_batch_size": 60}  # few distinct shapes: fewer compiles
    spec = {"name": "lfm-lb", "every": 1}
    model = {"hidden": [64], "feature_dim": 32}
    eager = trainer(spec, data=mfeat, model=model, precision="bf16").fit()
    t0 = time.perf_counter()
    compiled = trainer(spec, data=mfeat, model=model, precision="bf16", compile=True).fit()
    finite(compiled)
    assert abs(compiled["alpha_final"] - eager["alpha_final"]) <= 5e-2 * abs(eager["alpha_final"]) + 1e-5, \
        (compiled["alpha_final"], eager["alpha_final"])
    return (f"bf16, alpha {compiled['alpha_final']:.5f} (eager {eager['alpha_final']:.5f}); "
            f"run incl. compilation {time.perf_counter() - t0:.0f} s")


failed = results.count("FAIL")
print(f"python checks: {results.count('PASS')} passed, {failed} failed, {results.count('SKIP')} skipped")
sys.exit(1 if failed else 0)
PYEOF
rc=$?
if [ $rc -eq 124 ]; then echo "FAIL python checks: timed out after $LIMIT s (the checks not listed above did not run)"; fi

bench_rc=0
if [ "$DEVICE" = "cpu" ]; then
  timeout 120 "$PY" benchmarks/gpu.py --cpu-dry-run; bench_rc=$?
else
  timeout 100 "$PY" benchmarks/gpu.py --quick; bench_rc=$?
fi
if [ $bench_rc -eq 0 ]; then echo "PASS benchmark (benchmarks/gpu.py)"; else echo "FAIL benchmark (benchmarks/gpu.py, exit $bench_rc)"; fi

echo "gpu_check: $(( $(date +%s) - started )) s in all"
if [ $rc -ne 0 ] || [ $bench_rc -ne 0 ]; then echo "gpu_check: FAIL"; exit 1; fi
echo "gpu_check: PASS"
