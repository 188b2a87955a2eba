"""Atomic writes (nsrep.fileio): a killed or failed write never leaves a truncated file, a folder appears whole."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import file_digest
from nsrep.fileio import atomic_folder, atomic_write
from nsrep.storage.checkpoint import load_checkpoint, save_checkpoint

_KILLED_WRITER = """
import os, signal, sys, torch
from nsrep.storage.checkpoint import save_checkpoint
real_save = torch.save

def dying_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")  # partial bytes reach the disk, then the process dies
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
save_checkpoint({"config": {}, "model_record": {}, "epoch": 2, "model": {"w": torch.ones(3)}}, sys.argv[1])
"""


def test_a_killed_write_never_leaves_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"config": {}, "model_record": {}, "epoch": 1, "model": {"w": torch.zeros(3)}}, path)
    before = file_digest(path)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert file_digest(path) == before
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.glob(".checkpoint.pt.tmp-*"))  # the killed write's temporary file
    save_checkpoint({"config": {}, "model_record": {}, "epoch": 3, "model": {"w": torch.ones(3)}}, path)
    assert not list(tmp_path.glob(".checkpoint.pt.tmp-*")) and load_checkpoint(path)["epoch"] == 3


def test_atomic_writes_get_the_permissions_of_an_ordinary_file(tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = atomic_write(tmp_path / "new.txt", lambda f: f.write(b"x"))
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_bytes(b"old")
        kept.chmod(0o600)
        atomic_write(kept, lambda f: f.write(b"new"))
        assert kept.stat().st_mode & 0o777 == 0o600 and kept.read_bytes() == b"new"
    finally:
        os.umask(umask)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"config": {}, "model_record": {}, "epoch": 1, "model": {}}, path)
    before = file_digest(path)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_checkpoint({"config": {}, "model_record": {}, "epoch": 2, "model": {}, "bad": Unpicklable()}, path)
    assert file_digest(path) == before and not list(tmp_path.glob(".checkpoint.pt.tmp-*"))


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="stopped half-way"), atomic_folder(out) as work:
        (work / "a.txt").write_text("first file")
        raise RuntimeError("stopped half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial folder, no temporary left
    with atomic_folder(out) as work:
        (work / "a.txt").write_text("first file")
        assert not out.exists()  # nothing at the target until the block ends
    assert (out / "a.txt").read_text() == "first file"
    with pytest.raises(ValueError, match="exists and is not empty"), atomic_folder(out):
        pass
    assert [p.name for p in out.iterdir()] == ["a.txt"]
