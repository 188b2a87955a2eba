"""The ``nsrep`` command: one module per command, each a documented function with its arguments beside it.

A command registers itself with :func:`nsrep.cli.command.command`; :func:`main` parses, then calls the
function with the parsed arguments. User errors (``ValueError``: an unknown architecture, family,
connectivity, ...) print ``nsrep: error: ...`` and exit with status 2, no traceback. The commands are listed
in :data:`COMMAND_NAMES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nsrep.cli.command import add_commands

__all__ = ["COMMAND_NAMES", "build_parser", "main"]

# Each command lives in the module of its name (importing it registers it), listed in the order of --help.
COMMAND_NAMES = (
    "info",
    "train",
    "eval",
    "deploy",
    "export",
    "quantize",
    "demo",
    "sweep",
    "report",
    "analyze",
    "probe",
    "features",
)

PROG = "nsrep"
EXIT_USAGE = 2  # argparse's status for a bad command line; user-input errors reuse it


def build_parser() -> argparse.ArgumentParser:
    """The ``nsrep`` parser: one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structural re-parameterization with Neural Substitution: inspect, train, fold networks.",
    )
    for name in COMMAND_NAMES:
        importlib.import_module(f"nsrep.cli.{name}")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), COMMAND_NAMES)
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
