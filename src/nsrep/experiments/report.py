"""``nsrep report``: a sweep's results as the paper's tables, with honest statistics, and plots.

Cells are ``mean ± std (n=seeds)`` of the deployed network's test top-1 (the sample standard deviation,
ddof 1). Differences to the reference row are paired by seed within each column: the mean of the per-seed
differences with a 95% confidence interval from Student's t with n-1 degrees of freedom. A difference whose
interval contains 0 is within the noise of these seeds. With ``pairs``, every two rows are compared the same way
(later minus earlier, in the spec's order), with the std of the per-seed differences (sigma_d) that sizes a study.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsrep.experiments.sweep import read_results, run_metrics, stored_spec
from nsrep.fileio import atomic_write
from nsrep.plotting import pyplot, save_png
from nsrep.report import markdown_table
from nsrep.stats import Cell, Difference, mean_std, paired_difference, pairwise_differences

__all__ = [
    "Cell",
    "Difference",
    "SweepReport",
    "build_report",
    "mean_std",
    "paired_difference",
    "pairwise_differences",
]

REPORT_FILE = "report.md"

RunMetrics = Mapping[str, Sequence[Mapping[str, Any]]]  # a run's name -> its per-epoch records (metrics.jsonl)


def _label(row: Mapping[str, Any], keys: Sequence[str], default: str) -> str:
    # a key the method leaves unset (None, e.g. num_branches of plain) says nothing: leaving it out cannot merge
    # two rows, since any other value still shows
    return ", ".join(f"{k}={row[k]}" for k in keys if row[k] is not None) or default


@dataclass(frozen=True)
class SweepReport:
    """The report's markdown and the files written next to it."""

    markdown: str
    files: list[Path]


def build_report(
    sweep_dir: str | os.PathLike,
    *,
    reference: Mapping[str, Any] | None = None,
    pairs: bool = False,
    plots: bool = True,
) -> SweepReport:
    """Tables (accuracy, differences to the reference, every pair's difference if ``pairs``, training cost)
    and plots of a sweep folder."""
    sweep = Path(sweep_dir)
    spec = stored_spec(sweep)
    results = read_results(sweep)
    if not results:
        raise ValueError(f"{str(sweep)!r} has no finished run yet")
    metrics = {r["run"]: run_metrics(sweep, r["run"]) for r in results}  # read once: the tables and plots share them
    rows_keys, col_keys = spec.report.rows, spec.report.columns
    reference = dict(spec.report.reference if reference is None else reference)
    unknown = set(reference) - set(rows_keys)
    if unknown:
        raise ValueError(f"reference keys {sorted(unknown)} are not row keys; row keys: {', '.join(rows_keys)}")
    row_values = {_label(r, rows_keys, "all runs"): {k: r[k] for k in rows_keys} for r in results}
    row_labels = list(row_values)
    col_labels = list(dict.fromkeys(_label(r, col_keys, "top-1 (%)") for r in results))
    by_cell: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in results:
        by_cell.setdefault((_label(r, rows_keys, "all runs"), _label(r, col_keys, "top-1 (%)")), {})[r["seed"]] = r
    top1 = {cell: {seed: r["top1"] for seed, r in runs.items()} for cell, runs in by_cell.items()}  # seed -> top-1

    lines = [f"# {spec.name}", "", spec.description.strip(), ""] if spec.description else [f"# {spec.name}", ""]
    lines += [f"Test top-1 (%) of the deployed networks, mean ± std over seeds; {len(results)} finished runs.", ""]
    header = ("method", *col_labels)
    body = []
    for row in row_labels:
        cells = []
        for col in col_labels:
            values = top1.get((row, col), {})
            cells.append(str(mean_std(list(values.values()))) if values else "–")
        body.append((row, *cells))
    lines += markdown_table(header, body)

    ref_label = None
    if reference:
        matches = [lbl for lbl in row_labels if all(str(row_values[lbl][k]) == str(v) for k, v in reference.items())]
        if len(matches) != 1:
            raise ValueError(f"reference {reference} matches {len(matches)} rows; rows: {'; '.join(row_labels)}")
        ref_label = matches[0]
        lines += ["", f"Difference to **{ref_label}**, paired by seed: mean [95% CI] (n); * = interval excludes 0.", ""]
        body = []
        for row in row_labels:
            if row == ref_label:
                continue
            cells = []
            for col in col_labels:
                values, ref_values = top1.get((row, col), {}), top1.get((ref_label, col), {})
                if set(values) & set(ref_values):
                    cells.append(str(paired_difference(values, ref_values)))
                else:
                    cells.append("–")
            body.append((row, *cells))
        lines += markdown_table(("method", *col_labels), body)

    if pairs:
        lines += [
            "",
            "Every pair of rows, later minus earlier in the spec's order, paired by seed: mean [95% CI] (n), * = "
            "interval excludes 0; σ_d = std of the per-seed differences; ± = the interval's half-width.",
            "",
        ]
        body = []
        for col in col_labels:
            column = {row: top1[(row, col)] for row in row_labels if (row, col) in top1}
            for later, earlier, diff in pairwise_differences(column):
                place = (f"{later} − {earlier}", col) if col_keys else (f"{later} − {earlier}",)
                spread = ("–", "–") if diff.n < 2 else (f"{diff.std:.2f}", f"±{diff.half_width:.2f}")
                body.append((*place, str(diff), *spread))
        place_header = ("difference", ", ".join(col_keys)) if col_keys else ("difference",)
        lines += markdown_table((*place_header, "mean [95% CI] (n)", "σ_d", "±"), body)

    lines += [
        "",
        "Training cost: wall seconds per epoch (the median over every epoch of every seed) and per run (each run's "
        "median epoch times its epochs, the median over seeds): medians, because runs that shared the machine "
        "with other jobs would pull a mean up. Peak memory (mean over seeds), parameters.",
        "",
    ]
    body = []
    for row in row_labels:
        for col in col_labels:
            runs = list(by_cell.get((row, col), {}).values())
            if not runs:
                continue
            place = (row, col) if col_keys else (row,)
            body.append(
                (
                    *place,
                    f"{statistics.median(s for r in runs for s in _epoch_seconds(metrics, r)):.2f}",
                    f"{statistics.median(_run_seconds(metrics, r) for r in runs):.0f}",
                    f"{statistics.fmean(r['peak_memory_mib'] for r in runs):.0f}",
                    f"{runs[0]['train_params']:,}",
                    f"{runs[0]['deploy_params']:,}",
                )
            )
    place_header = ("method", ", ".join(col_keys)) if col_keys else ("method",)
    cost_header = ("s / epoch", "train s", "peak MiB", "training params", "deployed params")
    lines += markdown_table((*place_header, *cost_header), body)
    markdown = "\n".join(lines) + "\n"
    files = [atomic_write(sweep / REPORT_FILE, lambda f: f.write(markdown.encode()))]
    if plots:
        files.append(_accuracy_plot(by_cell, row_labels, col_labels, col_keys, sweep / "accuracy.png"))
        files.append(_curves_plot(metrics, by_cell, row_labels, col_labels, sweep / "learning_curves.png"))
        files.append(_cost_plot(metrics, by_cell, row_labels, col_labels, sweep / "accuracy_vs_cost.png"))
        if any(m.get("step_losses") for records in metrics.values() for m in records):
            files.append(_step_loss_plot(metrics, by_cell, row_labels, col_labels, sweep / "step_losses.png"))
    return SweepReport(markdown, files)


def _accuracy_plot(
    by_cell: Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]],
    rows: Sequence[str],
    cols: Sequence[str],
    col_keys: Sequence[str],
    path: Path,
) -> Path:
    """Mean ± std of top-1 per column (branch count, backbone, ...), one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) + 3), 4.4), constrained_layout=True)
    for i, row in enumerate(rows):
        xs, means, stds = [], [], []
        for j, col in enumerate(cols):
            runs = by_cell.get((row, col), {})
            if runs:
                cell = mean_std([r["top1"] for r in runs.values()])
                xs.append(j + (i - (len(rows) - 1) / 2) * 0.06)
                means.append(cell.mean)
                stds.append(0.0 if math.isnan(cell.std) else cell.std)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=row)
    ax.set_xticks(range(len(cols)), [c.split("=", 1)[-1] if len(col_keys) == 1 else c for c in cols])
    ax.set(xlabel=", ".join(col_keys) or "", ylabel="test top-1 (%)", title="Accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _curves_plot(
    metrics: RunMetrics,
    by_cell: Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
) -> Path:
    """Test top-1 per epoch (mean over seeds), one panel per column, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols) + 1, 3.8), squeeze=False, constrained_layout=True)
    for j, col in enumerate(cols):
        ax = axes[0][j]
        for i, row in enumerate(rows):
            runs = by_cell.get((row, col), {})
            # {epoch: top-1} of the scored epochs (runs with eval_every > 1 score some epochs only)
            curves = [
                {m["epoch"]: m["test_top1"] for m in metrics[r["run"]] if "test_top1" in m} for r in runs.values()
            ]
            if not curves:
                continue
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            cells = [mean_std([c[e] for c in curves]) for e in epochs]
            ax.plot(epochs, [c.mean for c in cells], color=f"C{i}", label=f"{row} (n={len(curves)})")
            if len(curves) > 1:  # the seeds' spread: where two curves' bands overlap, the seeds do not separate them
                low, high = [c.mean - c.std for c in cells], [c.mean + c.std for c in cells]
                ax.fill_between(epochs, low, high, color=f"C{i}", alpha=0.12, linewidth=0)
        ax.set(xlabel="epoch", ylabel="test top-1 (%): mean over seeds, band ± std", title=col)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    return save_png(fig, path)


def _epoch_seconds(metrics: RunMetrics, run: Mapping[str, Any]) -> list[float]:
    """Wall seconds of each epoch of a run (its results row's mean, once per epoch, where metrics lack them)."""
    seconds = [m["epoch_seconds"] for m in metrics[run["run"]] if "epoch_seconds" in m]
    return seconds or [run["epoch_seconds"]] * run["epochs"]


def _run_seconds(metrics: RunMetrics, run: Mapping[str, Any]) -> float:
    """A run's training seconds as its median epoch times its epochs: an epoch slowed by another job on the
    machine does not count more than a quiet one."""
    return statistics.median(_epoch_seconds(metrics, run)) * run["epochs"]


def _cost_plot(
    metrics: RunMetrics,
    by_cell: Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
) -> Path:
    """Top-1 (mean ± std over seeds) against training seconds (each run's median epoch × epochs; the median
    over seeds, the bar from the fastest to the slowest seed): one point per method and column."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            runs = list(by_cell.get((row, col), {}).values())
            if not runs:
                continue
            seconds = [_run_seconds(metrics, r) for r in runs]
            middle = statistics.median(seconds)
            top1 = mean_std([r["top1"] for r in runs])
            label = row if len(cols) == 1 else f"{row}, {col}"
            ax.errorbar(
                middle,
                top1.mean,
                xerr=[[middle - min(seconds)], [max(seconds) - middle]],
                yerr=0.0 if math.isnan(top1.std) else top1.std,
                marker="os^vD<>"[j % 7],
                color=f"C{i % 10}",
                capsize=3,
                label=label,
            )
    ax.set(
        xscale="log",
        xlabel="training time (s, log scale): median epoch × epochs; median and range over seeds",
        ylabel="test top-1 (%), mean ± std over seeds",
    )
    ax.set_title("Accuracy against training time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


def _step_loss_plot(
    metrics: RunMetrics,
    by_cell: Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
) -> Path:
    """Training loss of every optimiser step (each seed a thin line), one panel per method: spikes show here."""
    plt = pyplot()
    cells = [(row, col) for row in rows for col in cols if by_cell.get((row, col))]
    per_row = min(4, len(cells))
    n_rows = math.ceil(len(cells) / per_row)
    fig, axes = plt.subplots(
        n_rows, per_row, figsize=(4.2 * per_row, 3.0 * n_rows), squeeze=False, sharey=True, constrained_layout=True
    )
    for k, (row, col) in enumerate(cells):
        ax = axes[k // per_row][k % per_row]
        for seed, run in sorted(by_cell[(row, col)].items()):
            losses = [v for m in metrics[run["run"]] for v in m.get("step_losses", [])]
            ax.plot(range(1, len(losses) + 1), losses, lw=0.6, label=f"seed {seed}")
        ax.set_title(row if len(cols) == 1 else f"{row}, {col}", fontsize=8)
        ax.set(xlabel="optimiser step", ylabel="training loss")
        ax.grid(alpha=0.3)
    for k in range(len(cells), n_rows * per_row):
        axes[k // per_row][k % per_row].axis("off")
    axes[0][0].legend(fontsize=7)
    return save_png(fig, path)
