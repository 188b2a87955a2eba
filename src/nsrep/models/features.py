"""Multi-scale features for dense prediction: ``features_only``/``out_indices`` and ``feature_info`` (timm's names).

A feature map handed to the user is always an ordinary batch ``(B, C, H, W)``: in the training form it is the
aggregate of the stream set at that point (the sum over streams), which in eval mode is exactly the
deployed network's map, so a user's neck or head never sees stream sets and folds with the backbone unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from torch import Tensor, nn

from nsrep.models.common import ClassifierHead
from nsrep.models.factory import LayerFactory

__all__ = ["Backbone", "FeatureInfo", "FeatureLevel", "FeatureTaps", "check_out_indices"]


@dataclass(frozen=True)
class FeatureLevel:
    """One feature level: its channels, its reduction (input side / map side) and the module that ends it."""

    num_chs: int
    reduction: int
    module: str

    def as_dict(self) -> dict[str, int | str]:
        return {"num_chs": self.num_chs, "reduction": self.reduction, "module": self.module}


class FeatureInfo(Sequence[FeatureLevel]):
    """The feature levels a model returns, in order; ``channels()``/``reduction()``/``module_name()`` as timm's.

    Each accessor takes an optional position (an int or a sequence of them) into this list and returns a list
    for all levels when given none.
    """

    def __init__(self, levels: Sequence[FeatureLevel], out_indices: Sequence[int]) -> None:
        self._levels = tuple(levels)
        self.out_indices = tuple(out_indices)  # the levels' indices among all levels of the architecture

    @overload
    def __getitem__(self, index: int) -> FeatureLevel: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[FeatureLevel]: ...
    def __getitem__(self, index):
        return self._levels[index]

    def __len__(self) -> int:
        return len(self._levels)

    def __iter__(self) -> Iterator[FeatureLevel]:
        return iter(self._levels)

    def _get(self, key: str, idx: int | Sequence[int] | None) -> list | int | str:
        if idx is None:
            return [getattr(level, key) for level in self._levels]
        if isinstance(idx, int):
            return getattr(self._levels[idx], key)
        return [getattr(self._levels[i], key) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> list[int] | int:
        return self._get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> list[str] | str:
        return self._get("module", idx)

    def get_dicts(self) -> list[dict[str, int | str]]:
        return [level.as_dict() for level in self._levels]

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, levels={self.get_dicts()})"


def check_out_indices(out_indices: Sequence[int] | None, num_levels: int) -> tuple[int, ...]:
    """``out_indices`` as sorted non-negative indices (None: every level); negative ones count from the end.

    Raises ``ValueError`` naming a bad index and the accepted range, or a repeated index.
    """
    if out_indices is None:
        return tuple(range(num_levels))
    if isinstance(out_indices, int | str) or not isinstance(out_indices, Sequence):
        raise ValueError(f"out_indices must be a sequence of ints, got {out_indices!r}")
    if len(out_indices) == 0:
        raise ValueError(f"out_indices is empty; give at least one of 0..{num_levels - 1}")
    accepted = f"0..{num_levels - 1} (or -{num_levels}..-1 from the end)"
    normalised = []
    for index in out_indices:
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"out_indices entry {index!r} is not an int; accepted: {accepted}")
        if not -num_levels <= index < num_levels:
            raise ValueError(f"out_indices entry {index} is out of range; accepted: {accepted}")
        normalised.append(index % num_levels)
    if len(set(normalised)) != len(normalised):
        raise ValueError(f"out_indices {tuple(out_indices)} names a level twice")
    return tuple(sorted(normalised))


class FeatureTaps(nn.Module):
    """Turns the stream sets at the chosen levels into plain maps: a stream sum each (identity when deployed).

    Holds no parameters, so a feature network's state dict is its backbone's, training and deployed alike.
    """

    def __init__(self, layers: LayerFactory, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.merges = nn.ModuleList(layers.merge() for _ in self.out_indices)

    def tap(self, level: int, x: Tensor, features: list[Tensor]) -> None:
        """Append the aggregate of ``x`` if ``level`` is one of the chosen levels."""
        if level in self.out_indices:
            features.append(self.merges[self.out_indices.index(level)](x))

    @property
    def last(self) -> int:
        return self.out_indices[-1]


class Backbone(nn.Module):
    """What every architecture shares at its output end: the chosen feature levels, then either the taps of
    those levels (``features_only``) or the classifier head, and a ``forward`` that picks between them.

    A subclass calls :meth:`_choose_levels` before building its stages (it may stop at the last chosen level)
    and :meth:`_attach_output` after; it defines ``forward_features`` (stem and stages) and ``forward_levels``.
    """

    def _choose_levels(
        self, levels: Sequence[FeatureLevel], out_indices: Sequence[int] | None, features_only: bool
    ) -> tuple[int, ...]:
        """Check ``out_indices`` against ``levels``; record ``feature_info``; return the chosen indices."""
        if out_indices is not None and not features_only:
            raise ValueError(f"out_indices={out_indices!r} applies only with features_only=True")
        indices = check_out_indices(out_indices, len(levels))
        self.features_only = features_only
        self.feature_info = FeatureInfo([levels[i] for i in indices], indices)
        return indices

    def _attach_output(self, layers: LayerFactory, in_channels: int, num_classes: int) -> None:
        """The feature taps of the chosen levels, or the classifier head on ``in_channels``."""
        if self.features_only:
            self.taps = FeatureTaps(layers, self.feature_info.out_indices)
        else:
            self.head = ClassifierHead(layers, in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            return self.forward_levels(x)
        return self.head(self.forward_features(x))
