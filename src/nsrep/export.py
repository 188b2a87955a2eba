"""Deployed models on disk: safetensors weights plus the JSON that rebuilds them, and ONNX/TorchScript export.

A deploy folder holds ``model.safetensors`` (the folded, plain network's weights), ``config.json`` (keywords
of :func:`nsrep.create_model` such that ``create_model(**config, deploy=True)`` has exactly these weights)
and ``preprocess.json`` (input size, channels, normalisation and class names: what a user needs to feed it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nsrep.fileio import atomic_write, write_json
from nsrep.models import create_model
from nsrep.reparam import compare_outputs, unwrap_model

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
    "save_deployed",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PREPROCESS_FILE = "preprocess.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
# keys of nsrep_config that describe the training form only; the deploy config leaves them out
_TRAINING_ONLY = ("deploy", "bn_init")


def save_deployed(model: nn.Module, out_dir: str | os.PathLike, *, preprocess: dict[str, Any] | None = None) -> Path:
    """Save a deployed (reparameterized) nsrep model as safetensors + ``config.json`` (+ ``preprocess.json``).

    Each file is written atomically. Raises ``ValueError`` for a model that is not a deployed nsrep model.
    """
    from safetensors.torch import save

    model = unwrap_model(model)
    config = getattr(model, "nsrep_config", None)
    if not isinstance(config, dict) or not config.get("deploy", False):
        raise ValueError("save_deployed expects a model from nsrep.reparameterize (or create_model(..., deploy=True))")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_FILE, lambda f: f.write(save(tensors, metadata={"producer": "nsrep"})))
    write_json(out / CONFIG_FILE, {k: v for k, v in config.items() if k not in _TRAINING_ONLY})
    if preprocess is not None:
        write_json(out / PREPROCESS_FILE, preprocess)
    return out


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``create_model`` keywords stored in a deploy folder."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{str(model_dir)!r} is not a deploy folder: {CONFIG_FILE} is missing")
    return json.loads(path.read_text())


def read_preprocess(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Input size, channels, mean/std and class names of a deployed model ({} when it was saved without)."""
    path = Path(model_dir) / PREPROCESS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_deployed(model_dir: str | os.PathLike) -> nn.Module:
    """Rebuild ``create_model(**config, deploy=True)`` from a deploy folder and load its weights strictly."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{str(model_dir)!r} is not a deploy folder: {WEIGHTS_FILE} is missing")
    model = create_model(**config, deploy=True)
    try:
        model.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{str(weights)!r} does not match the model of {CONFIG_FILE} ({config}): {err}") from err
    return model.eval()


def _example_input(model_dir: Path, batch_size: int) -> torch.Tensor:
    meta = read_preprocess(model_dir)
    config = read_config(model_dir)
    size = int(meta.get("input_size", 32 if config.get("stem", "cifar") == "cifar" else 224))
    chans = int(meta.get("in_chans", config.get("in_chans", 3)))
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

    with _quiet():  # the exporter prints its progress and warns about optional torchvision ops
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
    with _quiet():  # TorchScript is deprecated upstream but still what many deployment stacks load
        traced = torch.jit.trace(model, example)
        atomic_write(out, lambda f: torch.jit.save(traced, f))
        loaded = torch.jit.load(str(out))
    check = _example_input(model_dir, 3)
    error = compare_outputs(model(check), loaded(check)).max_rel_error
    if error > 1e-5:
        raise ValueError(f"TorchScript output differs from eager PyTorch by {error:.2e} (relative)")
    return out, error


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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
