"""MobileNetV1 (Howard et al. 2017): depthwise 3×3 + pointwise 1×1 pairs, with a width multiplier.

``stem="imagenet"`` is MobileNet's own ImageNet stem (3×3 stride 2, no max-pool; a 7×7 + pool stem is not
MobileNetV1); ``stem="cifar"`` uses stride 1 so a 32×32 input keeps enough resolution.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import Tensor, nn

from nsrep.models.common import STEMS, Stem, check_memory, init_weights, run_blocks, scale_channels
from nsrep.models.factory import LayerFactory
from nsrep.models.features import Backbone, FeatureLevel
from nsrep.nn.streams import streams_out
from nsrep.validation import check_choice, check_probability

__all__ = ["MobileNetV1"]

# (output channels, stride) of each depthwise-separable block
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class ConvAct(nn.Module):
    """One unit followed by its activation (the paper's Fig. 4 block)."""

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int, k: int, stride: int, groups: int, streams: int):
        super().__init__()
        self.conv = layers.conv(in_ch, out_ch, k, stride, groups=groups, streams=streams)
        self.act = layers.act()
        self.out_streams = streams_out(self.conv, streams)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class MobileNetV1(Backbone):
    """MobileNetV1; ``features_only=True`` drops the head and returns the maps of the levels in ``out_indices``
    (default all): level i is the last block at each resolution (5 levels; see :attr:`feature_info`).
    ``drop_path_rate`` is accepted for a uniform interface, but MobileNetV1 has no residual branch to drop
    (a rate > 0 warns)."""

    def __init__(
        self,
        *,
        layers: LayerFactory,
        num_classes: int = 1000,
        stem: str = "imagenet",
        in_chans: int = 3,
        width_mult: float = 1.0,
        stem_unit: bool = True,
        memory: str = "default",
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_choice("stem", stem, STEMS)
        check_probability("drop_path_rate", drop_path_rate)
        if drop_path_rate > 0:
            # Accepted so one recipe (the authors' CIFAR one, rate 0.15) runs every backbone of Table 1, as the
            # authors' MobileNetV1 accepts and ignores it; said aloud, since the user asked for a regulariser.
            warnings.warn(
                f"mobilenet_v1 has no residual blocks: drop_path_rate={drop_path_rate:g} drops nothing "
                "(the authors' MobileNetV1 ignores it too)",
                stacklevel=2,
            )
        self.memory = check_memory(memory)
        ch = scale_channels(32, width_mult)
        stem_layers = layers if stem_unit else layers.plain()
        stem_stride = 2 if stem == "imagenet" else 1
        self.stem = Stem(layers, stem_layers, in_chans, ch, 3, stem_stride, max_pool=False)
        streams = self.stem.out_streams
        levels, ends = _levels(stem_stride, width_mult)
        indices = self._choose_levels(levels, out_indices, features_only)
        # block position -> feature level it ends; blocks past the last chosen level are not built
        self._level_ends = {ends[i]: i for i in indices}
        num_blocks = ends[indices[-1]] + 1 if features_only else len(MOBILENET_V1_BLOCKS)
        blocks = []
        for out, stride in MOBILENET_V1_BLOCKS[:num_blocks]:
            out = scale_channels(out, width_mult)
            dw = ConvAct(layers, ch, ch, 3, stride, ch, streams)
            pw = ConvAct(layers, ch, out, 1, 1, 1, dw.out_streams)
            blocks.append(nn.Sequential(dw, pw))
            ch, streams = out, pw.out_streams
        self.stages = nn.Sequential(*blocks)
        self._attach_output(layers, ch, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return run_blocks(self.stages, self.stem(x), self.memory)

    def forward_levels(self, x: Tensor) -> list[Tensor]:
        """The plain maps ``(B, C, H, W)`` of the levels in ``feature_info.out_indices`` (stream sets summed)."""
        features: list[Tensor] = []
        x = self.stem(x)
        for j, block in enumerate(self.stages):
            x = run_blocks((block,), x, self.memory)
            if j in self._level_ends:
                self.taps.tap(self._level_ends[j], x, features)
        return features


def _levels(stem_stride: int, width_mult: float) -> tuple[list[FeatureLevel], list[int]]:
    """The feature levels (the last block at each resolution) and the block position that ends each."""
    levels, ends, reduction = [], [], stem_stride
    for j, (out, stride) in enumerate(MOBILENET_V1_BLOCKS):
        reduction *= stride
        following = MOBILENET_V1_BLOCKS[j + 1][1] if j + 1 < len(MOBILENET_V1_BLOCKS) else 2
        if following == 2:
            levels.append(FeatureLevel(scale_channels(out, width_mult), reduction, f"stages.{j}"))
            ends.append(j)
    return levels, ends
