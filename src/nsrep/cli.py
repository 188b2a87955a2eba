"""The ``nsrep`` command. Every subcommand is a typed, documented function of this module (STYLE take 13).

A subcommand is registered in :func:`build_parser` with arguments whose ``dest`` names are the function's
parameters; :func:`main` parses, then calls the function with them. User errors (``ValueError``: an unknown
architecture, family, connectivity, ...) print ``nsrep: error: ...`` and exit with status 2, no traceback.
Commands: ``info``, ``train``, ``eval``, ``deploy``, ``export``, ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nsrep.connectivity import CONNECTIVITIES
from nsrep.families import DEFAULT_NUM_BRANCHES, FAMILIES
from nsrep.info import format_info, markdown_table, model_info
from nsrep.models import list_models
from nsrep.train.config import list_recipes

__all__ = ["build_parser", "demo", "deploy", "evaluate", "export", "info", "main", "train"]

PROG = "nsrep"
EXIT_USAGE = 2  # argparse's status for a bad command line; user-input errors reuse it


# ----------------------------------------------------------------------------------------------- commands


def info(
    arch: str,
    *,
    family: str = "plain",
    connectivity: str = "block",
    input_size: int = 32,
    stem: str = "cifar",
    num_classes: int = 100,
    num_branches: int | None = None,
    width_mult: float = 1.0,
    stem_unit: bool = True,
) -> None:
    """Print parameters, MACs, streams per stage and topology counts of a variant and its deployed form."""
    report = model_info(
        arch,
        family=family,
        connectivity=connectivity,
        input_size=input_size,
        stem=stem,
        num_classes=num_classes,
        num_branches=num_branches,
        width_mult=width_mult,
        stem_unit=stem_unit,
    )
    print(format_info(report))


def train(
    *,
    recipe: str | None = None,
    data: str | None = None,
    arch: str | None = None,
    family: str | None = None,
    connectivity: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    out: str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    overrides: Sequence[str] = (),
) -> None:
    """Train a model with a recipe (YAML) plus overrides, then fold it and save the deployed form.

    ``--resume`` continues the run in ``--out`` with its stored configuration (options given must agree).
    Under ``torchrun --nproc_per_node N`` every rank runs this; rank 0 writes the run folder.
    """
    from nsrep.train.config import TrainConfig, apply_overrides, load_recipe, parse_override
    from nsrep.train.trainer import stored_config
    from nsrep.train.trainer import train as run_training

    if resume and recipe is None and out is not None:
        config = stored_config(out)
    else:
        recipe = recipe or "demo"
        config = TrainConfig.from_dict(load_recipe(recipe), source=f"recipe {recipe!r}")
    flags = {"data": data, "arch": arch, "family": family, "connectivity": connectivity}
    flags |= {"epochs": epochs, "batch_size": batch_size}
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None}, source="option")
    config = apply_overrides(config, dict(parse_override(o) for o in overrides), source="--set")
    result = run_training(config, out, resume=resume, stop_after=stop_after)
    if result.finished and int(os.environ.get("RANK", "0")) == 0:
        print(
            markdown_lines(
                ("form", "top-1 (%)", "top-5 (%)", "loss", "params"),
                [
                    ("training", *_eval_cells(result.train_form), f"{result.train_params:,}"),
                    ("deployed", *_eval_cells(result.deployed_form), f"{result.deploy_params:,}"),
                ],
            )
        )
        print(f"max relative logit difference (deployed vs training form): {result.max_rel_logit_diff:.2e}")
        if out is not None:
            print(f"run folder: {out} (deployed model in {Path(out) / 'deploy'})")


def _eval_cells(result: Any) -> tuple[str, str, str]:
    return f"{result.top1:.2f}", f"{result.top5:.2f}", f"{result.loss:.4f}"


def markdown_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table as one string."""
    return "\n".join(markdown_table(header, rows))


def evaluate(checkpoint: str, *, data: str | None = None, batch_size: int = 512, device: str = "auto") -> None:
    """Evaluate a training checkpoint before and after folding (same batches), or a deploy folder."""
    from nsrep.train.runs import evaluate_path

    report = evaluate_path(checkpoint, data, batch_size=batch_size, device=device)
    rows = []
    if report.train_form is not None:
        rows.append(("training", *_eval_cells(report.train_form), f"{report.train_params:,}"))
    rows.append(("deployed", *_eval_cells(report.deployed_form), f"{report.deploy_params:,}"))
    print(markdown_lines(("form", "top-1 (%)", "top-5 (%)", "loss", "params"), rows))
    if report.max_rel_logit_diff is not None:
        print(f"max relative logit difference (deployed vs training form): {report.max_rel_logit_diff:.2e}")


def deploy(checkpoint: str, *, out: str) -> None:
    """Fold a training checkpoint into the plain network; save safetensors weights and config.json in OUT."""
    from nsrep.train.runs import deploy_checkpoint

    folder, equivalence = deploy_checkpoint(checkpoint, out)
    print(f"deployed model written to {folder}; vs the unfolded branches: {equivalence}")


def export(model_dir: str, *, onnx: bool = False, torchscript: bool = False) -> None:
    """Export a deploy folder to ONNX (checked with onnxruntime) and/or TorchScript."""
    from nsrep.export import export_onnx, export_torchscript

    if not (onnx or torchscript):
        raise ValueError("nothing to export: pass --onnx and/or --torchscript")
    if onnx:
        path, error = export_onnx(model_dir)
        print(f"ONNX: {path} (onnxruntime vs PyTorch: max rel error {error:.2e})")
    if torchscript:
        path, error = export_torchscript(model_dir)
        print(f"TorchScript: {path} (vs eager: max rel error {error:.2e})")


def demo(*, out: str = "runs/demo", epochs: int | None = None, fresh: bool = False) -> None:
    """Train the plain baseline, block-level DBB and NS on the bundled digits; print a table, plot curves."""
    from nsrep.train.demo import CURVES_FILE, format_demo_table, run_demo

    overrides = {"epochs": epochs} if epochs is not None else {}
    rows = run_demo(out, overrides=overrides, fresh=fresh)
    print(format_demo_table(rows))
    print(f"learning curves: {Path(out) / CURVES_FILE}")


# ----------------------------------------------------------------------------------------------- parser


def _add_command(
    subparsers: argparse._SubParsersAction, command: Callable[..., None], name: str | None = None
) -> argparse.ArgumentParser:
    """A subparser for ``command``; its help is the first line of the function's docstring."""
    doc = (command.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else ""
    parser = subparsers.add_parser(name or command.__name__, help=summary, description=doc)
    parser.set_defaults(_command=command)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that pick one model variant (shared by commands that build a model)."""
    # Values are checked by the library, not argparse ``choices``, so errors name a close match too.
    parser.add_argument("arch", help=f"architecture: {', '.join(list_models())}")
    parser.add_argument("--family", default="plain", help=f"unit family: {', '.join(FAMILIES)} (default: plain)")
    parser.add_argument(
        "--connectivity",
        default="block",
        help=f"how branches connect: {', '.join(CONNECTIVITIES)} (default: block)",
    )
    parser.add_argument("--stem", default="cifar", help="cifar (3x3, stride 1) or imagenet (default: cifar)")
    parser.add_argument("--num-classes", type=int, default=100, help="classifier outputs (default: 100)")
    parser.add_argument(
        "--num-branches",
        type=int,
        default=None,
        metavar="K",
        help=f"K for {', '.join(DEFAULT_NUM_BRANCHES)} (default: the family's own)",
    )
    parser.add_argument("--width-mult", type=float, default=1.0, help="channel multiplier (default: 1.0)")
    parser.add_argument(
        "--plain-stem",
        dest="stem_unit",
        action="store_false",
        help="keep the stem a plain conv+BN instead of a unit of the family",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``nsrep`` parser: one subparser per command function."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structural re-parameterization with Neural Substitution: inspect, train, fold networks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add_command(subparsers, info)
    _add_model_arguments(p)
    p.add_argument("--input-size", type=int, default=32, help="input height and width (default: 32)")

    p = _add_command(subparsers, train)
    p.add_argument(
        "--recipe",
        help=f"recipe name ({', '.join(list_recipes())}) or a YAML path (default: demo; with --resume: the run's)",
    )
    p.add_argument("--data", help="digits, synthetic, a CIFAR python folder or an ImageNet-style folder")
    p.add_argument("--arch", help=f"architecture: {', '.join(list_models())}")
    p.add_argument("--family", help=f"unit family: {', '.join(FAMILIES)}")
    p.add_argument("--connectivity", help=f"how branches connect: {', '.join(CONNECTIVITIES)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over ranks and accumulation steps)")
    p.add_argument("--out", help="run folder: checkpoint.pt, metrics.jsonl, summary.json, deploy/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop this invocation after N epochs")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key (value read as YAML), e.g. --set lr=0.05 --set autoaugment=null",
    )

    p = _add_command(subparsers, evaluate, name="eval")
    p.add_argument("checkpoint", help="a run folder, its checkpoint.pt, or a deploy folder")
    p.add_argument("--data", help="data to evaluate on (default: the data the run was trained on)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    p = _add_command(subparsers, deploy)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.pt")
    p.add_argument("--out", required=True, help="deploy folder to write")

    p = _add_command(subparsers, export)
    p.add_argument("model_dir", help="a deploy folder (from nsrep train or nsrep deploy)")
    p.add_argument("--onnx", action="store_true", help="write model.onnx and check it with onnxruntime")
    p.add_argument("--torchscript", action="store_true", help="write model.torchscript.pt")

    p = _add_command(subparsers, demo)
    p.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    p.add_argument("--epochs", type=int, help="epochs per variant (default: the demo recipe's)")
    p.add_argument("--fresh", action="store_true", help="retrain variants even when a finished run exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nsrep`` console script; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = vars(parser.parse_args(argv))
    except SystemExit as exit_:  # --help, or a malformed command line (argparse has printed why)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    command = args.pop("_command")
    args.pop("command")
    try:
        command(**args)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
