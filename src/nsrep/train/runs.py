"""What happens to a finished run: rebuild its model from a checkpoint, evaluate it, deploy it.

``nsrep eval``, ``nsrep deploy`` and the demo are thin wrappers around these functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from nsrep.data.augment import BatchTransform, build_transform
from nsrep.data.datasets import ImageData, load_data
from nsrep.inspection import count_parameters
from nsrep.nn.conv import reference_copy
from nsrep.reparam import Equivalence, reparameterize, verify_equivalence
from nsrep.storage.checkpoint import checkpoint_data_record, checkpoint_record, load_checkpoint
from nsrep.storage.data_record import DataRecord
from nsrep.storage.folders import DeployFolder
from nsrep.train import distributed
from nsrep.train.trainer import EvalResult, evaluate

__all__ = [
    "EvalData",
    "RunEvaluation",
    "deploy_checkpoint",
    "eval_data",
    "evaluate_path",
    "model_from_checkpoint",
    "read_run",
]


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
    split: str = ""  # which images were scored, and why those (EvalData.split)


@dataclass(frozen=True)
class EvalData:
    """The images a command scores a run on: the data set, its eval transform and loader, and the split in words."""

    images: ImageData
    transform: BatchTransform
    loader: DataLoader
    source: str  # the --data read
    split: str  # which of its images are the test split, and why


def _check_data_fits(data: ImageData, record: DataRecord | None, run: str) -> None:
    for key, have in (("num_classes", data.num_classes), ("in_chans", data.in_chans)):
        want = None if record is None else getattr(record, key)
        if want is not None and want != have:
            raise ValueError(
                f"{run} was trained with {key}={want} ({record.kind}), but the data {data.name!r} has {key}={have}"
            )


def _same_source(a: str, b: str | None) -> bool:
    """Whether two --data values name the same data (a name, or the same folder however it is spelt)."""
    if b is None:
        return False
    path_a, path_b = Path(a).expanduser(), Path(b).expanduser()
    return a == b or (path_a.exists() and path_a.resolve() == path_b.resolve())


def eval_data(
    record: DataRecord | None, data: str | None, *, batch_size: int, run: str, whole_folder: bool = True
) -> EvalData:
    """The test images of ``data`` (default: the run's recorded source) at the run's input size.

    The run's own source is split as in training (its held-out share, or its own test split). Other data handed
    in for evaluation is scored whole when it is a folder without val/ (``whole_folder``; a command that also
    needs training images, e.g. calibration, passes False and gets the run's split). Data whose classes or
    channels do not fit the run is refused, naming ``run``.
    """
    source = data if data is not None else (record.require_source(run) if record is not None else None)
    if source is None:
        raise ValueError(f"{run} does not record its data; pass --data")
    own = data is None or _same_source(data, record.source if record is not None else None)
    split = record.split_keywords() if record is not None and (own or not whole_folder) else {}
    split.update(record.resize_keywords() if record is not None else {})  # an image folder's evaluation resize
    size = None if record is None else record.input_size
    images = load_data(source, hold_out=not (whole_folder and not own), **split)
    _check_data_fits(images, record, run)
    if size is not None and images.image_size != size:  # image folders and synthetic data take any size
        images = load_data(source, image_size=size, hold_out=not (whole_folder and not own), **split)
    transform = build_transform(
        images.augment, train=False, image_size=images.image_size, mean=images.mean, std=images.std
    )
    loader = DataLoader(images.test, batch_size=batch_size, shuffle=False)
    return EvalData(images, transform, loader, source, _split_text(images, source, own))


def _split_text(images: ImageData, source: str, own: bool) -> str:
    if images.whole_folder:
        return f"every image of {source} (a folder handed in for evaluation: no split)"
    if images.held_out:
        why = "the run's held-out split, as in training" if own else "the run's split, applied to this folder"
        share = f"a held-out {images.val_fraction:g} of the training images (split seed {images.split_seed})"
        return f"{share} of {source} ({why})"
    return f"the test split of {source}"


def read_run(path: str | os.PathLike) -> tuple[nn.Module | None, nn.Module, DataRecord | None]:
    """A run folder, checkpoint or deploy folder as (training form or None, deployed form, data record)."""
    path = Path(path)
    if path.is_dir() and DeployFolder(path).record_path.is_file():  # a deploy folder
        folder = DeployFolder(path)
        return None, folder.load(), folder.read_data_record()
    state = load_checkpoint(path)
    train_form = model_from_checkpoint(state)
    return train_form, reparameterize(train_form), checkpoint_data_record(state, path)


def evaluate_path(
    path: str | os.PathLike, data: str | None = None, *, batch_size: int = 512, device: str = "auto"
) -> RunEvaluation:
    """Evaluate a training checkpoint (both forms, same batches) or a deploy folder on ``data``.

    ``data`` defaults to the data the run was trained on, split as in training; a folder handed in as
    ``data`` is scored whole (see :func:`eval_data`).
    """
    train_form, deployed, record = read_run(path)
    chosen = eval_data(record, data, batch_size=batch_size, run=str(path))
    env = distributed.DistEnv(device=distributed.pick_device(device))  # one process: no process group to join
    models = [m.to(env.device) for m in (train_form, deployed) if m is not None]
    results, diff = evaluate(models, chosen.loader, chosen.transform, env)
    return RunEvaluation(
        train_form=results[0] if train_form is not None else None,
        deployed_form=results[-1],
        max_rel_logit_diff=diff if train_form is not None else None,
        train_params=count_parameters(train_form) if train_form is not None else None,
        deploy_params=count_parameters(deployed),
        split=chosen.split,
    )


def deploy_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Equivalence]:
    """Fold a training checkpoint and save the deployed form; also checks it against the unfolded branches.

    The check runs the per-branch reference computation (not the fast path, which itself applies folded
    kernels in eval) and the deployed network on a random batch of the run's input shape.
    """
    state = load_checkpoint(path)
    model = model_from_checkpoint(state)
    deployed = reparameterize(model)
    record = checkpoint_data_record(state, path)
    size = 32 if record is None or record.input_size is None else record.input_size
    chans = 3 if record is None or record.in_chans is None else record.in_chans
    example = torch.randn(8, chans, size, size, generator=torch.Generator().manual_seed(0))
    equivalence = verify_equivalence(reference_copy(model), deployed, example)
    out = DeployFolder(out_dir).write(deployed, data_record=record)
    return out, equivalence
