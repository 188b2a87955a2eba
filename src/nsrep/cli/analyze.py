"""``nsrep analyze``: similarity, kernels, block drop and topology counts of trained checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

from nsrep.cli.command import arg, command


@command(
    arg("checkpoints", nargs="+", help="run folders or checkpoint.pt files (e.g. a block-level and an NS run)"),
    arg("--data", help="data to analyse on (default: the data the runs were trained on)"),
    arg("--out", help="folder for the PNG figures and CSV tables (default: {default})"),
    arg("--unit", help="unit whose branch kernels to picture (default: a middle 3x3 unit)"),
    arg("--max-images", help="test images to analyse (default: {default})"),
    arg("--batch-size"),
)
def analyze(
    checkpoints: Sequence[str],
    *,
    data: str | None = None,
    out: str = "analysis",
    unit: str | None = None,
    max_images: int = 512,
    batch_size: int = 128,
) -> None:
    """Feature similarity, kernel pictures, block drop and topology counts of trained checkpoints (PNG + CSV)."""
    from nsrep.analysis import analyze as run_analysis

    report = run_analysis(checkpoints, out, data=data, unit=unit, max_images=max_images, batch_size=batch_size)
    print(report.summary)
    print(f"figures and tables: {', '.join(str(p) for p in report.files)}")
