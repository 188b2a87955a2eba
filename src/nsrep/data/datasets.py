"""Image data sets read from local disk, never downloaded: CIFAR-10/100, ImageNet-style folders, digits, synthetic.

Every item is ``(image, label)``: ``image`` a uint8 tensor (C, H, W), ``label`` an int, so the default collate
makes a uint8 batch (B, C, H, W) that the trainer converts to float and augments on the device
(:mod:`nsrep.data.augment`). Small data sets live in memory as one uint8 tensor (indexing is a view: no decode,
no PIL); ImageNet-style folders are decoded with Pillow in ``__getitem__``, i.e. in the DataLoader workers,
except folders of small images (items of at most ``SMALL_IMAGE_MAX`` pixels a side, CIFAR-style JPEGs), which are
decoded once into a uint8 tensor (kept in memory and in a cache file beside the data, nsrep.data.imagecache)
so no epoch after the first decodes a JPEG. A folder without ``val/`` gets a stratified, seeded validation
split of its ``train/`` images (``val_fraction``, ``split_seed``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nsrep.data.imagecache import cached_folder
from nsrep.data.items import CachedImageFolder, ImageFolderDataset, TensorImageDataset

__all__ = [
    "CIFAR10_MD5",
    "CIFAR100_MD5",
    "DATA_SOURCES",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "ImageFolderDataset",
    "SyntheticSpec",
    "TensorImageDataset",
    "describe",
    "load_data",
    "stratified_indices",
    "stratified_split",
]

DATA_SOURCES = ("digits", "synthetic", "a CIFAR-10/100 python folder", "an ImageNet-style folder")

# Published MD5 sums of the python versions (https://www.cs.toronto.edu/~kriz/cifar.html), file name -> md5.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Pixel mean/std (on [0, 1]) of the digits train split below, checked against the computed values in the tests.
DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3760,)
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.2, 0

# A folder without val/ holds out this fraction of its train/ images (stratified) for validation.
DEFAULT_VAL_FRACTION, DEFAULT_SPLIT_SEED = 0.1, 0
# Items of at most this side are decoded once into memory (and a cache file) instead of in every epoch.
SMALL_IMAGE_MAX = 64
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGENET_SIZE = 224
DEFAULT_CROP_PCT = 224 / 256  # evaluation: resize the shorter side to 256, centre-crop 224 (torchvision's)

_CIFAR_LAYOUTS = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the CIFAR-10 python version)",
    "cifar100": "cifar-100-python/{train, test, meta} (the CIFAR-100 python version)",
}
_IMAGE_FOLDER_LAYOUT = (
    "train/CLASS/*.jpg and val/CLASS/*.jpg with the same class folders (ImageNet-style), train/CLASS/*.jpg alone "
    "(a validation split is held out), or the CLASS/*.jpg folders themselves"
)


@dataclass(frozen=True)
class ImageData:
    """A train/test pair of image data sets plus what a model and augmentation need to know of them."""

    name: str  # "cifar10" | "cifar100" | "imagefolder" | "digits" | "synthetic"
    train: Dataset = field(repr=False)  # items: (image uint8 tensor (C, H, W), label int)
    test: Dataset = field(repr=False)
    num_classes: int
    in_chans: int
    image_size: int  # side of the square images the train loader yields after augmentation: the model input size
    mean: tuple[float, ...]  # per-channel normalisation on the [0, 1] scale
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    augment: str  # default augmentation kind: "pad-crop" or "random-resized-crop" (nsrep.data.augment)
    # set when the test split is a stratified share of the source's training images (a folder without val/)
    val_fraction: float | None = None
    split_seed: int | None = None
    # set when a folder without val/ was opened for evaluation only: every image is in the test split
    whole_folder: bool = False

    @property
    def held_out(self) -> bool:
        """Whether the test split was held out of the training images (not the source's own test split)."""
        return self.val_fraction is not None


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and seed of the synthetic data set: learnable class patterns plus noise, for tests and smoke runs."""

    num_classes: int = 4
    in_chans: int = 3
    image_size: int = 16
    train_size: int = 256
    test_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"SyntheticSpec.{f.name} must be an int, got {value!r}")
        minimum = {"num_classes": 2, "in_chans": 1, "image_size": 1, "train_size": self.num_classes, "test_size": 1}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"SyntheticSpec.{name} must be at least {low}, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"SyntheticSpec.seed must be non-negative, got {self.seed}")


# ---------------------------------------------------------------------------------------------------- entry point


def load_data(
    source: str | os.PathLike,
    *,
    image_size: int | None = None,
    verify: bool = True,
    checksums: Mapping[str, str] | None = None,
    synthetic: SyntheticSpec | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    train_subset: int | None = None,
    train_item_size: int | None = None,
    crop_pct: float = DEFAULT_CROP_PCT,
    cache: bool = True,
    hold_out: bool = True,
) -> ImageData:
    """Open ``source``: "digits", "synthetic", a CIFAR python folder or an ImageNet-style folder.

    ``image_size`` sets the crop of an ImageNet-style folder (default 224) and the side of the synthetic images;
    the fixed-size data sets (CIFAR 32, digits 8) accept only their own size. ``verify`` checks the CIFAR files
    against ``CIFAR10_MD5`` / ``CIFAR100_MD5``, each entry of which ``checksums`` (file name -> md5) may replace.
    The names "digits" and "synthetic" win over folders of the same name (pass "./digits" for the folder).

    An image folder without ``val/`` holds out ``val_fraction`` of its images per class, drawn with
    ``split_seed``, as the test split. ``train_subset`` keeps that many training images (stratified, seeded by
    ``split_seed``; the test split is untouched). ``train_item_size`` sets the side of an image folder's train
    items (default: the resize side, for a random-resized crop on the device; pass ``image_size`` for a
    pad-and-crop recipe). ``crop_pct`` is the share of the resized side an image folder's evaluation crop keeps
    (resize the shorter side to ``image_size / crop_pct``). ``cache`` decodes folders of small images once (see
    nsrep.data.imagecache). ``hold_out=False`` opens a folder without ``val/`` for evaluation: every image is in
    the test split and the train split is empty.
    """
    if not isinstance(val_fraction, int | float) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not isinstance(crop_pct, int | float) or isinstance(crop_pct, bool) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    split = _ImageFolderSplit(val_fraction, split_seed, train_item_size, cache, hold_out, crop_pct)
    data = _open(source, image_size, verify, checksums, synthetic, split)
    if train_subset is not None:
        data = _with_train_subset(data, train_subset, split_seed)
    return data


def _open(
    source: str | os.PathLike,
    image_size: int | None,
    verify: bool,
    checksums: Mapping[str, str] | None,
    synthetic: SyntheticSpec | None,
    split: _ImageFolderSplit,
) -> ImageData:
    if isinstance(source, str) and source in ("digits", "synthetic"):
        if checksums is not None:
            raise ValueError(f"checksums= applies only to CIFAR folders, not to {source!r}")
        if source == "digits":
            if synthetic is not None:
                raise ValueError("synthetic= applies only to the source 'synthetic', not to 'digits'")
            _check_fixed_size("digits", image_size, 8)
            return _load_digits()
        if synthetic is None:
            synthetic = SyntheticSpec() if image_size is None else SyntheticSpec(image_size=image_size)
        elif image_size is not None and image_size != synthetic.image_size:
            raise ValueError(f"image_size={image_size} conflicts with synthetic.image_size={synthetic.image_size}")
        return _load_synthetic(synthetic)
    if synthetic is not None:
        raise ValueError(f"synthetic= applies only to the source 'synthetic', not to {os.fspath(source)!r}")

    path = Path(source).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(str(source), ["digits", "synthetic"], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown data source {os.fspath(source)!r}: neither a known name nor an existing path; "
            f"valid: {', '.join(DATA_SOURCES)}.{hint}"
        )
    if not path.is_dir():
        raise ValueError(f"data source {str(path)!r} is a file; expected a folder ({', '.join(DATA_SOURCES[2:])})")

    cifar = _find_cifar(path)
    if cifar is not None:
        kind, folder = cifar
        _check_fixed_size(kind, image_size, 32)
        return _load_cifar(kind, folder, verify=verify, checksums=checksums)
    if checksums is not None:
        raise ValueError(f"checksums= applies only to CIFAR folders, and {str(path)!r} is none")
    size = DEFAULT_IMAGENET_SIZE if image_size is None else image_size
    if (path / "train").is_dir() or (path / "val").is_dir():
        return _load_image_folder(path, size, split)
    if _holds_class_folders(path):  # the class folders themselves (e.g. data/train): a held-out split
        return _load_image_folder(path, size, split, train_dir=path)
    raise ValueError(
        f"data folder {str(path)!r} matches no known layout; looked for {_CIFAR_LAYOUTS['cifar10']}, "
        f"{_CIFAR_LAYOUTS['cifar100']} (the folder itself or a subfolder of that name), or {_IMAGE_FOLDER_LAYOUT}"
    )


def describe(data: ImageData) -> str:
    """One line to log what was loaded: name, split sizes, classes and image size."""
    shape = f"{data.in_chans}x{data.image_size}x{data.image_size}"
    item_size = getattr(data.train, "item_size", data.image_size)
    if item_size != data.image_size:
        shape += f" (train items {item_size}x{item_size}, cropped on the device)"
    cached = " (decoded once, cached)" if isinstance(data.train, CachedImageFolder) else ""
    return (
        f"{data.name}: {len(data.train)} train / {len(data.test)} {_test_split_name(data)} images{cached}, "
        f"{data.num_classes} classes, {shape}, augment {data.augment}"
    )


def _test_split_name(data: ImageData) -> str:
    """Which images the test split holds, in words."""
    test = "test"
    if data.held_out:
        test = f"held-out validation (val_fraction {data.val_fraction}, seed {data.split_seed})"
    elif data.whole_folder:
        test = "test (every image of the folder)"
    return test


def stratified_indices(targets: np.ndarray, fraction: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, drawn) sorted index arrays: ``fraction`` of the items (a share, or a count if an int) drawn per
    class with scikit-learn's stratified shuffle seeded by ``seed``; the same inputs give the same split."""
    from sklearn.model_selection import train_test_split

    try:
        kept, drawn = train_test_split(np.arange(len(targets)), test_size=fraction, random_state=seed, stratify=targets)
    except ValueError as error:  # too few images per class for the share asked
        classes = len(np.unique(targets))
        raise ValueError(
            f"cannot draw {fraction!r} of {len(targets)} images stratified over {classes} classes "
            f"(both parts need at least one image per class): {error}"
        ) from error
    return np.sort(kept), np.sort(drawn)


def _with_train_subset(data: ImageData, size: int, seed: int) -> ImageData:
    """``data`` with ``size`` of its training images, stratified and seeded; the test split unchanged."""
    total = len(data.train)
    if not isinstance(size, int) or isinstance(size, bool) or not data.num_classes <= size <= total:
        raise ValueError(
            f"train_subset must be an int from {data.num_classes} (one image per class) to the {total} training "
            f"images of {data.name}, got {size!r}"
        )
    if size == total:
        return data
    _, chosen = stratified_indices(data.train.targets(), size, seed)
    return dataclasses.replace(data, train=data.train.select(chosen))


def _check_fixed_size(name: str, image_size: int | None, native: int) -> None:
    """Refuse an ``image_size`` that a fixed-size data set cannot honour (it is never resized here)."""
    if image_size is not None and image_size != native:
        raise ValueError(f"{name} images are {native}x{native}; image_size={image_size} is not supported")


# ---------------------------------------------------------------------------------------------------- CIFAR


def _find_cifar(path: Path) -> tuple[str, Path] | None:
    """The CIFAR kind and folder that ``path`` is (by name or by its files) or holds as a subfolder, if any."""
    names = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
    if path.name == names["cifar10"] or (path / "batches.meta").is_file() or (path / "data_batch_1").is_file():
        return "cifar10", path
    if path.name == names["cifar100"] or ((path / "meta").is_file() and (path / "train").is_file()):
        return "cifar100", path
    found = [(kind, path / name) for kind, name in names.items() if (path / name).is_dir()]
    if len(found) > 1:
        raise ValueError(f"{str(path)!r} holds both {found[0][1]} and {found[1][1]}; pass one of them as the source")
    return found[0] if found else None


def _md5(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cifar(kind: str, folder: Path, *, verify: bool, checksums: Mapping[str, str] | None) -> ImageData:
    """Read a CIFAR python folder after checking that every file is there and (if ``verify``) has its md5."""
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[kind]
    table = CIFAR10_MD5 if kind == "cifar10" else CIFAR100_MD5
    layout = _CIFAR_LAYOUTS[kind]
    unknown = sorted(set(checksums or {}) - set(table))
    if unknown:
        raise ValueError(f"checksums= names files that {title} does not have: {unknown}; its files: {list(table)}")
    expected = {**table, **(checksums or {})}
    for name in table:
        if not (folder / name).is_file():
            raise ValueError(f"{title} file {folder / name} is missing; expected the layout {layout}")
    if verify:
        for name in table:
            actual = _md5(folder / name)
            if actual != expected[name]:
                raise ValueError(
                    f"{title} file {folder / name} is corrupt or not the official one: md5 {actual}, expected "
                    f"{expected[name]} (layout {layout}); pass verify=False to skip the check"
                )

    if kind == "cifar10":
        meta_file, names_key, label_key = "batches.meta", b"label_names", b"labels"
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
    else:
        meta_file, names_key, label_key = "meta", b"fine_label_names", b"fine_labels"
        train_files, test_files = ["train"], ["test"]
    meta = _read_pickle(folder / meta_file)
    if names_key not in meta:
        raise ValueError(f"{title} file {folder / meta_file} has no key {names_key!r}; keys: {sorted(meta)}")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    train = _read_cifar_split([folder / f for f in train_files], label_key, len(class_names))
    test = _read_cifar_split([folder / f for f in test_files], label_key, len(class_names))
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if kind == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageData(kind, train, test, len(class_names), 3, 32, mean, std, class_names, "pad-crop")


def _read_pickle(path: Path) -> dict:
    """Unpickle one CIFAR file (python 2 pickles of numpy arrays, hence ``encoding="bytes"``)."""
    with open(path, "rb") as handle:
        content = pickle.load(handle, encoding="bytes")
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, expected the dict of the CIFAR python version")
    return content


def _read_cifar_split(paths: Sequence[Path], label_key: bytes, num_classes: int) -> TensorImageDataset:
    """Concatenate CIFAR batch files: b"data" rows are 3072 uint8, row-major (C=3, H=32, W=32)."""
    images, labels = [], []
    for path in paths:
        batch = _read_pickle(path)
        missing = [key for key in (b"data", label_key) if key not in batch]
        if missing:
            raise ValueError(f"{path} has no key {missing[0]!r}; keys: {sorted(batch)}")
        data, targets = batch[b"data"], np.asarray(batch[label_key], dtype=np.int64)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: b'data' must be a uint8 array (N, 3072), got {got}")
        if targets.shape != (data.shape[0],) or (
            targets.size and not 0 <= targets.min() <= targets.max() < num_classes
        ):
            raise ValueError(f"{path}: {data.shape[0]} images need as many labels in [0, {num_classes}), got {targets}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return TensorImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


# ---------------------------------------------------------------------------------------------------- image folder


@dataclass(frozen=True)
class _ImageFolderSplit:
    """How an image folder is split and decoded (see :func:`load_data`)."""

    val_fraction: float
    seed: int
    train_item_size: int | None
    cache: bool
    hold_out: bool = True  # False: a folder without val/ is all test images (opened for evaluation)
    crop_pct: float = DEFAULT_CROP_PCT


def _load_image_folder(
    root: Path, image_size: int, split: _ImageFolderSplit, train_dir: Path | None = None
) -> ImageData:
    """Index an ImageNet-style folder: train items are square at the resize side, val items at ``image_size``.

    Batched augmentation needs one item size, so a train image is resized (shorter side ``round(image_size /
    split.crop_pct)``, 256 for 224 by default) and centre-cropped to that square; the random-resized crop then
    runs on the device (``split.train_item_size`` replaces that side, e.g. ``image_size`` for a pad-and-crop
    recipe). Val
    images get the standard evaluation: the same resize, then a centre crop of ``image_size``. Without a val/
    folder (or when ``train_dir`` is given) a stratified share of the train images is held out instead.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    item = split.train_item_size
    if item is not None and (not isinstance(item, int) or isinstance(item, bool) or item < image_size):
        raise ValueError(f"train_item_size must be an int >= image_size ({image_size}), got {item!r}")
    resize_size = round(image_size / split.crop_pct)
    train_item = resize_size if item is None else item
    if train_dir is None:
        if not (root / "train").is_dir():
            raise ValueError(f"ImageNet-style folder {root} has no train/ folder; expected {_IMAGE_FOLDER_LAYOUT}")
        train_dir = root / "train"
    classes = _class_folders(train_dir)
    samples = _scan(train_dir, classes)
    held_out = train_dir != root / "train" or not (root / "val").is_dir()
    whole_folder = held_out and not split.hold_out
    if whole_folder:
        held_out, train_samples, val_samples = False, [], samples
    elif held_out:
        targets = np.array([label for _, label in samples], dtype=np.int64)
        kept, drawn = stratified_indices(targets, split.val_fraction, split.seed)
        train_samples, val_samples = [samples[i] for i in kept], [samples[i] for i in drawn]
    else:
        val_classes = _class_folders(root / "val")
        if classes != val_classes:
            only_train, only_val = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
            raise ValueError(
                f"class folders of {root / 'val'} differ from those of {root / 'train'}: "
                f"only in train/: {only_train}, only in val/: {only_val}"
            )
        train_samples, val_samples = samples, _scan(root / "val", classes)
    train = ImageFolderDataset(train_samples, classes, resize_size=train_item, item_size=train_item)
    test = ImageFolderDataset(val_samples, classes, resize_size=resize_size, item_size=image_size)
    if split.cache:
        train, test = (
            cached_folder(d, root) if d.item_size <= SMALL_IMAGE_MAX and len(d) else d for d in (train, test)
        )
    return ImageData(
        name="imagefolder",
        train=train,
        test=test,
        num_classes=len(classes),
        in_chans=3,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=classes,
        augment="random-resized-crop" if item is None else "pad-crop",
        val_fraction=split.val_fraction if held_out else None,
        split_seed=split.seed if held_out else None,
        whole_folder=whole_folder,
    )


def _holds_class_folders(path: Path) -> bool:
    """Whether ``path``'s (non-hidden) subfolders hold image files directly: a folder of class folders."""
    for folder in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir() if f.is_file()):
            return True
    return False


def _class_folders(folder: Path) -> tuple[str, ...]:
    """Sorted names of the (non-hidden) class folders; their order gives the labels."""
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise ValueError(f"{folder} has no class folders; expected {_IMAGE_FOLDER_LAYOUT}")
    return classes


def _scan(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(image path, label) for every image under every class folder (recursively, sorted, symlinks followed)."""
    samples = []
    for label, name in enumerate(classes):
        found = []
        for directory, _, files in os.walk(folder / name, followlinks=True):
            found += [Path(directory, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(f"class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(path, label) for path in sorted(found)]
    return samples


# ---------------------------------------------------------------------------------------------------- digits, synthetic


def stratified_split(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of scikit-learn's bundled data: 80/20, stratified, ``random_state=0``, each
    in the original order (the digits images here and the feature files of ``nsrep probe`` share it)."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ValueError("the scikit-learn data sets need scikit-learn (pip install scikit-learn)") from error
    train, test = train_test_split(
        np.arange(len(targets)), test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=targets
    )
    return np.sort(train), np.sort(test)


def _load_digits() -> ImageData:
    """scikit-learn's bundled 8x8 digits (no download), split 80/20 stratified with ``random_state=0``.

    The 0..16 grey values become uint8 ``round(value * 255 / 16)``; both splits keep the original item order.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ValueError("the 'digits' data set needs scikit-learn (pip install scikit-learn)") from error
    bunch = load_digits()
    values, targets = bunch.images, bunch.target  # (1797, 8, 8) float 0..16, (1797,) int
    images = torch.from_numpy(np.floor(values * 255 / 16 + 0.5).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(targets.astype(np.int64))
    train_index, test_index = (torch.from_numpy(i) for i in stratified_split(targets))
    train = TensorImageDataset(images[train_index], labels[train_index])
    test = TensorImageDataset(images[test_index], labels[test_index])
    class_names = tuple(str(d) for d in range(10))
    return ImageData("digits", train, test, 10, 1, 8, DIGITS_MEAN, DIGITS_STD, class_names, "pad-crop")


def _load_synthetic(spec: SyntheticSpec) -> ImageData:
    """Learnable images: each class a fixed random low-frequency pattern, each item that pattern plus noise.

    Everything comes from one ``torch.Generator`` seeded with ``spec.seed`` (never the global RNG), so the same
    spec gives the same bytes; labels are balanced (``i % num_classes``) and shuffled.
    """
    generator = torch.Generator().manual_seed(spec.seed)
    size, grid = spec.image_size, min(4, spec.image_size)
    patterns = torch.rand(spec.num_classes, spec.in_chans, grid, grid, generator=generator)  # (K, C, g, g)
    patterns = F.interpolate(patterns, size=(size, size), mode="bilinear", align_corners=False)  # (K, C, S, S)
    patterns = 0.2 + 0.6 * patterns  # room for the noise inside [0, 1]

    def split(count: int) -> TensorImageDataset:
        labels = (torch.arange(count) % spec.num_classes)[torch.randperm(count, generator=generator)]
        noise = 0.15 * torch.randn(count, spec.in_chans, size, size, generator=generator)
        images = (patterns[labels] + noise).mul(255).round().clamp(0, 255).to(torch.uint8)
        return TensorImageDataset(images, labels)

    train, test = split(spec.train_size), split(spec.test_size)
    half = (0.5,) * spec.in_chans
    class_names = tuple(f"class{k}" for k in range(spec.num_classes))
    return ImageData(
        "synthetic", train, test, spec.num_classes, spec.in_chans, size, half, half, class_names, "pad-crop"
    )
