"""The ``nsrep`` command. Every subcommand is a typed, documented function of this module (STYLE take 13).

A subcommand is registered in :func:`build_parser` with arguments whose ``dest`` names are the function's
parameters; :func:`main` parses, then calls the function with them. User errors (``ValueError``: an unknown
architecture, family, connectivity, ...) print ``nsrep: error: ...`` and exit with status 2, no traceback.
Add ``train``, ``eval``, ``deploy`` and ``export`` the same way: a function plus a ``_add_command`` call.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nsrep.connectivity import CONNECTIVITIES
from nsrep.families import DEFAULT_NUM_BRANCHES, FAMILIES
from nsrep.info import count_macs, count_parameters, format_info, markdown_table, model_info, training_macs
from nsrep.models import create_model, list_models
from nsrep.reparam import reparameterize, verify_equivalence
from nsrep.units import set_implementation

__all__ = ["DemoResult", "build_parser", "demo", "demo_variant", "format_demo", "info", "main"]

PROG = "nsrep"
EXIT_USAGE = 2  # argparse's status for a bad command line; user-input errors reuse it

# (family, connectivity) pairs `nsrep demo` trains: the baseline, block-level DBB, branch-level units.
DEMO_VARIANTS: tuple[tuple[str, str], ...] = (
    ("plain", "block"),
    ("dbb", "block"),
    ("dbb", "ns"),
    ("ns", "ns"),
    ("acnet", "ns"),
)


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


@dataclass(frozen=True)
class DemoResult:
    """One row of the demo table: cost of both forms, training speed and fold error of one variant."""

    family: str
    connectivity: str
    train_params: int
    deploy_params: int
    train_macs: int
    deploy_macs: int
    step_seconds: float  # median wall time of one SGD step (forward, backward, update)
    max_rel_error: float  # deployed vs training form (eval) on a fresh batch, relative to max |output|


def demo_variant(
    family: str,
    connectivity: str,
    *,
    arch: str = "resnet18",
    width_mult: float = 0.25,
    input_size: int = 32,
    num_classes: int = 10,
    steps: int = 3,
    batch_size: int = 16,
    seed: int = 0,
) -> DemoResult:
    """Train one variant a few SGD steps on random data, fold it and measure how exactly it folded.

    Training first moves the BN statistics away from their initial values, so the fold check exercises
    every term of the folded bias (STYLE: equivalence tests that can fail).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    torch.manual_seed(seed)
    options = {"stem": "cifar", "num_classes": num_classes, "width_mult": width_mult}
    model = create_model(arch, family=family, connectivity=connectivity, **options).float().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step_seconds = []
    for _ in range(steps):
        images = torch.randn(batch_size, 3, input_size, input_size)
        labels = torch.randint(0, num_classes, (batch_size,))
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_seconds.append(time.perf_counter() - start)
    deployed = reparameterize(model)
    # compare against the unfolded per-branch computation, not the fast path's folded eval
    unfolded = set_implementation(copy.deepcopy(model), "reference")
    error = verify_equivalence(unfolded, deployed, torch.randn(batch_size, 3, input_size, input_size))
    return DemoResult(
        family=family,
        connectivity=connectivity,
        train_params=count_parameters(model),
        deploy_params=count_parameters(deployed),
        train_macs=training_macs(model, input_size),
        deploy_macs=count_macs(deployed, input_size),
        step_seconds=statistics.median(step_seconds),
        max_rel_error=error.max_rel_error,
    )


def demo(*, steps: int = 3, batch_size: int = 16) -> None:
    """Train ResNet-18 (width 0.25, CIFAR stem) briefly in five variants, fold each and print one table."""
    results = [
        demo_variant(family, connectivity, steps=steps, batch_size=batch_size)
        for family, connectivity in _progress(DEMO_VARIANTS, desc="nsrep demo")
    ]
    print(format_demo(results))


def format_demo(results: Sequence[DemoResult]) -> str:
    """The demo table: one row per variant."""
    header = (
        "family",
        "connectivity",
        "training params",
        "deployed params",
        "training MACs",
        "deployed MACs",
        "train step (s)",
        "max rel error",
    )
    rows = [
        (
            r.family,
            r.connectivity,
            f"{r.train_params:,}",
            f"{r.deploy_params:,}",
            f"{r.train_macs:,}",
            f"{r.deploy_macs:,}",
            f"{r.step_seconds:.3f}",
            f"{r.max_rel_error:.2e}",
        )
        for r in results
    ]
    return "\n".join(markdown_table(header, rows))


def _progress(items: Sequence[Any], desc: str) -> Iterable[Any]:
    """A progress bar on stderr (throughput and ETA) over ``items``."""
    return tqdm(items, desc=desc, unit="variant", leave=False)


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

    p = _add_command(subparsers, demo)
    p.add_argument("--steps", type=int, default=3, help="SGD steps per variant (default: 3)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
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
