"""A dense task on real images that runs on two cores: mosaic segmentation with an FPN head on an nsrep backbone.

A mosaic is a ``grid × grid`` arrangement of small labelled images (CIFAR-10 tiles); its label map gives every
pixel its tile's class, so a segmenter must localise as well as classify. The segmenter is a user-style module
tree: an nsrep feature backbone (``create_model(..., features_only=True)``), a plain FPN neck and a plain
head. ``nsrep.reparameterize`` folds the backbone inside it, and the folded tree gives the same mIoU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FPNNeck",
    "SegmentationHead",
    "Segmenter",
    "confusion_matrix",
    "make_mosaics",
    "mean_iou",
    "predict",
    "train_segmenter",
]


def make_mosaics(images: Tensor, labels: Tensor, count: int, *, grid: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` mosaics of ``grid × grid`` tiles drawn (seeded) from ``images`` (N, C, h, w) uint8.

    Returns the mosaics ``(count, C, grid·h, grid·w)`` uint8 and their label maps ``(count, grid·h, grid·w)``
    int64, each pixel labelled with its tile's class. Tiles are drawn without replacement while they last,
    so every image appears about ``count·grid²/N`` times.
    """
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, C, h, w), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    for name, value in (("count", count), ("grid", grid)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    n, c, h, w = images.shape
    needed = count * grid * grid
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-needed // n))])[:needed]
    tiles = images[order].view(count, grid, grid, c, h, w)
    mosaics = tiles.permute(0, 3, 1, 4, 2, 5).reshape(count, c, grid * h, grid * w)
    tile_labels = labels[order].long().view(count, grid, 1, grid, 1)
    masks = tile_labels.expand(count, grid, h, grid, w).reshape(count, grid * h, grid * w)
    return mosaics.contiguous(), masks.contiguous()


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FPNNeck(nn.Module):
    """Feature pyramid (Lin et al. 2017): 1×1 laterals, top-down nearest upsampling and adds, a 3×3 smoothing
    conv+BN+ReLU per level. Plain PyTorch: what a user's own neck looks like next to an nsrep backbone."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # coarse to fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        return [smooth(x) for smooth, x in zip(self.smooth, laterals, strict=True)]


class SegmentationHead(nn.Module):
    """Every pyramid level upsampled to the finest and summed (a semantic-FPN head), a 3×3 conv+BN+ReLU, a
    1×1 classifier, then bilinear upsampling to the input size."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fuse = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        finest = levels[0].shape[-2:]
        x = levels[0]
        for level in levels[1:]:
            x = x + F.interpolate(level, size=finest, mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Backbone (returns a list of maps) -> FPN neck -> head: per-pixel logits ``(B, num_classes, H, W)``.

    Input is a uint8 or float batch on the [0, 255] scale; it is normalised with ``mean``/``std`` (on [0, 1]).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        neck_channels: int = 32,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None or not getattr(backbone, "features_only", False):
            raise ValueError("Segmenter needs a feature backbone: create_model(..., features_only=True)")
        self.backbone = backbone
        self.neck = FPNNeck(info.channels(), neck_channels)
        self.head = SegmentationHead(neck_channels, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return self.head(self.neck(self.backbone(x)), size=x.shape[-2:])


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` int64 counts, rows the true class, columns the predicted one."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> float:
    """Mean over classes of intersection / union, over the classes present in the target or the prediction."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else float("nan")


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Per-pixel class predictions ``(N, H, W)`` of ``model`` in eval mode (its mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class TrainLog:
    """What one training run took: seconds and the mean loss of each epoch."""

    seconds: float
    epoch_losses: tuple[float, ...]


def train_segmenter(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> TrainLog:
    """SGD (momentum 0.9, nesterov) with a cosine schedule and per-pixel cross-entropy; random horizontal flips
    of mosaic and label map together. ``progress(n)`` is called after each step with the images seen."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(images)} training mosaics")
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x, y = images[index], masks[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item()
            if progress is not None:
                progress(len(index))
        losses.append(total / steps_per_epoch)
    return TrainLog(time.perf_counter() - start, tuple(losses))
