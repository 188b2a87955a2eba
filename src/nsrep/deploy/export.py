"""Deployed models on disk: safetensors weights plus the JSON that rebuilds them, and ONNX/TorchScript export.

A deploy folder (:class:`nsrep.storage.folders.DeployFolder`) holds ``model.safetensors`` (the folded, plain
network's weights), ``config.json`` (the versioned model record of a model or head, such that
``create_model(**read_config(folder), deploy=True)`` has exactly these weights) and ``preprocess.json`` (input
size, channels, normalisation and class names: what a user needs to feed it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsrep.fileio import atomic_write
from nsrep.reparam import compare_outputs
from nsrep.storage.data_record import DataRecord
from nsrep.storage.folders import DeployFolder
from nsrep.storage.model_record import ModelRecord

__all__ = [
    "CONFIG_FILE",
    "ONNX_FILE",
    "PREPROCESS_FILE",
    "TORCHSCRIPT_FILE",
    "WEIGHTS_FILE",
    "export_onnx",
    "export_torchscript",
    "load_deployed",
    "read_config",
    "read_preprocess",
    "read_record",
    "save_deployed",
]

WEIGHTS_FILE = DeployFolder.WEIGHTS
CONFIG_FILE = DeployFolder.RECORD
PREPROCESS_FILE = DeployFolder.PREPROCESS
ONNX_FILE = DeployFolder.ONNX
TORCHSCRIPT_FILE = DeployFolder.TORCHSCRIPT


def save_deployed(model: nn.Module, out_dir: str | os.PathLike, *, preprocess: dict[str, Any] | None = None) -> Path:
    """Save a deployed (reparameterized) nsrep model or head as safetensors + ``config.json`` (+
    ``preprocess.json``), all written together or none. Raises ``ValueError`` for anything else."""
    return DeployFolder(out_dir).write(model, preprocess=preprocess)


def read_record(model_dir: str | os.PathLike) -> ModelRecord:
    """The model record stored in a deploy folder."""
    return DeployFolder(model_dir).read_record()


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The builder keywords stored in a deploy folder (``create_model`` / ``create_head`` keywords)."""
    return DeployFolder(model_dir).read_config()


def read_preprocess(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Input size, channels, mean/std and class names of a deployed model ({} when it was saved without)."""
    return DeployFolder(model_dir).read_preprocess()


def load_deployed(model_dir: str | os.PathLike) -> nn.Module:
    """Rebuild the deployed model or head of a deploy folder and load its weights strictly."""
    return DeployFolder(model_dir).load()


def _example_input(model_dir: Path, batch_size: int) -> torch.Tensor:
    record = read_record(model_dir)
    config = record.options
    if record.kind == "head":  # heads take feature vectors
        return torch.randn(batch_size, int(config["in_features"]), generator=torch.Generator().manual_seed(0))
    data = DeployFolder(model_dir).read_data_record() or DataRecord(source=None, kind=None)  # none recorded
    size = data.input_size or (32 if config.get("stem", "cifar") == "cifar" else 224)
    chans = data.in_chans or int(config.get("in_chans", 3))
    return torch.randn(batch_size, chans, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def export_onnx(
    model_dir: str | os.PathLike, path: str | os.PathLike | None = None, *, batch_size: int = 4
) -> tuple[Path, float]:
    """Export a deploy folder to ONNX (dynamic batch) and check onnxruntime against PyTorch.

    Returns the file and the max absolute difference relative to max |output| on a random batch; raises
    ``ValueError`` when it exceeds 1e-4.
    """
    import onnxruntime as ort

    model_dir = Path(model_dir)
    model = load_deployed(model_dir)
    example = _example_input(model_dir, batch_size)
    out = Path(path) if path is not None else model_dir / ONNX_FILE

    with quiet_exporters():  # the exporter prints its progress and warns about optional torchvision ops
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    atomic_write(out, lambda f: f.write(program.model_proto.SerializeToString()))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    check = _example_input(model_dir, batch_size + 1)  # a different batch size exercises the dynamic axis
    ort_out = torch.from_numpy(session.run(None, {"images": check.numpy()})[0])
    error = compare_outputs(model(check), ort_out).max_rel_error
    if error > 1e-4:
        raise ValueError(f"ONNX output differs from PyTorch by {error:.2e} (relative), more than 1e-4")
    return out, error


@torch.no_grad()
def export_torchscript(model_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> tuple[Path, float]:
    """Trace a deploy folder to TorchScript and check the loaded file against the eager model (relative error)."""
    model_dir = Path(model_dir)
    model = load_deployed(model_dir)
    example = _example_input(model_dir, 2)
    out = Path(path) if path is not None else model_dir / TORCHSCRIPT_FILE
    with quiet_exporters():  # TorchScript is deprecated upstream but still what many deployment stacks load
        traced = torch.jit.trace(model, example)
        atomic_write(out, lambda f: torch.jit.save(traced, f))
        loaded = torch.jit.load(str(out))
    check = _example_input(model_dir, 3)
    error = compare_outputs(model(check), loaded(check)).max_rel_error
    if error > 1e-5:
        raise ValueError(f"TorchScript output differs from eager PyTorch by {error:.2e} (relative)")
    return out, error


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence stdout, warnings and torch's loggers while an exporter runs (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
