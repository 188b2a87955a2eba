"""Data sets read from disk (nsrep.data.datasets) and batched augmentation (nsrep.data.augment)."""

from __future__ import annotations

import hashlib
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nsrep.data.augment import AUGMENTATIONS, AUTOAUGMENT_POLICIES, build_transform
from nsrep.data.datasets import (
    CIFAR10_MD5,
    CIFAR100_MD5,
    DATA_SOURCES,
    DIGITS_MEAN,
    DIGITS_STD,
    ImageData,
    SyntheticSpec,
    describe,
    load_data,
)

PER_BATCH = 5  # images per written CIFAR batch file


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)  # the official files are python 2 pickles


def _cifar_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)


def write_cifar10(root, seed: int = 0):
    """A CIFAR-10 python folder in the official layout, PER_BATCH images per file; returns (folder, md5s, truth)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"class_{k}".encode() for k in range(10)]
    _dump(folder / "batches.meta", {b"num_cases_per_batch": PER_BATCH, b"label_names": names, b"num_vis": 3072})
    truth = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = _cifar_rows(rng, PER_BATCH)
        labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * PER_BATCH}
        _dump(folder / name, batch)
        split = truth["test" if name == "test_batch" else "train"]
        split[0].append(data)
        split[1].extend(labels)
    md5s = {name: _md5(folder / name) for name in CIFAR10_MD5}
    return folder, md5s, {k: (np.concatenate(v[0]), v[1]) for k, v in truth.items()}


def write_cifar100(root, seed: int = 1):
    """A CIFAR-100 python folder in the official layout; returns (folder, md5s, truth)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    fine = [f"fine_{k}".encode() for k in range(100)]
    _dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [f"c{k}".encode() for k in range(20)]})
    truth = {}
    for name, count in (("train", 7), ("test", 3)):
        data = _cifar_rows(rng, count)
        labels = [int(v) for v in rng.integers(0, 100, size=count)]
        batch = {b"filenames": [b"x.png"] * count, b"batch_label": name.encode(), b"fine_labels": labels}
        batch.update({b"coarse_labels": [v // 5 for v in labels], b"data": data})
        _dump(folder / name, batch)
        truth[name] = (data, labels)
    return folder, {name: _md5(folder / name) for name in CIFAR100_MD5}, truth


def _check_split(dataset, data: np.ndarray, labels: list[int]) -> None:
    assert len(dataset) == len(labels)
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        assert label == labels[index] and isinstance(label, int)
        # row-major CHW: the first 1024 bytes are the red plane, row by row
        assert torch.equal(image, torch.from_numpy(data[index]).view(3, 32, 32))
    image, _ = dataset[len(dataset) - 1]
    assert image[1, 3, 4] == data[-1, 1 * 1024 + 3 * 32 + 4]
    assert image[2, 31, 0] == data[-1, 2 * 1024 + 31 * 32 + 0]


# ---------------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("as_parent", [False, True])
def test_cifar10_round_trip(tmp_path, as_parent):
    folder, md5s, truth = write_cifar10(tmp_path)
    data = load_data(tmp_path if as_parent else folder, checksums=md5s)
    expected = ("cifar10", 10, 3, 32, "pad-crop")
    assert (data.name, data.num_classes, data.in_chans, data.image_size, data.augment) == expected
    assert data.class_names == tuple(f"class_{k}" for k in range(10))
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)
    assert len(data.train) == 5 * PER_BATCH and len(data.test) == PER_BATCH
    _check_split(data.train, *truth["train"])
    _check_split(data.test, *truth["test"])
    images, labels = next(iter(DataLoader(data.train, batch_size=4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert labels.tolist() == truth["train"][1][:4]
    assert "cifar10: 25 train / 5 test images, 10 classes, 3x32x32" in describe(data)


@pytest.mark.parametrize("as_parent", [False, True])
def test_cifar100_round_trip(tmp_path, as_parent):
    folder, md5s, truth = write_cifar100(tmp_path)
    data = load_data(tmp_path if as_parent else folder, checksums=md5s)
    assert (data.name, data.num_classes, data.in_chans, data.image_size) == ("cifar100", 100, 3, 32)
    assert data.class_names[0] == "fine_0" and data.class_names[99] == "fine_99"
    assert data.mean == (0.5071, 0.4865, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)
    _check_split(data.train, *truth["train"])
    _check_split(data.test, *truth["test"])


def test_cifar_published_checksums_refuse_other_files(tmp_path):
    folder, _, truth = write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="md5") as info:
        load_data(folder)
    message = str(info.value)
    assert str(folder / "data_batch_1") in message
    assert CIFAR10_MD5["data_batch_1"] in message and _md5(folder / "data_batch_1") in message
    data = load_data(folder, verify=False)  # the check skipped, the same files load
    _check_split(data.test, *truth["test"])

    folder100, _, _ = write_cifar100(tmp_path / "other")
    with pytest.raises(ValueError, match=re.escape(str(folder100 / "train")) + ".*md5"):
        load_data(folder100)


def test_cifar_corrupt_file_named(tmp_path):
    folder, md5s, _ = write_cifar10(tmp_path)
    raw = bytearray((folder / "test_batch").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="md5") as info:
        load_data(folder, checksums=md5s)
    assert str(folder / "test_batch") in str(info.value) and md5s["test_batch"] in str(info.value)


def test_cifar_missing_file_named(tmp_path):
    folder, md5s, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="missing") as info:
        load_data(tmp_path, checksums=md5s)
    assert str(folder / "data_batch_3") in str(info.value) and "cifar-10-batches-py" in str(info.value)


def test_cifar_bad_arguments(tmp_path):
    folder, md5s, _ = write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="test_bach"):
        load_data(folder, checksums={**md5s, "test_bach": md5s["test_batch"]})
    with pytest.raises(ValueError, match="image_size=64"):
        load_data(folder, checksums=md5s, image_size=64)
    write_cifar100(tmp_path)
    with pytest.raises(ValueError, match="both"):  # a parent holding both: ambiguous
        load_data(tmp_path, checksums=md5s)


# ---------------------------------------------------------------------------------------------------- image folder


def _colour(k: int, i: int) -> tuple[int, int, int]:
    """The solid colour of image ``i`` of the ``k``-th class written."""
    return (10 * k + 5, 200 - 10 * i, 7 * k)


def write_image_folder(root, classes=("dog", "ant", "cat"), per_class=2, val_classes=None):
    """train/ and val/ with small PNG and JPEG images of different sizes and modes."""
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for k, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                size = (40, 30) if i % 2 else (25, 50)
                Image.new("RGB", size, _colour(k, i)).save(root / split / name / f"img{i}.png")
            Image.new("L", (30, 30), 128).save(root / split / name / "grey.JPEG")
    return root


def test_image_folder_labels_and_sizes(tmp_path):
    write_image_folder(tmp_path)
    data = load_data(tmp_path, image_size=16)
    side = round(16 * 256 / 224)  # 18
    assert (data.name, data.num_classes, data.in_chans, data.image_size) == ("imagefolder", 3, 3, 16)
    assert data.class_names == ("ant", "cat", "dog") and data.augment == "random-resized-crop"
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert len(data.train) == len(data.test) == 9
    assert data.train.item_size == data.train.resize_size == side and data.test.item_size == 16
    for dataset, size in ((data.train, side), (data.test, 16)):
        for index, (path, label) in enumerate(dataset.samples):
            assert data.class_names[label] == path.parent.name
            image, item_label = dataset[index]
            assert item_label == label and image.dtype == torch.uint8 and image.shape == (3, size, size)
            if path.suffix == ".png":  # solid colours survive resize and crop (lossless files)
                colour = torch.tensor(_colour(("dog", "ant", "cat").index(path.parent.name), int(path.stem[-1])))
                assert (image.int() - colour.view(3, 1, 1)).abs().max() <= 1, path
            else:  # greyscale JPEG converted to RGB
                assert (image.int() - 128).abs().max() <= 2
    images, labels = next(iter(DataLoader(data.train, batch_size=9)))
    assert images.shape == (9, 3, side, side) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "train items 18x18" in describe(data)


def test_image_folder_keeps_orientation(tmp_path):
    write_image_folder(tmp_path, classes=("a",), per_class=1)
    left_dark = np.zeros((20, 40, 3), dtype=np.uint8)  # (H, W, 3): wide image, right half white
    left_dark[:, 20:] = 255
    Image.fromarray(left_dark).save(tmp_path / "train" / "a" / "wide.png")
    data = load_data(tmp_path, image_size=16)
    index = [p.name for p, _ in data.train.samples].index("wide.png")
    image, _ = data.train[index]  # shorter side 20 -> 18: 36 x 18, centre 18 columns cover both halves
    assert image.shape == (3, 18, 18)
    assert (image[:, :, :8] <= 5).all() and (image[:, :, -8:] >= 250).all()


def test_image_folder_default_size(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=1)
    data = load_data(tmp_path)
    assert data.image_size == 224 and data.train[0][0].shape == (3, 256, 256) and data.test[0][0].shape == (3, 224, 224)


def test_image_folder_errors(tmp_path):
    root = write_image_folder(tmp_path / "noval")
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()
    with pytest.raises(ValueError, match=r"cannot draw 0.1 of 9 images stratified over 3 classes"):
        load_data(root)  # without val/ a share of train/ is held out, and 10% of 9 leaves a class without images
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\), got 1.5"):
        load_data(root, val_fraction=1.5)

    root = write_image_folder(tmp_path / "empty")
    (root / "train" / "bee").mkdir()
    (root / "val" / "bee").mkdir()
    (root / "train" / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="has no images") as info:
        load_data(root)
    assert str(root / "train" / "bee") in str(info.value)

    root = write_image_folder(tmp_path / "mismatch", classes=("ant", "cat"), val_classes=("ant", "cow"))
    with pytest.raises(ValueError, match=r"only in train/: \['cat'\], only in val/: \['cow'\]"):
        load_data(root)

    root = tmp_path / "noclass"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_data(root)


# ---------------------------------------------------------------------------------------------------- sources


def test_unknown_source_lists_the_sources(tmp_path):
    with pytest.raises(ValueError) as info:
        load_data("digitz")
    message = str(info.value)
    assert "'digitz'" in message and all(source in message for source in DATA_SOURCES)
    assert "Did you mean 'digits'" in message
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        load_data(missing)


def test_folder_of_unknown_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        load_data(tmp_path / "images")
    message = str(info.value)
    assert str(tmp_path / "images") in message and "matches no known layout" in message
    assert all(name in message for name in ("cifar-10-batches-py", "cifar-100-python", "train/", "val/"))


# ---------------------------------------------------------------------------------------------------- digits


def test_digits_split():
    data = load_data("digits")
    again = load_data("digits")
    assert (data.name, data.num_classes, data.in_chans, data.image_size) == ("digits", 10, 1, 8)
    assert len(data.train) + len(data.test) == 1797 and len(data.test) == 360
    train, test = data.train.images, data.test.images
    assert train.dtype == torch.uint8 and train.shape == (1437, 1, 8, 8)
    assert torch.equal(train, again.train.images) and torch.equal(data.test.labels, again.test.labels)
    assert int(train.min()) == 0 and int(train.max()) == 255  # 16 -> 255
    assert set(torch.unique(train).tolist()) <= {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}
    train_counts = torch.bincount(data.train.labels, minlength=10)
    test_counts = torch.bincount(data.test.labels, minlength=10)
    assert (test_counts >= 35).all() and (train_counts >= 139).all()  # stratified: 174..183 per class in all
    assert ((test_counts.float() / (train_counts + test_counts) - 0.2).abs() < 0.02).all()
    # no image is in both splits: 8x8 digits are nearly unique, so compare rows
    train_rows = {bytes(row) for row in train.flatten(1).numpy()}
    assert sum(bytes(row) in train_rows for row in test.flatten(1).numpy()) <= 2
    pixels = train.double() / 255
    assert pixels.mean().item() == pytest.approx(DIGITS_MEAN[0], abs=1e-4)
    assert pixels.std(unbiased=False).item() == pytest.approx(DIGITS_STD[0], abs=1e-4)


# ---------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    state = torch.get_rng_state()
    data = load_data("synthetic")
    assert torch.equal(torch.get_rng_state(), state)  # a private generator, not the global RNG
    again = load_data("synthetic", synthetic=SyntheticSpec())
    other = load_data("synthetic", synthetic=SyntheticSpec(seed=1))
    assert torch.equal(data.train.images, again.train.images) and torch.equal(data.test.labels, again.test.labels)
    assert not torch.equal(data.train.images, other.train.images)
    assert (data.name, data.num_classes, data.in_chans, data.image_size) == ("synthetic", 4, 3, 16)
    assert data.train.images.shape == (256, 3, 16, 16) and data.test.images.shape == (128, 3, 16, 16)
    assert data.mean == data.std == (0.5, 0.5, 0.5)
    assert torch.bincount(data.train.labels).tolist() == [64] * 4
    # nearest class mean, fitted on train, scored on test
    x_train, x_test = data.train.images.flatten(1).float(), data.test.images.flatten(1).float()
    means = torch.stack([x_train[data.train.labels == k].mean(0) for k in range(4)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == data.test.labels).float().mean() > 0.9
    # but not trivially: single images are noisy
    assert (x_test - means[data.test.labels]).std() > 20


def test_synthetic_spec_and_image_size():
    data = load_data("synthetic", image_size=8)
    assert data.image_size == 8 and data.train[0][0].shape == (3, 8, 8)
    data = load_data("synthetic", synthetic=SyntheticSpec(num_classes=3, in_chans=1, train_size=9, test_size=3))
    assert data.train.images.shape == (9, 1, 16, 16) and data.mean == (0.5,)
    with pytest.raises(ValueError, match="conflicts"):
        load_data("synthetic", image_size=8, synthetic=SyntheticSpec())
    with pytest.raises(ValueError, match="synthetic="):
        load_data("digits", synthetic=SyntheticSpec())


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_classes", 1), ("in_chans", 0), ("image_size", 0), ("image_size", 2.5), ("train_size", 3),
     ("test_size", 0), ("seed", -1), ("num_classes", True)],
)  # fmt: skip
def test_synthetic_spec_rejects(field, value):
    with pytest.raises(ValueError, match=rf"SyntheticSpec\.{field}"):
        SyntheticSpec(**{field: value})


# ---------------------------------------------------------------------------------------------------- augment

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _batch(count: int = 16, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_eval_transform_is_normalisation(kind):
    x = _batch()
    transform = build_transform(kind, train=False, image_size=8, mean=MEAN, std=STD)
    out = transform(x)
    assert out.dtype == torch.float32 and torch.allclose(out, _normalise(x), atol=1e-6)
    assert torch.allclose(transform(x.double() / 255), out, atol=1e-6)  # a [0, 1] float batch, same result
    big = _batch(size=12)
    assert torch.allclose(transform(big), _normalise(big[..., 2:10, 2:10]), atol=1e-6)  # centre crop


def test_train_none_only_normalises():
    x = _batch()
    out = build_transform("none", train=True, image_size=8, mean=MEAN, std=STD)(x)
    assert torch.allclose(out, _normalise(x), atol=1e-6)


def test_pad_crop_without_padding_or_flip_is_eval():
    x = _batch()
    transform = build_transform("pad-crop", train=True, image_size=8, mean=MEAN, std=STD, crop_padding=0, hflip=False)
    assert torch.allclose(transform(x), _normalise(x), atol=1e-6)


def test_pad_crop_shifts_with_zero_padding():
    x = torch.full((32, 3, 8, 8), 255, dtype=torch.uint8)
    out = build_transform("pad-crop", train=True, image_size=8, mean=MEAN, std=STD, hflip=False)(x)
    white, black = _normalise(x[:1, :, :1, :1]), _normalise(torch.zeros(1, 3, 1, 1))
    is_white = torch.isclose(out, white.expand_as(out), atol=1e-5)
    is_black = torch.isclose(out, black.expand_as(out), atol=1e-5)
    assert (is_white | is_black).all()  # integer shifts, zero fill: no interpolated values
    padded = is_black.flatten(1).any(1)
    assert 0 < padded.sum() < 32  # most crops show some padding; an unshifted one is possible
    assert (is_white.flatten(2).sum(2) >= 16).all()  # a shift of at most 4 keeps at least 4x4 of the image


def test_augmentation_reproducible_from_torch_rng():
    x = _batch(32, 12)
    transform = build_transform("random-resized-crop", train=True, image_size=8, mean=MEAN, std=STD)
    torch.manual_seed(1)
    first = transform(x)
    torch.manual_seed(1)
    assert torch.equal(transform(x), first)
    state = torch.get_rng_state()
    second = transform(x)
    assert not torch.equal(second, first)
    torch.set_rng_state(state)
    assert torch.equal(transform(x), second)
    transform.to("cpu")  # moving it (to any device) leaves the kornia pipeline alone
    torch.set_rng_state(state)
    assert torch.equal(transform(x), second)
    assert not list(transform.parameters()) and not transform.state_dict()


def test_hflip_flips_some_images():
    x = _batch(64)
    expected = _normalise(x)
    out = build_transform("pad-crop", train=True, image_size=8, mean=MEAN, std=STD, crop_padding=0)(x)
    same = torch.isclose(out, expected, atol=1e-6).flatten(1).all(1)
    flipped = torch.isclose(out, expected.flip(-1), atol=1e-6).flatten(1).all(1)
    assert (same | flipped).all() and 10 < flipped.sum() < 54


def test_random_resized_crop_size():
    x = _batch(8, 18)
    transform = build_transform("random-resized-crop", train=True, image_size=16, mean=MEAN, std=STD, scale=(0.5, 1))
    out = transform(x)
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    low, high = _normalise(torch.zeros(1, 3, 1, 1)), _normalise(torch.full((1, 3, 1, 1), 255))
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    assert transform.eval()(x).shape == (8, 3, 16, 16)  # nn.Module.eval() does not switch augmentation off
    assert not torch.equal(transform(x), transform(x))


@pytest.mark.parametrize("policy", AUTOAUGMENT_POLICIES)
def test_autoaugment(policy):
    x = _batch(16, 16)
    transform = build_transform("pad-crop", train=True, image_size=16, mean=MEAN, std=STD, autoaugment=policy)
    assert not list(transform.parameters())  # kornia's internals stay out of an optimizer's reach
    out = transform(x)
    low, high = _normalise(torch.zeros(1, 3, 1, 1)), _normalise(torch.full((1, 3, 1, 1), 255))
    assert out.shape == x.shape and (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


def test_autoaugment_needs_three_channels():
    with pytest.raises(ValueError, match="3-channel"):
        build_transform("pad-crop", train=True, image_size=8, mean=(0.5,), std=(0.5,), autoaugment="cifar10")


def test_transform_errors():
    with pytest.raises(ValueError) as info:
        build_transform("pad_crop", train=True, image_size=8, mean=MEAN, std=STD)
    assert "pad-crop, random-resized-crop, none" in str(info.value) and "'pad_crop'" in str(info.value)
    with pytest.raises(ValueError, match="cifar10, imagenet, svhn"):
        build_transform("pad-crop", train=True, image_size=8, mean=MEAN, std=STD, autoaugment="cifar")
    with pytest.raises(ValueError, match="one value per channel"):
        build_transform("none", train=False, image_size=8, mean=MEAN, std=STD[:2])
    transform = build_transform("none", train=False, image_size=8, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="expected a batch"):
        transform(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_transform_matches_data():
    data: ImageData = load_data("synthetic")
    images, _ = next(iter(DataLoader(data.train, batch_size=8)))
    out = build_transform(data.augment, train=True, image_size=data.image_size, mean=data.mean, std=data.std)(images)
    assert out.shape == (8, 3, 16, 16)


# ---------------------------------------------------------------------------------------- held-out split, cache


def write_class_folders(root, classes=("bird", "cat", "dog"), per_class=10, size=8):
    """CLASS/*.jpg of small noisy images (a CIFAR-style train/ folder), distinct pixels per file."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def _names(dataset) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p, _ in dataset.samples]


def test_folder_without_val_gets_a_stratified_seeded_disjoint_split(tmp_path):
    write_class_folders(tmp_path / "images" / "train")
    for source in (tmp_path / "images", tmp_path / "images" / "train"):  # train/ alone, or the class folders
        data = load_data(source, image_size=8, val_fraction=0.2, split_seed=3)
        train, test = _names(data.train), _names(data.test)
        assert data.held_out and (data.val_fraction, data.split_seed) == (0.2, 3)
        assert len(train) == 24 and len(test) == 6 and not set(train) & set(test)
        assert sorted(train + test) == sorted(f"{c}/{i:04d}.jpg" for c in ("bird", "cat", "dog") for i in range(10))
        assert np.bincount(data.test.targets()).tolist() == [2, 2, 2]  # stratified: 20% of each class
        again = load_data(source, image_size=8, val_fraction=0.2, split_seed=3)
        assert _names(again.test) == test  # same seed, same images
        assert "held-out validation (val_fraction 0.2, seed 3)" in describe(data)
    other = load_data(tmp_path / "images", image_size=8, val_fraction=0.2, split_seed=4)
    assert _names(other.test) != test and len(other.test) == 6
    assert not load_data(write_image_folder(tmp_path / "both"), image_size=16).held_out  # val/ is kept as given


def test_train_subset_is_stratified_and_leaves_the_test_split_alone(tmp_path):
    write_class_folders(tmp_path / "train")
    full = load_data(tmp_path, image_size=8, val_fraction=0.2)
    data = load_data(tmp_path, image_size=8, val_fraction=0.2, train_subset=12)
    assert np.bincount(data.train.targets()).tolist() == [4, 4, 4]
    assert set(_names(data.train)) <= set(_names(full.train)) and _names(data.test) == _names(full.test)
    image, _ = data.train[0]
    assert torch.equal(image, full.train[_names(full.train).index(_names(data.train)[0])][0])
    with pytest.raises(ValueError, match=r"train_subset must be an int from 3 .* to the 24 training images.*got 99"):
        load_data(tmp_path, image_size=8, val_fraction=0.2, train_subset=99)


def test_small_images_are_decoded_once_into_a_cache_equal_to_decoding(tmp_path):
    from nsrep.data.imagecache import CACHE_DIR
    from nsrep.data.items import CachedImageFolder, ImageFolderDataset

    root = write_class_folders(tmp_path / "train", per_class=6)
    data = load_data(tmp_path, image_size=8, train_item_size=8, val_fraction=0.5)
    assert isinstance(data.train, CachedImageFolder) and data.augment == "pad-crop"
    plain = load_data(tmp_path, image_size=8, train_item_size=8, val_fraction=0.5, cache=False)
    assert type(plain.train) is ImageFolderDataset
    for cached, decoded in ((data.train, plain.train), (data.test, plain.test)):
        assert _names(cached) == _names(decoded)
        for i in range(len(decoded)):
            assert torch.equal(cached[i][0], decoded[i][0]) and cached[i][1] == decoded[i][1]
    files = sorted((tmp_path / CACHE_DIR).glob("*.safetensors"))
    assert len(files) == 2  # one per split

    stamp = {f: f.stat().st_mtime_ns for f in files}
    again = load_data(tmp_path, image_size=8, train_item_size=8, val_fraction=0.5)  # read back, not re-decoded
    assert sorted((tmp_path / CACHE_DIR).glob("*.safetensors")) == files
    assert all(f.stat().st_mtime_ns == stamp[f] for f in files)
    assert torch.equal(again.train.images, data.train.images)

    # a changed folder (one image replaced by another picture) selects a new cache, with the new pixels
    victim = data.train.samples[0][0]
    Image.fromarray(np.full((8, 8, 3), 77, dtype=np.uint8)).save(victim, quality=90)
    changed = load_data(tmp_path, image_size=8, train_item_size=8, val_fraction=0.5)
    assert len(list((tmp_path / CACHE_DIR).glob("*.safetensors"))) == 3
    assert torch.equal(changed.train[0][0], torch.from_numpy(plain.train.decode(victim)).permute(2, 0, 1))
    assert not torch.equal(changed.train[0][0], data.train[0][0])
    (root / "cat" / "0000.jpg").unlink()  # a removed file changes the listing: another cache again
    fewer = load_data(tmp_path, image_size=8, train_item_size=8, val_fraction=0.5)
    assert len(fewer.train) + len(fewer.test) == 17


def test_cache_that_cannot_be_written_stays_in_memory(tmp_path, capsys, monkeypatch):
    import errno

    from nsrep.data import imagecache
    from nsrep.data.items import CachedImageFolder

    def read_only(path, write):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    write_class_folders(tmp_path / "train", per_class=4)
    monkeypatch.setattr(imagecache, "atomic_write", read_only)
    data = load_data(tmp_path, image_size=8, val_fraction=0.25)
    assert isinstance(data.train, CachedImageFolder) and "kept in memory only" in capsys.readouterr().err
    assert not (tmp_path / imagecache.CACHE_DIR).exists() or not any((tmp_path / imagecache.CACHE_DIR).iterdir())


def test_damaged_cache_file_is_rebuilt(tmp_path, capsys):
    from nsrep.data.imagecache import CACHE_DIR

    write_class_folders(tmp_path / "train", per_class=4)
    first = load_data(tmp_path, image_size=8, val_fraction=0.25)
    for f in (tmp_path / CACHE_DIR).glob("*.safetensors"):
        f.write_bytes(b"not a cache")
    second = load_data(tmp_path, image_size=8, val_fraction=0.25)
    assert "ignoring unreadable image cache" in capsys.readouterr().err
    assert torch.equal(first.train.images, second.train.images)
