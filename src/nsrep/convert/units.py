"""Building the unit that replaces one ``Conv2d`` (+ the BatchNorm after it), fresh or preserving its function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nsrep.models.common import init_weights
from nsrep.nn.branches import ConvBN
from nsrep.nn.conv import RepConv2d, UnitConfig

__all__ = ["BIASLESS_CONVS", "INITS", "build_unit", "identity_running_var", "set_identity_bn"]

INITS = ("fresh", "preserve")
# what convert does with a conv that has neither a bias nor a BatchNorm after it: a unit, or kept plain
BIASLESS_CONVS = ("unit", "plain")


def _padding(conv: nn.Conv2d, name: str) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv {name!r} uses padding_mode={conv.padding_mode!r}; units pad with zeros only")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(f"conv {name!r} has padding='same' with an even kernel (asymmetric padding)")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


def build_unit(
    conv: nn.Conv2d, bn: nn.BatchNorm2d | None, in_streams: int, config: UnitConfig, init: str, name: str
) -> RepConv2d:
    """The unit for ``conv`` (followed by ``bn``, or not) at path ``name``, on the conv's device and dtype.

    ``init="fresh"``: nsrep's own init (He fan-out convs, unit BN affine). ``init="preserve"``: the same function
    in eval mode as ``bn(conv(x))`` (see :func:`preserve_function`).
    """
    if type(conv) is not nn.Conv2d:
        raise ValueError(f"{name!r} is a {type(conv).__name__}, not an nn.Conv2d")
    try:
        unit = RepConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            _padding(conv, name),
            conv.dilation,
            conv.groups,
            unit=config,
            in_streams=in_streams,
        )
    except ValueError as err:
        raise ValueError(f"cannot convert conv {name!r} ({conv}) into a {config.family!r} unit: {err}") from err
    unit.to(device=conv.weight.device, dtype=conv.weight.dtype)
    if init == "fresh":
        init_weights(unit)
    else:
        preserve_function(unit, conv, bn)
    return unit.train(conv.training)


def identity_running_var(eps: float, dtype: torch.dtype) -> float:
    """A running variance ``v`` with ``v + eps == 1`` exactly in ``dtype``, so that an eval BatchNorm with
    weight 1 and mean 0 multiplies by ``1/sqrt(1) = 1`` exactly (PyTorch adds ``eps`` in the tensor's dtype)."""
    if not 0 <= eps < 1:
        raise ValueError(f"cannot make a BatchNorm with eps={eps} the identity (needs 0 <= eps < 1)")
    one = torch.ones((), dtype=dtype)
    e = torch.tensor(eps, dtype=dtype)
    v = one - e
    for _ in range(16):
        total = v + e
        if total == one:
            return v.item()
        v = torch.nextafter(v, v + (one - total))
    raise AssertionError(f"no running variance makes v + {eps} == 1 in {dtype}")


@torch.no_grad()
def set_identity_bn(bn: nn.BatchNorm2d, bias: Tensor, where: str) -> None:
    """Make an eval-mode ``bn`` compute ``x + bias`` exactly: weight 1, running mean 0, ``var + eps == 1``."""
    if not bn.affine or bn.running_var is None:
        raise ValueError(f"BatchNorm {where!r} is not affine with running statistics, so it cannot hold a bias")
    bn.weight.fill_(1.0)
    bn.bias.copy_(bias)
    bn.running_mean.zero_()
    bn.running_var.fill_(identity_running_var(bn.eps, bn.running_var.dtype))


@torch.no_grad()
def preserve_function(unit: RepConv2d, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> None:
    """Make the unit's eval aggregate equal ``bn(conv(x))`` (or ``conv(x)`` without BN).

    The k×k branch (branch 0 of every family) gets the conv kernel and the BN; every other branch's final BN
    gets weight 0 and bias 0, so it outputs exactly 0 (eval and train). The unit's aggregate bias is
    ``bias_multiplier`` (S_in for ns) times its branches', so the k×k branch holds the original
    bias divided by it: BN bias and running mean both divided (``scale*(z - m/S) + b/S``), the scale untouched.
    """
    main = unit.branches[0]
    if not isinstance(main, ConvBN) or main.conv.weight.shape != conv.weight.shape:
        raise ValueError(f"the first branch of a {unit.config.family!r} unit is not the full conv")
    multiplier = unit.bias_multiplier
    main.conv.weight.copy_(conv.weight)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(main.bn.bias)
    if bn is None:
        set_identity_bn(main.bn, conv_bias / multiplier, "the k×k branch")
    else:
        main.bn.eps, main.bn.momentum = bn.eps, bn.momentum
        main.bn.weight.copy_(bn.weight)
        main.bn.running_var.copy_(bn.running_var)
        main.bn.bias.copy_(bn.bias / multiplier)
        main.bn.running_mean.copy_((bn.running_mean - conv_bias) / multiplier)
    for branch in unit.branches[1:]:
        final = branch.final_bn
        if final is None:
            raise ValueError(f"branch {type(branch).__name__} has no final BatchNorm to start at zero output")
        final.weight.zero_()
        final.bias.zero_()
