"""Stream sets: a branch-level network carries S feature maps, stored streams-first as ``(S, B, C, H, W)``.

Streams-first makes a conv over all streams one call on the free view ``(S*B, C, H, W)``. The deployed
network computes exactly the aggregate ``A = sum_s x_s`` (docs/architecture.md).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from nsrep.nn.foldable import Foldable

__all__ = [
    "Add",
    "StreamAdd",
    "StreamEntry",
    "StreamSum",
    "add_streams",
    "aggregate",
    "spread",
    "streams_out",
]


def aggregate(x: Tensor) -> Tensor:
    """``A = sum over streams``: (S, B, ...) -> (B, ...)."""
    return x.sum(0)


def spread(x: Tensor, m: int) -> Tensor:
    """Spread each of S streams as ``x/m`` over m streams: (S, B, ...) -> (S*m, B, ...); aggregate preserved."""
    if m == 1:
        return x
    return (x / m).unsqueeze(1).expand(x.shape[0], m, *x.shape[1:]).reshape(x.shape[0] * m, *x.shape[1:])


def add_streams(a: Tensor, b: Tensor, max_streams: int = 64) -> Tensor:
    """Residual add of two stream sets, aggregate preserved.

    Equal counts add stream-wise; otherwise both sides are spread to ``lcm(S_a, S_b)`` streams, which is the
    larger count when one divides the other (a 1-stream shortcut). Stricter rules (raise unless one count
    divides the other) break families whose identity branch exists only where it is legal
    (repvgg, mobileone) give neighbouring units 2 and 3 streams in an ordinary ResNet, and the lcm spread is
    the exact, bounded continuation. Counts whose lcm passes ``max_streams`` are refused.
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"residual add of stream sets with different feature shapes: {tuple(a.shape)} and {tuple(b.shape)} "
            "(shapes are (streams, batch, channels, height, width))"
        )
    sa, sb = a.shape[0], b.shape[0]
    if sa == sb:
        return a + b
    target = math.lcm(sa, sb)
    if target > max_streams:
        raise ValueError(
            f"residual add of {sa} and {sb} streams would need lcm={target} streams, past max_streams={max_streams}"
        )
    return spread(a, target // sa) + spread(b, target // sb)


def streams_out(module: nn.Module, streams_in: int) -> int:
    """How many streams ``module`` emits for ``streams_in`` incoming (plain modules keep the count)."""
    return int(getattr(module, "out_streams", streams_in))


class StreamEntry(Foldable):
    """Turns an image batch (B, C, H, W) into a one-stream set (1, B, C, H, W)."""

    out_streams = 1

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(0)

    def fold(self) -> nn.Module:
        return nn.Identity()


class StreamSum(Foldable):
    """Sums the streams before ops that are not stream-aware (the head): (S, B, ...) -> (B, ...)."""

    def forward(self, x: Tensor) -> Tensor:
        return aggregate(x)

    def fold(self) -> nn.Module:
        return nn.Identity()


class Add(nn.Module):
    """Plain residual add, the deploy form of :class:`StreamAdd`."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class StreamAdd(Foldable):
    """Residual add of two stream sets whose counts are structural constants known when the net is built."""

    def __init__(self, a_streams: int, b_streams: int, max_streams: int = 64) -> None:
        super().__init__()
        self.a_streams, self.b_streams, self.max_streams = a_streams, b_streams, max_streams
        self.out_streams = a_streams if a_streams == b_streams else math.lcm(a_streams, b_streams)
        if self.out_streams > max_streams:
            raise ValueError(
                f"residual add of {a_streams} and {b_streams} streams would need {self.out_streams} streams, "
                f"past max_streams={max_streams}"
            )

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if (a.shape[0], b.shape[0]) != (self.a_streams, self.b_streams):
            raise ValueError(
                f"StreamAdd built for {self.a_streams} + {self.b_streams} streams got "
                f"{a.shape[0]} + {b.shape[0]} (shapes {tuple(a.shape)} and {tuple(b.shape)})"
            )
        return add_streams(a, b, self.max_streams)

    def fold(self) -> nn.Module:
        return Add()

    def extra_repr(self) -> str:
        return f"{self.a_streams} + {self.b_streams} -> {self.out_streams} streams"
