"""`modgap report`: every plotted series is the recorded one, read back from the figures; the HTML is
self-contained; the modality-gap picture, per-class bars and bench bars agree with the summaries."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from modgap.cli import main
from modgap.report import plots
from modgap.report.build import run_info
from modgap.report.tables import aggregate, read_summaries
from modgap.runs import read_scalars
from modgap.train.metrics import modality_gap

from conftest import NO_PROBE, TINY

def _train(out: Path, *extra: str, epochs: int = 3) -> dict:
    assert main(["train", "--epochs", str(epochs), "--out", str(out), *TINY, *NO_PROBE, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def lfm_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "lfm"
    _train(run, "--method", "lfm-lb", "--set", "method.lr_alpha=200", "--set", "method.every=1")
    return run


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """A bench folder as `modgap bench` leaves it (run folders with cell.json), trained in-process."""
    root = tmp_path_factory.mktemp("bench")
    for method, seed in (("joint", 0), ("joint", 1), ("lfm-lb", 0), ("lfm-lb", 1)):
        out = root / f"mfeat-pix+fou__{method}__s{seed}"
        _train(out, "--data", "mfeat:pix+fou", "--method", method, "--seed", str(seed), epochs=2)
        (out / "cell.json").write_text(json.dumps({"data_label": "mfeat:pix+fou", "method_label": method, "seed": seed}))
    return root


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def recorded(records: list[dict], path: str) -> list[float]:
    out = []
    for r in records:
        v = r
        for part in path.split("/"):
            v = v.get(part) if isinstance(v, dict) else None
        out.append(math.nan if v is None else float(v))
    return out


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


def data_lines(fig) -> dict[str, object]:
    """Lines that plot a recorded series, by gid (reference lines and the best-epoch marker excluded)."""
    lines = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            gid = line.get_gid()
            if gid and gid not in ("best_epoch", "reference"):
                assert gid not in lines, f"two lines plot {gid}"
                lines[gid] = line
    return lines


# ------------------------------------------------------------------------------- run figures
def test_learning_curves_plot_exactly_the_recorded_series(lfm_run):
    records = read_records(lfm_run)
    summary = json.loads((lfm_run / "summary.json").read_text())
    fig = plots.learning_curves(records, ["pix", "fou"], summary["best_epoch"])
    lines = data_lines(fig)
    expected = {f"train/{k}" for k in records[0]["train"]}
    expected |= {f"{s}/{n}/acc" for s in ("val", "test") for n in ("fused", "pix", "fou")}
    assert set(lines) == expected
    epochs = [r["epoch"] for r in records]
    for gid, line in lines.items():
        assert_same(line.get_xdata(), epochs)
        assert_same(line.get_ydata(), recorded(records, gid))
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None


def test_balance_curves_plot_imbalance_grad_norms_discrepancy_and_gap(lfm_run):
    records = read_records(lfm_run)
    fig = plots.balance_curves(records, ["pix", "fou"])
    lines = data_lines(fig)
    assert set(lines) == {"imbalance_val", "diagnostics/grad_norm/pix", "diagnostics/grad_norm/fou",
                          "diagnostics/discrepancy", "diagnostics/gap_val/logits/pix-fou/centroid"}
    for gid, line in lines.items():
        assert_same(line.get_xdata(), [r["epoch"] for r in records])
        values = recorded(records, gid)
        assert all(math.isfinite(v) for v in values), gid  # recorded every epoch
        assert_same(line.get_ydata(), values)


def test_alpha_plot_is_progress_against_alpha_of_alpha_csv(lfm_run):
    with (lfm_run / "alpha.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["alpha"] for r in rows}) > 1  # alpha moved: the test is not trivially passing
    fig = plots.alpha_curves([("lfm-lb / mfeat / s0", plots.read_alpha_csv(lfm_run / "alpha.csv"))])
    (line,) = data_lines(fig).values()
    assert line.get_gid() == "alpha.csv"
    assert_same(line.get_xdata(), [float(r["progress"]) for r in rows])
    assert_same(line.get_ydata(), [float(r["alpha"]) for r in rows])
    ax = fig.axes[0]
    assert "progress" in ax.get_xlabel() and "alpha" in ax.get_ylabel()


def test_a_methods_own_values_are_plotted_from_scalars_csv(tmp_path):
    run = tmp_path / "ogm"
    _train(run, "--method", "lfm-lb+ogm-ge", "--set", "method.alpha=0.5", epochs=2)
    series = read_scalars(run)
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--no-model"]) == 0
    side = json.loads(plots.sidecar_path(tmp_path / "rep" / "scalars.png").read_text())
    lines = {line["gid"]: line for ax in side["axes"] for line in ax["lines"]}
    assert set(lines) == {"scalars.csv::k/pix", "scalars.csv::k/fou"}  # alpha has its own figure
    for gid, line in lines.items():
        name = gid.split("::", 1)[1]
        assert_same(line["x"], series[name]["progress"])
        assert_same(line["y"], series[name]["value"])
    assert (tmp_path / "rep" / "alpha.png").exists()


def test_identical_features_have_zero_gap_and_the_picture_says_so():
    x = np.random.default_rng(0).normal(size=(50, 6))
    gap = modality_gap({"a": x, "b": x.copy()})
    assert gap["a-b"] == {"centroid": 0.0, "paired": 0.0}
    fig = plots.gap_picture({"a": x, "b": x.copy()})
    assert "centroid gap 0.000" in fig.axes[0].get_title()
    assert fig.modgap_data["pairs"]["a-b"]["centroid"] == 0.0
    # and a shifted copy has a gap
    assert modality_gap({"a": x, "b": x + 3.0})["a-b"]["centroid"] > 0.1


# ------------------------------------------------------------------------------- the run report
def test_run_report_is_self_contained_and_its_figures_match_the_run(lfm_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(lfm_run), "--out", str(out), "--threads", "1"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    html = (out / "report.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} >= {"curves", "alpha", "balance", "gap", "per_class", "shapley"}
    # self-contained: no network, no file references, every image embedded
    assert "http://" not in html and "https://" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html and "<link" not in html
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {p.read_bytes() for p in pngs}
    # every PNG has its data beside it, and the curves there are the recorded ones
    records = read_records(lfm_run)
    for png in pngs:
        assert plots.sidecar_path(png).exists()
    side = json.loads(plots.sidecar_path(out / "curves.png").read_text())
    for ax in side["axes"]:
        for line in ax["lines"]:
            if line["gid"] not in ("best_epoch", "reference"):
                assert_same(line["y"], recorded(records, line["gid"]))

    summary = json.loads((lfm_run / "summary.json").read_text())
    # the gap picture is the best checkpoint on the test split: the summary's gap
    gap = json.loads(plots.sidecar_path(out / "gap.png").read_text())
    assert gap["data"]["pairs"]["pix-fou"]["centroid"] == pytest.approx(summary["gap"]["logits"]["pix-fou"]["centroid"], abs=1e-6)
    assert f"centroid gap {summary['gap']['logits']['pix-fou']['centroid']:.3f}" in gap["axes"][0]["title"]
    # per-class bars, weighted by class support, give the summary's test accuracies
    per_class = json.loads(plots.sidecar_path(out / "per_class.png").read_text())
    support = np.asarray(per_class["data"]["support"], dtype=float)
    bars = {b["label"]: np.asarray(b["height"], dtype=float) for b in per_class["axes"][0]["bars"]}
    assert set(bars) == {"fused", "pix", "fou"}
    for name, heights in bars.items():
        assert float((heights * support).sum() / support.sum()) == pytest.approx(summary["test"][name]["acc"], abs=1e-9)
    # Shapley: v(all) is the fused test accuracy
    shap = json.loads((out / "shapley.json").read_text())
    assert shap["full"]["acc"] == pytest.approx(summary["test"]["fused"]["acc"], abs=1e-9)
    assert sum(shap["shapley"]["acc"].values()) == pytest.approx(shap["full"]["acc"] - shap["empty"]["acc"], abs=1e-9)


def test_run_report_without_model_and_an_unfinished_run(lfm_run, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (partial / name).write_text((lfm_run / name).read_text())
    (partial / "metrics.jsonl").write_text("".join((lfm_run / "metrics.jsonl").read_text().splitlines(True)[:2]))
    out = tmp_path / "rep"
    assert main(["report", str(partial), "--out", str(out)]) == 0  # no checkpoint: a note, no failure
    html = (out / "report.html").read_text()
    assert "not finished" in html and "skipped" in html
    assert {p.stem for p in out.glob("*.png")} == {"curves", "balance"}


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------- a bench
def test_bench_report_bars_and_overlaid_alpha(bench_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(bench_dir), "--out", str(out), "--no-model"]) == 0
    html = (out / "report.html").read_text()
    assert "http://" not in html and all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', html))
    assert "<table>" in html and "joint" in html and "lfm-lb" in html
    agg = aggregate(read_summaries(bench_dir))
    fig = plots.bench_accuracy_figure(agg)
    ax = fig.axes[0]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if hasattr(c, "patches")}
    assert set(bars) == {"joint", "lfm-lb"}
    for method, heights in bars.items():
        assert heights == pytest.approx([agg["mfeat:pix+fou"][method]["acc"][0]])
        assert fig.modgap_data["methods"][method]["std"] == pytest.approx([agg["mfeat:pix+fou"][method]["acc"][1]])
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    fig = plots.bench_modality_figure(agg)
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers if hasattr(c, "patches")}
    assert bars["pix"] == pytest.approx([agg["mfeat:pix+fou"][m]["modalities"]["pix"][0] for m in ("joint", "lfm-lb")]) \
        or bars["pix"] == pytest.approx([agg["mfeat:pix+fou"][m]["modalities"]["pix"][0] for m in ("lfm-lb", "joint")])
    # alpha of every run with an alpha, one line each, labelled method / data / seed
    side = json.loads(plots.sidecar_path(out / "bench_alpha.png").read_text())
    lines = {line["label"]: line for line in side["axes"][0]["lines"]}
    assert set(lines) == {"lfm-lb / mfeat:pix+fou / s0", "lfm-lb / mfeat:pix+fou / s1"}
    for seed in (0, 1):
        run = bench_dir / f"mfeat-pix+fou__lfm-lb__s{seed}"
        with (run / "alpha.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        line = lines[run_info(run)["label"]]
        assert_same(line["x"], [float(r["progress"]) for r in rows])
        assert_same(line["y"], [float(r["alpha"]) for r in rows])
    # alpha by method: the mean of the seeds' alpha on a common progress grid, with the band
    side = json.loads(plots.sidecar_path(out / "bench_alpha_by_method.png").read_text())
    (line,) = side["axes"][0]["lines"]
    assert line["gid"] == "mfeat:pix+fou::lfm-lb" and line["label"] == "lfm-lb (2)"
    grid = np.asarray(line["x"])
    curves = []
    for seed in (0, 1):
        cols = plots.read_alpha_csv(bench_dir / f"mfeat-pix+fou__lfm-lb__s{seed}" / "alpha.csv")
        curves.append(np.interp(grid, cols["progress"], cols["alpha"]))
    assert np.ptp(curves[0]) > 0 and not np.allclose(curves[0], curves[1])  # moved, and differently
    assert_same(line["y"], list((curves[0] + curves[1]) / 2))
    data = side["data"]["lines"]["mfeat:pix+fou::lfm-lb"]
    assert_same(data["low"], list(np.minimum(*curves))) and assert_same(data["high"], list(np.maximum(*curves)))
    # per-run curves overlaid: each is that run's metrics
    side = json.loads(plots.sidecar_path(out / "bench_curves.png").read_text())
    for ax in side["axes"]:
        for line in ax["lines"]:
            label, path = line["gid"].split("::")
            method, _, seed = label.split(" / ")
            records = read_records(bench_dir / f"mfeat-pix+fou__{method}__{seed}")
            assert_same(line["y"], recorded(records, path))


def test_still_improving_is_marked_on_the_run_page_and_in_the_runs_table(tmp_path):
    root = tmp_path / "bench"
    _train(root / "rising", "--method", "joint", "--set", "optim.lr=0.01", epochs=2)
    _train(root / "flat", "--method", "joint", "--set", "optim.lr=1e-12", epochs=3)  # every epoch ties
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--runs", "--no-model"]) == 0
    made = json.loads((out / "report.json").read_text())
    assert made["still_improving"] == {"flat": False, "rising": True}
    assert made["runs"]["rising"]["still_improving"] is True and made["runs"]["flat"]["still_improving"] is False
    html = (out / "report.html").read_text()
    # the runs table: a column, yes for the rising run and no for the flat one
    table = html[html.index("<th>still improving</th>") - 400:]
    table = table[: table.index("</table>")]
    rows = {name: row for row in table.split("<tr>") for name in ("rising", "flat") if f">{name}<" in row}
    assert ">yes<" in rows["rising"] and ">no<" in rows["flat"]
    # the rising run's own section says so, right under its learning curves; the flat one's does not
    note = ("Note: validation accuracy was still improving at the last epoch (best at epoch 1 of 2); more epochs "
            "may help (--epochs N).")
    assert html.count("was still improving") == 1

    def section(run: Path) -> str:
        start = html.index(f"Run {run} ")
        return html[start: html.find("<h2", start)]

    rising = section(root / "rising")
    assert note in rising
    assert rising.index("Learning curves</h3>") < rising.index(note) < rising.index("Alpha</h3>")
    assert "still improving" not in section(root / "flat")
