"""``nsrep eval``: a checkpoint before and after folding, or a deploy folder."""

from __future__ import annotations

from typing import Any

from nsrep.cli.command import arg, command
from nsrep.report import forms_table
from nsrep.train.runs import evaluate_path


@command(
    arg("checkpoint", help="a run folder, its checkpoint.pt, or a deploy folder"),
    arg(
        "--data",
        help="data to evaluate on (default: the run's own data and held-out split; a folder without val/ handed "
        "in here is scored whole)",
    ),
    arg("--batch-size"),
    arg("--device", help="auto, cpu or cuda"),
    name="eval",
    defaults=evaluate_path,
)
def evaluate(checkpoint: str, **options: Any) -> None:
    """Evaluate a training checkpoint before and after folding (same batches), or a deploy folder."""
    report = evaluate_path(checkpoint, **options)
    forms = [] if report.train_form is None else [("training", report.train_form, report.train_params)]
    forms.append(("deployed", report.deployed_form, report.deploy_params))
    print(forms_table(forms, report.max_rel_logit_diff, split=report.split))
