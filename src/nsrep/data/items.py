"""The data sets' items: uint8 images held in memory, or decoded from files by Pillow on access.

Every item is ``(image, label)``: ``image`` a uint8 tensor (C, H, W), ``label`` an int. Loading and splitting
sources is :mod:`nsrep.data.datasets`; the decode-once cache of small image folders is
:mod:`nsrep.data.imagecache`, which builds :class:`CachedImageFolder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CachedImageFolder", "ImageFolderDataset", "TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor, so an item is a view: no decode, no copy until collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, (images.dtype, images.shape)  # (N, C, H, W)
        assert labels.shape == (images.shape[0],), (labels.shape, images.shape)
        self.images = images
        self.labels = labels.long()
        self.item_size = images.shape[-1]  # side of every item

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def targets(self) -> np.ndarray:
        """Every item's label, in item order."""
        return self.labels.numpy()

    def select(self, indices: Sequence[int]) -> TensorImageDataset:
        """The items at ``indices`` (in that order) as a new data set."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorImageDataset(self.images[index], self.labels[index])


class ImageFolderDataset(Dataset):
    """Image files decoded by Pillow on access (in the DataLoader workers), so a large folder never sits in memory.

    Every item is RGB with its shorter side resized to ``resize_size`` (bilinear, as torchvision's ``Resize``) and a
    centred ``item_size`` square cut out of it, so items share one size and the default collate can batch them.
    """

    def __init__(
        self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], *, resize_size: int, item_size: int
    ) -> None:
        assert item_size <= resize_size, (item_size, resize_size)
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.resize_size = resize_size
        self.item_size = item_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return torch.from_numpy(self.decode(path)).permute(2, 0, 1).contiguous(), label

    def decode(self, path: Path) -> np.ndarray:
        """One file as the (H, W, 3) uint8 item: RGB, shorter side resized, centre square cut."""
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"cannot decode image {path}: {error}") from error
        image = _center_crop(_resize_shorter_side(image, self.resize_size), self.item_size)
        return np.array(image, dtype=np.uint8)

    def targets(self) -> np.ndarray:
        """Every item's label, in item order."""
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def select(self, indices: Sequence[int]) -> ImageFolderDataset:
        """The items at ``indices`` (in that order) as a new data set with the same sizes."""
        samples = [self.samples[i] for i in indices]
        return ImageFolderDataset(samples, self.classes, resize_size=self.resize_size, item_size=self.item_size)


class CachedImageFolder(ImageFolderDataset):
    """An image folder whose items were decoded once into one uint8 tensor (N, 3, S, S): indexing is a view.

    Keeps the folder's ``samples`` and sizes, so it reads like the folder it caches.
    """

    def __init__(self, folder: ImageFolderDataset, images: torch.Tensor) -> None:
        super().__init__(folder.samples, folder.classes, resize_size=folder.resize_size, item_size=folder.item_size)
        expected = (len(folder), 3, folder.item_size, folder.item_size)
        assert images.dtype == torch.uint8 and tuple(images.shape) == expected, (images.dtype, images.shape)
        self.images = images
        self.labels = torch.from_numpy(self.targets())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def select(self, indices: Sequence[int]) -> CachedImageFolder:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return CachedImageFolder(super().select(indices), self.images[index])


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (torchvision's ``Resize(int)`` rule for the longer side)."""
    width, height = image.size
    if min(width, height) == size:
        return image
    new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    return image.resize(new_size, Image.Resampling.BILINEAR)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """Cut the centred ``size`` x ``size`` square (torchvision's rounding of the offsets)."""
    width, height = image.size
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))
