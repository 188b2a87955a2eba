"""Seed statistics shared by the sweep report and the probe table: mean ± sample std, paired differences."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Cell", "Difference", "mean_std", "paired_difference", "pairwise_differences"]


@dataclass(frozen=True)
class Cell:
    """Mean and sample standard deviation of ``n`` values (std is nan for one value)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        spread = f" ± {self.std:.2f}" if not math.isnan(self.std) else ""
        return f"{self.mean:.2f}{spread} (n={self.n})"


@dataclass(frozen=True)
class Difference:
    """Mean paired difference and its 95% confidence interval over ``n`` seeds (nan bounds for n < 2).

    ``std`` is the sample std of the per-seed differences (sigma_d), the number that decides how many seeds an
    interval of a given width needs.
    """

    mean: float
    low: float
    high: float
    n: int
    std: float = float("nan")

    @property
    def half_width(self) -> float:
        """Half the 95% interval's width (nan for n < 2)."""
        return (self.high - self.low) / 2

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (a difference beyond the noise of these seeds)."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.2f} (n={self.n}, no interval)"
        mark = " *" if self.significant else ""
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n}){mark}"


def mean_std(values: Sequence[float]) -> Cell:
    """:class:`Cell` of ``values``."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return Cell(statistics.fmean(values), std, len(values))


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> Difference:
    """``values - reference`` paired by seed (seeds present in both), with a 95% t interval."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        raise ValueError("no seed is shared with the reference row; cannot pair the runs")
    diffs = [values[s] - reference[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Difference(mean, float("nan"), float("nan"), 1)
    from scipy.stats import t

    std = statistics.stdev(diffs)
    half = t.ppf(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
    return Difference(mean, mean - half, mean + half, len(diffs), std)


def pairwise_differences(rows: Mapping[str, Mapping[int, float]]) -> list[tuple[str, str, Difference]]:
    """Every two rows as ``(later, earlier, later - earlier)`` in the rows' order, paired by seed.

    Later minus earlier because a study lists its baseline first; pairs without a shared seed are left out.
    """
    labels = list(rows)
    return [
        (later, earlier, paired_difference(rows[later], rows[earlier]))
        for j, later in enumerate(labels)
        for earlier in labels[:j]
        if set(rows[later]) & set(rows[earlier])
    ]
