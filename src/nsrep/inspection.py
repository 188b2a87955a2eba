"""What a model costs and how it is built: parameters, multiply-adds, streams per stage, units and topologies.

The counts behind ``nsrep info``, ``nsrep analyze``, training summaries and the benchmarks. Topology counts
are the paper's Eq. 5 (block-level connectivity) and Eq. 7 (branch-level); docs/architecture.md describes
the streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nsrep.nn.conv import RepConv2d, reference_copy

__all__ = [
    "StageStreams",
    "count_macs",
    "count_parameters",
    "profile",
    "streams_per_stage",
    "topologies",
    "topologies_block",
    "topologies_branch",
    "topology_level",
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
    return profile(model, input_size, in_chans, watch_streams=False)[0]


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


def topology_level(connectivity: str) -> str:
    """``"block"`` for block connectivity, ``"branch"`` for the branch-level ones (``ns``, ``naive``)."""
    return "block" if connectivity == "block" else "branch"


def topologies(branch_counts: Sequence[int], connectivity: str, inputs: int = 1) -> int:
    """The topology count that applies to ``connectivity``: Eq. 5 for ``block``, Eq. 7 otherwise."""
    count = topologies_block if topology_level(connectivity) == "block" else topologies_branch
    return count(branch_counts, inputs)


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
    return profile(model, input_size, in_chans, count_flops=False)[1]


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


def profile(
    model: nn.Module, input_size: int, in_chans: int = 3, *, count_flops: bool = True, watch_streams: bool = True
) -> tuple[int, list[StageStreams]]:
    """MACs and streams per stage from one eval forward of a zero image (a wide ns net is slow on CPU).

    Either part can be skipped (``count_flops=False`` gives 0 MACs, ``watch_streams=False`` no stages).
    """
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
