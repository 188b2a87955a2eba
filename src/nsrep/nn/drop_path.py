"""Stochastic depth (drop-path) on stream sets: one per-sample mask shared by every stream.

A residual branch's output is a stream set ``(S, B, C, H, W)`` whose aggregate ``sum_s x_s`` is what the plain
network computes. Drawing one keep/drop decision per *sample* and applying it to every stream scales the
aggregate by exactly that decision, so the branch-level network's aggregate is the plain network's drop-path
(timm's ``DropPath``, torchvision's ``stochastic_depth(mode="row")``) of the same sample, and in eval mode the
op is the identity, so folding stays exact. A per-stream mask would not: it would drop parts of a sample's
aggregate, which no plain network computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nsrep.nn.foldable import Foldable
from nsrep.validation import check_probability

__all__ = ["DropPath", "drop_path", "drop_path_rates"]


def drop_path(x: Tensor, rate: float, training: bool, batch_dim: int = 1, scale_by_keep: bool = True) -> Tensor:
    """Zero whole samples of ``x`` with probability ``rate`` (kept ones scaled by 1/(1-rate)).

    ``batch_dim`` is 1 for a stream set ``(S, B, ...)`` and 0 for a plain ``(B, ...)`` map; the mask has size 1 on
    every other dimension, so all streams of a sample share it.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = [1] * x.dim()
    shape[batch_dim] = x.shape[batch_dim]
    mask = x.new_empty(shape).bernoulli_(keep)
    if scale_by_keep and keep > 0.0:
        mask.div_(keep)
    return x * mask


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """timm's linear rule: block ``i`` of ``n`` drops with ``rate * i / (n - 1)`` (the first block never)."""
    check_probability("drop_path_rate", rate)
    if num_blocks <= 1:
        return [0.0] * num_blocks
    return [float(r) for r in torch.linspace(0.0, rate, num_blocks).tolist()]


class DropPath(Foldable):
    """Drop-path on a stream set (``batch_dim=1``) or a plain map (``batch_dim=0``); folds to ``nn.Identity``."""

    def __init__(self, rate: float = 0.0, batch_dim: int = 1, scale_by_keep: bool = True) -> None:
        super().__init__()
        check_probability("drop_path_rate", rate)
        self.rate = float(rate)
        self.batch_dim = batch_dim
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.rate, self.training, self.batch_dim, self.scale_by_keep)

    def fold(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"
