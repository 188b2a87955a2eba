"""ResNet and ResNeXt (He et al. 2016; Xie et al. 2017), one definition for every family and connectivity.

Stream sets flow through the blocks as ``(S, B, C, H, W)`` in the training form and as plain ``(B, C, H, W)``
batches in the deployed form; the blocks only thread stream *counts* (structural constants) through the
factory. Stride sits on the 3×3 conv of the bottleneck (ResNet V1.5, as torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from nsrep.models.common import STEMS, Stem, check_memory, init_weights, run_blocks, scale_channels
from nsrep.models.factory import LayerFactory
from nsrep.models.features import Backbone, FeatureLevel
from nsrep.nn.drop_path import drop_path_rates
from nsrep.nn.streams import streams_out
from nsrep.validation import check_choice

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class BasicBlock(nn.Module):
    expansion = 1
    residual_end = "conv2"  # the unit that ends the residual branch (nsrep.nn.bn_init's zero-residual)

    def __init__(
        self,
        layers: LayerFactory,
        in_ch: int,
        planes: int,
        stride: int,
        streams: int,
        groups: int,
        base_width: int,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock supports groups=1, width_per_group=64 only, got {groups}, {base_width}")
        self.conv1 = layers.conv(in_ch, planes, 3, stride, streams=streams)
        self.act1 = layers.act()
        s = streams_out(self.conv1, streams)
        self.conv2 = layers.conv(planes, planes, 3, streams=s)
        self.drop_path = layers.drop_path(drop_path_rate)
        self.shortcut = _shortcut(layers, in_ch, planes, stride, streams)
        self.add = layers.add(streams_out(self.conv2, s), streams_out(self.shortcut, streams))
        self.act2 = layers.act()
        self.out_streams = streams_out(self.add, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act1(self.conv1(x)))
        return self.act2(self.add(self.drop_path(out), self.shortcut(x)))


class Bottleneck(nn.Module):
    expansion = 4
    residual_end = "conv3"

    def __init__(
        self,
        layers: LayerFactory,
        in_ch: int,
        planes: int,
        stride: int,
        streams: int,
        groups: int,
        base_width: int,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(f"bottleneck width is 0 for planes={planes}, width_per_group={base_width}")
        out_ch = planes * self.expansion
        self.conv1 = layers.conv(in_ch, width, 1, streams=streams)
        self.act1 = layers.act()
        s = streams_out(self.conv1, streams)
        self.conv2 = layers.conv(width, width, 3, stride, groups=groups, streams=s)
        self.act2 = layers.act()
        s = streams_out(self.conv2, s)
        self.conv3 = layers.conv(width, out_ch, 1, streams=s)
        self.drop_path = layers.drop_path(drop_path_rate)
        self.shortcut = _shortcut(layers, in_ch, out_ch, stride, streams)
        self.add = layers.add(streams_out(self.conv3, s), streams_out(self.shortcut, streams))
        self.act3 = layers.act()
        self.out_streams = streams_out(self.add, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(self.add(self.drop_path(out), self.shortcut(x)))


def _shortcut(layers: LayerFactory, in_ch: int, out_ch: int, stride: int, streams: int) -> nn.Module:
    """Identity, or a strided 1×1 unit where the shape changes (torchvision's downsample, BN folded in)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return layers.conv(in_ch, out_ch, 1, stride, streams=streams)


class Stage(nn.Sequential):
    """Residual blocks of one resolution; runs them through :func:`run_blocks` (optionally checkpointed)."""

    def __init__(self, *blocks: nn.Module, memory: str = "default") -> None:
        super().__init__(*blocks)
        self.memory = memory

    def forward(self, x: Tensor) -> Tensor:
        return run_blocks(self, x, self.memory)


class ResNet(Backbone):
    """ResNet-18/34/50/101 and ResNeXt; ``stem_unit=False`` keeps the stem a plain conv+BN; ``memory``
    ("default" or "checkpoint") trades compute for activation memory per residual block.

    ``drop_path_rate`` is stochastic depth on every residual branch, timm's linear rule over all blocks of the
    full network (block i of n drops with ``rate * i / (n - 1)``), so a ``features_only`` trunk drops as the
    whole network does; off in eval, so folding is unchanged.

    ``features_only=True`` drops the head and returns the maps of the levels in ``out_indices`` (default all):
    level 0 is the stem before its max-pool, levels 1-4 the four stages (see :attr:`feature_info`); stages past
    the last chosen level are not built.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, ...],
        *,
        layers: LayerFactory,
        num_classes: int = 1000,
        stem: str = "imagenet",
        in_chans: int = 3,
        width_mult: float = 1.0,
        stem_unit: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        memory: str = "default",
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("stem", stem, STEMS)
        self._memory = memory = check_memory(memory)
        widths = [scale_channels(c, width_mult) for c in (64, 128, 256, 512)]
        # cifar: 3×3 stride 1, no pool; imagenet: 7×7 stride 2 + 3×3 max-pool stride 2
        kernel, stride, pool = (3, 1, False) if stem == "cifar" else (7, 2, True)
        stem_layers = layers if stem_unit else layers.plain()
        self.stem = Stem(layers, stem_layers, in_chans, widths[0], kernel, stride, pool)
        streams, in_ch = self.stem.out_streams, widths[0]
        stem_reduction = stride
        levels = [FeatureLevel(widths[0], stem_reduction, "stem.act")]
        levels += [
            FeatureLevel(w * block.expansion, stem_reduction * (2 if pool else 1) * 2**i, f"stages.{i}")
            for i, w in enumerate(widths)
        ]
        indices = self._choose_levels(levels, out_indices, features_only)
        num_stages = indices[-1] if features_only else len(widths)
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        stages = []
        for i, (planes, depth) in enumerate(zip(widths[:num_stages], depths, strict=False)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blk = block(layers, in_ch, planes, stride, streams, groups, width_per_group, next(rates))
                blocks.append(blk)
                streams, in_ch = blk.out_streams, planes * block.expansion
            stages.append(Stage(*blocks, memory=memory))
        self.stages = nn.Sequential(*stages)
        self._attach_output(layers, in_ch, num_classes)
        init_weights(self)

    @property
    def memory(self) -> str:
        """``default`` or ``checkpoint`` (recompute each residual block's activations in backward)."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_memory(value)
        for stage in self.stages:
            stage.memory = value

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages: a stream set (training form) or a batch (deployed)."""
        return self.stages(self.stem(x))

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """The plain maps ``(B, C, H, W)`` of the levels in ``feature_info.out_indices`` (stream sets summed)."""
        features: list[Tensor] = []
        pre_pool, x = self.stem.forward_with_pre_pool(x)
        self.taps.tap(0, pre_pool, features)
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            self.taps.tap(i, x, features)
        return features
