"""``nsrep info``: what a variant's training form costs next to the plain network it folds into.

Parameters, multiply-adds, streams per stage and how many sub-network topologies its connectivity can
express (paper Eq. 5 and Eq. 7); the counting itself is in :mod:`nsrep.inspection`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from nsrep.inspection import (
    count_macs,
    count_parameters,
    profile,
    topologies_block,
    topologies_branch,
    topology_level,
    unit_branch_counts,
)
from nsrep.models import create_model
from nsrep.nn.conv import reference_copy
from nsrep.reparam import reparameterize
from nsrep.report import count_text, markdown_table, ratio

__all__ = ["format_info", "model_info"]


def model_info(
    arch: str,
    *,
    family: str,
    connectivity: str,
    input_size: int = 32,
    stem: str = "cifar",
    num_classes: int = 100,
    num_branches: int | None = None,
    width_mult: float = 1.0,
    stem_unit: bool = True,
    in_chans: int = 3,
) -> dict[str, Any]:
    """Cost of a variant's training form next to its deployed form, its streams and its topology counts.

    The deployed form is ``reparameterize`` of the training form; its parameter count is checked against
    ``create_model(..., deploy=True)``, so the report never describes a fold the plain network disagrees with.
    """
    options = {"stem": stem, "num_classes": num_classes, "width_mult": width_mult, "stem_unit": stem_unit}
    if in_chans != 3:
        options["in_chans"] = in_chans
    train = create_model(arch, family=family, connectivity=connectivity, num_branches=num_branches, **options)
    deployed = reparameterize(train)
    plain = create_model(arch, deploy=True, **options)
    train_params, deploy_params = count_parameters(train), count_parameters(deployed)
    if deploy_params != count_parameters(plain):
        raise RuntimeError(
            f"reparameterize({arch}, family={family!r}, connectivity={connectivity!r}) has {deploy_params} "
            f"parameters but create_model(deploy=True) has {count_parameters(plain)}"
        )
    counts = unit_branch_counts(train)
    reference = reference_copy(train)  # the per-branch arithmetic
    train_macs, streams = profile(reference, input_size, in_chans)
    return {
        "arch": arch,
        "family": family,
        "connectivity": connectivity,
        "input_size": input_size,
        "in_chans": in_chans,
        "stem": stem,
        "num_classes": num_classes,
        "num_branches": num_branches,
        "width_mult": width_mult,
        "stem_unit": stem_unit,
        "train_params": train_params,
        "deploy_params": deploy_params,
        "train_macs": train_macs,
        "deploy_macs": count_macs(deployed, input_size, in_chans),
        "num_units": len(counts),
        "branch_counts": counts,
        "streams": streams,
        "topologies_block": topologies_block(counts),
        "topologies_branch": topologies_branch(counts),
    }


def format_info(info: dict[str, Any]) -> str:
    """A markdown report of :func:`model_info`: cost table, streams per stage and topology counts."""
    k = "default" if info["num_branches"] is None else info["num_branches"]
    lines = [
        f"# {info['arch']}: family={info['family']}, connectivity={info['connectivity']}",
        "",
        f"input {info['in_chans']}x{info['input_size']}x{info['input_size']}, stem={info['stem']}"
        f"{'' if info['stem_unit'] else ' (plain)'}, num_classes={info['num_classes']}, "
        f"width_mult={info['width_mult']}, num_branches={k}",
        "",
        "## Cost (one image, eval forward)",
        "",
    ]
    tp, dp, tm, dm = info["train_params"], info["deploy_params"], info["train_macs"], info["deploy_macs"]
    lines += markdown_table(
        ("form", "params", "MACs"),
        [
            ("training", f"{tp:,}", f"{tm:,}"),
            ("deployed", f"{dp:,}", f"{dm:,}"),
            ("ratio", ratio(tp, dp), ratio(tm, dm)),
        ],
    )
    lines += ["", "## Streams (training form)", ""]
    lines += markdown_table(
        ("module", "streams", "features (C, H, W)"),
        [(name, s, "x".join(map(str, shape))) for name, s, shape in info["streams"]],
    )
    counts = info["branch_counts"]
    lines += ["", f"## Sub-network topologies ({info['num_units']} units)", ""]
    used = topology_level(info["connectivity"])

    def mark(level: str) -> str:
        return "<- this model" if level == used else ""

    block = ("block-level", f"sum K_u = {_sum_form(counts)}", count_text(info["topologies_block"]))
    branch = ("branch-level", f"prod K_u = {_power_form(counts)}", count_text(info["topologies_branch"]))
    lines += markdown_table(
        ("connectivity", "formula", "topologies", ""),
        [(*block, mark("block")), (*branch, mark("branch"))],
    )
    lines += ["", f"branches per unit: {', '.join(map(str, counts))}"]
    return "\n".join(lines)


def _sum_form(branch_counts: Sequence[int]) -> str:
    """``sum(K_u)`` written as products, e.g. ``4·19 + 1·1``, largest K first."""
    counts = Counter(branch_counts)
    return " + ".join(f"{k}·{counts[k]}" for k in sorted(counts, reverse=True)) or "0"


def _power_form(branch_counts: Sequence[int]) -> str:
    """``prod(K_u)`` written as powers, e.g. ``4^19 · 1^1``, largest K first."""
    counts = Counter(branch_counts)
    return " · ".join(f"{k}^{counts[k]}" for k in sorted(counts, reverse=True)) or "1"
