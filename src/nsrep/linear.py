"""RepLinear: a re-parameterizable linear layer (K parallel linear branches plus a connectivity) -> one nn.Linear.

Stream axis convention for features and tokens: a RepLinear always takes and returns a stream set
``(S, *leading, D)`` whose dim 0 is the stream axis, never guessed from the rank (a token set ``(S, B, T, D)``
and an image batch ``(B, C, H, W)`` are both 4-D). A plain batch ``(B, D)`` or ``(B, T, D)`` enters a network
through :class:`nsrep.streams.StreamEntry` (adds a 1-stream axis) and leaves through
:class:`nsrep.streams.StreamSum` (sums the streams); both fold to identities.

Branch k is ``x -> W_k x + b_k`` (``bn=False``) or ``x -> BN_k(W_k x)`` (``bn=True``: a BatchNorm1d over the
features, whose statistics run over every leading position of every stream it is fed, i.e. all S_in·N pair
inputs, as each branch BN of a conv unit sees all S_in·B pairs; the linear bias would be cancelled by the BN,
so it is left out). All K branches run as one matmul over the stacked weights ``(K·D_out, D_in)`` and one
BatchNorm over K·D_out features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep import connectivity as conn
from nsrep.foldable import Foldable
from nsrep.units import DEFAULT_MAX_STREAMS
from nsrep.validation import check_choice

__all__ = ["DEFAULT_LINEAR_BRANCHES", "RepLinear"]

DEFAULT_LINEAR_BRANCHES = 4  # K, as the conv families' parallel 1×1 units (DESIGN §5, "convK"/"ns")


class RepLinear(Foldable):
    """K parallel linear branches joined by ``connectivity``; ``fold()`` -> one ``nn.Linear`` with bias.

    Input ``(in_streams, *leading, in_features)`` (at least one leading dim; the first is the sample axis that
    pair drop draws per), output ``(out_streams, *leading, out_features)``; streams out: block 1, ns K,
    naive ``S_in*K``. ``in_streams`` is a structural constant (the folded bias is ``S_in * sum_k b_k``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_branches: int = DEFAULT_LINEAR_BRANCHES,
        bn: bool = False,
        connectivity: str = "block",
        in_streams: int = 1,
        stochastic: float = 1.0,
        pair_drop: float = 0.0,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        super().__init__()
        check_choice("connectivity", connectivity, conn.CONNECTIVITIES)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(num_branches, int) or isinstance(num_branches, bool) or num_branches < 1:
            raise ValueError(f"num_branches must be a positive int, got {num_branches!r}")
        if not isinstance(in_streams, int) or isinstance(in_streams, bool) or in_streams < 1:
            raise ValueError(f"in_streams must be a positive int, got {in_streams!r}")
        if not 0.0 <= stochastic <= 1.0:
            raise ValueError(f"stochastic must be a probability in [0, 1], got {stochastic}")
        if not 0.0 <= pair_drop < 1.0:
            raise ValueError(f"pair_drop must be in [0, 1), got {pair_drop}")
        self.in_features, self.out_features = in_features, out_features
        self.connectivity = connectivity
        self.in_streams = in_streams
        self.stochastic, self.pair_drop = stochastic, pair_drop
        self.out_streams = conn.out_streams(connectivity, in_streams, num_branches)
        if self.out_streams > max_streams:
            raise ValueError(
                f"{connectivity!r} connectivity with {in_streams} input streams and {num_branches} branches "
                f"would emit {self.out_streams} streams, past max_streams={max_streams}; "
                "use connectivity='ns' (constant stream count)"
            )
        # Stacked branch weights: branch k is weight[k] (D_out, D_in), bias[k] (D_out).
        self.weight = nn.Parameter(torch.empty(num_branches, out_features, in_features))
        self.bias = None if bn else nn.Parameter(torch.empty(num_branches, out_features))
        self.bn = nn.BatchNorm1d(num_branches * out_features) if bn else None  # feature k*D_out + o: branch k
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

    @property
    def bias_multiplier(self) -> int:
        """How often each branch bias enters the aggregate: block sums the inputs first (1); ns/naive S_in."""
        return 1 if self.connectivity == "block" else self.in_streams

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[0] != self.in_streams or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} built for {self.in_streams} input streams of {self.in_features} features "
                f"got a tensor of shape {tuple(x.shape)}; expected (streams, *leading, features) with the stream "
                "axis first (a plain batch enters through nsrep.streams.StreamEntry)"
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
        if self.connectivity == "block":
            return pairs.sum(2).view(1, *leading, d)
        if self.training and self.pair_drop > 0:  # drop-path per (stream, sample, branch), shared over tokens
            b = leading[0]
            mask = conn.pair_drop_mask((s, b, 1, k, 1), self.pair_drop, pairs)
            pairs = (pairs.view(s, b, n // b, k, d) * mask).view(s, n, k, d)
        if self.connectivity == "naive":  # every pair its own stream, index k*S_in + s
            return pairs.permute(2, 0, 1, 3).reshape(k * s, *leading, d)
        partition = self._draw_partition(s, x.device)
        if partition is None:  # fixed grouping: output j = branch j over all streams
            return pairs.sum(0).transpose(0, 1).reshape(k, *leading, d)
        return conn.group_pairs_sbk(pairs, partition).view(k, *leading, d)  # (K, N, D_out) -> (K, *leading, D_out)

    def _draw_partition(self, s: int, device: torch.device) -> Tensor | None:
        """A fresh random partition with probability ``stochastic`` in training, else None (fixed grouping)."""
        if self.training and self.stochastic > 0 and torch.rand(()).item() < self.stochastic:
            return conn.random_partition(self.num_branches, s, device=device)
        return None

    @torch.no_grad()
    def branch_folds(self) -> list[tuple[Tensor, Tensor]]:
        """Each branch's eval-mode ``(weight (D_out, D_in), bias (D_out))`` in float64 (BN folded in)."""
        weight = self.weight.detach().double()
        k, d = self.num_branches, self.out_features
        if self.bn is None:
            bias = self.bias.detach().double()
            return [(weight[i], bias[i]) for i in range(k)]
        bn = self.bn
        if bn.running_mean is None:
            raise ValueError("a BatchNorm without running statistics cannot fold (track_running_stats=False)")
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (K*D_out,)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        scale, shift = scale.view(k, d), shift.view(k, d)
        return [(weight[i] * scale[i, :, None], shift[i]) for i in range(k)]

    @torch.no_grad()
    def fold_affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode ``(weight, bias)`` of the aggregate: ``sum_k W_k`` and ``bias_multiplier * sum_k b_k``,
        computed in float64 and rounded once to the unit's dtype."""
        folds = self.branch_folds()
        weight = torch.stack([f[0] for f in folds]).sum(0)
        bias = torch.stack([f[1] for f in folds]).sum(0) * self.bias_multiplier
        return weight.to(self.weight.dtype), bias.to(self.weight.dtype)

    def fold(self) -> nn.Linear:
        """A new ``nn.Linear`` (with bias) computing this unit's aggregate in eval mode, on the aggregate input."""
        weight, bias = self.fold_affine()
        linear = nn.Linear(self.in_features, self.out_features).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, num_branches={self.num_branches}, bn={self.bn is not None}, "
            f"connectivity={self.connectivity!r}, streams={self.in_streams}->{self.out_streams}"
        )
