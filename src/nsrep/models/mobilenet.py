"""MobileNetV1 (Howard et al. 2017): depthwise 3×3 + pointwise 1×1 pairs, with a width multiplier.

``stem="imagenet"`` is MobileNet's own ImageNet stem (3×3 stride 2, no max-pool; a 7×7 + pool stem is not
MobileNetV1); ``stem="cifar"`` uses stride 1 so a 32×32 input keeps enough resolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from nsrep.models.common import STEMS, ClassifierHead, Stem, check_memory, init_weights, run_blocks, scale_channels
from nsrep.models.factory import LayerFactory
from nsrep.streams import streams_out
from nsrep.validation import check_choice

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


class MobileNetV1(nn.Module):
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
    ) -> None:
        super().__init__()
        check_choice("stem", stem, STEMS)
        self.memory = check_memory(memory)
        ch = scale_channels(32, width_mult)
        stem_layers = layers if stem_unit else layers.plain()
        self.stem = Stem(layers, stem_layers, in_chans, ch, 3, 2 if stem == "imagenet" else 1, max_pool=False)
        streams = self.stem.out_streams
        blocks = []
        for out, stride in MOBILENET_V1_BLOCKS:
            out = scale_channels(out, width_mult)
            dw = ConvAct(layers, ch, ch, 3, stride, ch, streams)
            pw = ConvAct(layers, ch, out, 1, 1, 1, dw.out_streams)
            blocks.append(nn.Sequential(dw, pw))
            ch, streams = out, pw.out_streams
        self.stages = nn.Sequential(*blocks)
        self.head = ClassifierHead(layers, ch, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return run_blocks(self.stages, self.stem(x), self.memory)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))
