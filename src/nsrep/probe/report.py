"""The probe table (mean ± std over seeds, paper Table 4 layout), notes, plot and run CSV."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import asdict
from pathlib import Path

from nsrep.fileio import atomic_write
from nsrep.plotting import pyplot, save_png
from nsrep.probe.constants import AVERAGE
from nsrep.probe.training import ProbeResults, ProbeRun
from nsrep.report import format_table
from nsrep.stats import Cell, mean_std

# a table cell of the probe: the same mean ± sample std (n) as the sweep report's cells
Summary = Cell


def summarize(results: ProbeResults) -> dict[str, dict[str, Summary]]:
    """``{head: {dataset or "Avg.": Summary}}`` of the deployed heads' test top-1 over seeds.

    "Avg." averages the data sets within each seed first, then summarises those per-seed averages, so its
    spread is the seed-to-seed spread of the average (not a mix of data-set differences).
    """
    table: dict[str, dict[str, Summary]] = {}
    for head in results.heads:
        acc = {(r.dataset, r.seed): r.deployed_top1 for r in results.runs if r.head == head}
        row = {d: mean_std([acc[d, s] for s in results.seeds]) for d in results.datasets}
        per_seed = [statistics.fmean(acc[d, s] for d in results.datasets) for s in results.seeds]
        row[AVERAGE] = mean_std(per_seed)
        table[head] = row
    return table


def format_probe_table(results: ProbeResults) -> str:
    """Markdown: one row per head, one column per data set plus "Avg.", cells "mean ± std (n=seeds)"."""
    summary = summarize(results)
    header = ("head", *results.datasets, AVERAGE)
    rows = [(head, *(str(summary[head][c]) for c in header[1:])) for head in results.heads]
    return format_table(header, rows)


def probe_notes(results: ProbeResults) -> list[str]:
    """What a reader should know beyond the table: does every fold agree with its training form?"""
    disagreeing = [r for r in results.runs if r.disagreements or r.train_form_top1 != r.deployed_top1]
    worst = max(r.max_rel_logit_diff for r in results.runs)
    if not disagreeing:
        return [
            f"training and deployed forms agree on every test prediction in all {len(results.runs)} runs "
            f"(max relative logit difference {worst:.1e})"
        ]
    return [
        f"WARNING: {r.dataset} / {r.head} / seed {r.seed}: the deployed head disagrees with its training form on "
        f"{r.disagreements} test samples (top-1 {r.train_form_top1:.2f} vs {r.deployed_top1:.2f}, max relative "
        f"logit difference {r.max_rel_logit_diff:.1e})"
        for r in disagreeing
    ]


def plot_probe(results: ProbeResults, path: str | os.PathLike) -> Path:
    """Grouped bar chart (PNG): mean test top-1 per data set and head, error bars one std over seeds."""
    plt = pyplot()
    summary = summarize(results)
    columns = [*results.datasets, AVERAGE]
    width = 0.8 / len(results.heads)
    fig, ax = plt.subplots(figsize=(2.8 + 1.3 * len(columns) * max(1, len(results.heads) / 3), 4), layout="constrained")
    lows = []
    for i, head in enumerate(results.heads):
        means = [summary[head][c].mean for c in columns]
        stds = [0.0 if math.isnan(summary[head][c].std) else summary[head][c].std for c in columns]
        xs = [j + (i - (len(results.heads) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=head)
        lows += [m - s for m, s in zip(means, stds, strict=True)]
    ax.set_xticks(range(len(columns)), columns)
    bottom = max(0.0, math.floor(min(lows) / 5) * 5 - 5)  # zoomed: the heads differ by a few points
    ax.set_ylim(bottom, 100)
    ax.set_ylabel(f"test top-1 (%), axis from {bottom:g}")
    ax.set_title(f"Heads on frozen features: mean ± std over {len(results.seeds)} seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: never over a bar
    return save_png(fig, path)


def write_probe_outputs(results: ProbeResults, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``table.md`` (table and notes), ``runs.csv`` (every run) and ``probe.png`` in ``out_dir``, atomically."""
    out = Path(out_dir)
    table = "\n".join([format_probe_table(results), "", *probe_notes(results), ""])
    buffer = io.StringIO()
    names = list(ProbeRun.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for run in results.runs:
        writer.writerow(asdict(run))
    return {
        "table": atomic_write(out / "table.md", lambda f: f.write(table.encode())),
        "runs": atomic_write(out / "runs.csv", lambda f: f.write(buffer.getvalue().encode())),
        "plot": plot_probe(results, out / "probe.png"),
    }
