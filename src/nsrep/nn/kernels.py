"""Folding algebra: pure functions on tensors that turn linear layer chains into one (kernel, bias).

Every re-parameterizable branch is, in eval mode, an affine map ``x -> W * x + b``. These functions build
``W`` (shape ``(C_out, C_in / groups, k, k)``) and ``b`` (shape ``(C_out,)``) for each building block, so
that a unit can add its branches up. Written once here and used by every branch and unit, BatchNorm
included, so a fix to the fold math is one edit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "avg_pool_kernel",
    "bn_affine",
    "bn_eval_affine",
    "compose_1x1_kxk",
    "fuse_bn",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel_to",
]


def bn_affine(
    running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(z) = scale * z + shift`` for given statistics.

    Works for eval-mode running statistics and for train-mode batch statistics alike.
    """
    std = torch.sqrt(running_var + eps)
    scale = 1.0 / std if weight is None else weight / std
    shift = -running_mean * scale if bias is None else bias - running_mean * scale
    return scale, shift


def fuse_conv_bn(
    kernel: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    conv_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fold ``bn(conv(x))`` into one conv: returns ``(kernel, bias)``.

    kernel: (C_out, C_in/groups, kh, kw); BN tensors: (C_out,).
    """
    scale, shift = bn_affine(running_mean, running_var, gamma, beta, eps)
    fused_kernel = kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1)))
    fused_bias = shift if conv_bias is None else shift + conv_bias * scale
    return fused_kernel, fused_bias


def bn_eval_affine(bn: nn.modules.batchnorm._BatchNorm, where: str = "") -> tuple[Tensor, Tensor]:
    """Eval-mode ``(scale, shift)`` of a BatchNorm module from its running statistics (1-d or 2-d alike)."""
    if bn.running_mean is None or bn.running_var is None:
        place = f"{where}: " if where else ""
        raise ValueError(f"{place}a BatchNorm without running statistics (track_running_stats=False) cannot fold")
    return bn_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def fuse_bn(weight: Tensor, bn: nn.modules.batchnorm._BatchNorm, where: str = "") -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm module into the bias-free layer before it: ``(weight, bias)``.

    weight: (C_out, ...) of a conv or a linear layer; the BN normalises its C_out outputs.
    """
    if bn.running_mean is None or bn.running_var is None:
        bn_eval_affine(bn, where)  # raises with the message naming the place
    return fuse_conv_bn(weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def pad_kernel_to(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad a (…, kh, kw) kernel to (…, H, W) keeping it centred (1×1, 1×k, k×1 into k×k).

    The size differences must be even, otherwise there is no centre to align on.
    """
    kh, kw = kernel.shape[-2:]
    H, W = size
    dh, dw = H - kh, W - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {H}x{W}: the size differences must be even and >= 0")
    if dh == 0 and dw == 0:
        return kernel
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(channels: int, groups: int, kernel_size: tuple[int, int], like: Tensor) -> Tensor:
    """The k×k (grouped) kernel of the identity map: one 1 at the centre of each channel's own filter."""
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"an identity has no centre in an even {kh}x{kw} kernel")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=like.dtype, device=like.device)
    out_idx = torch.arange(channels, device=like.device)
    kernel[out_idx, out_idx % per_group, kh // 2, kw // 2] = 1.0
    return kernel


def avg_pool_kernel(channels: int, groups: int, kernel_size: int, like: Tensor) -> Tensor:
    """A k×k average pool over each channel, written as a grouped conv kernel (C, C/groups, k, k).

    Expressed with the same ``groups`` as the conv before it so that :func:`compose_1x1_kxk` can merge them.
    """
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=like.dtype, device=like.device)
    out_idx = torch.arange(channels, device=like.device)
    kernel[out_idx, out_idx % per_group] = 1.0 / (kernel_size * kernel_size)
    return kernel


def compose_1x1_kxk(k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Merge ``x -> conv_k2(conv_1x1_k1(x) + b1) + b2`` into one k×k conv, both convs with ``groups``.

    k1: (M, C_in/g, 1, 1), b1: (M,), k2: (C_out, M/g, kh, kw), b2: (C_out,). Exact at the borders only if the
    intermediate map was padded with ``b1`` (DBB's BN-and-pad), which the branches do.
    """
    mid, in_per_group = k1.shape[:2]
    out_ch, mid_per_group, kh, kw = k2.shape
    if mid != mid_per_group * groups or k1.shape[-2:] != (1, 1):
        raise ValueError(f"incompatible kernels for a 1x1->kxk merge: {tuple(k1.shape)} then {tuple(k2.shape)}")
    a = k1.reshape(groups, mid_per_group, in_per_group)  # (g, m, i)
    b = k2.reshape(groups, out_ch // groups, mid_per_group, kh * kw)  # (g, o, m, t)
    kernel = torch.einsum("gomt,gmi->goit", b, a).reshape(out_ch, in_per_group, kh, kw)
    bias = b2 + torch.einsum("gomt,gm->go", b, b1.reshape(groups, mid_per_group)).reshape(out_ch)  # b2 may be 0-dim
    return kernel, bias
