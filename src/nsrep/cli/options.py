"""Help texts and options that several commands share."""

from __future__ import annotations

from nsrep.cli.command import field_arg
from nsrep.models import list_models
from nsrep.nn.connectivity import CONNECTIVITIES
from nsrep.nn.families import ALL_FAMILIES
from nsrep.nn.unit import UnitConfig

__all__ = ["ARCH_HELP", "CONNECTIVITY_HELP", "DATA_HELP", "FAMILY_HELP", "unit_arg"]

# Values are checked by the library, not argparse ``choices``, so errors name a close match too.
ARCH_HELP = f"architecture: {', '.join(list_models())}"
FAMILY_HELP = f"unit family: {', '.join(ALL_FAMILIES)}"
CONNECTIVITY_HELP = f"how branches connect: {', '.join(CONNECTIVITIES)}"
DATA_HELP = "digits, synthetic, a CIFAR python folder or an ImageNet-style folder"


def unit_arg(name: str, **options):
    """``--name`` for the unit option ``name``: default and type are those of the ``UnitConfig`` field."""
    return field_arg(UnitConfig, name, **options)
