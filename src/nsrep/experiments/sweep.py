"""Running a sweep: every planned run in its own folder, finished runs skipped, interrupted ones resumed.

:func:`run_spec` is the one place that decides, from each run folder's state
(:class:`nsrep.storage.folders.RunFolder`), whether a run is reused, resumed or started; ``nsrep sweep`` and
the demo both run through it.

A sweep folder holds ``spec.yaml`` (a copy of the spec it runs, so a second invocation cannot mix two
different sweeps), ``runs/NAME/`` (ordinary ``nsrep train`` run folders) and ``results.csv`` (one line per
finished run, rewritten after every run). ``--shard i/n`` runs every n-th plan starting at i, so n machines
or GPUs can share one sweep folder (on a shared file system) or merge their ``runs/`` afterwards.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from nsrep.experiments.spec import RunPlan, SweepSpec, load_spec, select_plans
from nsrep.fileio import atomic_write
from nsrep.storage.folders import RunFolder
from nsrep.train.trainer import read_metrics, train

__all__ = [
    "RESULT_FIELDS",
    "SpecStatus",
    "SweepStatus",
    "collect_results",
    "parse_only",
    "parse_shard",
    "read_results",
    "run_metrics",
    "run_spec",
    "run_sweep",
    "stored_spec",
]

SPEC_COPY = "spec.yaml"
RECIPE_COPY = "recipe.yaml"
RESULTS_FILE = "results.csv"
RUNS_DIR = "runs"
# columns of results.csv after the varied keys and the seed
RESULT_FIELDS = (
    "top1",
    "top1_train_form",
    "top5",
    "epochs",
    "epoch_seconds",
    "peak_memory_mib",
    "train_params",
    "deploy_params",
)


@dataclass(frozen=True)
class SpecStatus:
    """What :func:`run_spec` did: runs trained (fresh or resumed), reused as finished, left for later."""

    trained: tuple[str, ...]
    skipped: tuple[str, ...]
    remaining: tuple[str, ...]


@dataclass(frozen=True)
class SweepStatus:
    """What one invocation did: runs trained (fresh or resumed), skipped as finished, left for later."""

    trained: tuple[str, ...]
    skipped: tuple[str, ...]
    remaining: tuple[str, ...]
    results: Path


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def parse_only(text: str | None) -> dict[str, str]:
    """``"family=plain,epochs=100"`` -> ``{"family": "plain", "epochs": "100"}``; None -> no selection."""
    if text is None:
        return {}
    pairs = [part.partition("=") for part in text.split(",")]
    if not all(sep and key and value for key, sep, value in pairs):
        raise ValueError(f"--only must look like KEY=VALUE[,KEY=VALUE] (e.g. family=plain), got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _claim_folder(out: Path, spec_path: Path, spec: SweepSpec) -> None:
    """Write the spec copy (and a copy of its recipe file, if it uses one), or check that the folder already
    belongs to this very spec: a sweep folder never mixes runs of two different sweeps."""
    raw = yaml.safe_load(spec_path.read_text())
    recipe_text = None
    if Path(spec.recipe).is_file():  # a user's recipe file: keep it with the runs it configured
        recipe_text = Path(spec.recipe).read_text()
        raw["recipe"] = RECIPE_COPY
    copy, recipe_copy = out / SPEC_COPY, out / RECIPE_COPY
    if copy.is_file():
        same = yaml.safe_load(copy.read_text()) == raw
        if recipe_text is not None:
            same = (
                same
                and recipe_copy.is_file()
                and yaml.safe_load(recipe_copy.read_text()) == yaml.safe_load(recipe_text)
            )
        if not same:
            raise ValueError(
                f"{str(out)!r} holds a different sweep ({SPEC_COPY} differs from {str(spec_path)!r}); "
                "choose another --out"
            )
        return
    if recipe_text is not None:
        atomic_write(recipe_copy, lambda f: f.write(recipe_text.encode()))
    atomic_write(copy, lambda f: f.write(yaml.safe_dump(raw, sort_keys=False).encode()))


def _finished(run_dir: Path) -> bool:
    return RunFolder(run_dir).state == "finished"


def run_spec(
    spec: SweepSpec,
    runs_dir: str | os.PathLike,
    *,
    plans: Iterable[RunPlan] | None = None,
    max_runs: int | None = None,
    progress: bool = True,
    announce: Callable[[str, RunPlan, RunFolder], None] | None = None,
    after_run: Callable[[RunPlan, RunFolder], None] | None = None,
) -> SpecStatus:
    """Run ``plans`` (default: every plan of ``spec``), each in ``runs_dir/NAME``, by its folder's state.

    A finished run is reused (refused if its stored configuration differs from the plan's), a resumable one
    resumed, a new one started; a foreign folder is refused by the trainer and left untouched. ``max_runs``
    stops after that many trainings; ``progress=False`` turns the runs' progress bars off. ``announce(event,
    plan, folder)`` is told ``"reuse"``, ``"resume"`` or ``"train"`` before each run; ``after_run`` after each
    training.
    """
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be >= 0, got {max_runs}")
    runs_dir = Path(runs_dir)
    trained, skipped, remaining = [], [], []
    for plan in spec.plans() if plans is None else plans:
        folder = RunFolder(runs_dir / plan.name)
        state = folder.state
        if state == "finished":
            folder.check_config(folder.load_checkpoint()["config"], plan.config)
            if announce is not None:
                announce("reuse", plan, folder)
            skipped.append(plan.name)
            continue
        if max_runs is not None and len(trained) >= max_runs:
            remaining.append(plan.name)
            continue
        if announce is not None:
            announce("resume" if state == "resumable" else "train", plan, folder)
        config = plan.config if progress else replace(plan.config, progress=False)
        train(config, folder.path, resume=state == "resumable")
        trained.append(plan.name)
        if after_run is not None:
            after_run(plan, folder)
    return SpecStatus(tuple(trained), tuple(skipped), tuple(remaining))


def run_sweep(
    spec_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    only: dict[str, str] | None = None,
    max_runs: int | None = None,
    progress: bool = True,
) -> SweepStatus:
    """Run the spec's plans of this shard in order; ``only`` keeps the plans with those values (a staged
    study's pilot); ``max_runs`` stops after that many trainings."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)  # validates every configuration before anything is written
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be >= 0, got {max_runs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, spec_path, spec)
    index, count = shard
    plans = [p for i, p in enumerate(select_plans(spec, only or {})) if i % count == index]
    bar = tqdm(plans, desc=f"sweep {spec.name}", unit="run", disable=not progress)

    def announce(event: str, plan: RunPlan, folder: RunFolder) -> None:
        if event != "reuse":
            bar.set_postfix_str(plan.name)

    status = run_spec(
        spec,
        out / RUNS_DIR,
        plans=bar,
        max_runs=max_runs,
        progress=progress,
        announce=announce,
        after_run=lambda *_: collect_results(spec, out),
    )
    results = collect_results(spec, out)
    return SweepStatus(status.trained, status.skipped, status.remaining, results)


def _result_row(plan: RunPlan, run_dir: Path) -> dict[str, Any]:
    summary = RunFolder(run_dir).read_summary()
    metrics = read_metrics(run_dir)
    return {
        "run": plan.name,
        **{k: _cell(v) for k, v in plan.values.items()},
        "top1": summary["deployed_form"]["top1"],
        "top1_train_form": summary["train_form"]["top1"],
        "top5": summary["deployed_form"]["top5"],
        "epochs": summary["epochs"],
        "epoch_seconds": statistics.fmean(m["epoch_seconds"] for m in metrics),
        "peak_memory_mib": max(m["peak_memory_mib"] for m in metrics),
        "train_params": summary["train_params"],
        "deploy_params": summary["deploy_params"],
    }


def _cell(value: Any) -> Any:
    return "+".join(map(str, value)) if isinstance(value, list | tuple) else value


def collect_results(spec: SweepSpec, out_dir: str | os.PathLike) -> Path:
    """Write ``results.csv``: one line per finished run of the whole sweep (all shards), in plan order."""
    out = Path(out_dir)
    plans = spec.plans()
    keys = sorted({k for p in plans for k in p.values})
    rows = [_result_row(p, out / RUNS_DIR / p.name) for p in plans if _finished(out / RUNS_DIR / p.name)]
    buffer = io.StringIO()
    # a varied key that is also a result column (epochs) is written once: the run's value
    writer = csv.DictWriter(buffer, fieldnames=["run", *keys, *(f for f in RESULT_FIELDS if f not in keys)], restval="")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(out / RESULTS_FILE, lambda f: f.write(buffer.getvalue().encode()))


def read_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a sweep's ``results.csv`` with numbers parsed (ints stay ints)."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"{str(sweep_dir)!r} is not a sweep folder: {RESULTS_FILE} is missing (run nsrep sweep)")
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None, "": None}.get(text, text)


def run_metrics(sweep_dir: str | os.PathLike, run: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of one run of a sweep."""
    return read_metrics(Path(sweep_dir) / RUNS_DIR / run)


def stored_spec(sweep_dir: str | os.PathLike) -> SweepSpec:
    """The spec a sweep folder was run with."""
    path = Path(sweep_dir) / SPEC_COPY
    if not path.is_file():
        raise ValueError(f"{str(sweep_dir)!r} is not a sweep folder: {SPEC_COPY} is missing")
    return load_spec(path)
