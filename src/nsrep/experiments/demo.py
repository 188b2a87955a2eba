"""The demo (``make demo``): train the plain baseline, block-level DBB and NS on real data, fold, compare.

The demo is a sweep (:func:`demo_spec`): every variant is an ordinary ``nsrep train`` run of the ``demo``
recipe (scikit-learn's bundled digits), in its own folder under the demo folder, run by
:func:`nsrep.experiments.sweep.run_spec`, so a finished run with the same configuration is reused and an
interrupted one resumed, as in any sweep. The table gives both forms' accuracy, parameters and deployed
latency; a PNG shows the curves.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nsrep.experiments.spec import ReportSpec, RunPlan, SweepSpec
from nsrep.experiments.sweep import run_spec
from nsrep.report import format_table
from nsrep.storage.folders import RunFolder
from nsrep.train.config import TrainConfig, apply_overrides, load_recipe
from nsrep.train.plots import plot_learning_curves

__all__ = ["DEMO_VARIANTS", "DemoRow", "demo_spec", "deployed_latencies_ms", "format_demo_table", "run_demo"]

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


def demo_spec(
    variants: Sequence[tuple[str, str]] = DEMO_VARIANTS, overrides: Mapping[str, Any] | None = None
) -> SweepSpec:
    """The demo as a sweep: the ``demo`` recipe with ``overrides``, one run per (family, connectivity),
    each in a folder named ``FAMILY-CONNECTIVITY``."""
    overrides = dict(overrides or {})
    base = apply_overrides(TrainConfig.from_dict(load_recipe("demo"), source="recipe 'demo'"), overrides)
    methods = tuple({"family": family, "connectivity": connectivity} for family, connectivity in variants)
    return SweepSpec(
        name="demo",
        description="plain baseline, block-level DBB and NS on the bundled digits",
        recipe="demo",
        fixed=overrides,
        combinations=methods,
        seeds=(base.seed,),
        report=ReportSpec(rows=("family", "connectivity")),
        run_name=_label,
    )


def _label(config: TrainConfig) -> str:
    return f"{config.family}-{config.connectivity}"


def _announce(event: str, plan: RunPlan, folder: RunFolder) -> None:
    if event == "reuse":
        print(f"{plan.name}: reusing the finished run in {folder.path} (pass --fresh to retrain)", flush=True)
    else:
        print(f"{plan.name}: {'resuming' if event == 'resume' else 'training'} in {folder.path}", flush=True)


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    variants: Sequence[tuple[str, str]] = DEMO_VARIANTS,
    overrides: dict[str, Any] | None = None,
    fresh: bool = False,
) -> list[DemoRow]:
    """Train (or reuse) every variant in ``out_dir/FAMILY-CONNECTIVITY``; returns the table rows.

    The variants run through :func:`nsrep.experiments.sweep.run_spec` (finished runs reused, interrupted ones
    resumed). ``fresh`` deletes the variants' run folders under ``out_dir`` first (they belong to the demo; a
    folder that is not an nsrep run is never deleted, and training refuses it).
    """
    out = Path(out_dir)
    spec = demo_spec(variants, overrides)
    plans = spec.plans()
    if fresh:
        for plan in plans:
            folder = RunFolder(out / plan.name)
            if folder.path.exists() and folder.state != "foreign":
                shutil.rmtree(folder.path)
    run_spec(spec, out, plans=plans, announce=_announce)
    rows, curves, deployed, inputs = [], {}, [], []
    for plan in plans:
        folder = RunFolder(out / plan.name)
        summary = folder.read_summary()
        curves[plan.name] = folder.read_metrics()
        data = folder.deploy.read_data_record()
        deployed.append(folder.deploy.load())
        inputs.append(torch.randn(1, data.in_chans, data.input_size, data.input_size))
        rows.append(
            DemoRow(
                family=plan.config.family,
                connectivity=plan.config.connectivity,
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
    base = plans[0].config
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
