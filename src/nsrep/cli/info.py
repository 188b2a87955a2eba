"""``nsrep info``: cost, streams and topology counts of one model variant."""

from __future__ import annotations

from typing import Any

from nsrep.cli.command import arg, command
from nsrep.cli.options import ARCH_HELP, CONNECTIVITY_HELP, FAMILY_HELP, unit_arg
from nsrep.info import format_info, model_info
from nsrep.nn.families import DEFAULT_NUM_BRANCHES


@command(
    arg("arch", help=ARCH_HELP),
    unit_arg("family", help=f"{FAMILY_HELP} (default: {{default}})"),
    unit_arg("connectivity", help=f"{CONNECTIVITY_HELP} (default: {{default}})"),
    arg("--stem", help="cifar (3x3, stride 1) or imagenet (default: {default})"),
    arg("--num-classes", help="classifier outputs (default: {default})"),
    unit_arg("num_branches", metavar="K", help=f"K for {', '.join(DEFAULT_NUM_BRANCHES)} (default: the family's own)"),
    arg("--width-mult", help="channel multiplier (default: {default})"),
    arg(
        "--plain-stem",
        dest="stem_unit",
        action="store_false",
        help="keep the stem a plain conv+BN instead of a unit of the family",
    ),
    arg("--input-size", help="input height and width (default: {default})"),
    defaults=model_info,
)
def info(arch: str, **options: Any) -> None:
    """Print parameters, MACs, streams per stage and topology counts of a variant and its deployed form."""
    print(format_info(model_info(arch, **options)))
