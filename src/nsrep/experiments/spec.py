"""Sweep specifications: a YAML grid of training configurations × seeds, and how to tabulate it.

```yaml
name: table7-cpu
description: what the sweep compares
recipe: demo                 # base recipe (name or YAML path)
set: {epochs: 15}            # overrides shared by every run
grid:                        # every combination of these values ...
  family: [convK]
  num_branches: [2, 3, 4, 5]
methods:                     # ... crossed with every method (a set of keys that belong together)
  - {connectivity: block}
  - {connectivity: ns, stochastic: 1.0}
seeds: [0, 1, 2]
report:
  rows: [connectivity]       # keys naming a method (a table row)
  columns: [num_branches]    # keys naming a column (backbone, branch count, family)
  reference: {connectivity: block}   # the row others are compared with, paired by seed
```
Every key is a :class:`~nsrep.train.config.TrainConfig` field; every configuration is validated before any
run starts.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsrep.train.config import TrainConfig, apply_overrides, load_recipe

__all__ = ["ReportSpec", "RunPlan", "SweepSpec", "load_spec", "select_plans"]

SPEC_KEYS = ("name", "description", "recipe", "set", "grid", "methods", "seeds", "report")
REPORT_KEYS = ("rows", "columns", "reference")


@dataclass(frozen=True)
class ReportSpec:
    """Which varied keys form the rows (methods) and columns of the report, and the reference row."""

    rows: tuple[str, ...]
    columns: tuple[str, ...] = ()
    reference: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """One run of a sweep: its folder name, the keys it varies (seed included) and its full config."""

    name: str
    values: Mapping[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: the base configuration, the varied combinations and the seeds.

    ``run_name`` names each run's folder from its configuration; by default the name lists the keys the
    sweep varies (``connectivity=ns,num_branches=2,seed=0``). Specs built in code (the demo) may name their
    runs otherwise; YAML specs use the default.
    """

    name: str
    description: str
    recipe: str
    fixed: Mapping[str, Any]
    combinations: tuple[Mapping[str, Any], ...]
    seeds: tuple[int, ...]
    report: ReportSpec
    run_name: Callable[[TrainConfig], str] | None = field(default=None, compare=False)

    @property
    def varied_keys(self) -> tuple[str, ...]:
        """Keys whose value differs between the combinations (a key some combinations leave unset counts)."""
        keys: dict[str, set] = {}
        for combo in self.combinations:
            for k, v in combo.items():
                keys.setdefault(k, set()).add(_hashable(v))
        return tuple(k for k in keys if len(keys[k]) > 1 or any(k not in c for c in self.combinations))

    def plans(self) -> list[RunPlan]:
        """Every (combination, seed) as a validated run, in a fixed order (shards index into it).

        A run's ``values`` hold its configuration's value of every varied key (also where its combination
        left the key at the recipe's value) and its seed.
        """
        base = apply_overrides(
            TrainConfig.from_dict(load_recipe(self.recipe), source=f"recipe {self.recipe!r}"),
            self.fixed,
            source=f"sweep {self.name!r} set",
        )
        # Seed-major: a sweep stopped part-way (or a shard) holds whole seeds of every method, so paired
        # comparisons can be made from what finished. All validated first: a typo fails before any run.
        configs = [
            apply_overrides(base, {**combo, "seed": seed}, source=f"sweep {self.name!r} run")
            for seed in self.seeds
            for combo in self.combinations
        ]
        varied = self.varied_keys
        plans = []
        for config in configs:
            values = {**{k: getattr(config, k) for k in varied}, "seed": config.seed}
            name = self.run_name(config) if self.run_name is not None else _run_name(values)
            plans.append(RunPlan(name, values, config))
        names = [p.name for p in plans]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sweep {self.name!r} lists the same run twice: {', '.join(duplicates)}")
        return plans


def select_plans(spec: SweepSpec, only: dict[str, str]) -> list[RunPlan]:
    """The spec's plans whose varied values (seed included) equal ``only``'s, compared as the folder names
    print them; a key the sweep does not vary, or a value no run has, is refused with the valid ones."""
    plans = spec.plans()
    varied = (*spec.varied_keys, "seed")
    for key, value in only.items():
        if key not in varied:
            raise ValueError(f"--only key {key!r} is not varied by the sweep; varied: {', '.join(varied)}")
        taken = sorted({_format(p.values[key]) for p in plans}, key=str)
        if value not in taken:
            raise ValueError(f"--only {key}={value} matches no run; {key} takes: {', '.join(taken)}")
    return [p for p in plans if all(_format(p.values[k]) == v for k, v in only.items())]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _run_name(values: Mapping[str, Any]) -> str:
    """A folder name that says what the run varies: ``connectivity=ns,num_branches=2,seed=0``."""
    parts = [f"{k}={_format(v)}" for k, v in sorted(values.items())]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts))


def _format(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(map(str, value))
    return str(value)


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML; every run's configuration is built once to fail before training."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep spec {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"sweep spec {str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"sweep spec {str(path)!r} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"sweep spec {str(path)!r}: unknown keys {unknown}; valid: {', '.join(SPEC_KEYS)}")
    grid = raw.get("grid") or {}
    methods = raw.get("methods") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"sweep spec {str(path)!r}: grid must map keys to non-empty lists of values")
    if not isinstance(methods, list) or not all(isinstance(m, dict) for m in methods):
        raise ValueError(f"sweep spec {str(path)!r}: methods must be a list of key: value mappings")
    grid_points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    combinations = [{**point, **method} for point in grid_points for method in (methods or [{}])]
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"sweep spec {str(path)!r}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep spec {str(path)!r}: seeds repeat: {seeds}")
    report = _report_spec(raw.get("report") or {}, str(path))
    spec = SweepSpec(
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        recipe=_recipe_path(raw.get("recipe", "demo"), path),
        fixed=dict(raw.get("set") or {}),
        combinations=tuple(combinations),
        seeds=tuple(seeds),
        report=report,
    )
    spec.plans()  # every configuration valid, no duplicate runs
    varied = spec.varied_keys
    for key in (*report.rows, *report.columns, *report.reference):
        if key not in varied:
            raise ValueError(
                f"sweep spec {str(path)!r}: report key {key!r} is not varied by the sweep; varied: {', '.join(varied)}"
            )
    return spec


def _recipe_path(recipe: str, spec_path: Path) -> str:
    """A recipe given as a relative YAML path is relative to the spec file."""
    candidate = spec_path.parent / recipe
    return str(candidate) if recipe.endswith((".yaml", ".yml")) and candidate.is_file() else recipe


def _report_spec(raw: Any, source: str) -> ReportSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"sweep spec {source!r}: report must be a mapping with keys {', '.join(REPORT_KEYS)}")
    unknown = sorted(set(raw) - set(REPORT_KEYS))
    if unknown:
        raise ValueError(f"sweep spec {source!r}: unknown report keys {unknown}; valid: {', '.join(REPORT_KEYS)}")
    rows, columns = _key_list(raw.get("rows", []), "rows", source), _key_list(raw.get("columns", []), "columns", source)
    reference = raw.get("reference") or {}
    if not isinstance(reference, dict):
        raise ValueError(f"sweep spec {source!r}: report.reference must map row keys to values")
    if set(reference) - set(rows):
        raise ValueError(f"sweep spec {source!r}: report.reference keys {sorted(reference)} must be row keys {rows}")
    return ReportSpec(rows=rows, columns=columns, reference=reference)


def _key_list(value: Any, what: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"sweep spec {source!r}: report.{what} must be a key or a list of keys, got {value!r}")
    return tuple(value)
