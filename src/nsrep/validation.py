"""User-input checks shared by the package: errors that name the bad value, the valid ones and a close match."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_choice", "check_probability"]


def check_choice(kind: str, value: object, valid: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``valid``; suggest the closest valid name."""
    valid = list(valid)
    if value in valid:
        return
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}.{hint}")


def check_probability(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a drop probability in [0, 1)."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
