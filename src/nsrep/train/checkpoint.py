"""Training checkpoints: written atomically (:func:`nsrep.fileio.atomic_write`), carrying the config that
rebuilds their model and a format version (STYLE take 7)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nsrep.fileio import atomic_write

__all__ = ["FORMAT_VERSION", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model_config", "epoch", "model")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training checkpoint atomically; ``state`` gets the format version added."""
    return atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear ``ValueError`` for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only: a checkpoint is tensors and plain containers; never unpickle arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{str(path)!r} is not a readable nsrep checkpoint: {err}") from err
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{str(path)!r} is not an nsrep training checkpoint (missing {', '.join(missing)})")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has checkpoint format {state['format_version']}, this nsrep reads {FORMAT_VERSION}"
        )
    return state
