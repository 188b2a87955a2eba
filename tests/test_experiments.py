"""Sweeps and reports: interrupted sweeps resume without rerunning, statistics match an independent computation."""

from __future__ import annotations

import csv
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from nsrep.cli import main
from nsrep.experiments import (
    build_report,
    collect_results,
    load_spec,
    mean_std,
    paired_difference,
    pairwise_differences,
    parse_shard,
    publish_sweep,
    run_sweep,
)
from nsrep.experiments.publish import PUBLISHED_RUN_FILES
from nsrep.storage.folders import RunFolder
from nsrep.train.trainer import train

RECIPE = """
data: synthetic
arch: resnet18
width_mult: 0.125
family: acnet
epochs: 2
batch_size: 32
eval_batch_size: 64
lr: 0.02
warmup_epochs: 0.5
workers: 0
progress: false
"""

SPEC = """
name: tiny
description: two connectivities x two seeds on synthetic data
recipe: tiny-recipe.yaml
methods:
  - {connectivity: block}
  - {connectivity: ns}
seeds: [0, 1]
report:
  rows: [connectivity]
  reference: {connectivity: block}
"""


def write_spec(folder: Path, text: str = SPEC) -> Path:
    (folder / "tiny-recipe.yaml").write_text(RECIPE)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny sweep, interrupted twice (a run-count limit, a run stopped mid-training), then resumed."""
    root = tmp_path_factory.mktemp("sweep")
    spec_path = write_spec(root)
    out = root / "out"
    first = run_sweep(spec_path, out, max_runs=1, progress=False)
    assert len(first.trained) == 1 and len(first.remaining) == 3
    assert len(read_csv(out / "results.csv")) == 1
    stamps = {first.trained[0]: (out / "runs" / first.trained[0] / RunFolder.SUMMARY).stat().st_mtime_ns}
    # a run killed after its first epoch: the sweep must resume it, not restart it
    plans = load_spec(spec_path).plans()
    partial = plans[1]
    train(partial.config, out / "runs" / partial.name, stop_after=1)
    second = run_sweep(spec_path, out, progress=False)
    assert second.skipped == first.trained and len(second.trained) == 3 and not second.remaining
    third = run_sweep(spec_path, out, progress=False)
    assert not third.trained and len(third.skipped) == 4
    return out, {"stamps": stamps, "partial": partial.name}


def test_an_interrupted_sweep_resumes_without_rerunning_finished_runs(finished_sweep):
    out, info = finished_sweep
    for name, stamp in info["stamps"].items():  # the first run was never trained again
        assert (out / "runs" / name / RunFolder.SUMMARY).stat().st_mtime_ns == stamp
    metrics = (out / "runs" / info["partial"] / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # epoch 1 from the interrupted invocation, epoch 2 from the resumed one
    rows = read_csv(out / "results.csv")
    assert sorted((r["connectivity"], r["seed"]) for r in rows) == [
        ("block", "0"),
        ("block", "1"),
        ("ns", "0"),
        ("ns", "1"),
    ]
    assert all(float(r["top1"]) == pytest.approx(float(r["top1_train_form"])) for r in rows)


def test_report_statistics_match_an_independent_computation(finished_sweep):
    out, _ = finished_sweep
    rows = read_csv(out / "results.csv")
    acc = {(r["connectivity"], int(r["seed"])): float(r["top1"]) for r in rows}
    report = build_report(out)
    for connectivity in ("block", "ns"):
        values = [acc[(connectivity, s)] for s in (0, 1)]
        expected = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=2)"
        assert expected in report.markdown
    diffs = np.array([acc[("ns", s)] - acc[("block", s)] for s in (0, 1)])
    half = stats.t.ppf(0.975, 1) * diffs.std(ddof=1) / math.sqrt(2)
    assert f"{diffs.mean():+.2f} [{diffs.mean() - half:+.2f}, {diffs.mean() + half:+.2f}] (n=2)" in report.markdown
    assert {p.name for p in report.files} == {
        "report.md",
        "accuracy.png",
        "learning_curves.png",
        "accuracy_vs_cost.png",
        "step_losses.png",
    }
    assert "train s" in report.markdown
    assert "Every pair" not in report.markdown
    pairs = build_report(out, pairs=True, plots=False).markdown
    assert "Every pair of rows" in pairs
    assert f"| connectivity=ns − connectivity=block | {diffs.mean():+.2f} [" in pairs
    assert f"| {diffs.std(ddof=1):.2f} | ±{half:.2f} |" in pairs
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "s / epoch" in report.markdown and "peak MiB" in report.markdown


def test_mean_std_and_paired_difference_by_hand():
    cell = mean_std([1.0, 2.0, 4.0])
    assert (cell.mean, cell.n) == (pytest.approx(7 / 3), 3)
    assert cell.std == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert math.isnan(mean_std([5.0]).std) and str(mean_std([5.0])) == "5.00 (n=1)"
    d = paired_difference({0: 3.0, 1: 5.0, 2: 4.0, 9: 100.0}, {0: 1.0, 1: 2.0, 2: 2.0})  # seed 9 unpaired
    diffs = [2.0, 3.0, 2.0]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert (d.mean, d.low, d.high, d.n) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half, 3))
    assert d.significant
    assert not paired_difference({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}).significant
    with pytest.raises(ValueError, match="no seed is shared"):
        paired_difference({0: 1.0}, {1: 1.0})
    assert d.std == pytest.approx(statistics.stdev(diffs)) and d.half_width == pytest.approx(half)
    assert math.isnan(paired_difference({0: 2.0}, {0: 1.0}).std)


def test_every_pair_is_later_minus_earlier_and_pairs_only_shared_seeds():
    rows = {"plain": {0: 50.0, 1: 52.0, 2: 51.0}, "block": {0: 51.0, 1: 54.0, 2: 51.5}, "ns": {1: 55.0, 2: 53.0}}
    pairs = pairwise_differences(rows)
    assert [(a, b) for a, b, _ in pairs] == [("block", "plain"), ("ns", "plain"), ("ns", "block")]
    for later, earlier, d in pairs:
        seeds = sorted(set(rows[later]) & set(rows[earlier]))
        diffs = [rows[later][s] - rows[earlier][s] for s in seeds]
        assert (d.mean, d.std, d.n) == pytest.approx((statistics.fmean(diffs), statistics.stdev(diffs), len(seeds)))
    assert pairwise_differences({"a": {0: 1.0}, "b": {1: 2.0}}) == []  # no shared seed: no pair


def test_shards_partition_the_runs(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    names = [p.name for p in spec.plans()]
    shard0 = [n for i, n in enumerate(names) if i % 2 == 0]
    assert parse_shard("0/2") == (0, 2) and parse_shard(None) == (0, 1)
    assert set(shard0).isdisjoint(n for i, n in enumerate(names) if i % 2 == 1)
    for bad in ("2/2", "a/b", "3", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds repeat"),
        (("seeds: [0, 1]", "seeds: []"), "non-empty list of integers"),
        (
            ("  rows: [connectivity]", "  rows: [connectivity]\n  columns: [family]"),
            "report key 'family' is not varied",
        ),
        (("  rows: [connectivity]", "  rows: [seed]"), "reference keys .* must be row keys"),
        (("name: tiny", "name: tiny\ngrids: {}"), r"unknown keys \['grids'\]"),
        (("{connectivity: ns}", "{connectivity: nss}"), "unknown connectivity 'nss'"),
        (("{connectivity: ns}", "{conectivity: ns}"), "Did you mean 'connectivity'"),
    ],
)
def test_bad_specs_fail_before_any_run(tmp_path, change, message):
    path = write_spec(tmp_path, SPEC.replace(*change))
    with pytest.raises(ValueError, match=message):
        run_sweep(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_sweep_folder_refuses_another_spec(finished_sweep, tmp_path):
    out, _ = finished_sweep
    other = write_spec(tmp_path, SPEC.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    with pytest.raises(ValueError, match="holds a different sweep"):
        run_sweep(other, out, progress=False)


def test_sweep_and_report_commands(finished_sweep, capsys):
    out, _ = finished_sweep
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "# tiny" in text and "Difference to **connectivity=block**" in text
    assert main(["report", str(out), "--reference", "connectivity=ns"]) == 0
    assert "Difference to **connectivity=ns**" in capsys.readouterr().out
    assert main(["report", str(out), "--pairs"]) == 0
    assert "connectivity=ns − connectivity=block" in capsys.readouterr().out
    assert main(["report", str(out), "--reference", "family=dbb"]) == 2
    assert "not row keys" in capsys.readouterr().err
    assert main(["report", str(out.parent)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_shipped_specs_are_valid():
    folder = Path(__file__).resolve().parents[1] / "experiments"
    specs = sorted(folder.glob("*.yaml"))
    assert {p.stem for p in specs} >= {"table1", "table3", "table7", "table8", "table1-cpu", "table3-cpu"}
    for path in specs:
        spec = load_spec(path)
        assert spec.plans() and len(spec.seeds) >= 3
        if "-cpu" in path.stem:  # CPU-scale studies run on the CPU recipes, and say that they are
            assert spec.recipe in ("demo", "cifar10-cpu"), path
            assert "CPU-scale" in spec.description or "two CPU cores" in spec.description, path


def test_only_selects_the_runs_whose_values_match(tmp_path):
    # A staged study runs its cheap pilot (one method) before the rest of the same spec, in the same folder.
    from nsrep.experiments import parse_only, select_plans

    spec = load_spec(write_spec(tmp_path))
    picked = select_plans(spec, parse_only("connectivity=ns"))
    assert [p.name for p in picked] == ["connectivity=ns,seed=0", "connectivity=ns,seed=1"]
    assert [p.name for p in select_plans(spec, parse_only("connectivity=ns,seed=1"))] == ["connectivity=ns,seed=1"]
    assert len(select_plans(spec, parse_only(None))) == 4
    with pytest.raises(ValueError, match=r"--only connectivity=naive matches no run; connectivity takes: block, ns"):
        select_plans(spec, parse_only("connectivity=naive"))
    with pytest.raises(ValueError, match=r"--only key 'family' is not varied by the sweep; varied: connectivity"):
        select_plans(spec, parse_only("family=dbb"))
    with pytest.raises(ValueError, match=r"--only must look like KEY=VALUE\[,KEY=VALUE\]"):
        parse_only("connectivity")


def test_publish_copies_the_text_results_and_the_published_folder_reports_the_same(finished_sweep, tmp_path):
    out, _ = finished_sweep
    dest = tmp_path / "published"
    written = publish_sweep(out, dest)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert sorted(p.name for p in (dest / "runs").iterdir()) == runs
    for run in runs:  # text files only: no checkpoint, no deploy folder
        assert sorted(p.name for p in (dest / "runs" / run).iterdir()) == sorted(PUBLISHED_RUN_FILES)
        for name in PUBLISHED_RUN_FILES:
            assert (dest / "runs" / run / name).read_bytes() == (out / "runs" / run / name).read_bytes()
    assert (dest / "results.csv").read_text() == (out / "results.csv").read_text()
    assert (dest / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()
    assert set(written) >= {dest / "spec.yaml", dest / "results.csv"}
    assert build_report(dest, plots=False).markdown == build_report(out, plots=False).markdown


def test_publish_keeps_runs_an_earlier_machine_published(finished_sweep, tmp_path):
    out, _ = finished_sweep
    dest = tmp_path / "published"
    publish_sweep(out, dest)
    # a later machine: the same sweep with one run not (yet) trained there
    later = tmp_path / "later"
    shutil.copytree(out, later)
    gone = sorted((later / "runs").iterdir())[0]
    shutil.rmtree(gone)
    collect_results(load_spec(later / "spec.yaml"), later)
    assert len(read_csv(later / "results.csv")) == 3
    publish_sweep(later, dest)
    assert read_csv(dest / "results.csv") == read_csv(out / "results.csv")  # all four, in plan order
    assert (dest / "runs" / gone.name / "summary.json").is_file()


@pytest.mark.parametrize("case", ["file", "other sweep", "foreign folder", "itself"])
def test_publish_refuses_a_destination_it_would_spoil(finished_sweep, tmp_path, case):
    out, _ = finished_sweep
    dest = tmp_path / "dest"
    if case == "file":
        dest.write_text("notes")
        message = "is a file"
    elif case == "other sweep":
        dest.mkdir()
        (dest / "spec.yaml").write_text(SPEC.replace("name: tiny", "name: other"))
        message = "holds the results of sweep 'other', not of 'tiny'"
    elif case == "foreign folder":
        dest.mkdir()
        (dest / "thesis.tex").write_text("\\begin{document}")
        message = "not empty and holds no published sweep"
    else:
        dest = out
        message = "the sweep folder itself"
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} if dest.is_dir() else dest.read_bytes()
    with pytest.raises(ValueError, match=message):
        publish_sweep(out, dest)
    after = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} if dest.is_dir() else dest.read_bytes()
    assert after == before


def test_report_publish_command(finished_sweep, tmp_path, capsys):
    out, _ = finished_sweep
    dest = tmp_path / "docs" / "tiny"
    assert main(["report", str(out), "--publish", str(dest)]) == 0
    text = capsys.readouterr().out
    assert f"published 15 files to {dest}" in text  # spec, recipe, 4 runs x 3, results and "# tiny" in text
    assert (dest / "report.md").is_file() and (dest / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(dest.rglob("*.pt"))


def test_training_seconds_are_medians_so_a_disturbed_epoch_or_seed_does_not_dominate():
    from nsrep.experiments.report import _run_seconds

    metrics = {  # seed 1: another job on the machine for one epoch
        f"seed={seed}": [{"epoch": e, "epoch_seconds": s} for e, s in enumerate(seconds)]
        for seed, seconds in enumerate([[2.0, 2.0, 2.0, 2.0], [2.0, 2.1, 900.0, 2.0]])
    }
    rows = [{"run": f"seed={s}", "epochs": 4, "epoch_seconds": 0.0} for s in (0, 1)]
    assert _run_seconds(metrics, rows[0]) == pytest.approx(8.0)
    assert _run_seconds(metrics, rows[1]) == pytest.approx(8.2)  # median epoch 2.05, not the mean 226.5


def test_publish_takes_an_amended_spec_of_the_same_sweep(finished_sweep, tmp_path):
    """A study amended after its pilot (a method added) publishes into the folder of its earlier stages."""
    out, _ = finished_sweep
    dest = tmp_path / "published"
    publish_sweep(out, dest)
    (dest / "spec.yaml").write_text(SPEC.replace("seeds: [0, 1]", "seeds: [0]"))  # as published before the change
    publish_sweep(out, dest)
    assert yaml.safe_load((dest / "spec.yaml").read_text()) == yaml.safe_load((out / "spec.yaml").read_text())
    assert read_csv(dest / "results.csv") == read_csv(out / "results.csv")


def test_published_run_files_are_not_ignored_by_git():
    """A published folder is meant to be committed: .gitignore's ``runs/`` (run folders hold weights) must not
    swallow the ``runs/`` inside docs/results/<sweep>/."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    published = "docs/results/some-sweep/runs/seed=0/summary.json"
    assert subprocess.run(["git", "check-ignore", "-q", published], cwd=repo).returncode == 1
    assert (
        subprocess.run(["git", "check-ignore", "-q", "runs/some-sweep/runs/seed=0/checkpoint.pt"], cwd=repo).returncode
        == 0
    )


def test_row_labels_leave_out_keys_a_method_does_not_set():
    from nsrep.experiments.report import _label

    keys = ["family", "num_branches", "epochs"]
    assert _label({"family": "plain", "num_branches": None, "epochs": 200}, keys, "all") == "family=plain, epochs=200"
    assert _label({"family": "convK", "num_branches": 2, "epochs": 200}, keys, "all") == (
        "family=convK, num_branches=2, epochs=200"
    )
    assert _label({"family": None}, ["family"], "all runs") == "all runs"
