"""Decode a folder of small images once: a uint8 tensor in memory and a cache file beside the data.

JPEG decoding in DataLoader workers is what slowed CIFAR-sized folders to a few images per second on two cores
(the network itself trains far faster), so items of at most ``SMALL_IMAGE_MAX`` pixels a side are decoded once.
The cache file (``.nsrep-cache/`` in the data folder, safetensors) is keyed by the exact listing of the files it
holds (relative path, byte size, modification time) and the item geometry, so any added, removed, replaced or
touched file, or another resize, selects another file; it is written atomically, and a folder that cannot be
written to keeps the decoded tensor in memory only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nsrep.data.items import CachedImageFolder, ImageFolderDataset
from nsrep.fileio import atomic_write

__all__ = ["CACHE_DIR", "CACHE_FORMAT", "cache_key", "cached_folder"]

CACHE_DIR = ".nsrep-cache"
CACHE_FORMAT = 1  # bump when the decoding itself changes (resize rule, colour conversion)


def cache_key(folder: ImageFolderDataset, root: Path) -> str:
    """sha256 of the cache format, item geometry and every file's (relative path, size, mtime, label)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, folder.resize_size, folder.item_size, list(folder.classes)]).encode())
    for path, label in folder.samples:
        stat = path.stat()
        digest.update(f"\0{path.relative_to(root) if path.is_relative_to(root) else path}\0{stat.st_size}".encode())
        digest.update(f"\0{stat.st_mtime_ns}\0{label}".encode())
    return digest.hexdigest()


def cached_folder(folder: ImageFolderDataset, root: Path, *, progress: bool = True) -> CachedImageFolder:
    """``folder`` with every item decoded: read from the cache file when its key matches, else decoded and saved."""
    from safetensors.torch import load_file, save

    key, side = cache_key(folder, root), folder.item_size
    path = root / CACHE_DIR / f"{key[:32]}.safetensors"
    if path.is_file():
        try:
            images = load_file(path)["images"]
        except Exception as error:  # a damaged cache file is rebuilt, never trusted
            print(f"nsrep: ignoring unreadable image cache {path}: {error}", file=sys.stderr)
        else:
            if images.dtype == torch.uint8 and tuple(images.shape) == (len(folder), 3, side, side):
                return CachedImageFolder(folder, images)
    images = _decode_all(folder, progress)
    try:
        atomic_write(path, lambda f: f.write(save({"images": images}, metadata={"key": key})))
    except OSError as error:  # read-only data folder: the decoded tensor still serves this process
        print(f"nsrep: image cache not written ({error}); decoded images kept in memory only", file=sys.stderr)
    return CachedImageFolder(folder, images)


def _decode_all(folder: ImageFolderDataset, progress: bool) -> torch.Tensor:
    """(N, 3, S, S) uint8: every item decoded exactly as ``ImageFolderDataset.__getitem__`` decodes it."""
    side = folder.item_size
    out = np.empty((len(folder), side, side, 3), dtype=np.uint8)
    bar = tqdm(folder.samples, desc="decoding images once", unit="img", disable=not progress, file=sys.stderr)
    for i, (path, _) in enumerate(bar):
        out[i] = folder.decode(path)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
