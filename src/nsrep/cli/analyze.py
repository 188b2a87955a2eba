"""``nsrep analyze``: similarity, kernels, block drop and topology counts of trained checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nsrep.analysis import analyze as run_analysis
from nsrep.cli.command import arg, command


@command(
    arg("checkpoints", nargs="+", help="run folders or checkpoint.pt files (e.g. a block-level and an NS run)"),
    arg("--data", help="data to analyse on (default: the data the runs were trained on)"),
    arg("--out", help="folder for the PNG figures and CSV tables (default: {default})"),
    arg("--unit", help="unit whose branch kernels to picture (default: a middle 3x3 unit)"),
    arg("--max-images", help="test images to analyse (default: {default})"),
    arg("--batch-size"),
    defaults=run_analysis,
)
def analyze(checkpoints: Sequence[str], *, out: str = "analysis", **options: Any) -> None:
    """Feature similarity, kernel pictures, block drop and topology counts of trained checkpoints (PNG + CSV)."""
    report = run_analysis(checkpoints, out, **options)
    print(report.summary)
    print(f"figures and tables: {', '.join(str(p) for p in report.files)}")
