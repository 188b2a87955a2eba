"""The unit: what every re-parameterizable position shares, whatever its geometry (conv or linear).

A unit holds K parallel branches. Fed ``S_in`` streams it makes ``S_in * K`` pairs and joins them by its
connectivity (block, naive or ns). Everything here is independent of the branches' geometry: the typed
options (:class:`UnitConfig`), the stream counts, the random pair partition and pair drop of training, the
bias multiplier of the aggregate and ``fold()``. :class:`~nsrep.nn.conv.RepConv2d` and
:class:`~nsrep.nn.linear.RepLinear` add the geometry: how branches run and what they fold to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from nsrep.nn import connectivity as conn
from nsrep.nn.families import ALL_FAMILIES, resolve_num_branches
from nsrep.nn.foldable import Foldable
from nsrep.validation import check_choice

__all__ = ["DEFAULT_MAX_STREAMS", "RepUnit", "UnitConfig", "unit_config"]

DEFAULT_MAX_STREAMS = 64


@dataclass(frozen=True)
class UnitConfig:
    """What every unit of a network shares: which branches, how pairs connect, and the regularisers.

    The one place these options are declared and checked: ``create_model``, the layer factory, the units,
    ``TrainConfig`` and the command line all take their names, defaults and checks from here.
    """

    family: str = "plain"
    connectivity: str = "block"
    stochastic: float = 1.0  # probability that a training forward draws a fresh random partition (ns only)
    pair_drop: float = 0.0  # drop-path rate on individual pairs, training only
    num_branches: int | None = None  # K for mobileone / convK / ns 1×1 units; None = family default
    max_streams: int = DEFAULT_MAX_STREAMS  # refuse networks whose stream count would pass this

    def __post_init__(self) -> None:
        check_choice("family", self.family, ALL_FAMILIES)
        check_choice("connectivity", self.connectivity, conn.CONNECTIVITIES)
        if self.num_branches is not None and (
            not isinstance(self.num_branches, int) or isinstance(self.num_branches, bool)
        ):
            raise ValueError(f"num_branches must be a positive int or None, got {self.num_branches!r}")
        resolve_num_branches(self.family, self.num_branches)
        if not 0.0 <= self.stochastic <= 1.0:
            raise ValueError(f"stochastic must be a probability in [0, 1], got {self.stochastic}")
        if not 0.0 <= self.pair_drop < 1.0:
            raise ValueError(f"pair_drop must be in [0, 1), got {self.pair_drop}")
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")

    @property
    def resolved_branches(self) -> int:
        """K of this family: the given ``num_branches`` or the family default."""
        return resolve_num_branches(self.family, self.num_branches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls)}


def unit_config(unit: UnitConfig | None = None, /, **options: Any) -> UnitConfig:
    """A :class:`UnitConfig` from a given one, from keywords, or from a given one updated by keywords.

    Keywords whose value is ``None`` count as not given; unknown keywords raise naming the valid ones.
    """
    for key in options:
        check_choice("unit option", key, UnitConfig.field_names())
    options = {k: v for k, v in options.items() if v is not None}
    if unit is None:
        return UnitConfig(**options)
    if not isinstance(unit, UnitConfig):
        raise TypeError(f"unit must be an nsrep UnitConfig, got {type(unit).__name__}")
    return replace(unit, **options) if options else unit


class RepUnit(Foldable):
    """Base of the re-parameterizable units: K branches joined by a connectivity over ``in_streams`` streams.

    ``in_streams`` is a structural constant fixed when the network is built, never learnt from a forward (the
    authors' code sets it in ``forward``, so a freshly loaded checkpoint folds with wrong biases). Subclasses
    give the geometry: ``num_branches``, ``branch_folds()`` (each branch's eval-mode ``(weight, bias)`` in
    float64) and ``deploy_module()`` (the empty plain layer the unit folds into).
    """

    def __init__(self, config: UnitConfig, in_streams: int, num_branches: int) -> None:
        super().__init__()
        if not isinstance(in_streams, int) or isinstance(in_streams, bool) or in_streams < 1:
            raise ValueError(f"in_streams must be a positive int, got {in_streams!r}")
        if num_branches < 1:
            raise ValueError("a unit needs at least one branch")
        self.config = config
        self.in_streams = in_streams
        self.out_streams = conn.out_streams(config.connectivity, in_streams, num_branches)
        if self.out_streams > config.max_streams:
            raise ValueError(
                f"{config.connectivity!r} connectivity with {in_streams} input streams and {num_branches} "
                f"branches would emit {self.out_streams} streams, past max_streams={config.max_streams}; "
                "use connectivity='ns' (constant stream count) or a smaller network"
            )

    @property
    def num_branches(self) -> int:
        raise NotImplementedError

    @property
    def connectivity(self) -> str:
        return self.config.connectivity

    @property
    def bias_multiplier(self) -> int:
        """How often each branch bias enters the aggregate: block sums the inputs first (1); ns/naive S_in."""
        return 1 if self.connectivity == "block" else self.in_streams

    # --- training-time randomness, drawn alike by every geometry and implementation --------------------------
    def _draw_partition(self, s: int, device: torch.device) -> Tensor | None:
        """The training partition: fresh and random with probability ``stochastic``, else the fixed grouping;
        None when it is always the fixed grouping (eval, or ``stochastic=0``).

        The coin and the permutation stay tensors (no ``.item()``): under ``torch.compile`` a fresh partition
        is data flowing through one graph, not a Python branch or constants that break or recompile it.
        """
        probability = self.config.stochastic
        if not self.training or probability <= 0:
            return None
        # the coin first and on the CPU generator, as before: seeded runs draw the partitions they always drew.
        # It is used even when stochastic=1 (always true): a compiled graph would drop an unused draw, and its
        # random stream would then part from eager's
        coin = torch.rand(())
        partition = conn.random_partition(self.num_branches, s, device=device)
        fixed = conn.fixed_partition(self.num_branches, s, device=device)
        return torch.where(coin.to(device) < probability, partition, fixed)

    def _pair_drop_mask(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A pair-drop mask of ``shape`` in training, None when pair drop is off or in eval mode."""
        if not self.training or self.config.pair_drop <= 0:
            return None
        return conn.pair_drop_mask(shape, self.config.pair_drop, like)

    def combine_pairs(self, pairs: Tensor, drop_mask: Callable[[], Tensor | None]) -> Tensor:
        """The output streams of pairs laid out ``(S_in, B, K, *features)`` (pair ``k * S_in + s`` is branch k
        on stream s), for every unit and implementation: block sums the branches (one stream), naive keeps every
        pair (stream ``k * S_in + s``), ns sums the groups of a partition (fixed: group j is branch j). Outside
        block, ``drop_mask()`` (broadcastable to ``pairs``; None when pair drop is off) is drawn first, then the
        partition, so every implementation consumes the random stream alike."""
        if self.connectivity == "block":
            return pairs.sum(2)
        mask = drop_mask()
        if mask is not None:
            pairs = pairs * mask
        if self.connectivity == "naive":
            return pairs.movedim(2, 0).flatten(0, 1)
        partition = self._draw_partition(pairs.shape[0], pairs.device)
        if partition is None:  # fixed grouping: output j = branch j over all streams
            return pairs.sum(0).movedim(1, 0)
        return conn.group_pairs_sbk(pairs, partition)

    # --- folding ----------------------------------------------------------------------------------------------
    def branch_folds(self) -> list[tuple[Tensor, Tensor]]:
        """Each branch's eval-mode ``(weight, bias)`` in float64."""
        raise NotImplementedError

    def deploy_module(self) -> nn.Module:
        """The plain layer (with bias) this unit folds into, freshly built."""
        raise NotImplementedError

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def fold_affine64(self) -> tuple[Tensor, Tensor]:
        """Eval-mode ``(weight, bias)`` of the aggregate in float64: ``sum_k W_k`` and ``bias_multiplier *
        sum_k b_k`` (a unit with more after the sum, e.g. a QA unit's BN, extends this)."""
        folds = self.branch_folds()
        weight = torch.stack([f[0] for f in folds]).sum(0)
        bias = torch.stack([f[1] for f in folds]).sum(0) * self.bias_multiplier
        return weight, bias

    def fold_affine(self) -> tuple[Tensor, Tensor]:
        """:meth:`fold_affine64` rounded once to the unit's dtype."""
        weight, bias = self.fold_affine64()
        return weight.to(self._dtype()), bias.to(self._dtype())

    def fold(self) -> nn.Module:
        """A new plain layer (with bias) computing this unit's aggregate in eval mode."""
        weight, bias = self.fold_affine()
        layer = self.deploy_module().to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return layer
