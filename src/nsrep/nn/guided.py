"""Guided ops: non-linearities on stream sets that take their decision from the aggregate (paper Alg. 2).

For an activation ``phi(a) = a * g(a)`` every stream becomes ``x_s * g(A)`` with ``A = sum_s x_s``, so the
streams sum to ``phi(A)``: exactly what the deployed network computes. Guided ReLU is the paper's Eq. 9
(``g = 1[A > 0]``); LeakyReLU, SiLU, GELU and Hardswish go beyond the paper (needed for MobileNetV2/V3 and
MLPs); ReLU6 adds its constant part split as ``6/S``. Gradients flow through ``g(A)`` too, so the summed
streams also have the deployed activation's gradient. Every module accepts a 4-D tensor as one stream.

That 4-D rule serves conv networks, whose stream sets are 5-D; it is ambiguous for token tensors, where a
stream set ``(S, B, T, D)`` is 4-D too. Feature and token networks therefore wrap the activation in
:class:`GuidedFeatureActivation`, for which dim 0 is always the stream axis, whatever the rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn.foldable import Foldable

__all__ = [
    "GuidedActivation",
    "GuidedFeatureActivation",
    "GuidedGELU",
    "GuidedHardswish",
    "GuidedLeakyReLU",
    "GuidedMaxPool2d",
    "GuidedReLU",
    "GuidedReLU6",
    "GuidedSiLU",
]


class GuidedActivation(Foldable):
    """``x_s -> x_s * g(A)`` over a stream set (S, B, ...). Subclasses give ``gate`` (g), ``activate`` (the
    plain function, used for one stream or a 4-D batch, where the guided op is exactly the plain op) and
    ``plain`` (the deploy module)."""

    def gate(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def activate(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def plain(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # an image batch without stream axis (the conv networks' convention)
            return self.activate(x)
        return self.on_streams(x)

    def on_streams(self, x: Tensor) -> Tensor:
        """The guided op on a stream set whose dim 0 is the stream axis, of any rank: (S, *leading)."""
        if x.shape[0] == 1:  # one stream is its own aggregate: the guided op is the plain op
            return self.activate(x)
        return x * self.gate(x.sum(0)).unsqueeze(0)

    def fold(self) -> nn.Module:
        return self.plain()


class GuidedReLU(GuidedActivation):
    """Paper Eq. 9: mask ``1[A > 0]`` from the aggregate, applied to every stream."""

    def gate(self, a: Tensor) -> Tensor:
        return (a > 0).to(a.dtype)

    def activate(self, a: Tensor) -> Tensor:
        return F.relu(a)

    def plain(self) -> nn.Module:
        return nn.ReLU()


class GuidedLeakyReLU(GuidedActivation):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def gate(self, a: Tensor) -> Tensor:
        return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, self.negative_slope))

    def activate(self, a: Tensor) -> Tensor:
        return F.leaky_relu(a, self.negative_slope)

    def plain(self) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GuidedSiLU(GuidedActivation):
    def gate(self, a: Tensor) -> Tensor:
        return torch.sigmoid(a)

    def activate(self, a: Tensor) -> Tensor:
        return F.silu(a)

    def plain(self) -> nn.Module:
        return nn.SiLU()


class GuidedGELU(GuidedActivation):
    """GELU(a) = a * Phi(a) (or its tanh approximation, as ``nn.GELU(approximate='tanh')``)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def gate(self, a: Tensor) -> Tensor:
        if self.approximate == "tanh":
            return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a.pow(3))))
        return 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))

    def activate(self, a: Tensor) -> Tensor:
        return F.gelu(a, approximate=self.approximate)

    def plain(self) -> nn.Module:
        return nn.GELU(approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class GuidedHardswish(GuidedActivation):
    def gate(self, a: Tensor) -> Tensor:
        return F.relu6(a + 3.0) / 6.0

    def activate(self, a: Tensor) -> Tensor:
        return F.hardswish(a)

    def plain(self) -> nn.Module:
        return nn.Hardswish()


class GuidedReLU6(GuidedActivation):
    """ReLU6(a) = a * 1[0 < a < 6] + 6 * 1[a >= 6]: the constant part is split as ``6/S`` over the streams."""

    def activate(self, a: Tensor) -> Tensor:
        return F.relu6(a)

    def plain(self) -> nn.Module:
        return nn.ReLU6()

    def on_streams(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1:
            return self.activate(x)
        a = x.sum(0)
        linear = ((a > 0) & (a < 6)).to(x.dtype)
        saturated = (a >= 6).to(x.dtype) * (6.0 / x.shape[0])
        return x * linear.unsqueeze(0) + saturated.unsqueeze(0)


class GuidedMaxPool2d(Foldable):
    """Max-pool whose argmax is taken on the aggregate and gathered from every stream."""

    def __init__(
        self,
        kernel_size: int,
        stride: int | None = None,
        padding: int = 0,
        dilation: int = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size, self.padding, self.dilation, self.ceil_mode = (
            kernel_size,
            padding,
            dilation,
            ceil_mode,
        )
        self.stride = kernel_size if stride is None else stride

    def plain(self) -> nn.MaxPool2d:
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode)

    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return self._pool(x)
        if x.shape[0] == 1:
            return self._pool(x[0]).unsqueeze(0)
        s, b, c, h, w = x.shape
        _, idx = F.max_pool2d(
            x.sum(0),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            return_indices=True,
        )
        ho, wo = idx.shape[-2:]
        # expand adds the stream axis itself: an explicit size-1 axis here trips inductor's stride ordering once
        # the batch size is dynamic ("cannot determine truth value of Relational", tests/test_compile.py)
        idx = idx.reshape(b, c, ho * wo).expand(s, b, c, ho * wo)
        return x.reshape(s, b, c, h * w).gather(3, idx).view(s, b, c, ho, wo)

    def fold(self) -> nn.Module:
        return self.plain()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GuidedFeatureActivation(Foldable):
    """A guided activation on feature or token stream sets ``(S, *leading, D)``: dim 0 is always the stream axis.

    Unlike :class:`GuidedActivation` itself, no rank is read as "no stream axis", so a token set
    ``(S, B, T, D)`` is never mistaken for an image batch; a plain batch enters with ``StreamEntry``.
    """

    def __init__(self, activation: GuidedActivation) -> None:
        super().__init__()
        if not isinstance(activation, GuidedActivation):
            raise ValueError(f"expected a GuidedActivation, got {type(activation).__name__}")
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} got a tensor of shape {tuple(x.shape)}; expected (streams, *leading, "
                "features) with the stream axis first (add it with nsrep.nn.streams.StreamEntry)"
            )
        return self.activation.on_streams(x)

    def fold(self) -> nn.Module:
        return self.activation.plain()
