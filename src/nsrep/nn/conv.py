"""Units: one re-parameterizable conv position — parallel branches plus a connectivity — folding to one conv.

A unit receives a stream set ``(S_in, B, C, H, W)`` (a 4-D batch counts as one stream without the stream
axis), evaluates every branch on every stream (``S_in * K`` pairs) and combines the pairs by its
connectivity. ``S_in`` is a structural constant fixed when the network is built, never learnt from a forward
(the authors' code sets it in ``forward``, so a freshly loaded checkpoint folds with wrong biases).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn.branches import Branch
from nsrep.nn.families import build_branches, norm_placement
from nsrep.nn.fused import can_fuse, fused_pair_outputs, interleave_groups, split_groups
from nsrep.nn.geometry import ConvGeometry
from nsrep.nn.unit import DEFAULT_MAX_STREAMS, RepUnit, UnitConfig, unit_config
from nsrep.validation import check_choice

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "IMPLEMENTATIONS",
    "RepConv2d",
    "UnitConfig",
    "make_deploy_conv",
    "reference_copy",
    "set_implementation",
]

# "fast": conv branches merged into one conv call + one BN per kernel shape, sequential branches composed
# online (nsrep/nn/fused.py); "fast-padded": every conv branch in one call with zero-padded k×k kernels (fewest
# calls, more multiply-adds); "reference": every branch runs its own layers. Same outputs, same gradients.
IMPLEMENTATIONS = ("fast", "fast-padded", "reference")
# RepConv2d's own default family when neither a UnitConfig nor a family is given
DEFAULT_UNIT_FAMILY = "dbb"


def make_deploy_conv(geometry: ConvGeometry) -> nn.Conv2d:
    """The deployed conv of a unit: built here for both ``deploy=True`` and ``fold()`` so they never differ."""
    g = geometry
    return nn.Conv2d(
        g.in_channels,
        g.out_channels,
        g.kernel_size,
        stride=g.stride,
        padding=g.padding,
        dilation=g.dilation,
        groups=g.groups,
        bias=True,
    )


class RepConv2d(RepUnit):
    """A re-parameterizable conv: branches of ``family`` joined by ``connectivity``; ``fold()`` -> ``nn.Conv2d``.

    Unit options come as one ``unit`` (a :class:`UnitConfig`, as the layer factory passes it) or as its fields
    by keyword (``family``, ``connectivity``, ``stochastic``, ``pair_drop``, ``num_branches``, ``max_streams``;
    ``family`` defaults to ``"dbb"`` here); keywords given beside ``unit`` override its fields. ``branches``
    replaces the family's list with the caller's own modules (each must be a :class:`Branch` to fold). Output
    streams: block 1, naive ``S_in*K``, ns ``K``.
    """

    NORM = "branches"  # where the families this class builds keep their BNs (nsrep.nn.families.norm_placement)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        *,
        unit: UnitConfig | None = None,
        in_streams: int = 1,
        branches: Sequence[nn.Module] | None = None,
        **unit_options: Any,
    ) -> None:
        if unit is None:
            unit_options.setdefault("family", DEFAULT_UNIT_FAMILY)
        config = unit_config(unit, **unit_options)
        if norm_placement(config.family) != self.NORM:  # a QA family's BN after the sum lives in QARepConv2d
            raise ValueError(f"family {config.family!r} units are nsrep.nn.qa.QARepConv2d, not RepConv2d")
        geometry = ConvGeometry.make(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        if branches is None:
            branches = build_branches(config.family, geometry, config.num_branches)
        super().__init__(config, in_streams, len(branches))
        self.geometry = geometry
        self.branches = nn.ModuleList(branches)
        self.implementation = "fast"
        self._fold_cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def forward(self, x: Tensor) -> Tensor:
        single = x.dim() == 4
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 5 or x.shape[0] != self.in_streams:
            raise ValueError(
                f"{type(self).__name__} built for {self.in_streams} input streams got a tensor of shape "
                f"{tuple(x.shape)}; expected (streams, batch, channels, height, width)"
                + (" or a 4-D batch for one stream" if self.in_streams == 1 else "")
            )
        if self.connectivity == "block" and x.shape[0] > 1:
            x = x.sum(0, keepdim=True)  # block-level: the unit sees the merged input
        if self.implementation == "reference" or not can_fuse(self.branches):
            y = self._forward_reference(x)
        elif self.training:
            y = self._forward_fast(x)
        elif self._has_running_stats():
            y = self._forward_eval_folded(x)
        else:  # eval with batch-statistics BNs (track_running_stats=False) does not fold
            y = self._forward_reference(x)
        return y[0] if single and y.shape[0] == 1 else y

    # --- reference: each branch runs its own layers, pairs stacked as (K, S, B, C, H, W) -------------------
    def _forward_reference(self, x: Tensor) -> Tensor:
        s, b = x.shape[:2]
        flat = x.reshape(s * b, *x.shape[2:])  # free view for contiguous stream sets: (S*B, C, H, W)
        outs = [branch(flat) for branch in self.branches]
        pairs = torch.stack(outs).view(len(outs), s, b, *outs[0].shape[1:])  # pair index k * S_in + s
        return self.combine_pairs(pairs.permute(1, 2, 0, 3, 4, 5), lambda: self._drop_mask(s, b, pairs))

    # --- fast: pairs laid out as (S, B, K, C, H, W) straight from one merged conv ---------------------------
    def _forward_fast(self, x: Tensor) -> Tensor:
        self._fold_cache = None  # training changes the weights: do not hold stale eval kernels
        s, b = x.shape[:2]
        flat = x.reshape(s * b, *x.shape[2:])
        padded = self.implementation == "fast-padded"
        y = fused_pair_outputs(self.branches, self.geometry, flat, training=True, padded=padded)
        y = y.view(s, b, *y.shape[1:])  # (S, B, K, C, H, W)
        return self.combine_pairs(y, lambda: self._drop_mask(s, b, y))

    def _has_running_stats(self) -> bool:
        return all(m.running_mean is not None for m in self.modules() if isinstance(m, nn.BatchNorm2d))

    def _folded_branches(self) -> tuple[Tensor, Tensor]:
        """Per-branch eval kernels (K, C_out, C_in/g, kh, kw) and biases (K, C_out).

        Cached for no-grad evaluation while no parameter or statistic has changed (keyed on each tensor's
        storage and in-place version counter): composing the sequential branches costs C_in·hidden·C_out·k²
        per unit whatever the batch, which would dominate small-batch validation.
        """
        if torch.compiler.is_compiling():  # a compiled graph recomposes in-graph: no storage keys, no Python cache
            folded = [branch.affine() for branch in self.branches]
            return torch.stack([f[0] for f in folded]), torch.stack([f[1] for f in folded])
        tensors = [*self.parameters(), *self.buffers()]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        cacheable = not torch.is_grad_enabled()
        if cacheable and self._fold_cache is not None and self._fold_cache[0] == key:
            return self._fold_cache[1]
        if cacheable:
            folded = self.branch_folds()
            dtype = tensors[0].dtype
            result = torch.stack([f[0] for f in folded]).to(dtype), torch.stack([f[1] for f in folded]).to(dtype)
        else:  # keep the graph: gradients may be wanted through an eval forward
            folded = [branch.affine() for branch in self.branches]
            result = torch.stack([f[0] for f in folded]), torch.stack([f[1] for f in folded])
        self._fold_cache = (key, result) if cacheable else None
        return result

    def _forward_eval_folded(self, x: Tensor) -> Tensor:
        """Eval mode: each branch folded with running statistics; ns/block run on the aggregate only."""
        g = self.geometry
        k = self.num_branches
        weight, bias = self._folded_branches()
        s, b = x.shape[:2]
        if self.connectivity == "block":
            return F.conv2d(x[0], weight.sum(0), bias.sum(0), g.stride, g.padding, g.dilation, g.groups)[None]
        if self.connectivity == "ns":  # fixed grouping: y_j = sum_s f_j(x_s) = W_j A + S_in b_j
            inputs, bias = x.sum(0), bias * s
        else:
            inputs = x.reshape(s * b, *x.shape[2:])
        z = F.conv2d(
            inputs,
            interleave_groups(weight.flatten(0, 1), k, g.groups),
            interleave_groups(bias.flatten(), k, g.groups),
            g.stride,
            g.padding,
            g.dilation,
            g.groups,
        )
        z = split_groups(z, k, g.groups)  # (N, K, C, H, W)
        if self.connectivity == "ns":
            return z.transpose(0, 1)
        return z.view(s, b, *z.shape[1:]).permute(2, 0, 1, 3, 4, 5).flatten(0, 1)

    def _drop_mask(self, s: int, b: int, like: Tensor) -> Tensor | None:
        """(S, B, K, 1, 1, 1) pair-drop mask in training, None when off; drawn as (K, S, B) by both
        implementations, so a seed drops the same pairs in either."""
        mask = self._pair_drop_mask((self.num_branches, s, b, 1, 1, 1), like)
        return None if mask is None else mask.permute(1, 2, 0, 3, 4, 5)

    @torch.no_grad()
    def branch_folds(self) -> list[tuple[Tensor, Tensor]]:
        """Each branch's eval-mode ``(kernel, bias)``, computed in float64 and rounded once to the unit's dtype
        (the most accurate deploy weights a float32 or half-precision unit can have)."""
        for i, branch in enumerate(self.branches):
            if not isinstance(branch, Branch):
                raise ValueError(
                    f"branch {i} ({type(branch).__name__}) of this {self.config.family!r} unit cannot fold: "
                    "it is not an nsrep Branch with an affine() giving (kernel, bias)"
                )
        dtype = next(self.branches.parameters()).dtype
        branches = self.branches
        if dtype != torch.float64:
            branches = copy.deepcopy(branches).double()
        folds = []
        for i, branch in enumerate(branches):
            try:
                kernel, bias = branch.affine()
            except NotImplementedError as error:
                raise ValueError(
                    f"branch {i} ({type(branch).__name__}) of this {self.config.family!r} unit cannot fold: {error}"
                ) from None
            if kernel.shape != self._kernel_shape():
                raise ValueError(
                    f"branch {i} ({type(branch).__name__}) folds to a kernel of shape {tuple(kernel.shape)}, "
                    f"expected {self._kernel_shape()}"
                )
            folds.append((kernel, bias))
        return folds

    def equivalent_kernel(self) -> Tensor:
        """The deployed conv's kernel ``sum_k W_k`` in the unit's dtype, differentiable w.r.t. the branches
        (running BN statistics): what equivalent-kernel weight decay penalises (nsrep.train.regularize)."""
        return sum(branch.affine()[0] for branch in self.branches)

    def _kernel_shape(self) -> torch.Size:
        g = self.geometry
        return torch.Size((g.out_channels, g.in_channels // g.groups, *g.kernel_size))

    def deploy_module(self) -> nn.Conv2d:
        return make_deploy_conv(self.geometry)

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
            f"padding={g.padding}, dilation={g.dilation}, groups={g.groups}, family={self.config.family!r}, "
            f"connectivity={self.connectivity!r}, streams={self.in_streams}->{self.out_streams}"
        )


def reference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose units run every branch on its own (the per-branch "reference" path).

    The fast eval path applies folded kernels itself, so checks of folding compare against this copy.
    """
    return set_implementation(copy.deepcopy(model), "reference")


def set_implementation(model: nn.Module, implementation: str) -> nn.Module:
    """Switch every unit of ``model`` to the ``fast`` or ``reference`` implementation (same function)."""
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    for m in model.modules():
        if isinstance(m, RepConv2d):
            m.implementation = implementation
    return model
