"""The folders nsrep writes: a training run's folder and a deployed model's folder.

Each class owns its file names, writes every file atomically (:mod:`nsrep.fileio`) and reads what it wrote.

A **run folder** (:class:`RunFolder`) holds ``config.yaml`` (what was asked), ``checkpoint.pt`` (rewritten
after every epoch), ``metrics.jsonl`` (one JSON line per epoch), ``summary.json`` (written when the run ends)
and ``deploy/`` (a deploy folder). Its state is one of

- ``new``: missing, empty, or holding only run files of a run that never finished an epoch;
- ``resumable``: a checkpoint and no summary (interrupted or stopped early);
- ``finished``: a summary (and its checkpoint);
- ``foreign``: anything else, e.g. a non-empty folder that is not an nsrep run. nsrep never writes into it.

A **deploy folder** (:class:`DeployFolder`) holds ``model.safetensors`` (the folded, plain network's weights),
``config.json`` (its versioned :class:`~nsrep.storage.model_record.ModelRecord`, a model or a head) and
``preprocess.json`` (input size, channels, normalisation and class names); ONNX and TorchScript exports are
written beside them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import yaml
from torch import nn

from nsrep.fileio import atomic_write, atomic_write_all, is_temporary_of, json_bytes, write_json
from nsrep.reparam import unwrap_model
from nsrep.storage.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from nsrep.storage.data_record import DataRecord, read_data_record
from nsrep.storage.model_record import ModelRecord

__all__ = ["RUN_STATES", "DeployFolder", "RunConfig", "RunFolder", "config_conflicts"]

RUN_STATES = ("new", "resumable", "finished", "foreign")


class RunConfig(Protocol):
    """What a run folder needs of a training configuration (:class:`nsrep.train.config.TrainConfig` is one)."""

    EXECUTION_FIELDS: ClassVar[frozenset[str]]  # settings that may differ when a run is resumed

    def __init__(self) -> None: ...  # every field has a default (what a run lacking the key trained with)

    def to_dict(self) -> dict[str, Any]: ...


class DeployFolder:
    """A deployed model on disk: weights, model record and preprocessing."""

    WEIGHTS = "model.safetensors"
    RECORD = "config.json"
    PREPROCESS = "preprocess.json"
    ONNX = "model.onnx"
    TORCHSCRIPT = "model.torchscript.pt"
    TRAINING_ONLY = ("deploy", "bn_init")  # record options of the training form only; the file leaves them out

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DeployFolder({str(self.path)!r})"

    @property
    def weights_path(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def record_path(self) -> Path:
        return self.path / self.RECORD

    @property
    def preprocess_path(self) -> Path:
        return self.path / self.PREPROCESS

    @property
    def onnx_path(self) -> Path:
        return self.path / self.ONNX

    @property
    def torchscript_path(self) -> Path:
        return self.path / self.TORCHSCRIPT

    def exists(self) -> bool:
        """Whether the folder holds a deployed model (record and weights)."""
        return self.record_path.is_file() and self.weights_path.is_file()

    def write(
        self,
        model: nn.Module,
        *,
        data_record: DataRecord | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a deployed (reparameterized) nsrep model or head, with the data record of its run (a model) or
        free-form ``preprocess`` notes (a head's features; not both) as ``preprocess.json``.

        Every file is serialised before any is written, and then all are written as one step
        (:func:`nsrep.fileio.atomic_write_all`): a failure leaves the folder as it was. Raises ``ValueError``
        for a module that is not a deployed nsrep model or head.
        """
        from safetensors.torch import save

        model = unwrap_model(model)
        config = getattr(model, "nsrep_config", None)
        if not isinstance(config, Mapping) or not config.get("deploy", False):
            raise ValueError(
                "save_deployed expects a model or head from nsrep.reparameterize "
                "(or create_model / create_head with deploy=True)"
            )
        record = ModelRecord.from_keywords(config).without(*self.TRAINING_ONLY)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        files = {
            self.weights_path: save(tensors, metadata={"producer": "nsrep"}),
            self.record_path: json_bytes(record.to_dict()),
        }
        if data_record is not None and preprocess is not None:
            raise ValueError("pass the data record or free-form preprocess notes, not both")
        if data_record is not None:
            preprocess = data_record.to_dict()
        if preprocess is not None:
            files[self.preprocess_path] = json_bytes(dict(preprocess))
        atomic_write_all(files)
        return self.path

    def read_record(self) -> ModelRecord:
        """The model record (any readable version) stored in the folder."""
        if not self.record_path.is_file():
            raise ValueError(f"{str(self.path)!r} is not a deploy folder: {self.RECORD} is missing")
        try:
            data = json.loads(self.record_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(self.record_path)!r} is not valid JSON: {err}") from err
        return ModelRecord.from_dict(data, source=repr(str(self.record_path)))

    def read_config(self) -> dict[str, Any]:
        """The builder keywords of the stored record (``create_model(**keywords, deploy=True)`` for a model)."""
        return self.read_record().keywords()

    def read_preprocess(self) -> dict[str, Any]:
        """Input size, channels, mean/std and class names ({} when the model was saved without)."""
        return json.loads(self.preprocess_path.read_text()) if self.preprocess_path.is_file() else {}

    def read_data_record(self) -> DataRecord | None:
        """The data record in ``preprocess.json`` (any readable version; None without one)."""
        return read_data_record(self.read_preprocess(), source=str(self.preprocess_path))

    def load(self) -> nn.Module:
        """Rebuild the deployed form of the stored record and load its weights strictly (eval mode)."""
        from safetensors.torch import load_file

        record = self.read_record()
        if not self.weights_path.is_file():
            raise ValueError(f"{str(self.path)!r} is not a deploy folder: {self.WEIGHTS} is missing")
        model = record.build(deploy=True)
        try:
            model.load_state_dict(load_file(self.weights_path), strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{str(self.weights_path)!r} does not match the model of {self.RECORD} ({record.keywords()}): {err}"
            ) from err
        return model.eval()


def config_conflicts(saved: Mapping[str, Any], asked: RunConfig) -> list[str]:
    """Keys (execution settings aside) where a stored configuration differs from ``asked``, described.

    A key the stored configuration lacks was added to nsrep after the run was written, and a new key's default
    keeps what nsrep did before it existed, so the run trained with that default: it is compared as such.
    """
    defaults = type(asked)().to_dict()
    conflicts = []
    for key, value in asked.to_dict().items():
        if key in asked.EXECUTION_FIELDS:
            continue
        stored = saved.get(key, defaults[key])
        if stored != value:
            shown = f"{stored!r}" if key in saved else f"{stored!r} (absent: the default)"
            conflicts.append(f"{key}={shown} in the checkpoint, {value!r} asked")
    return conflicts


class RunFolder:
    """One training run's folder: its files, its state and the checks that keep runs from mixing."""

    CONFIG = "config.yaml"
    CHECKPOINT = CHECKPOINT_FILE
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    DEPLOY = "deploy"
    TENSORBOARD = "tensorboard"
    FILES = (CONFIG, CHECKPOINT, METRICS, SUMMARY, DEPLOY, TENSORBOARD)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def tensorboard_path(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def deploy(self) -> DeployFolder:
        return DeployFolder(self.path / self.DEPLOY)

    # ------------------------------------------------------------------------------------------ state

    def foreign_entries(self) -> list[str]:
        """Names in the folder that no nsrep run writes (a path that is not a folder: its own name)."""
        if not self.path.exists():
            return []
        if not self.path.is_dir():
            return [self.path.name]
        return sorted(p.name for p in self.path.iterdir() if not self._is_run_entry(p.name))

    def _is_run_entry(self, name: str) -> bool:
        if name in self.FILES:
            return True
        return any(is_temporary_of(name, file) for file in self.FILES)  # left by a killed atomic write

    @property
    def state(self) -> str:
        """``new``, ``resumable``, ``finished`` or ``foreign`` (see the module docstring)."""
        if self.foreign_entries():
            return "foreign"
        if self.summary_path.is_file():
            return "finished"
        if self.checkpoint_path.is_file():
            return "resumable"
        return "new"

    def _refuse_foreign(self) -> None:
        entries = self.foreign_entries()
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise ValueError(
                f"{str(self.path)!r} is not an nsrep run folder (it holds {shown}); nsrep does not write into "
                "it: choose another --out"
            )

    def open(self, config: RunConfig, *, resume: bool) -> dict[str, Any] | None:
        """Check that ``config`` may run here; returns the checkpoint to resume from (None: start afresh).

        Refuses a foreign folder, an existing run without ``resume``, ``resume`` without a checkpoint, and
        ``resume`` with a configuration that differs from the stored one (naming each differing key).
        """
        self._refuse_foreign()
        state = self.state
        if not resume:
            if state != "new":
                raise ValueError(
                    f"{str(self.path)!r} already holds a run; pass --resume to continue it or choose another --out"
                )
            return None
        if state == "new":
            raise ValueError(f"nothing to resume: {str(self.checkpoint_path)!r} does not exist")
        checkpoint = self.load_checkpoint()
        self.check_config(checkpoint["config"], config)
        return checkpoint

    def check_config(self, saved: Mapping[str, Any], config: RunConfig) -> None:
        """Refuse to continue (or reuse) this run with a configuration other than the stored one."""
        conflicts = config_conflicts(saved, config)
        if conflicts:
            raise ValueError(f"cannot resume {str(self.path)!r} with a different configuration: {'; '.join(conflicts)}")

    # ------------------------------------------------------------------------------------------ files

    def write_config(self, config: RunConfig) -> Path:
        self._refuse_foreign()
        return atomic_write(self.config_path, lambda f: f.write(yaml.safe_dump(config.to_dict()).encode()))

    def write_metrics(self, metrics: list[dict[str, Any]]) -> Path:
        text = "".join(json.dumps(m) + "\n" for m in metrics)
        return atomic_write(self.metrics_path, lambda f: f.write(text.encode()))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl``."""
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()]

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path)

    def stored_config(self) -> dict[str, Any]:
        """The configuration the run's checkpoint was trained with (its ``to_dict`` form)."""
        return self.load_checkpoint()["config"]

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        return write_json(self.summary_path, dict(summary))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def tensorboard(self) -> Any:
        """A TensorBoard writer into the folder, or None when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.tensorboard_path))
