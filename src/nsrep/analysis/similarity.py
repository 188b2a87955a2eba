"""Feature similarity (paper Fig. 5): across depths (5a) and across the branches of a unit (5b).

Features are *pixel features*: the channel vector at one spatial position of one image. Cosine similarity is
taken between pixel features at the same position; pixels where either vector is zero (a ReLU can zero a
whole position) have no direction and are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn.conv import RepConv2d
from nsrep.nn.streams import aggregate

__all__ = [
    "RunningStats",
    "branch_outputs",
    "pairwise_branch_similarity",
    "pixel_cosine",
    "residual_blocks",
    "unit_inputs",
]


def pixel_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the channel vectors of two ``(N, C, H, W)`` maps at every position, flattened;
    positions where either vector is zero are dropped."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"need two (N, C, H, W) maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    keep = (na > 0) & (nb > 0)
    cos = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    return cos[keep]


@dataclass
class RunningStats:
    """Mean and standard deviation accumulated over batches, plus the first ``keep`` values (for scatter)."""

    keep: int = 200
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    sample: list[float] = field(default_factory=list)

    def add(self, values: Tensor) -> None:
        values = values.double().flatten()
        self.count += values.numel()
        self.total += values.sum().item()
        self.total_sq += values.square().sum().item()
        room = self.keep - len(self.sample)
        if room > 0:
            self.sample.extend(values[:room].tolist())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        if not self.count:
            return float("nan")
        return max(self.total_sq / self.count - self.mean**2, 0.0) ** 0.5


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Residual blocks in forward order: modules with a ``shortcut`` and a residual ``add`` (ResNet blocks)."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "shortcut") and hasattr(m, "add")]


def unit_inputs(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """The units of ``model`` by qualified name; a clear error lists the available ones."""
    units = {n: m for n, m in model.named_modules() if isinstance(m, RepConv2d)}
    missing = [n for n in names if n not in units]
    if missing:
        raise ValueError(f"no unit named {', '.join(map(repr, missing))}; units: {', '.join(units)}")
    return {n: units[n] for n in names}


@torch.no_grad()
def branch_outputs(unit: RepConv2d, streams: Tensor) -> Tensor:
    """Each branch's contribution to the unit's aggregate output in eval mode, ``(K, B, C, H, W)``.

    In eval every branch is affine, so the pairs of branch k sum to ``W_k * A + m * b_k`` whatever the
    connectivity (A the aggregate input, m the unit's bias multiplier): the branch's feature in the
    function the deployed network computes.
    """
    g = unit.geometry
    a = aggregate(streams) if streams.dim() == 5 else streams
    outputs = []
    for kernel, bias in unit.branch_folds():
        kernel, bias = kernel.to(a.dtype), bias.to(a.dtype) * unit.bias_multiplier
        outputs.append(F.conv2d(a, kernel, bias, g.stride, g.padding, g.dilation, g.groups))
    return torch.stack(outputs)


def pairwise_branch_similarity(outputs: Tensor) -> Tensor:
    """Pixel cosine similarities between every pair of branches ``k < l`` of ``(K, B, C, H, W)`` outputs."""
    k = outputs.shape[0]
    values = [pixel_cosine(outputs[i], outputs[j]) for i in range(k) for j in range(i + 1, k)]
    return torch.cat(values) if values else torch.empty(0, dtype=torch.float64)
