"""The data record: what a run read and what its model expects, typed and versioned for files.

A training checkpoint (``"data"``) and a deploy folder's ``preprocess.json`` hold :meth:`DataRecord.to_dict`.
Every command that needs a run's data (``eval``, ``analyze``, ``quantize``, ``deploy``) reads it through
:func:`read_data_record`, so the source, the split and the input size are read one way everywhere.

- version 1 (written before the record was versioned): ``{"data": KIND, "source": ..., "num_classes", ...,
  "val_fraction", "split_seed"}``; ``source`` is missing in the oldest runs (the names ``digits`` and
  ``synthetic`` are their own source), ``val_fraction``/``split_seed`` are present only for a held-out split.
- version 2: ``{"data_record_version": 2, "source", "kind", "split": null | {"val_fraction", "split_seed"},
  "num_classes", "in_chans", "input_size", "mean", "std", "class_names"}``. The keys a deployed model's user
  feeds it by (``input_size``, ``in_chans``, ``mean``, ``std``, ``class_names``) keep their names; ``crop_pct``
  (an image folder's evaluation resize, ``image_size / crop_pct``) is null for other kinds and may be absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DATA_KINDS", "DATA_RECORD_VERSION", "READABLE_DATA_VERSIONS", "DataRecord", "HeldOut", "read_data_record"]

DATA_RECORD_VERSION = 2
READABLE_DATA_VERSIONS = (1, 2)
VERSION_KEY = "data_record_version"
DATA_KINDS = ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
# Sources that are names, not paths: a record of one of these kinds without a source read from its name.
_NAMED_SOURCES = ("digits", "synthetic")
_FEED_KEYS = ("num_classes", "in_chans", "input_size", "mean", "std", "class_names")


@dataclass(frozen=True)
class HeldOut:
    """A test split held out of the source's training images: the stratified share and its seed."""

    val_fraction: float
    split_seed: int

    def describe(self) -> str:
        return f"a held-out {self.val_fraction:g} of the training images (split seed {self.split_seed})"


@dataclass(frozen=True)
class DataRecord:
    """Where a run's images came from (``source``, ``kind``, ``split``) and how its model is fed them."""

    # None in the fields below: a file written before this was recorded (the record nsrep writes has them all)
    source: str | None  # the --data the run read: a folder path or a name
    kind: str | None  # one of DATA_KINDS
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: int | None = None  # side of the square images the model takes
    mean: tuple[float, ...] | None = None  # per-channel normalisation on the [0, 1] scale
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    split: HeldOut | None = None  # None: the source's own test split
    crop_pct: float | None = None  # image folders: the evaluation crop's share of the resized side

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in DATA_KINDS:
            raise ValueError(f"data record kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
        for name in ("mean", "std", "class_names"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The file form (the newest version)."""
        split = (
            None
            if self.split is None
            else {"val_fraction": self.split.val_fraction, "split_seed": self.split.split_seed}
        )
        return {
            VERSION_KEY: DATA_RECORD_VERSION,
            "source": self.source,
            "kind": self.kind,
            "split": split,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "input_size": self.input_size,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "class_names": None if self.class_names is None else list(self.class_names),
            "crop_pct": self.crop_pct,
        }

    def split_keywords(self) -> dict[str, Any]:
        """The ``load_data`` keywords that draw the run's held-out split again ({} for a source's own split)."""
        if self.split is None:
            return {}
        return {"val_fraction": self.split.val_fraction, "split_seed": self.split.split_seed}

    def resize_keywords(self) -> dict[str, Any]:
        """The ``load_data`` keywords that resize an image folder for evaluation as the run did ({} otherwise)."""
        return {} if self.crop_pct is None else {"crop_pct": self.crop_pct}

    def require_source(self, what: str) -> str:
        """The recorded source, or a clear error naming ``what`` (a run) and asking for --data."""
        if self.source is None:
            raise ValueError(f"{what} does not record where its data was; pass --data")
        return self.source


def read_data_record(data: Mapping[str, Any] | None, *, source: str = "the record") -> DataRecord | None:
    """The typed record of a checkpoint's ``"data"`` or a ``preprocess.json`` of any readable version.

    None for a run or model saved without one ({} or None). ``source`` names the file in errors.
    """
    if not data:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: the data record must be a mapping, got {type(data).__name__}")
    version = data.get(VERSION_KEY, 1)
    if version not in READABLE_DATA_VERSIONS:
        raise ValueError(
            f"{source}: data record version {version!r} is not readable by this nsrep; it reads versions "
            f"{', '.join(map(str, READABLE_DATA_VERSIONS))}"
        )
    try:
        if version == 1:  # every key optional; the oldest runs named their data ("data") but not its source
            kind, source_of_data = data.get("data"), data.get("source")
            if source_of_data is None and kind in _NAMED_SOURCES:
                source_of_data = kind
            if kind is None and source_of_data in _NAMED_SOURCES:
                kind = source_of_data
            split = HeldOut(data["val_fraction"], data["split_seed"]) if "val_fraction" in data else None
        else:
            kind, source_of_data, held_out = data["kind"], data["source"], data["split"]
            split = None if held_out is None else HeldOut(held_out["val_fraction"], held_out["split_seed"])
        # crop_pct: absent from records written before the ImageNet recipe's evaluation resize
        return DataRecord(
            source_of_data, kind, split=split, crop_pct=data.get("crop_pct"), **{k: data.get(k) for k in _FEED_KEYS}
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source}: the data record (version {version}) lacks or misshapes {error}") from error
