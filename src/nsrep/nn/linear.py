"""RepLinear: a re-parameterizable linear layer (K parallel linear branches plus a connectivity) -> one nn.Linear.

Stream axis convention for features and tokens: a RepLinear always takes and returns a stream set
``(S, *leading, D)`` whose dim 0 is the stream axis, never guessed from the rank (a token set ``(S, B, T, D)``
and an image batch ``(B, C, H, W)`` are both 4-D). A plain batch ``(B, D)`` or ``(B, T, D)`` enters a network
through :class:`nsrep.nn.streams.StreamEntry` (adds a 1-stream axis) and leaves through
:class:`nsrep.nn.streams.StreamSum` (sums the streams); both fold to identities.

Branch k is ``x -> W_k x + b_k`` (``bn=False``) or ``x -> BN_k(W_k x)`` (``bn=True``: a BatchNorm1d over the
features, whose statistics run over every leading position of every stream it is fed, i.e. all S_in·N pair
inputs, as each branch BN of a conv unit sees all S_in·B pairs; the linear bias would be cancelled by the BN,
so it is left out). All K branches run as one matmul over the stacked weights ``(K·D_out, D_in)`` and one
BatchNorm over K·D_out features.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn import kernels
from nsrep.nn.unit import RepUnit, UnitConfig, unit_config

__all__ = ["DEFAULT_LINEAR_BRANCHES", "LINEAR_FAMILIES", "RepLinear"]

DEFAULT_LINEAR_BRANCHES = 4  # K, as the conv families' parallel 1×1 units ("convK"/"ns")
# A linear unit's branches are K parallel linear layers: the "convK" family on a 1×1 geometry, or one ("plain").
LINEAR_FAMILIES = ("convK", "plain")


class RepLinear(RepUnit):
    """K parallel linear branches joined by ``connectivity``; ``fold()`` -> one ``nn.Linear`` with bias.

    Input ``(in_streams, *leading, in_features)`` (at least one leading dim; the first is the sample axis that
    pair drop draws per), output ``(out_streams, *leading, out_features)``; streams out: block 1, ns K,
    naive ``S_in*K``. ``in_streams`` is a structural constant (the folded bias is ``S_in * sum_k b_k``).
    Unit options come as one ``unit`` (family ``convK`` or ``plain``) or as its fields by keyword, as for
    ``RepConv2d`` (here ``family`` defaults to ``"convK"`` with ``num_branches`` 4).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        unit: UnitConfig | None = None,
        in_streams: int = 1,
        bn: bool = False,
        **unit_options: Any,
    ) -> None:
        if unit is None:
            unit_options.setdefault("family", "convK")
            if unit_options["family"] == "convK":
                unit_options.setdefault("num_branches", DEFAULT_LINEAR_BRANCHES)
        unit = unit_config(unit, **unit_options)
        if unit.family not in LINEAR_FAMILIES:
            raise ValueError(
                f"a linear unit takes family {' or '.join(map(repr, LINEAR_FAMILIES))}, got {unit.family!r}"
            )
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        k = unit.resolved_branches
        super().__init__(unit, in_streams, k)
        self.in_features, self.out_features = in_features, out_features
        # Stacked branch weights: branch k is weight[k] (D_out, D_in), bias[k] (D_out).
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        self.bias = None if bn else nn.Parameter(torch.empty(k, out_features))
        self.bn = nn.BatchNorm1d(k * out_features) if bn else None  # feature k*D_out + o: branch k
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each branch initialised as an ``nn.Linear`` of the same shape."""
        for k in range(self.num_branches):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.bn is not None:
            self.bn.reset_parameters()

    @property
    def num_branches(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[0] != self.in_streams or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} built for {self.in_streams} input streams of {self.in_features} features "
                f"got a tensor of shape {tuple(x.shape)}; expected (streams, *leading, features) with the stream "
                "axis first (a plain batch enters through nsrep.nn.streams.StreamEntry)"
            )
        if self.connectivity == "block" and x.shape[0] > 1:
            x = x.sum(0, keepdim=True)  # block-level: the unit sees the merged input
        s, leading = x.shape[0], x.shape[1:-1]
        n, k, d = math.prod(leading), self.num_branches, self.out_features
        flat = x.reshape(s * n, self.in_features)  # (S*N, D_in)
        if self.connectivity == "block" and self.bn is None:  # sum of affine branches: one branch of summed weights
            return F.linear(flat, self.weight.sum(0), self.bias.sum(0)).view(1, *leading, d)
        z = F.linear(flat, self.weight.view(k * d, self.in_features), None if self.bias is None else self.bias.view(-1))
        if self.bn is not None:
            z = self.bn(z)  # per-branch statistics over all S*N pair inputs
        pairs = z.view(s, n, k, d)  # pair (branch k, stream s) at [s, :, k]
        return self.combine_pairs(pairs, lambda: self._drop_mask(s, leading[0], n, pairs)).reshape(-1, *leading, d)

    def _drop_mask(self, s: int, b: int, n: int, like: Tensor) -> Tensor | None:
        """(S, N, K, 1) pair-drop mask in training, None when off: one draw per (stream, sample, branch),
        shared by a sample's tokens (N = B * tokens)."""
        mask = self._pair_drop_mask((s, b, 1, self.num_branches, 1), like)
        return None if mask is None else mask.expand(s, b, n // b, self.num_branches, 1).reshape(s, n, -1, 1)

    @torch.no_grad()
    def branch_folds(self) -> list[tuple[Tensor, Tensor]]:
        """Each branch's eval-mode ``(weight (D_out, D_in), bias (D_out))`` in float64 (BN folded in)."""
        weight = self.weight.detach().double()
        k, d = self.num_branches, self.out_features
        if self.bn is None:
            bias = self.bias.detach().double()
            return [(weight[i], bias[i]) for i in range(k)]
        bn = copy.deepcopy(self.bn).double()  # fold in float64, rounded once by fold_affine
        fused, shift = kernels.fuse_bn(weight.reshape(k * d, -1), bn, type(self).__name__)
        fused, shift = fused.view(k, d, -1), shift.view(k, d)
        return [(fused[i], shift[i]) for i in range(k)]

    def deploy_module(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, num_branches={self.num_branches}, bn={self.bn is not None}, "
            f"connectivity={self.connectivity!r}, streams={self.in_streams}->{self.out_streams}"
        )
