"""Model summaries: parameters, multiply-adds, streams per stage and sub-network topology counts.

Used by ``nsrep info`` and ``nsrep demo`` to show what a training form costs next to the plain network it
folds into, and how many sub-network topologies its connectivity can express (paper Eq. 5 and Eq. 7).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nsrep.models import create_model
from nsrep.nn.conv import RepConv2d, reference_copy
from nsrep.reparam import reparameterize

__all__ = [
    "StageStreams",
    "count_macs",
    "count_parameters",
    "format_info",
    "markdown_table",
    "model_info",
    "scientific",
    "streams_per_stage",
    "topologies_block",
    "topologies_branch",
    "training_macs",
    "unit_branch_counts",
]

StageStreams = tuple[str, int, tuple[int, ...]]  # (module name, number of streams, feature shape (C, H, W))

# Containers that hold an architecture's main sequence of stages or blocks, tried in this order.
_TRUNK_NAMES = ("stages", "blocks", "layers", "features")


def count_parameters(model: nn.Module) -> int:
    """Learnable parameter elements (BN statistics and other buffers not counted): the size papers report."""
    return sum(p.numel() for p in model.parameters())


def _dummy_input(model: nn.Module, input_size: int, in_chans: int) -> Tensor:
    if input_size < 1 or in_chans < 1:
        raise ValueError(f"input_size and in_chans must be >= 1, got input_size={input_size}, in_chans={in_chans}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    dtype = param.dtype if param is not None else None
    return torch.zeros(1, in_chans, input_size, input_size, device=device, dtype=dtype)


@torch.no_grad()
def _eval_forward(model: nn.Module, x: Tensor) -> Tensor:
    was_training = model.training
    try:
        return model.eval()(x)
    finally:
        model.train(was_training)


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of one eval forward of one image, so training and deployed forms compare directly.

    Counted by PyTorch's ``FlopCounterMode`` (convolutions and matmuls; MACs = flops // 2). A unit with S
    input streams runs every branch on every stream, so the training form's count includes each stream's
    convs. The mode of ``model`` is restored afterwards.
    """
    return _profile(model, input_size, in_chans, watch_streams=False)[0]


def training_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-adds of the method's own arithmetic: every branch on every stream, hidden maps included.

    Counted on a copy switched to the per-branch reference implementation, so the number does not depend on
    the fast path's merging (whose eval mode runs folded kernels and would report the deployed cost).
    """
    return count_macs(reference_copy(model), input_size, in_chans)


def unit_branch_counts(model: nn.Module) -> list[int]:
    """Branches of every :class:`~nsrep.nn.conv.RepConv2d` in module order: the K_u of the topology counts."""
    return [m.num_branches for m in model.modules() if isinstance(m, RepConv2d)]


def topologies_block(branch_counts: Sequence[int], inputs: int = 1) -> int:
    """Sub-network topologies with block-level connectivity: ``inputs * sum(K_u)`` (paper Eq. 5, N·B·D).

    Each unit sums its branches before the next, so a path picks one branch in one unit at a time.
    """
    _check_counts(branch_counts, inputs)
    return inputs * sum(branch_counts)


def topologies_branch(branch_counts: Sequence[int], inputs: int = 1) -> int:
    """Sub-network topologies with branch-level connectivity: ``inputs * prod(K_u)`` (paper Eq. 7, N·B^D).

    Streams connect branches across units, so a path picks one branch in every unit.
    """
    _check_counts(branch_counts, inputs)
    return inputs * math.prod(branch_counts)


def _check_counts(branch_counts: Sequence[int], inputs: int) -> None:
    if inputs < 1 or any(k < 1 for k in branch_counts):
        raise ValueError(f"inputs and branch counts must be >= 1, got inputs={inputs}, counts={list(branch_counts)}")


def _trunk(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's main run of stages: a known container name, else its longest ``nn.Sequential`` child."""
    for name in _TRUNK_NAMES:
        child = getattr(model, name, None)
        if isinstance(child, nn.Sequential):
            return name, child
    sequentials = [(n, c) for n, c in model.named_children() if isinstance(c, nn.Sequential)]
    if sequentials:
        return max(sequentials, key=lambda nc: len(nc[1]))
    return "", model


def streams_per_stage(model: nn.Module, input_size: int, in_chans: int = 3) -> list[StageStreams]:
    """Streams and feature shape after the stem and after each stage of the trunk, from one eval forward.

    A stream set is a 5-D tensor ``(S, B, C, H, W)``; a 4-D batch is one stream. Shows where connectivity
    multiplies (naive) or keeps (ns) the number of feature maps a training forward carries.
    """
    return _profile(model, input_size, in_chans, count_flops=False)[1]


def _watched_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem (if any) and each direct child of the trunk, named as in ``named_modules``."""
    trunk_name, trunk = _trunk(model)
    watched: list[tuple[str, nn.Module]] = []
    stem = getattr(model, "stem", None)
    if isinstance(stem, nn.Module) and trunk is not model:
        watched.append(("stem", stem))
    for name, child in trunk.named_children():
        watched.append((f"{trunk_name}.{name}" if trunk_name else name, child))
    return watched


def _profile(
    model: nn.Module, input_size: int, in_chans: int, *, count_flops: bool = True, watch_streams: bool = True
) -> tuple[int, list[StageStreams]]:
    """MACs and streams per stage from one eval forward of a zero image (a wide ns net is slow on CPU)."""
    x = _dummy_input(model, input_size, in_chans)
    seen: list[StageStreams] = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.dim() in (4, 5):
                streams = output.shape[0] if output.dim() == 5 else 1  # (S, B, C, H, W) or (B, C, H, W)
                seen.append((name, int(streams), tuple(int(d) for d in output.shape[-3:])))

        return hook

    watched = _watched_modules(model) if watch_streams else []
    handles = [module.register_forward_hook(hook_for(name)) for name, module in watched]
    counter = FlopCounterMode(display=False)
    try:
        if count_flops:
            with counter:
                _eval_forward(model, x)
        else:
            _eval_forward(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return (counter.get_total_flops() // 2 if count_flops else 0), seen


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
    train_macs, streams = _profile(reference, input_size, in_chans)
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


def scientific(n: int) -> str:
    """``n`` as ``d.dde+XX`` from its exact digits (no float overflow for counts past 1e308)."""
    if n == 0:
        return "0"
    sign, digits = ("-", str(-n)) if n < 0 else ("", str(n))
    exponent = len(digits) - 1
    mantissa = round(int(digits[:4]) / 10 ** (min(len(digits), 4) - 1), 2)
    if mantissa >= 10:  # 9.996... rounds up to the next power of ten
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{sign}{mantissa:.2f}e+{exponent:02d}"


def _power_form(branch_counts: Sequence[int]) -> str:
    """``prod(K_u)`` written as powers, e.g. ``4^19 · 1^1``, largest K first."""
    counts = Counter(branch_counts)
    return " · ".join(f"{k}^{counts[k]}" for k in sorted(counts, reverse=True)) or "1"


def _count(n: int) -> str:
    return f"{n:,} ({scientific(n)})" if n >= 10**6 else f"{n:,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a markdown table with padded columns, readable as plain text too."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])]


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
            ("ratio", f"{tp / dp:.2f}x", f"{tm / dm:.2f}x" if dm else "-"),
        ],
    )
    lines += ["", "## Streams (training form)", ""]
    lines += markdown_table(
        ("module", "streams", "features (C, H, W)"),
        [(name, s, "x".join(map(str, shape))) for name, s, shape in info["streams"]],
    )
    counts = info["branch_counts"]
    lines += ["", f"## Sub-network topologies ({info['num_units']} units)", ""]
    used = "branch" if info["connectivity"] in ("ns", "naive") else "block"

    def mark(level: str) -> str:
        return "<- this model" if level == used else ""

    block = ("block-level", f"sum K_u = {_sum_form(counts)}", _count(info["topologies_block"]))
    branch = ("branch-level", f"prod K_u = {_power_form(counts)}", _count(info["topologies_branch"]))
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
