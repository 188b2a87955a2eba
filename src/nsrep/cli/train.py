"""``nsrep train``: train with a recipe plus overrides, fold, save the deployed form."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsrep.cli.command import arg, command, field_arg
from nsrep.cli.options import ARCH_HELP, CONNECTIVITY_HELP, DATA_HELP, FAMILY_HELP
from nsrep.report import forms_table
from nsrep.train.config import TrainConfig, list_recipes


def recipe_arg(name: str, **options: Any):
    """``--name`` overriding the recipe's ``TrainConfig`` field ``name`` when given (typed like the field)."""
    return field_arg(TrainConfig, name, given_only=True, **options)


@command(
    arg(
        "--recipe",
        help=f"recipe name ({', '.join(list_recipes())}) or a YAML path (default: demo; with --resume: the run's)",
    ),
    recipe_arg("data", help=DATA_HELP),
    recipe_arg("arch", help=ARCH_HELP),
    recipe_arg("family", help=FAMILY_HELP),
    recipe_arg("connectivity", help=CONNECTIVITY_HELP),
    recipe_arg("epochs"),
    recipe_arg("batch_size", help="global batch size (split over ranks and accumulation steps)"),
    arg("--out", help="run folder: checkpoint.pt, metrics.jsonl, summary.json, deploy/"),
    arg("--resume", help="continue the run in --out from its last checkpoint"),
    arg("--stop-after", metavar="N", help="stop this invocation after N epochs"),
    arg(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override any recipe key (value read as YAML), e.g. --set lr=0.05 --set autoaugment=null",
    ),
)
def train(
    *,
    recipe: str | None = None,
    out: str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    overrides: Sequence[str] = (),
    **options: Any,
) -> None:
    """Train a model with a recipe (YAML) plus overrides, then fold it and save the deployed form.

    ``--resume`` continues the run in ``--out`` with its stored configuration (options given must agree).
    Under ``torchrun --nproc_per_node N`` every rank runs this; rank 0 writes the run folder.
    """
    from nsrep.train.config import apply_overrides, load_recipe, parse_override
    from nsrep.train.trainer import stored_config
    from nsrep.train.trainer import train as run_training

    if resume and recipe is None and out is not None:
        config = stored_config(out)
    else:
        recipe = recipe or "demo"
        config = TrainConfig.from_dict(load_recipe(recipe), source=f"recipe {recipe!r}")
    config = apply_overrides(config, {k: v for k, v in options.items() if v is not None}, source="option")
    config = apply_overrides(config, dict(parse_override(o) for o in overrides), source="--set")
    result = run_training(config, out, resume=resume, stop_after=stop_after)
    if result.finished and int(os.environ.get("RANK", "0")) == 0:
        forms = [("training", result.train_form, result.train_params)]
        forms.append(("deployed", result.deployed_form, result.deploy_params))
        print(forms_table(forms, result.max_rel_logit_diff))
        if out is not None:
            print(f"run folder: {out} (deployed model in {Path(out) / 'deploy'})")
