"""Augmentation of whole batches on the training device, with kornia: uint8 or [0, 1] batch -> normalised float.

The data sets yield uint8 items (nsrep.data.datasets), the DataLoader collates them, and the trainer moves the
batch to the device and calls a :class:`BatchTransform` on it, so no per-image Python runs in the workers.
Randomness comes from torch's global generators, never a private one: kornia samples crops, flips and
AutoAugment's choices on the CPU generator (the pipeline is never moved, see BatchTransform), and AutoAugment's
magnitude signs on the batch's device. Restoring ``torch.get_rng_state()`` (and on a GPU
``torch.cuda.get_rng_state_all()``) therefore replays the same augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nsrep.validation import check_choice

__all__ = ["AUGMENTATIONS", "AUTOAUGMENT_POLICIES", "BatchTransform", "build_transform"]

AUGMENTATIONS = ("pad-crop", "random-resized-crop", "none")
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")  # kornia.augmentation.auto.AutoAugment policies

# kornia's AutoAugment draws one sub-policy per call; torchvision (the recipes' reference) draws one per image.
# Calling it on chunks of this many images keeps the batch diverse at a fraction of the per-image cost.
AUTOAUGMENT_CHUNK = 8


# timm's RandAugment magnitudes run 0..10 (``rand-m6``), kornia's 0..30: the same share of each op's range.
KORNIA_PER_TIMM_MAGNITUDE = 3
RANDAUGMENT_OPS = 2  # timm's default number of ops per image (the authors' ``rand-m6-mstd0.5-inc1`` keeps it)


class _ChunkedAutoAugment(nn.Module):
    """A kornia auto-augment policy applied chunk by chunk, so each chunk of the batch draws its own choice."""

    def __init__(self, policy: str | nn.Module, chunk: int = AUTOAUGMENT_CHUNK) -> None:
        super().__init__()
        if isinstance(policy, str):
            from kornia.augmentation.auto import AutoAugment

            policy = AutoAugment(policy)
        self.policy = policy
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> same shape, each chunk of ``chunk`` images under one random sub-policy."""
        return torch.cat([self.policy(part) for part in x.split(self.chunk)]).clamp_(0, 1)


class BatchTransform(nn.Module):
    """uint8 or float (B, C, H, W) batch -> normalised float batch; augments only when ``train=True`` was built."""

    def __init__(
        self,
        augment: nn.Module | None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        train: bool,
    ) -> None:
        super().__init__()
        # The kornia pipeline (None: eval, or kind "none") is held outside the module tree on purpose: ``.to(device)``
        # leaves it as kornia builds it, sampling from the CPU generator and applied to batches on any device;
        # its internals (AutoAugment's probabilities) stay out of parameters() and state_dict(); and
        # ``.eval()`` cannot switch augmentation off.
        object.__setattr__(self, "augment", augment)
        self.augments = train  # not ``training``: nn.Module.train()/eval() must not switch augmentation
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 (0..255) or float ([0, 1]) -> float32 (B, C, S, S) normalised, on ``x``'s device."""
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected a batch (B, {self.mean.shape[1]}, H, W), got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif x.is_floating_point():
            x = x.float()
        else:
            raise ValueError(f"expected a uint8 or floating batch, got {x.dtype}")
        # Without augmentation (eval, kind "none") larger inputs such as ImageFolder train items are centre-cropped.
        x = _center_crop(x, self.image_size) if self.augment is None else self.augment(x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)  # no-op once the transform is on x's device
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"train={self.augments}, image_size={self.image_size}, augment={self.augment}"


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centred ``size`` crop of a (B, C, H, W) batch larger than ``size``; smaller sides pass unchanged."""
    height, width = x.shape[-2:]
    top, left = max(round((height - size) / 2), 0), max(round((width - size) / 2), 0)
    return x[..., top : top + size, left : left + size]


def build_transform(
    kind: str,
    *,
    train: bool,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 4,
    hflip: bool = True,
    autoaugment: str | None = None,
    randaugment: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> BatchTransform:
    """Build the batch transform for ``kind`` (see AUGMENTATIONS); with ``train=False`` only convert and normalise.

    Train "pad-crop": zero-pad ``crop_padding`` and crop ``image_size`` at random (the CIFAR recipe); train
    "random-resized-crop": a random crop of area ``scale`` and aspect 3/4..4/3 resized to ``image_size`` (the
    ImageNet recipe). Both then flip horizontally at random (``hflip``) and apply ``autoaugment`` (an
    AUTOAUGMENT_POLICIES name, 3 channels only) or RandAugment of magnitude ``randaugment`` (timm's 0-10 scale,
    :data:`RANDAUGMENT_OPS` ops from kornia's default list, one draw per chunk of :data:`AUTOAUGMENT_CHUNK` images)
    on [0, 1] images before the normalisation ``(x - mean) / std``.
    Eval: centre crop to ``image_size`` when the input is larger, then normalise.
    """
    check_choice("augmentation", kind, AUGMENTATIONS)
    if autoaugment is not None:
        check_choice("AutoAugment policy", autoaugment, AUTOAUGMENT_POLICIES)
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean and std need one value per channel, got mean={tuple(mean)} std={tuple(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if autoaugment is not None and randaugment is not None:
        raise ValueError(f"choose AutoAugment ({autoaugment!r}) or RandAugment (magnitude {randaugment}), not both")
    if randaugment is not None and not 0 < randaugment < 10:
        raise ValueError(f"randaugment magnitude must be in (0, 10) (timm's scale), got {randaugment!r}")
    if randaugment is not None and len(mean) != 3:
        raise ValueError(f"RandAugment needs 3-channel images; these have {len(mean)} channels")
    if autoaugment is not None and len(mean) != 3:
        raise ValueError(f"AutoAugment ({autoaugment!r}) needs 3-channel images; these have {len(mean)} channels")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(crop_padding, int) or isinstance(crop_padding, bool) or crop_padding < 0:
        raise ValueError(f"crop_padding must be a non-negative int, got {crop_padding!r}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
    if not train or kind == "none":
        return BatchTransform(None, mean=mean, std=std, image_size=image_size, train=train)

    import kornia.augmentation as K

    size = (image_size, image_size)
    steps: list[nn.Module] = []
    if kind == "pad-crop":
        # Zero padding as torchvision's RandomCrop(padding=4) in the CIFAR recipes; "slice" crops exactly.
        steps.append(K.RandomCrop(size, padding=crop_padding or None, fill=0, padding_mode="constant"))
    else:
        steps.append(K.RandomResizedCrop(size, scale=scale, align_corners=False))
    if hflip:
        steps.append(K.RandomHorizontalFlip())
    if autoaugment is not None:
        steps.append(_ChunkedAutoAugment(autoaugment))
    if randaugment is not None:
        from kornia.augmentation.auto import RandAugment

        steps.append(_ChunkedAutoAugment(RandAugment(n=RANDAUGMENT_OPS, m=randaugment * KORNIA_PER_TIMM_MAGNITUDE)))
    return BatchTransform(nn.Sequential(*steps), mean=mean, std=std, image_size=image_size, train=True)
