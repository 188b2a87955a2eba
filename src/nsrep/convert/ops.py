"""Stream-aware replacements for the operations between units of a converted network.

Each module takes stream sets ``(S, B, ...)`` (the stream axis first, as everywhere in nsrep) and folds to the
plain op it replaces, taking the same call arguments, so :func:`nsrep.reparameterize` also works on a
converted graph. Linear ops act per stream; a constant or a plain tensor that enters a stream set is split as
``c/S`` so that the aggregate receives it once; non-linear decisions come from the aggregate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nsrep.nn import kernels
from nsrep.nn.foldable import Foldable
from nsrep.nn.streams import add_streams, spread

__all__ = [
    "Arith",
    "Call",
    "Cat",
    "DimOp",
    "FirstStream",
    "GuidedLayerNormCall",
    "Index",
    "PerStream",
    "Reshape",
    "StreamArith",
    "StreamBatchNorm2d",
    "StreamCat",
    "StreamConv2d",
    "StreamConvTranspose2d",
    "StreamDimOp",
    "StreamDropout",
    "StreamFlatten",
    "StreamIndex",
    "StreamLayerNorm",
    "StreamLinear",
    "StreamReshape",
    "guided_layer_norm",
]


def _shift(dim: int) -> int:
    """A per-stream dim as a dim of the stream set (S, ...): non-negative dims move by one, negative stay."""
    return dim + 1 if dim >= 0 else dim


def _shift_dims(dims: int | Sequence[int]) -> int | tuple[int, ...]:
    """:func:`_shift` of one dim or of each of several (``sum(dim=(1, 2))``)."""
    return tuple(map(_shift, dims)) if isinstance(dims, tuple | list) else _shift(dims)


class Call(nn.Module):
    """A functional op as a module: ``Call(F.avg_pool2d)(x, 2)`` is ``F.avg_pool2d(x, 2)``."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class FirstStream(Foldable):
    """One stream of a stream set (``x[0]``, a free view), for shape queries; the identity once folded."""

    def forward(self, x: Tensor) -> Tensor:
        return x[0]

    def fold(self) -> nn.Module:
        return nn.Identity()


class PerStream(Foldable):
    """A batch op applied to every stream: (S, B, ...) -> op on the free view (S*B, ...) -> (S, B, ...)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.op(x.flatten(0, 1), *args, **kwargs).unflatten(0, x.shape[:2])

    def fold(self) -> nn.Module:
        return copy.deepcopy(self.op)


class Arith(nn.Module):
    """Plain ``a + b`` or ``a - b``: the deploy form of :class:`StreamArith`."""

    def __init__(self, op: str) -> None:
        super().__init__()
        if op not in ("add", "sub"):
            raise ValueError(f"op must be 'add' or 'sub', got {op!r}")
        self.op = op

    def forward(self, a, b):
        return a + b if self.op == "add" else a - b

    def extra_repr(self) -> str:
        return repr(self.op)


class StreamArith(Foldable):
    """``a ± b`` where at least one side is a stream set; ``None`` marks a plain side (tensor or number).

    Two stream sets add stream-wise after the lcm spread (:func:`nsrep.nn.streams.add_streams`); a plain side is
    spread as ``b/S`` over the S streams of the other, so the aggregate adds it exactly once.
    """

    def __init__(self, op: str, a_streams: int | None, b_streams: int | None, max_streams: int = 64) -> None:
        super().__init__()
        if a_streams is None and b_streams is None:
            raise ValueError("StreamArith needs at least one stream set")
        self.plain = Arith(op)
        self.op, self.a_streams, self.b_streams, self.max_streams = op, a_streams, b_streams, max_streams
        counts = [s for s in (a_streams, b_streams) if s is not None]
        self.out_streams = math.lcm(*counts)
        if self.out_streams > max_streams:
            raise ValueError(f"{op} of {a_streams} and {b_streams} streams needs {self.out_streams} > {max_streams}")

    def forward(self, a, b):
        if self.a_streams is not None and self.b_streams is not None:
            return add_streams(a, b if self.op == "add" else -b, self.max_streams)
        if self.a_streams is not None:
            return self.plain(a, b / a.shape[0])
        return self.plain(a / b.shape[0], b)

    def fold(self) -> nn.Module:
        return Arith(self.op)

    def extra_repr(self) -> str:
        return f"{self.op!r}, streams={self.a_streams}, {self.b_streams} -> {self.out_streams}"


class Cat(nn.Module):
    """Plain ``torch.cat(tensors, dim)``: the deploy form of :class:`StreamCat`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat(tuple(tensors), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class StreamCat(Foldable):
    """``torch.cat`` of stream sets (and plain tensors, which enter as one stream) along a per-stream dim.

    All inputs are spread to the lcm of their stream counts first (aggregate preserved), then concatenated
    stream-wise: the aggregate of the result is the concatenation of the aggregates.
    """

    def __init__(self, streams: Sequence[int | None], dim: int, max_streams: int = 64) -> None:
        super().__init__()
        self.streams, self.dim = tuple(streams), dim
        self.out_streams = math.lcm(*(s or 1 for s in self.streams))
        if self.out_streams > max_streams:
            raise ValueError(f"cat of {self.streams} streams needs {self.out_streams} > max_streams={max_streams}")

    def forward(self, tensors: Sequence[Tensor]) -> Tensor:
        sets = [t if s is not None else t.unsqueeze(0) for t, s in zip(tensors, self.streams, strict=True)]
        sets = [spread(t, self.out_streams // t.shape[0]) for t in sets]
        return torch.cat(sets, _shift(self.dim))

    def fold(self) -> nn.Module:
        return Cat(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, streams={self.streams} -> {self.out_streams}"


class StreamFlatten(Foldable):
    """``flatten(start_dim, end_dim)`` of every stream (dims of the per-stream tensor)."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(_shift(self.start_dim), _shift(self.end_dim))

    def fold(self) -> nn.Module:
        return nn.Flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


def _shape(shape: tuple) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], tuple | list | torch.Size):
        return tuple(shape[0])
    return shape


class Reshape(nn.Module):
    """Plain ``x.reshape(*shape)``: the deploy form of :class:`StreamReshape`."""

    def forward(self, x: Tensor, *shape) -> Tensor:
        return x.reshape(*_shape(shape))


class StreamReshape(Foldable):
    """``view``/``reshape`` of every stream: (S, ...) -> (S, *shape)."""

    def forward(self, x: Tensor, *shape) -> Tensor:
        return x.reshape(x.shape[0], *_shape(shape))

    def fold(self) -> nn.Module:
        return Reshape()


# Ops on the dims of a tensor (channel shuffle, CSP/ShuffleNet splits, ResNeSt's sum over its radix): the argument
# positions that are dims.
DIM_OPS = {"transpose": (0, 1), "permute": None, "chunk": (1,), "split": (1,), "sum": (0,), "mean": (0,)}  # None: all


class DimOp(nn.Module):
    """Plain ``x.<op>(*args, **kwargs)`` (transpose, permute, chunk, split, sum, mean): the deploy form of
    :class:`StreamDimOp`."""

    def __init__(self, op: str) -> None:
        super().__init__()
        if op not in DIM_OPS:
            raise ValueError(f"op must be one of {sorted(DIM_OPS)}, got {op!r}")
        self.op = op

    def forward(self, x: Tensor, *args, **kwargs):
        return getattr(x, self.op)(*args, **kwargs)

    def extra_repr(self) -> str:
        return repr(self.op)


class StreamDimOp(DimOp, Foldable):
    """:class:`DimOp` on every stream: its dims (arguments, given at run time) are dims of one stream's tensor.

    Each op moves, cuts or adds up data within one stream, so it is linear per stream and the sum of the
    streams' results is the result of their sum; chunk and split return a tuple of stream sets. sum and mean
    need their dims given (over every dim they would also add up the streams)."""

    def forward(self, x: Tensor, *args, **kwargs):
        positions = DIM_OPS[self.op]
        if self.op == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
            args = ((0, *map(_shift, dims)),)
        else:
            args = tuple(_shift_dims(a) if i in positions else a for i, a in enumerate(args))
        if "dim" in kwargs:
            kwargs = {**kwargs, "dim": _shift_dims(kwargs["dim"])}
        return super().forward(x, *args, **kwargs)

    def fold(self) -> nn.Module:
        return DimOp(self.op)


class Index(nn.Module):
    """Plain ``x[index]``: the deploy form of :class:`StreamIndex`."""

    def forward(self, x: Tensor, index):
        return x[index]


class StreamIndex(Foldable):
    """``x[index]`` of every stream (GhostNet's ``x[:, :c]``): the stream axis is prepended to the index."""

    def forward(self, x: Tensor, index):
        index = index if isinstance(index, tuple) else (index,)
        return x[index] if index and index[0] is Ellipsis else x[(slice(None), *index)]

    def fold(self) -> nn.Module:
        return Index()


class StreamDropout(Foldable):
    """Dropout with one mask shared by every stream (``channelwise``: one draw per (sample, channel), as
    ``Dropout2d``); ``on_streams=False`` is ordinary dropout of a plain batch.

    It follows the module's own train/eval mode, also where it replaces ``F.dropout(x, p, self.training)``,
    whose ``training`` argument fx tracing would otherwise freeze at its trace-time value.
    """

    def __init__(self, p: float, channelwise: bool = False, on_streams: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.channelwise, self.on_streams = p, channelwise, on_streams

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        per = x[0] if self.on_streams else x  # (B, C, ...) of one stream
        shape = (*per.shape[:2], *([1] * (per.dim() - 2))) if self.channelwise else per.shape
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask  # broadcast over the stream axis: the same mask for every stream

    def fold(self) -> nn.Module:
        return nn.Dropout2d(self.p) if self.channelwise else nn.Dropout(self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, channelwise={self.channelwise}, on_streams={self.on_streams}"


class StreamBatchNorm2d(Foldable, nn.BatchNorm2d):
    """A BatchNorm that is not part of a unit (e.g. pre-activation), on stream sets: guided by the aggregate.

    Its statistics are those of the aggregate ``A`` (batch statistics in training, running ones in eval), and
    every stream gets the same affine map with the shift split as ``shift/S``: the streams sum to ``bn(A)``
    exactly, in training and eval. A 4-D batch is one plain batch. Same parameters and state-dict keys as the
    ``nn.BatchNorm2d`` it replaces, to which it folds.
    """

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> StreamBatchNorm2d:
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("only an affine BatchNorm2d with running statistics can act on stream sets")
        new = cls(bn.num_features, bn.eps, bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
        for name, child in bn.named_children():  # a norm-act layer's drop and act (see nsrep.convert.modes)
            new.add_module(name, child)
        new.load_state_dict(bn.state_dict())
        return new.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return super().forward(x)
        a = x.sum(0)
        if self.training:
            with torch.no_grad():
                super().forward(a)  # the running-statistics update of the deployed BN, by PyTorch's own rule
            var, mean = torch.var_mean(a, dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = self.running_mean, self.running_var
        scale, shift = kernels.bn_affine(mean, var, self.weight, self.bias, self.eps)
        return x * scale.view(1, 1, -1, 1, 1) + (shift / x.shape[0]).view(1, 1, -1, 1, 1)

    def fold(self) -> nn.Module:
        bn = nn.BatchNorm2d(
            self.num_features, self.eps, self.momentum, device=self.weight.device, dtype=self.weight.dtype
        )
        for name, child in self.named_children():  # called by the graph at their own paths, folded here
            bn.add_module(name, child.fold() if isinstance(child, Foldable) else copy.deepcopy(child))
        bn.load_state_dict(self.state_dict())
        return bn


class _PlainOnStreams(Foldable):
    """A conv kept plain on stream sets: linear per stream, its bias split as ``bias/S`` so that the aggregate
    receives it once. Mixed into subclasses of the torch conv it replaces (same parameters and state-dict keys),
    to which it folds; a 4-D batch is one plain batch."""

    plain: type[nn.Module]

    @classmethod
    def from_module(cls, conv: nn.Module) -> nn.Module:
        """The kept-plain version of ``conv`` (an instance of ``cls.plain``): same weights, device and mode."""
        return _copy_conv(conv, cls)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return super().forward(x)
        y = self.without_bias(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return y if self.bias is None else y + (self.bias / x.shape[0]).view(1, 1, -1, 1, 1)

    def without_bias(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def fold(self) -> nn.Module:
        return _copy_conv(self, self.plain)


class StreamConvTranspose2d(_PlainOnStreams, nn.ConvTranspose2d):
    """A transposed conv (a U-Net's learned upsampling) on stream sets, kept plain (see :class:`_PlainOnStreams`)."""

    plain = nn.ConvTranspose2d

    def without_bias(self, x: Tensor) -> Tensor:
        return nn.functional.conv_transpose2d(
            x, self.weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )


class StreamLinear(Foldable, nn.Linear):
    """A linear layer on stream sets (ConvNeXt's channels-last MLP), kept plain: per stream, its bias split as
    ``bias/S``. Only installed where its input is a stream set (a channels-last plain batch is also 4-D)."""

    @classmethod
    def from_module(cls, linear: nn.Linear) -> StreamLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None).to(linear.weight)
        new.load_state_dict(linear.state_dict())
        return new.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.linear(x, self.weight)
        return y if self.bias is None else y + self.bias / x.shape[0]

    def fold(self) -> nn.Module:
        plain = nn.Linear(self.in_features, self.out_features, self.bias is not None).to(self.weight)
        plain.load_state_dict(self.state_dict())
        return plain


def guided_layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """LayerNorm of a stream set guided by its aggregate ``A``: the statistics are ``A``'s, every stream gets
    ``(x_s - mean/S) / sqrt(var + eps) * weight + bias/S``, so the streams sum to ``layer_norm(A)`` exactly."""
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    var, mean = torch.var_mean(x.sum(0), dim=dims, keepdim=True, unbiased=False)
    y = (x - mean / x.shape[0]) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias / x.shape[0]


class GuidedLayerNormCall(Foldable):
    """``F.layer_norm(x, normalized_shape, weight, bias, eps)`` on a stream set (timm's LayerNorm2d traces to
    it): :func:`guided_layer_norm`; folds to the plain call."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return guided_layer_norm(x, *args, **kwargs)

    def fold(self) -> nn.Module:
        return Call(nn.functional.layer_norm)


class StreamLayerNorm(Foldable, nn.LayerNorm):
    """``nn.LayerNorm`` on stream sets (:func:`guided_layer_norm`); same parameters and state-dict keys as the
    module it replaces, to which it folds."""

    @classmethod
    def from_module(cls, norm: nn.LayerNorm) -> StreamLayerNorm:
        new = copy.deepcopy(norm)
        new.__class__ = cls  # the same module, its forward stream-aware
        return new

    def forward(self, x: Tensor) -> Tensor:
        return guided_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def fold(self) -> nn.Module:
        plain = copy.deepcopy(self)
        plain.__class__ = nn.LayerNorm
        return plain


class StreamConv2d(_PlainOnStreams, nn.Conv2d):
    """A conv kept plain on stream sets (``convert(..., biasless_convs="plain")``, see :class:`_PlainOnStreams`)."""

    plain = nn.Conv2d

    def without_bias(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, None)


def _copy_conv(conv: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` with ``conv``'s hyper-parameters, device, dtype, weights and train/eval mode."""
    options = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    if isinstance(conv, nn.ConvTranspose2d):
        options["output_padding"] = conv.output_padding
    new = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
        **options,
    )
    new.load_state_dict(conv.state_dict())
    return new.train(conv.training)
