"""Feature files: the ``.npz`` layout, its validation, and scikit-learn's bundled data as features."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsrep.data.datasets import stratified_split
from nsrep.fileio import atomic_write
from nsrep.probe.constants import REQUIRED_KEYS, SKLEARN_DATASETS
from nsrep.validation import check_choice


@dataclass(frozen=True)
class FeatureSet:
    """Train/test features and labels of one data set, validated (:func:`validate_features`)."""

    name: str
    train_x: np.ndarray = field(repr=False)  # (N, D) float32
    train_y: np.ndarray = field(repr=False)  # (N,) int64 in 0..num_classes-1
    test_x: np.ndarray = field(repr=False)  # (M, D) float32
    test_y: np.ndarray = field(repr=False)  # (M,) int64
    num_classes: int

    @property
    def in_features(self) -> int:
        return self.train_x.shape[1]

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.train_y)} train / {len(self.test_y)} test samples, "
            f"{self.in_features} features, {self.num_classes} classes"
        )


def validate_features(
    arrays: Mapping[str, Any], *, source: str, name: str | None = None, num_classes: int | None = None
) -> FeatureSet:
    """Check feature arrays (``REQUIRED_KEYS``, optional ``num_classes``); errors name ``source`` and the key."""
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"{source}: missing array(s) {', '.join(map(repr, missing))}; a feature file needs "
            f"{', '.join(REQUIRED_KEYS)} (optional: num_classes)"
        )
    xs = {key: _features_array(arrays[key], key, source) for key in ("train_x", "test_x")}
    ys = {key: _labels_array(arrays[key], key, source) for key in ("train_y", "test_y")}
    for x_key, y_key in (("train_x", "train_y"), ("test_x", "test_y")):
        if xs[x_key].shape[0] != ys[y_key].shape[0]:
            raise ValueError(
                f"{source}: lengths differ: {x_key!r} has {xs[x_key].shape[0]} rows but {y_key!r} has "
                f"{ys[y_key].shape[0]} labels"
            )
    if xs["test_x"].shape[1] != xs["train_x"].shape[1]:
        raise ValueError(
            f"{source}: 'test_x' has {xs['test_x'].shape[1]} features per row but 'train_x' has "
            f"{xs['train_x'].shape[1]}"
        )
    if num_classes is None and "num_classes" in arrays:
        num_classes = _scalar_int(arrays["num_classes"], "num_classes", source)
    origin = "num_classes" if num_classes is not None else "max(train_y) + 1"
    if num_classes is None:
        num_classes = int(ys["train_y"].max()) + 1 if ys["train_y"].size else 0
    if num_classes < 2:
        raise ValueError(f"{source}: a classifier needs at least 2 classes, got {num_classes} ({origin})")
    for key, y in ys.items():
        if y.size and y.min() < 0:
            index = int(np.argmax(y < 0))
            raise ValueError(
                f"{source}: {key!r} has the negative label {int(y[index])} at index {index}; labels must be "
                f"0..{num_classes - 1}"
            )
        if y.size and y.max() >= num_classes:
            index = int(np.argmax(y >= num_classes))
            raise ValueError(
                f"{source}: {key!r} has the label {int(y[index])} at index {index}, out of range: the classes are "
                f"0..{num_classes - 1} ({origin})"
            )
    return FeatureSet(name or source, xs["train_x"], ys["train_y"], xs["test_x"], ys["test_y"], int(num_classes))


def _features_array(value: Any, key: str, source: str) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{source}: {key!r} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: {key!r} must be 2-D (samples, features) and non-empty, got shape {x.shape}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: {key!r} has {int(bad.sum())} non-finite value(s) (NaN or inf, or too large for float32), "
            f"the first at row {row}, column {col}"
        )
    return x


def _labels_array(value: Any, key: str, source: str) -> np.ndarray:
    y = np.asarray(value)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be integers, but {key!r} has dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{source}: {key!r} must be 1-D (one label per sample), got shape {y.shape}")
    return y.astype(np.int64)


def _scalar_int(value: Any, key: str, source: str) -> int:
    v = np.asarray(value)
    if v.shape != () or v.dtype.kind not in "iu":
        raise ValueError(f"{source}: {key!r} must be one integer, got dtype {v.dtype} shape {v.shape}")
    return int(v)


def load_features(path: str | os.PathLike, *, name: str | None = None) -> FeatureSet:
    """Read and validate a feature file (``.npz``); ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz feature file: {err}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(path)!r} holds a single array, not an .npz with {', '.join(REQUIRED_KEYS)}")
    arrays = {}
    with loaded as npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as err:  # object arrays need pickle, which a data file must not run
                raise ValueError(f"{path}: array {key!r} cannot be read without pickle ({err})") from err
    return validate_features(arrays, source=str(path), name=name or path.stem)


def save_features(path: str | os.PathLike, features: FeatureSet) -> Path:
    """Write ``features`` as an ``.npz`` (float32 features, int64 labels, ``num_classes``), atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        train_x=features.train_x.astype(np.float32),
        train_y=features.train_y.astype(np.int64),
        test_x=features.test_x.astype(np.float32),
        test_y=features.test_y.astype(np.int64),
        num_classes=np.int64(features.num_classes),
    )
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def sklearn_features(name: str) -> FeatureSet:
    """A scikit-learn bundled data set (no download) as features: its pixel or tabular values, split 80/20
    stratified with ``random_state=0`` (both splits in the original order).

    ``digits``: 8×8 pixels (64 features, 10 classes, 1797 samples); ``breast_cancer``: 30 cell-nucleus
    measurements (2 classes, 569); ``wine``: 13 chemical measurements (3 classes, 178).
    """
    check_choice("scikit-learn data set", name, SKLEARN_DATASETS)
    try:
        from sklearn import datasets
    except ImportError as error:
        raise ValueError("the scikit-learn data sets need scikit-learn (pip install scikit-learn)") from error
    bunch = getattr(datasets, f"load_{name}")()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    train, test = stratified_split(y)
    arrays = {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}
    return validate_features(arrays, source=f"sklearn {name}", name=name, num_classes=int(y.max()) + 1)
