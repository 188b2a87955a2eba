"""The geometry of the convolution a unit replaces: what every branch of the unit must produce."""

from __future__ import annotations

from dataclasses import dataclass

from torch.nn.modules.utils import _pair

__all__ = ["ConvGeometry"]


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of the convolution a unit replaces; every branch of the unit produces this conv's output."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def make(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
    ) -> ConvGeometry:
        """Normalise conv arguments; ``padding=None`` means "same" padding ``dilation * (k - 1) // 2``."""
        k, d = _pair(kernel_size), _pair(dilation)
        p = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d, strict=True)) if padding is None else _pair(padding)
        geom = cls(in_channels, out_channels, k, _pair(stride), p, d, groups)
        geom.validate()
        return geom

    def validate(self) -> None:
        for name in ("in_channels", "out_channels", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide in_channels={self.in_channels} and out_channels={self.out_channels}"
            )
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"invalid conv geometry {self}")

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1)

    @property
    def identity_is_legal(self) -> bool:
        """An identity branch needs the same channels, stride 1 and "same" padding with an odd kernel."""
        same = all(
            k % 2 == 1 and p == d * (k - 1) // 2
            for k, p, d in zip(self.kernel_size, self.padding, self.dilation, strict=True)
        )
        return self.in_channels == self.out_channels and self.stride == (1, 1) and same

    def branch_padding(self, kernel_size: tuple[int, int]) -> tuple[int, int]:
        """Padding that centres a smaller branch kernel inside the unit's kernel (may be negative: crop)."""
        pads = []
        for big, small, p, d in zip(self.kernel_size, kernel_size, self.padding, self.dilation, strict=True):
            if (big - small) % 2:
                raise ValueError(
                    f"a {kernel_size[0]}x{kernel_size[1]} branch cannot be centred in a "
                    f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel (use an odd kernel size)"
                )
            pads.append(p - d * (big - small) // 2)
        return pads[0], pads[1]
