"""Hand-written modules reproducing the layers of timm and torchvision that ``nsrep.convert`` must handle by
what they compute, so that ``make test`` covers them without either library (tests/test_convert_patterns.py).

Each copies the library's forward closely: a BatchNorm subclass with its own forward (timm's ``BatchNormAct2d``),
drop-path as a module (timm's ``DropPath``) and as an fx-wrapped function (torchvision's ``StochasticDepth``),
channel shuffle, chunk and channel slicing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d: BatchNorm, then drop, then act, in its own forward (traced into by fx)."""

    def __init__(self, num_features: int, act: type[nn.Module] | None = nn.ReLU, drop: float = 0.0) -> None:
        super().__init__(num_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(self.num_batches_tracked)
        bn_training = True if self.training else (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        return self.act(self.drop(x))


class ShiftedBatchNorm(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward is not BN followed by its children (adds 1): not BN-like."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + 1.0


class ConvNormAct(nn.Module):
    """timm.layers.ConvNormAct: a conv and a BatchNormAct2d."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(cout, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def timm_drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """timm.layers.drop_path."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm.layers.DropPath."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return timm_drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


@fx.wrap
def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision.ops.stochastic_depth (an fx leaf function, as in torchvision)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


class ResidualDrop(nn.Module):
    """An inverted-residual-like block whose residual branch ends in a drop-path module, then ``x + branch``."""

    def __init__(self, c: int, drop: nn.Module) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(c, c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.drop_path = drop

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.bn2(self.conv2(self.conv1(x))))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision.models.shufflenetv2.channel_shuffle."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleBlock(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual (stride 1): chunk, a branch, cat, channel shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch2 = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
        return channel_shuffle(out, 2)


class CrossStage(nn.Module):
    """timm's CSP stage: split along channels, a conv on one part, cat, and a permute round trip."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(c // 2, c // 2)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, [x.shape[1] // 2, x.shape[1] // 2], dim=1)
        y = torch.cat([a, self.conv(b)], dim=1)
        return y.permute(0, 2, 3, 1).permute(0, 3, 1, 2)


class GhostLike(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on its output, cat, then ``[:, :c]``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.out = cout
        init = (cout + 1) // 2
        self.primary = ConvNormAct(cin, init, 1)
        self.cheap = ConvNormAct(init, init, 3, groups=init)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary(x)
        x2 = self.cheap(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out, :, :]


class SplitAttention(nn.Module):
    """timm's ResNeSt ``SplitAttn`` (radix 2, cardinality 1): a grouped conv gives ``radix`` splits; their sum over
    the radix is pooled into an attention that weights each split; the weighted splits are summed over the radix."""

    def __init__(self, c: int, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(c, c * radix, 3, 1, 1, groups=radix, bias=False)
        self.bn0, self.act0 = nn.BatchNorm2d(c * radix), nn.ReLU()
        attn = max(c // 2, 4)
        self.fc1 = nn.Conv2d(c, attn, 1)
        self.bn1, self.act1 = nn.BatchNorm2d(attn), nn.ReLU()
        self.fc2 = nn.Conv2d(attn, c * radix, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        x_gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        x_attn = self.fc2(self.act1(self.bn1(self.fc1(x_gap))))
        x_attn = F.softmax(x_attn.view(b, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(b, -1)
        x_attn = x_attn.view((b, -1, 1, 1)).reshape((b, self.radix, rc // self.radix, 1, 1))
        return (x * x_attn).sum(dim=1).contiguous()


class PaddedStem(nn.Module):
    """timm's HGNetV2 stem: ``F.pad`` by one on the right and bottom before a 2x2 max pool of stride 1, beside a
    conv of the map padded by reflection. ``value`` fills the first pad (HGNetV2's is 0)."""

    def __init__(self, c: int, value: float = 0.0) -> None:
        super().__init__()
        self.value = value
        self.pool = nn.MaxPool2d(2, 1, ceil_mode=True)
        self.conv = nn.Conv2d(c, c, 3, 1, 0, bias=False)
        self.bn = BatchNormAct2d(c)
        self.mix = ConvNormAct(2 * c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(F.pad(x, (0, 1, 0, 1), value=self.value))
        convolved = self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        return self.mix(torch.cat([pooled, convolved], dim=1))


class DenseLayer(nn.Module):
    """torchvision's DenseNet layer: BN-ReLU-conv1x1 (a BN follows it), BN-ReLU-conv3x3 (nothing follows it, no
    bias), its output concatenated to its input."""

    def __init__(self, c: int, growth: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c), nn.ReLU()
        self.conv1 = nn.Conv2d(c, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(2 * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class Transition(nn.Sequential):
    """torchvision's DenseNet transition: BN, ReLU, a biasless 1x1 conv, average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class LayerNorm2d(nn.LayerNorm):
    """timm.layers.LayerNorm2d: LayerNorm over the channels of an NCHW map (traced into ``F.layer_norm``)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """torchvision's CNBlock: depthwise 7x7, channels-last LayerNorm and MLP, layer scale, drop-path, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))
        self.drop_path = DropPath(0.1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.drop_path(self.gamma * y)


class ConvNeXtLike(nn.Module):
    """A 4x4 stride-4 patchify stem, LayerNorm2d, ConvNeXt blocks, a LayerNorm2d + 2x2 stride-2 downsample."""

    def __init__(self, c: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 4, 4), LayerNorm2d(c))
        self.stage1 = ConvNeXtBlock(c)
        self.down = nn.Sequential(LayerNorm2d(c), nn.Conv2d(c, 2 * c, 2, 2))
        self.stage2 = ConvNeXtBlock(2 * c)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.LayerNorm(2 * c), nn.Linear(2 * c, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


class Net(nn.Module):
    """A stem, ``body`` and a classifier head: ``Net(body, c)`` for a body that maps ``c`` to ``c`` channels."""

    def __init__(self, *body: nn.Module, c: int = 8, num_classes: int = 5, last: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, c, stride=2)
        self.body = nn.Sequential(*body)
        self.last = last if last is not None else nn.Identity()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.last(self.body(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
