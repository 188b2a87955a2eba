"""matplotlib without a screen, and PNG files written atomically: what every figure of nsrep goes through."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from nsrep.fileio import atomic_write

__all__ = ["pyplot", "save_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported lazily: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG, close it, and write the file atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
