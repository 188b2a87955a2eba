"""Experiments: sweeps over methods, branches and seeds (``nsrep sweep``) and their reports (``nsrep report``).

Spec files for the paper's tables (paper scale and CPU scale) live in the repository's ``experiments/``.
"""

from nsrep.experiments.publish import publish_sweep
from nsrep.experiments.report import (
    Cell,
    Difference,
    SweepReport,
    build_report,
    mean_std,
    paired_difference,
    pairwise_differences,
)
from nsrep.experiments.spec import ReportSpec, RunPlan, SweepSpec, load_spec, select_plans
from nsrep.experiments.sweep import (
    SpecStatus,
    SweepStatus,
    collect_results,
    parse_only,
    parse_shard,
    read_results,
    run_spec,
    run_sweep,
)

__all__ = [
    "Cell",
    "Difference",
    "ReportSpec",
    "RunPlan",
    "SpecStatus",
    "SweepReport",
    "SweepSpec",
    "SweepStatus",
    "build_report",
    "collect_results",
    "load_spec",
    "mean_std",
    "paired_difference",
    "pairwise_differences",
    "parse_only",
    "parse_shard",
    "publish_sweep",
    "read_results",
    "run_spec",
    "run_sweep",
    "select_plans",
]
