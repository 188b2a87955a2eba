"""The demo (``make demo``): train the plain baseline, block-level DBB and NS on real data, fold, compare.

Every variant is an ordinary ``nsrep train`` run of the ``demo`` recipe (scikit-learn's bundled digits), in
its own folder under the demo folder; a finished run with the same configuration is reused, an interrupted
one resumed. The table gives both forms' accuracy, parameters and deployed latency; a PNG shows the curves.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nsrep.export import load_deployed, read_preprocess
from nsrep.report import format_table
from nsrep.train.checkpoint import load_checkpoint
from nsrep.train.config import TrainConfig, apply_overrides, load_recipe
from nsrep.train.plots import plot_learning_curves
from nsrep.train.trainer import CHECKPOINT_FILE, DEPLOY_DIR, SUMMARY_FILE, read_metrics, train

__all__ = ["DEMO_VARIANTS", "DemoRow", "deployed_latencies_ms", "format_demo_table", "run_demo"]

# (family, connectivity): the baseline, block-level DBB (as its paper), DBB units with NS, the paper's NS block.
DEMO_VARIANTS: tuple[tuple[str, str], ...] = (("plain", "block"), ("dbb", "block"), ("dbb", "ns"), ("ns", "ns"))
CURVES_FILE = "learning_curves.png"


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table."""

    family: str
    connectivity: str
    train_top1: float
    deployed_top1: float
    fold_error: float  # deployed vs the unfolded per-branch computation, relative to max |logit|
    train_params: int
    deploy_params: int
    train_seconds: float
    latency_ms: float  # deployed network, one image, median over round-robin repeats


@torch.inference_mode()
def deployed_latencies_ms(
    models: Sequence[torch.nn.Module], inputs: Sequence[torch.Tensor], *, repeats: int = 300
) -> list[float]:
    """Median wall time (ms) of one forward of each model on its input, measured round-robin after a warm-up,
    so that machine noise (other processes, clock changes) falls on every model alike."""
    for model, x in zip(models, inputs, strict=True):
        model.eval()
        for _ in range(50):  # warm-up: allocator, caches, lazy kernel selection
            model(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, (model, x) in enumerate(zip(models, inputs, strict=True)):
            start = time.perf_counter()
            model(x)
            times[i].append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def _finished_with(run_dir: Path, config: TrainConfig) -> bool:
    summary = run_dir / SUMMARY_FILE
    checkpoint = run_dir / CHECKPOINT_FILE
    if not (summary.is_file() and checkpoint.is_file()):
        return False
    return load_checkpoint(checkpoint)["config"] == config.to_dict()


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    variants: Sequence[tuple[str, str]] = DEMO_VARIANTS,
    overrides: dict[str, Any] | None = None,
    fresh: bool = False,
) -> list[DemoRow]:
    """Train (or reuse) every variant in ``out_dir/FAMILY-CONNECTIVITY``; returns the table rows.

    ``fresh`` deletes the variants' folders under ``out_dir`` first (they belong to the demo).
    """
    out = Path(out_dir)
    base = TrainConfig.from_dict(load_recipe("demo"), source="recipe 'demo'")
    base = apply_overrides(base, overrides or {})
    rows, curves, deployed, inputs = [], {}, [], []
    for family, connectivity in variants:
        config = apply_overrides(base, {"family": family, "connectivity": connectivity})
        label = f"{family}-{connectivity}"
        run_dir = out / label
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        if _finished_with(run_dir, config):
            print(f"{label}: reusing the finished run in {run_dir} (pass --fresh to retrain)", flush=True)
        else:
            print(f"{label}: training in {run_dir}", flush=True)
            train(config, run_dir, resume=(run_dir / CHECKPOINT_FILE).is_file())
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        curves[label] = read_metrics(run_dir)
        deploy_dir = run_dir / DEPLOY_DIR
        meta = read_preprocess(deploy_dir)
        deployed.append(load_deployed(deploy_dir))
        inputs.append(torch.randn(1, meta["in_chans"], meta["input_size"], meta["input_size"]))
        rows.append(
            DemoRow(
                family=family,
                connectivity=connectivity,
                train_top1=summary["train_form"]["top1"],
                deployed_top1=summary["deployed_form"]["top1"],
                fold_error=summary["fold_check_rel_error"],
                train_params=summary["train_params"],
                deploy_params=summary["deploy_params"],
                train_seconds=summary["train_seconds"],
                latency_ms=float("nan"),  # measured below, all deployed networks together
            )
        )
    latencies = deployed_latencies_ms(deployed, inputs)
    rows = [replace(row, latency_ms=ms) for row, ms in zip(rows, latencies, strict=True)]
    plot_learning_curves(curves, out / CURVES_FILE, title=f"nsrep demo: {base.arch} on {base.data}")
    return rows


def format_demo_table(rows: Sequence[DemoRow]) -> str:
    """The demo table as markdown: accuracy before/after folding, parameters, training time, latency."""
    header = (
        "family",
        "connectivity",
        "top-1 training form (%)",
        "top-1 deployed (%)",
        "fold error (rel)",
        "training params",
        "deployed params",
        "training time (s)",
        "deployed latency (ms, 1 image)",
    )
    body = [
        (
            r.family,
            r.connectivity,
            f"{r.train_top1:.2f}",
            f"{r.deployed_top1:.2f}",
            f"{r.fold_error:.1e}",
            f"{r.train_params:,}",
            f"{r.deploy_params:,}",
            f"{r.train_seconds:.0f}",
            f"{r.latency_ms:.2f}",
        )
        for r in rows
    ]
    return format_table(header, body)
