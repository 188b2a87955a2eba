"""Encoders given by the user (TorchScript, ONNX, ``module:function``) and feature extraction with them."""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nsrep.data.augment import build_transform
from nsrep.probe.features import FeatureSet, validate_features
from nsrep.probe.training import resolve_device

Encoder = Callable[[Tensor], Tensor]
_CALLABLE_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_encoder(spec: str, device: str | torch.device = "cpu") -> Encoder:
    """An encoder mapping a float batch (B, C, H, W) to features (B, ...), from ``spec``:

    a TorchScript file (``torch.jit.load``), an ONNX file (``.onnx``, run with onnxruntime), or
    ``module:function`` (the module is imported and ``function()`` called with no arguments must return the
    encoder: an ``nn.Module`` or any callable on tensors).
    """
    device = torch.device(device)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            return _onnx_encoder(path, device)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, yet what many encoders ship as
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"encoder file {str(path)!r} is neither ONNX (.onnx) nor TorchScript: {err}") from err
        return module.eval()
    if not _CALLABLE_PATH.match(spec):
        raise ValueError(
            f"encoder {spec!r} is neither an existing file (TorchScript or .onnx) nor a 'module:function' path"
        )
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"encoder {spec!r}: cannot import module {module_name!r}: {err}") from err
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ValueError(f"encoder {spec!r}: module {module_name!r} has no function {function_name!r}")
    encoder = factory()
    if not callable(encoder):
        raise ValueError(f"encoder {spec!r}: {function_name}() returned a {type(encoder).__name__}, not a callable")
    if isinstance(encoder, nn.Module):
        encoder = encoder.to(device).eval()
    return encoder


def _onnx_encoder(path: Path, device: torch.device) -> Encoder:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ValueError("ONNX encoders need onnxruntime (pip install 'nsrep[export]')") from error
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable models
        raise ValueError(f"encoder file {str(path)!r} cannot be loaded by onnxruntime: {err}") from err
    input_name = session.get_inputs()[0].name

    def encode(x: Tensor) -> Tensor:
        out = session.run(None, {input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    return encode


@torch.no_grad()
def _encode_split(
    encoder: Encoder,
    dataset: Any,
    transform: nn.Module,
    *,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and labels (N,) int64 of one split, in the data set's order."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        out = encoder(transform(images.to(device)))
        if not isinstance(out, Tensor):
            raise ValueError(f"the encoder returned a {type(out).__name__}, expected a tensor (batch, ...)")
        if out.dim() < 1 or out.shape[0] != images.shape[0]:
            raise ValueError(f"the encoder mapped a batch of {images.shape[0]} to shape {tuple(out.shape)}")
        features.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
        labels.append(targets.numpy())
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def extract_features(
    encoder: Encoder,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    workers: int = 0,
) -> FeatureSet:
    """Features of ``data`` (an :class:`nsrep.data.datasets.ImageData`) under ``encoder``, train and test splits.

    Images go through the data set's eval transform (centre crop, normalise), in batches with a progress bar;
    the encoder's outputs (B, ...) are flattened to float32 (B, D).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = resolve_device(device) if isinstance(device, str) else device
    transform = build_transform(data.augment, train=False, image_size=data.image_size, mean=data.mean, std=data.std)
    transform = transform.to(device)
    common = {"batch_size": batch_size, "device": device, "progress": progress, "workers": workers}
    train_x, train_y = _encode_split(encoder, data.train, transform, desc=f"{data.name} train", **common)
    test_x, test_y = _encode_split(encoder, data.test, transform, desc=f"{data.name} test", **common)
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return validate_features(arrays, source=f"features of {data.name}", name=data.name, num_classes=data.num_classes)
