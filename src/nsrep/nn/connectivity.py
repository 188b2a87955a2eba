"""How a unit's pairs ``p(k, s) = f_k(x_s)`` become output streams (paper Alg. 1; docs/architecture.md).

Pairs are indexed branch-major: pair ``k * S_in + s`` is branch k on stream s. A *partition* is a
``(groups, pairs_per_group)`` index tensor that uses every pair exactly once; output stream j is the sum of
the pairs in row j. Because it is a partition, the aggregate of the outputs is always the sum of all pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "CONNECTIVITIES",
    "fixed_partition",
    "group_pairs",
    "group_pairs_sbk",
    "out_streams",
    "pair_drop_mask",
    "random_partition",
]

CONNECTIVITIES: tuple[str, ...] = ("block", "naive", "ns")


def out_streams(connectivity: str, in_streams: int, num_branches: int) -> int:
    """Streams a unit emits: block 1, naive S_in*K (every pair), ns K."""
    return {"block": 1, "naive": in_streams * num_branches, "ns": num_branches}[connectivity]


def fixed_partition(num_branches: int, in_streams: int, device: torch.device | None = None) -> Tensor:
    """Group j = all pairs of branch j: ``y_j = sum_s f_j(x_s)``. Shape (K, S_in)."""
    return torch.arange(num_branches * in_streams, device=device).view(num_branches, in_streams)


def random_partition(
    num_branches: int,
    in_streams: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """A uniformly random partition of the K*S_in pairs into K groups of S_in pairs. Shape (K, S_in).

    Departure from the paper's Alg. 1 (two independently shuffled index matrices): independent shuffles can
    take one pair twice and skip another, which changes the aggregate; one joint permutation cannot.
    """
    perm = torch.randperm(num_branches * in_streams, generator=generator)
    return perm.to(device).view(num_branches, in_streams)


def group_pairs(pairs: Tensor, partition: Tensor) -> Tensor:
    """Sum pairs by group. pairs: (K, S_in, B, C, H, W); partition: (G, n) -> output (G, B, C, H, W)."""
    flat = pairs.flatten(0, 1)  # (K*S_in, B, C, H, W), pair index k*S_in + s
    groups, per_group = partition.shape
    if groups * per_group != flat.shape[0]:
        raise ValueError(f"partition of shape {tuple(partition.shape)} does not cover {flat.shape[0]} pairs")
    if per_group == 1:
        return flat.index_select(0, partition.flatten())
    picked = flat.index_select(0, partition.flatten())
    return picked.view(groups, per_group, *flat.shape[1:]).sum(1)


def pair_drop_mask(shape: tuple[int, ...], rate: float, like: Tensor) -> Tensor:
    """Drop-path mask on individual pairs: shape (K, S, B, 1, ...), each (branch, stream, sample) kept with
    probability 1-rate and scaled by 1/(1-rate)."""
    keep = 1.0 - rate
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)


class _GroupSumSBK(torch.autograd.Function):
    """Group sums read straight from the fast path's (S, B, K, ...) layout: no gathered copy of all pairs
    in forward, one write per pair (no full-size zero fill) in backward.

    The partition stays a tensor on the pairs' device throughout (indexing, never ``tolist()``): under
    ``torch.compile`` a fresh partition is then an input of the graph, not Python constants baked into it,
    so drawing a new one every step neither breaks the graph nor recompiles it.
    """

    @staticmethod
    def forward(ctx, y: Tensor, partition: Tensor) -> Tensor:
        s, b, k = y.shape[:3]
        rows = y.reshape(s * b * k, *y.shape[3:])  # row (stream * B + sample) * K + branch
        samples = torch.arange(b, device=y.device)
        stream, branch = partition % s, partition // s  # (G, n) each
        out = None
        for i in range(partition.shape[1]):  # one gather of G·B rows per group member: output-sized transients
            index = (stream[:, i, None] * b + samples) * k + branch[:, i, None]  # (G, B)
            term = rows.index_select(0, index.flatten())
            out = term if out is None else out.add_(term)
        ctx.save_for_backward(partition)
        ctx.s = s
        return out.view(partition.shape[0], b, *y.shape[3:])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (partition,) = ctx.saved_tensors
        s = ctx.s
        g, b = grad.shape[:2]
        per_group = partition.shape[1]
        # the group of every pair: the inverse permutation (argsort of a permutation) over the group size
        group_of = (torch.argsort(partition.flatten()) // per_group).view(-1, s)  # (K, S): [branch][stream]
        samples = torch.arange(b, device=grad.device)
        # grad_y[s, b, k] = grad[group_of[k, s], b]: one gather of rows straight into the (S, B, K, ...) layout
        index = group_of.t()[:, None, :] * b + samples[None, :, None]  # (S, B, K)
        rows = grad.reshape(g * b, *grad.shape[2:]).index_select(0, index.flatten())
        return rows.view(s, b, -1, *grad.shape[2:]), None


def group_pairs_sbk(y: Tensor, partition: Tensor) -> Tensor:
    """Like :func:`group_pairs` for pairs laid out (S, B, K, C, H, W): output (G, B, C, H, W)."""
    s, k = y.shape[0], y.shape[2]
    if partition.numel() != s * k:
        raise ValueError(f"partition of shape {tuple(partition.shape)} does not cover {s * k} pairs")
    return _GroupSumSBK.apply(y, partition.to(y.device))
