"""Pieces every architecture shares: channel scaling, weight init, the classification head."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nsrep.models.factory import LayerFactory
from nsrep.nn.streams import streams_out
from nsrep.validation import check_choice

__all__ = ["MEMORY_MODES", "ClassifierHead", "Stem", "check_memory", "init_weights", "run_blocks", "scale_channels"]

STEMS = ("cifar", "imagenet")
# "default": autograd keeps every block's activations; "checkpoint": each residual block's activations are
# recomputed in backward (memory for compute; same outputs, gradients and BN statistics).
MEMORY_MODES = ("default", "checkpoint")


def check_memory(memory: str) -> str:
    check_choice("memory mode", memory, MEMORY_MODES)
    return memory


@contextmanager
def _frozen_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics, counters) after the block runs: a checkpoint's
    recompute must not update BN statistics a second time."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def run_blocks(blocks: Iterable[nn.Module], x: Tensor, memory: str) -> Tensor:
    """Run residual blocks in order; with ``memory="checkpoint"`` each block is checkpointed in training.

    The RNG state is preserved, so a recompute draws the same stochastic partitions and pair-drop masks.
    """
    for block in blocks:
        if memory == "checkpoint" and block.training and torch.is_grad_enabled():
            x = checkpoint(
                block,
                x,
                use_reentrant=False,
                preserve_rng_state=True,
                context_fn=lambda block=block: (nullcontext(), _frozen_buffers(block)),
            )
        else:
            x = block(x)
    return x


def scale_channels(channels: int, width_mult: float, divisor: int = 1) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, unit BN affine, small normal for the classifier (torchvision's choice).

    Convs flagged ``nsrep_keep_init`` (DBB's identity-based 1×1 starts at zero) keep their own init.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not getattr(m, "nsrep_keep_init", False):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class ClassifierHead(nn.Module):
    """Sum the streams, then global average pool and a linear classifier (cheaper than per stream, same result)."""

    def __init__(self, layers: LayerFactory, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.merge = layers.merge()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.merge(x)).flatten(1))


class Stem(nn.Module):
    """Image batch -> stream set -> first conv unit (or a plain conv+BN) -> activation -> optional max-pool.

    ``conv_layers`` is the factory for the stem conv alone, so the stem can stay plain (``stem_unit=False``).
    """

    def __init__(
        self,
        layers: LayerFactory,
        conv_layers: LayerFactory,
        in_chans: int,
        out_ch: int,
        kernel_size: int,
        stride: int,
        max_pool: bool,
    ) -> None:
        super().__init__()
        self.entry = layers.entry()
        self.conv = conv_layers.conv(in_chans, out_ch, kernel_size, stride, streams=1)
        self.act = layers.act()
        self.pool = layers.max_pool(3, 2, 1) if max_pool else nn.Identity()
        self.out_streams = streams_out(self.conv, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.conv(self.entry(x))))

    def forward_with_pre_pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the map before the max-pool, the stem output): the first feature level is the one before the pool."""
        pre = self.act(self.conv(self.entry(x)))
        return pre, self.pool(pre)
