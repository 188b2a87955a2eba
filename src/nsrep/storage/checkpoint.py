"""Training checkpoints: written atomically (:func:`nsrep.fileio.atomic_write`), carrying a format version,
the training configuration and the model record (:class:`nsrep.storage.model_record.ModelRecord`) that rebuilds
their model.

Format 2 stores the record as ``model_record`` (its versioned dict). Format 1, written before records were
versioned, stored the bare keyword dict as ``model_config``; it still reads, and :func:`load_checkpoint` hands
it back in the format-2 layout. A checkpoint of any other format is refused, naming the format found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nsrep.fileio import atomic_write
from nsrep.storage.data_record import DataRecord, read_data_record
from nsrep.storage.model_record import ModelRecord

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMATS",
    "checkpoint_data_record",
    "checkpoint_record",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CHECKPOINT_FILE = "checkpoint.pt"  # the name inside a run folder (nsrep.storage.folders.RunFolder)
REQUIRED_KEYS = {
    1: ("format_version", "config", "model_config", "epoch", "model"),
    2: ("format_version", "config", "model_record", "epoch", "model"),
}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training checkpoint atomically; ``state`` gets the format version added."""
    return atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a run folder names its checkpoint); a clear
    ``ValueError`` for anything else. A format-1 checkpoint comes back in the format-2 layout."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only: a checkpoint is tensors and plain containers; never unpickle arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{str(path)!r} is not a readable nsrep checkpoint: {err}") from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{str(path)!r} is not an nsrep training checkpoint (missing format_version)")
    version = state["format_version"]
    if version not in READABLE_FORMATS:
        readable = ", ".join(map(str, READABLE_FORMATS))
        raise ValueError(f"{str(path)!r} has checkpoint format {version!r}; this nsrep reads formats {readable}")
    missing = [k for k in REQUIRED_KEYS[version] if k not in state]
    if missing:
        raise ValueError(f"{str(path)!r} is not an nsrep training checkpoint (missing {', '.join(missing)})")
    if version == 1:  # the bare keyword dict is a version-1 model record
        state["model_record"] = state.pop("model_config")
    return state


def checkpoint_record(state: dict[str, Any], source: str = "the checkpoint") -> ModelRecord:
    """The model record of a loaded checkpoint (any readable format)."""
    return ModelRecord.from_dict(state["model_record"], source=source)


def checkpoint_data_record(state: dict[str, Any], path: str | os.PathLike = "the checkpoint") -> DataRecord | None:
    """The data record of a loaded checkpoint (any readable version; None when it was saved without one)."""
    return read_data_record(state.get("data"), source=str(path))
