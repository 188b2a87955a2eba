"""``nsrep demo``: plain baseline, block-level DBB and NS on the bundled digits."""

from __future__ import annotations

from pathlib import Path

from nsrep.cli.command import arg, command, field_arg
from nsrep.train.config import TrainConfig


@command(
    arg("--out", help="demo folder (default: {default})"),
    field_arg(TrainConfig, "epochs", given_only=True, help="epochs per variant (default: the demo recipe's)"),
    arg("--fresh", help="retrain variants even when a finished run exists"),
)
def demo(*, out: str = "runs/demo", epochs: int | None, fresh: bool = False) -> None:
    """Train the plain baseline, block-level DBB and NS on the bundled digits; print a table, plot curves."""
    from nsrep.train.demo import CURVES_FILE, format_demo_table, run_demo

    overrides = {"epochs": epochs} if epochs is not None else {}
    rows = run_demo(out, overrides=overrides, fresh=fresh)
    print(format_demo_table(rows))
    print(f"learning curves: {Path(out) / CURVES_FILE}")
