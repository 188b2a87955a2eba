"""``nsrep demo``: plain baseline, block-level DBB and NS on the bundled digits."""

from __future__ import annotations

from pathlib import Path

from nsrep.cli.command import arg, command, field_arg
from nsrep.experiments.demo import CURVES_FILE, format_demo_table, run_demo
from nsrep.train.config import TrainConfig


@command(
    arg("--out", dest="out_dir", metavar="OUT", help="demo folder (default: {default})"),
    field_arg(TrainConfig, "epochs", given_only=True, help="epochs per variant (default: the demo recipe's)"),
    arg("--fresh", help="retrain variants even when a finished run exists"),
    defaults=run_demo,
)
def demo(*, out_dir: str, epochs: int | None, fresh: bool) -> None:
    """Train the plain baseline, block-level DBB and NS on the bundled digits; print a table, plot curves."""
    overrides = {"epochs": epochs} if epochs is not None else {}
    rows = run_demo(out_dir, overrides=overrides, fresh=fresh)
    print(format_demo_table(rows))
    print(f"learning curves: {Path(out_dir) / CURVES_FILE}")
