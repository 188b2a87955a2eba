"""What happens to a finished run: rebuild its model from a checkpoint, evaluate it, deploy it.

``nsrep eval``, ``nsrep deploy`` and the demo are thin wrappers around these functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nsrep.inspection import count_parameters
from nsrep.nn.conv import reference_copy
from nsrep.reparam import Equivalence, reparameterize, verify_equivalence
from nsrep.train import distributed
from nsrep.train.augment import BatchTransform, build_transform
from nsrep.train.checkpoint import checkpoint_record, load_checkpoint
from nsrep.train.data import ImageData, load_data
from nsrep.train.folders import DeployFolder
from nsrep.train.trainer import EvalResult, evaluate

__all__ = ["RunEvaluation", "deploy_checkpoint", "eval_split", "evaluate_path", "model_from_checkpoint"]


def model_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """The training-form model of a checkpoint, rebuilt from its model record, weights loaded strictly."""
    record = checkpoint_record(state)
    model = record.build()
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not match the model of its record {record.keywords()}: {err}") from err
    return model.eval()


@dataclass(frozen=True)
class RunEvaluation:
    """Accuracy of a checkpoint's training form (None for a deploy folder) and of its deployed form."""

    train_form: EvalResult | None
    deployed_form: EvalResult
    max_rel_logit_diff: float | None
    train_params: int | None
    deploy_params: int


def _check_data_fits(data: ImageData, meta: Mapping[str, Any], source: str) -> None:
    for key, have in (("num_classes", data.num_classes), ("in_chans", data.in_chans)):
        want = meta.get(key)
        if want is not None and want != have:
            raise ValueError(
                f"{source} was trained with {key}={want} ({meta.get('data', 'its data')}), "
                f"but the data {data.name!r} has {key}={have}"
            )


def eval_split(
    source: str, meta: Mapping[str, Any], *, batch_size: int, run: str
) -> tuple[ImageData, BatchTransform, DataLoader]:
    """The test split of ``source`` at the run's input size, with its eval transform and loader.

    ``meta`` is what the run recorded of its data (``preprocess.json``); data whose classes or channels do
    not fit the run is refused, naming ``run``.
    """
    # the run's held-out split and an image folder's evaluation resize
    split = {key: meta[key] for key in ("val_fraction", "split_seed", "crop_pct") if key in meta}
    images = load_data(source, **split)
    _check_data_fits(images, meta, run)
    size = meta.get("input_size")
    if size is not None and images.image_size != size:  # image folders and synthetic data take any size
        images = load_data(source, image_size=size, **split)
    transform = build_transform(
        images.augment, train=False, image_size=images.image_size, mean=images.mean, std=images.std
    )
    return images, transform, DataLoader(images.test, batch_size=batch_size, shuffle=False)


def evaluate_path(
    path: str | os.PathLike, data: str | None = None, *, batch_size: int = 512, device: str = "auto"
) -> RunEvaluation:
    """Evaluate a training checkpoint (both forms, same batches) or a deploy folder on ``data``.

    ``data`` defaults to the data the run was trained on.
    """
    path = Path(path)
    if path.is_dir() and DeployFolder(path).record_path.is_file():  # a deploy folder
        folder = DeployFolder(path)
        meta = folder.read_preprocess()
        train_form, deployed = None, folder.load()
    else:
        state = load_checkpoint(path)
        meta = state.get("data", {})
        train_form = model_from_checkpoint(state)
        deployed = reparameterize(train_form)
    source = data if data is not None else meta.get("source", meta.get("data"))  # older runs: "data" only
    if source is None:
        raise ValueError(f"{str(path)!r} does not record its data; pass --data")
    _, transform, loader = eval_split(source, meta, batch_size=batch_size, run=str(path))
    env = distributed.DistEnv(device=distributed.pick_device(device))  # one process: no process group to join
    models = [m.to(env.device) for m in (train_form, deployed) if m is not None]
    results, diff = evaluate(models, loader, transform, env)
    return RunEvaluation(
        train_form=results[0] if train_form is not None else None,
        deployed_form=results[-1],
        max_rel_logit_diff=diff if train_form is not None else None,
        train_params=count_parameters(train_form) if train_form is not None else None,
        deploy_params=count_parameters(deployed),
    )


def deploy_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Equivalence]:
    """Fold a training checkpoint and save the deployed form; also checks it against the unfolded branches.

    The check runs the per-branch reference computation (not the fast path, which itself applies folded
    kernels in eval) and the deployed network on a random batch of the run's input shape.
    """
    state = load_checkpoint(path)
    model = model_from_checkpoint(state)
    deployed = reparameterize(model)
    meta = state.get("data", {})
    size, chans = int(meta.get("input_size", 32)), int(meta.get("in_chans", 3))
    example = torch.randn(8, chans, size, size, generator=torch.Generator().manual_seed(0))
    equivalence = verify_equivalence(reference_copy(model), deployed, example)
    out = DeployFolder(out_dir).write(deployed, preprocess=meta or None)
    return out, equivalence
