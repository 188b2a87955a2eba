"""Quantization-aware units in the manner of QARepVGG (Chu et al., AAAI 2023/2024): one BN after the sum.

QARepVGG traces RepVGG's poor INT8 accuracy to the BNs of its 1×1 and identity branches: their learned
scales widen the folded kernel's range and the branch outputs' variance. Its unit keeps the k×k conv+BN,
drops the BN of the other branches and normalises the *sum* once. Here that rule applies to any family:
``qarepvgg`` (k×k+BN, 1×1, identity, BN after the sum) and ``qadbb`` (DBB's branches, only the k×k keeps its
final BN). Folding stays exact: the post-sum BN is affine in eval mode and applied to every output stream, so
the deployed conv is ``scale * sum_k W_k`` with bias ``scale * b + out_streams * shift``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nsrep.nn import kernels
from nsrep.nn.branches import Branch
from nsrep.nn.conv import RepConv2d
from nsrep.nn.families import QA_FAMILIES
from nsrep.nn.unit import UnitConfig, unit_config

__all__ = ["QA_FAMILIES", "NoNorm", "QARepConv2d", "strip_final_norms"]


class NoNorm(nn.Module):
    """Stands in for a branch's removed final BN: identity, folding as scale 1, shift 0.

    It carries BatchNorm's eval attributes (statistics 0 and 1, eps 0, no affine) so that ``Branch.affine`` reads
    it unchanged; its eps, momentum and tracking differ from every real BN's, so the fused fast path (one BN
    over all branches) is never taken for a unit holding one: such units run the per-branch path.
    """

    eps = 0.0
    momentum = None
    track_running_stats = False
    weight = None
    bias = None

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x


def strip_final_norms(branches: Sequence[Branch]) -> list[Branch]:
    """The branches with every final BN but the first branch's (the k×k conv) replaced by :class:`NoNorm`."""
    for branch in branches[1:]:
        name = "bn2" if hasattr(branch, "bn2") else "bn"
        setattr(branch, name, NoNorm(getattr(branch, name).num_features))
    return list(branches)


class QARepConv2d(RepConv2d):
    """A unit of a QA family: the family's branches, one final BN left (the k×k's), and a BN after the sum."""

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

    def fold_affine(self) -> tuple[Tensor, Tensor]:
        kernel, bias = super().fold_affine()
        with torch.no_grad():
            scale, shift = (t.double() for t in self.post_affine())
            folded_kernel = kernel.double() * scale.reshape(-1, 1, 1, 1)
            folded_bias = bias.double() * scale + self.out_streams * shift
        return folded_kernel.to(kernel.dtype), folded_bias.to(kernel.dtype)

    def equivalent_kernel(self) -> Tensor:
        """The folded kernel, differentiable w.r.t. the branches and the post-sum BN."""
        scale, _ = self.post_affine()
        return sum(branch.affine()[0] for branch in self.branches) * scale.reshape(-1, 1, 1, 1)
