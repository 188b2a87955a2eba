"""Files that are never left half-written: write to a temporary name, fsync, rename over the target.

``os.replace`` is atomic on POSIX and Windows, so a run killed mid-write leaves the previous file in place
(and at most a stale temporary file, which the next write to the same path removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_folder", "atomic_write", "atomic_write_all", "is_temporary_of", "json_bytes", "write_json"]

_TMP_MARK = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp_name = _write_temporary(path, write)
    try:
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_all(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one step: every file goes to a temporary name (fsynced) first, and only when all
    of them are on disk are they renamed over their targets. A failure before the renames leaves every target
    as it was (and removes the temporaries); the renames themselves cannot fail half-way for lack of space."""
    written: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            written.append((_write_temporary(path, lambda f, data=data: f.write(data)), path))
    except BaseException:
        for tmp_name, _ in written:
            Path(tmp_name).unlink(missing_ok=True)
        raise
    for tmp_name, path in written:
        os.replace(tmp_name, path)
    for folder in {path.parent for _, path in written}:
        _fsync_dir(folder)
    return [path for _, path in written]


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill, renamed to ``path`` when the block ends without error and
    removed when it raises: ``path`` appears complete or not at all. ``path`` must be missing or empty."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{str(path)!r} exists and is not empty; nothing was written (choose a new folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent))
    try:
        yield work
        if path.exists():
            path.rmdir()  # empty, checked above
        os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def _write_temporary(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """A temporary file next to ``path`` holding what ``write`` wrote, fsynced, with the mode ``path`` would
    have; its name (removed again if ``write`` fails). Temporaries of ``path`` left by a killed write go first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{_TMP_MARK}*"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    try:
        os.chmod(tmp_name, _mode_for(path))  # mkstemp creates 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return tmp_name


def is_temporary_of(name: str, target: str) -> bool:
    """Whether file ``name`` is a temporary file of an atomic write to ``target`` (left by a killed write)."""
    return name.startswith(f".{target}{_TMP_MARK}")


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or those a new file gets under the process umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_bytes(data: Any) -> bytes:
    """``data`` as indented JSON text, encoded (what :func:`write_json` writes)."""
    return (json.dumps(data, indent=2) + "\n").encode()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write(path, lambda f: f.write(json_bytes(data)))
