"""Quantization-aware units in the manner of QARepVGG (Chu et al., AAAI 2023/2024): one BN after the sum.

QARepVGG traces RepVGG's poor INT8 accuracy to the BNs of its 1×1 and identity branches: their learned
scales widen the folded kernel's range and the branch outputs' variance. Its unit keeps the k×k conv+BN,
drops the BN of the other branches and normalises the *sum* once. Here that rule applies to any family:
``qarepvgg`` (k×k+BN, 1×1, identity, BN after the sum) and ``qadbb`` (DBB's branches, only the k×k keeps its
final BN). Folding stays exact: the post-sum BN is affine in eval mode and applied to every output stream, so
the deployed conv is ``scale * sum_k W_k`` with bias ``scale * b + out_streams * shift``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nsrep.nn import kernels
from nsrep.nn.branches import NoNorm
from nsrep.nn.conv import RepConv2d
from nsrep.nn.families import QA_FAMILIES, norm_placement, strip_final_norms
from nsrep.nn.unit import UnitConfig, unit_config

__all__ = ["QA_FAMILIES", "NoNorm", "QARepConv2d", "conv_unit_class", "strip_final_norms"]


class QARepConv2d(RepConv2d):
    """A unit of a QA family: the family's branches, one final BN left (the k×k's), and a BN after the sum."""

    NORM = "sum"

    def __init__(self, *args: Any, unit: UnitConfig | None = None, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in UnitConfig.field_names() if name in kwargs}
        if unit is None:
            options.setdefault("family", "qarepvgg")
        config = unit_config(unit, **options)
        if config.family not in QA_FAMILIES:
            raise ValueError(f"QARepConv2d takes a QA family ({', '.join(QA_FAMILIES)}), got {config.family!r}")
        super().__init__(*args, unit=config, **kwargs)
        self.post_bn = nn.BatchNorm2d(self.geometry.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        # one BN for every output stream: statistics over all streams' samples (S*B), one affine
        return self.post_bn(y) if y.dim() == 4 else self.post_bn(y.flatten(0, 1)).view(y.shape)

    def post_affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode (scale, shift) of the BN after the sum (differentiable: running statistics)."""
        return kernels.bn_eval_affine(self.post_bn, "post-sum BN")

    @torch.no_grad()
    def fold_affine64(self) -> tuple[Tensor, Tensor]:
        kernel, bias = super().fold_affine64()
        scale, shift = (t.double() for t in self.post_affine())
        return kernel * scale.reshape(-1, 1, 1, 1), bias * scale + self.out_streams * shift

    def equivalent_kernel(self) -> Tensor:
        """The folded kernel, differentiable w.r.t. the branches and the post-sum BN."""
        scale, _ = self.post_affine()
        return sum(branch.affine()[0] for branch in self.branches) * scale.reshape(-1, 1, 1, 1)


def conv_unit_class(family: str) -> type[RepConv2d]:
    """The conv unit class that builds ``family``: where the family's norm sits decides (nsrep.nn.families)."""
    return QARepConv2d if norm_placement(family) == QARepConv2d.NORM else RepConv2d
