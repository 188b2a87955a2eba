"""Mixup and CutMix on whole batches, and the soft-target losses they need (the authors' ImageNet recipe).

The authors train ImageNet with timm's ``Mixup`` (``mixup_alpha`` 0.1, ``cutmix_alpha`` 1.0, ``prob`` 1,
``switch_prob`` 0.5, ``mode="batch"``) and timm's ``BinaryCrossEntropy(target_threshold=0.2)``. This module
computes the same batch-mode operation: one lambda per batch, drawn from Beta(alpha, alpha) of the chosen
method, each image mixed with its mirror in the batch (``x.flip(0)``), CutMix's lambda corrected to the
pasted box's true area, and the labels mixed into one-hot targets with the run's label smoothing.

Why not kornia's ``RandomMixUpV2``/``RandomCutMixV2``: kornia draws the mixup lambda uniformly from a range,
and the authors' alpha 0.1 is the U-shaped Beta(0.1, 0.1), mostly close to 0 or 1; a uniform lambda is a
much stronger regulariser, a different experiment. The operation itself is two lines of tensor algebra.

Randomness comes from torch's global CPU generator only (the choice, lambda, box), so restoring
``torch.get_rng_state()`` replays the same mixing, as for the batch transforms (nsrep.data.augment).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchMix", "SoftTargetLoss", "one_hot_targets"]

SWITCH_PROB = 0.5  # timm's mixup_switch_prob, the authors' too: CutMix rather than mixup on half the batches


def one_hot_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B,) class indices -> (B, num_classes) targets: 1 - smoothing + smoothing/C on the class, smoothing/C off it."""
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


class BatchMix(nn.Module):
    """``(x, labels) -> (mixed x, soft targets (B, C))``: mixup or CutMix on the whole batch (timm's batch mode).

    ``mixup`` and ``cutmix`` are the Beta alphas (0: that method off). With both on, each batch is CutMix with
    probability :data:`SWITCH_PROB`, else mixup. With both off it only makes the smoothed one-hot targets.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, smoothing: float = 0.0) -> None:
        super().__init__()
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0 (0: off), got {mixup}, {cutmix}")
        self.num_classes, self.mixup, self.cutmix, self.smoothing = num_classes, mixup, cutmix, smoothing

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        targets = one_hot_targets(labels, self.num_classes, self.smoothing).to(x.device)
        if self.mixup == 0 and self.cutmix == 0:
            return x, targets
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or float(torch.rand(())) < SWITCH_PROB)
        lam = _beta(self.cutmix if use_cutmix else self.mixup)
        flipped = x.flip(0)
        if use_cutmix:
            x, lam = _paste_box(x, flipped, lam)
        else:
            x = x * lam + flipped * (1.0 - lam)
        return x, targets * lam + targets.flip(0) * (1.0 - lam)

    def extra_repr(self) -> str:
        return (
            f"mixup={self.mixup:g}, cutmix={self.cutmix:g}, switch_prob={SWITCH_PROB:g}, smoothing={self.smoothing:g}"
        )


def _paste_box(x: Tensor, other: Tensor, lam: float) -> tuple[Tensor, float]:
    """Paste a box of ``other`` covering about 1 - lam of the image (centre uniform, clipped at the borders);
    return the batch and lambda corrected to the box's true area (timm's ``correct_lam``)."""
    height, width = x.shape[-2:]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    x = x.clone()
    x[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return x, 1.0 - (bottom - top) * (right - left) / (height * width)


class SoftTargetLoss(nn.Module):
    """Cross-entropy or per-class binary cross-entropy against soft targets ``(B, C)``.

    ``bce`` is timm's ``BinaryCrossEntropy``: the mean over batch and classes of ``BCEWithLogits``; with
    ``target_threshold`` the (mixed, smoothed) targets above it become 1 and the others 0.
    """

    def __init__(self, loss: str = "cross-entropy", target_threshold: float | None = None) -> None:
        super().__init__()
        self.loss, self.target_threshold = loss, target_threshold

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.loss == "cross-entropy":
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if self.target_threshold is not None:
            targets = targets.gt(self.target_threshold).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)

    def extra_repr(self) -> str:
        return f"loss={self.loss}, target_threshold={self.target_threshold}"
