"""``nsrep sweep``: run a sweep spec, skipping finished runs."""

from __future__ import annotations

from pathlib import Path

from nsrep.cli.command import arg, command


@command(
    arg("spec", help="sweep YAML (see experiments/)"),
    arg("--out", help="sweep folder (default: runs/sweeps/NAME)"),
    arg("--shard", metavar="i/n", help="run every n-th run starting at i (several machines or GPUs)"),
    arg("--only", metavar="KEY=VALUE[,...]", help="run only the runs with these values (e.g. a pilot: family=plain)"),
    arg("--max-runs", help="stop after training this many runs (resume later)"),
)
def sweep(
    spec: str, *, out: str | None = None, shard: str | None = None, only: str | None = None, max_runs: int | None = None
) -> None:
    """Run a sweep spec (grid x methods x seeds), skipping finished runs; collect results.csv."""
    from nsrep.experiments import load_spec, parse_only, parse_shard, run_sweep

    out = out or str(Path("runs") / "sweeps" / load_spec(spec).name)
    status = run_sweep(spec, out, shard=parse_shard(shard), only=parse_only(only), max_runs=max_runs)
    print(
        f"sweep folder {out}: trained {len(status.trained)}, skipped {len(status.skipped)} finished, "
        f"{len(status.remaining)} left for later; results in {status.results}"
    )
