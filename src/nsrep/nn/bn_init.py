"""BatchNorm initialisations for units: where each branch's final BN scale γ starts.

A unit whose aggregate sums P batch-normalised pairs (P = K branches on a block-level unit, K·S_in pairs on a
branch-level one) starts with an aggregate up to P times a plain conv+BN's (√P for uncorrelated pairs): with
K = S_in = 4 an NS unit's output starts 16× the plain network's, and a residual block adds that to its
shortcut. These schemes change only starting values, never the structure, so folding stays exact:

- ``auto`` (default): ``scaled`` on branch-level units (``ns``/``naive``), ``ones`` on block-level ones, whose
  families' papers start at 1. Chosen from the CIFAR-10 runs in docs/results.md: ``scaled`` turned DBB-NS's
  slow, erratic start into plain's, while on block-level DBB it made no difference (3 seeds).
- ``ones``: every γ = 1 (torchvision's default and the authors' code).
- ``scaled``: each branch's final γ = 1/√P, so the aggregate of uncorrelated pairs starts at the plain scale.
- ``zero-residual``: final γ = 0 in every branch of the unit that ends a residual branch (torchvision's
  ``zero_init_residual``, Goyal et al. 2017): every residual block starts as its shortcut.
- ``scaled-zero-residual``: both.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nsrep.nn.conv import RepConv2d
from nsrep.validation import check_choice

__all__ = ["BN_INITS", "DEFAULT_BN_INIT", "apply_bn_init", "pairs_in_aggregate"]

BN_INITS = ("auto", "ones", "scaled", "zero-residual", "scaled-zero-residual")
DEFAULT_BN_INIT = "auto"


def pairs_in_aggregate(unit: nn.Module) -> int:
    """P: how many batch-normalised branch outputs the unit's aggregate sums (K, or K·S_in branch-level)."""
    return unit.num_branches * unit.bias_multiplier


@torch.no_grad()
def apply_bn_init(model: nn.Module, scheme: str) -> nn.Module:
    """Set every unit's branch-final BN scales of ``model`` by ``scheme`` (see BN_INITS); returns ``model``.

    Residual blocks name the child that ends their residual branch in ``residual_end``; a model without
    residual blocks (MobileNet) has no unit for the zero part to act on.
    """
    check_choice("bn_init", scheme, BN_INITS)
    if scheme == "ones":
        return model
    ending = set()
    if "zero-residual" in scheme:
        for block in model.modules():
            name = getattr(block, "residual_end", None)
            if name is not None:
                ending.add(id(getattr(block, name)))
    for unit in model.modules():
        if not isinstance(unit, RepConv2d):
            continue
        if id(unit) in ending:
            gamma = 0.0
        elif scheme.startswith("scaled") or (scheme == "auto" and unit.connectivity != "block"):
            gamma = 1.0 / math.sqrt(pairs_in_aggregate(unit))
        else:
            continue
        for branch in unit.branches:
            bn = getattr(branch, "final_bn", None)
            if bn is not None and bn.weight is not None:
                bn.weight.fill_(gamma)
    return model
