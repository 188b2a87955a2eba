"""``nsrep report``: tables and plots of a sweep folder."""

from __future__ import annotations

from collections.abc import Sequence

from nsrep.cli.command import arg, command


@command(
    arg("sweep_dir", help="a folder written by nsrep sweep"),
    arg(
        "--reference",
        action="append",
        metavar="KEY=VALUE",
        help="reference row for the differences (default: the spec's report.reference)",
    ),
    arg(
        "--pairs",
        action="store_true",
        help="also compare every two rows (later minus earlier in the spec's order), with each difference's std",
    ),
    arg(
        "--publish",
        metavar="DEST",
        help="first copy the spec, results.csv and each finished run's config, metrics and summary (no weights) "
        "into DEST, then write the report and plots there: a folder to commit",
    ),
)
def report(sweep_dir: str, *, reference: Sequence[str] = (), pairs: bool = False, publish: str | None = None) -> None:
    """Tables (mean ± std over seeds, paired differences with 95% CIs, training cost) and plots of a sweep."""
    from nsrep.experiments import build_report, publish_sweep
    from nsrep.train.config import parse_override

    ref = dict(parse_override(r) for r in reference) if reference else None
    if publish is not None:
        copied = publish_sweep(sweep_dir, publish)
        print(f"published {len(copied)} files to {publish}")
        sweep_dir = publish
    result = build_report(sweep_dir, reference=ref, pairs=pairs)
    print(result.markdown)
    print(f"written: {', '.join(str(p) for p in result.files)}")
