"""The fast path of a unit: every conv branch in one convolution call and one BatchNorm over K·C channels.

Each branch gives its pre-BN map as a k×k kernel (``Branch.pre_bn_affine``): small kernels zero-padded,
1×1→BN→k×k and 1×1→BN→avg branches composed every step from their kernels and the inner BN's batch affine
(whose statistics come from the input's moments), so the wide hidden map is never computed or stored. Per
channel BN statistics of the merged output are exactly the per-branch statistics, so this computes what the
per-branch reference path computes, with the same gradients. Identity branches (a BN of the input) are
applied directly: as a conv they would cost a full k×k pass for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn.branches import Branch, IdentityBN
from nsrep.nn.geometry import ConvGeometry
from nsrep.nn.moments import input_moments

__all__ = ["can_fuse", "fused_pair_outputs", "interleave_groups", "split_groups"]


def can_fuse(branches: Sequence[nn.Module]) -> bool:
    """All branches know their linear algebra and their final BNs agree on eps, momentum and tracking."""
    if not branches:
        return False
    for b in branches:
        if not isinstance(b, Branch) or b.final_bn is None:
            return False
    bns = [b.final_bn for b in branches]
    first = bns[0]
    return all(
        bn.eps == first.eps
        and bn.momentum == first.momentum
        and bn.track_running_stats == first.track_running_stats
        and (bn.running_mean is None) == (first.running_mean is None)
        for bn in bns
    )


def interleave_groups(t: Tensor, num_branches: int, groups: int) -> Tensor:
    """(K*C, ...) branch-major -> group-major (g, K, C/g, ...): one grouped conv then computes all branches."""
    if groups == 1:
        return t
    return t.reshape(num_branches, groups, -1, *t.shape[1:]).transpose(0, 1).reshape(-1, *t.shape[1:])


def split_groups(z: Tensor, num_branches: int, groups: int) -> Tensor:
    """Conv output (N, g·K·C/g, H, W) in group-major order -> (N, K, C, H, W)."""
    n, _, h, w = z.shape
    if groups == 1:
        return z.view(n, num_branches, -1, h, w)
    return z.view(n, groups, num_branches, -1, h, w).transpose(1, 2).reshape(n, num_branches, -1, h, w)


def _merged_batch_norm(z: Tensor, bns: Sequence[nn.BatchNorm2d], training: bool) -> Tensor:
    """One ``F.batch_norm`` over (N, K*C, H, W); running statistics written back to each branch's BN."""
    first = bns[0]
    weight = torch.cat([z.new_ones(bn.num_features) if bn.weight is None else bn.weight for bn in bns])
    bias = torch.cat([z.new_zeros(bn.num_features) if bn.bias is None else bn.bias for bn in bns])
    if not (first.track_running_stats and first.running_mean is not None):  # batch statistics only
        return F.batch_norm(z, None, None, weight, bias, True, 0.0, first.eps)
    running_mean = torch.cat([bn.running_mean for bn in bns])
    running_var = torch.cat([bn.running_var for bn in bns])
    momentum = 0.0
    if training:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(first.num_batches_tracked) if first.momentum is None else first.momentum
    out = F.batch_norm(z, running_mean, running_var, weight, bias, training, momentum, first.eps)
    if training:
        with torch.no_grad():
            for i, bn in enumerate(bns):
                size = bn.running_mean.numel()
                bn.running_mean.copy_(running_mean[i * size : (i + 1) * size])
                bn.running_var.copy_(running_var[i * size : (i + 1) * size])
    return out


def _merged_conv_bn(
    flat: Tensor,
    kernels_: list[Tensor],
    biases: list[Tensor | None],
    bns: list[nn.BatchNorm2d],
    geometry: ConvGeometry,
    padding: tuple[int, int],
    crop: tuple[int, int],
    training: bool,
) -> Tensor:
    """One conv call for kernels of one shape, then one BN over their K·C channels -> (N, K, C, H, W)."""
    g = geometry
    k = len(kernels_)
    ch, cw = crop
    if ch or cw:
        flat = flat[..., ch : flat.shape[-2] - ch, cw : flat.shape[-1] - cw]
    weight = interleave_groups(torch.cat(kernels_), k, g.groups)
    bias = None
    if any(b is not None for b in biases):
        zeros = flat.new_zeros(g.out_channels)
        bias = interleave_groups(torch.cat([zeros if b is None else b for b in biases]), k, g.groups)
    z = split_groups(F.conv2d(flat, weight, bias, g.stride, padding, g.dilation, g.groups), k, g.groups)
    n, _, c, h, w = z.shape
    return _merged_batch_norm(z.reshape(n, k * c, h, w), bns, training).view(n, k, c, h, w)


def fused_pair_outputs(
    branches: Sequence[Branch], geometry: ConvGeometry, flat: Tensor, training: bool, padded: bool = False
) -> Tensor:
    """Every branch on the batch ``flat`` (N, C_in, H, W) -> (N, K, C_out, H', W'), in branch order.

    ``padded``: all conv branches in one call with zero-padded k×k kernels (fewest calls). Otherwise one call
    per distinct kernel shape (a 1×1 branch runs as 1×1): fewer multiply-adds, which is what counts on CPU.
    """
    g = geometry
    conv_ids = [i for i, b in enumerate(branches) if not isinstance(b, IdentityBN)]
    needs = training and any(branches[i].needs_moments for i in conv_ids)
    moments = input_moments(flat, g.groups) if needs else None
    # group the conv branches by the conv they run: key (kernel shape, padding, crop)
    groups: dict[tuple, list[tuple[int, Tensor, Tensor | None]]] = {}
    for i in conv_ids:
        native = None if padded else branches[i].native_conv()
        if native is None:
            kernel, bias = branches[i].pre_bn_affine(moments if training else None)
            key = (tuple(kernel.shape[-2:]), g.padding, (0, 0))
        else:
            kernel, padding, crop = native
            bias = None
            key = (tuple(kernel.shape[-2:]), padding, crop)
        groups.setdefault(key, []).append((i, kernel, bias))
    parts: dict[int, Tensor] = {}
    for (_, padding, crop), members in groups.items():
        ids = [m[0] for m in members]
        out = _merged_conv_bn(
            flat,
            [m[1] for m in members],
            [m[2] for m in members],
            [branches[i].final_bn for i in ids],
            g,
            padding,
            crop,
            training,
        )
        if len(ids) == len(branches):
            return out
        for j, i in enumerate(ids):
            parts[i] = out[:, j]
    for i, b in enumerate(branches):
        if i not in parts:
            parts[i] = b(flat)
    return torch.stack([parts[i] for i in range(len(branches))], dim=1)
