"""Training configuration: one typed dataclass, filled from a YAML recipe and ``key=value`` overrides.

A recipe (``nsrep/train/recipes/NAME.yaml`` or a path to a YAML file) sets any subset of the fields of
:class:`TrainConfig`; the command line overrides them. Unknown keys and bad values raise ``ValueError``
naming the key and the accepted ones, before anything is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from nsrep.data.datasets import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from nsrep.models import list_models
from nsrep.models.common import MEMORY_MODES, STEMS
from nsrep.nn.bn_init import BN_INITS, DEFAULT_BN_INIT
from nsrep.nn.unit import UnitConfig
from nsrep.train.distributed import DEVICES
from nsrep.train.regularize import DECAY_MODES
from nsrep.validation import check_choice, check_probability

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "RECIPE_DIR",
    "SCHEDULES",
    "TrainConfig",
    "apply_overrides",
    "list_recipes",
    "load_recipe",
    "parse_override",
]

RECIPE_DIR = Path(__file__).with_name("recipes")
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "lamb")
LOSSES = ("cross-entropy", "bce")
AUTO_OR_BOOL = ("auto", True, False)
# The UnitConfig fields a run sets (max_streams keeps its default: the built-in networks stay far below it)
_UNIT_FIELDS = ("family", "connectivity", "stochastic", "pair_drop", "num_branches")
# Fields that only change how a run executes, not what it computes: a resumed run may change them.
EXECUTION_FIELDS = frozenset({"workers", "threads", "log_every", "progress"})


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved with every checkpoint so a run can be rebuilt."""

    EXECUTION_FIELDS: ClassVar[frozenset[str]] = EXECUTION_FIELDS  # a run folder resumes despite these

    # model (nsrep.create_model keywords; num_classes and in_chans come from the data)
    arch: str = "resnet18"
    # unit options: the fields of nsrep.UnitConfig (declared and checked there), flat for recipes and --set
    family: str = UnitConfig.family
    connectivity: str = UnitConfig.connectivity
    stochastic: float = UnitConfig.stochastic
    pair_drop: float = UnitConfig.pair_drop
    num_branches: int | None = UnitConfig.num_branches
    drop_path_rate: float = 0.0  # stochastic depth on residual branches (timm's name and linear rule over blocks)
    width_mult: float = 1.0
    stem: str = "cifar"
    stem_unit: bool = True
    memory: str = "default"  # "checkpoint" recomputes each residual block in backward (less memory)
    bn_init: str = DEFAULT_BN_INIT  # where the units' BN scales start (nsrep.nn.bn_init.BN_INITS)
    # data and augmentation (run on batches on the training device)
    data: str = "digits"  # "digits", "synthetic", a CIFAR python folder or an ImageNet-style folder
    image_size: int | None = None  # None: the data's own size (CIFAR 32, digits 8, ImageNet-style 224)
    val_fraction: float = DEFAULT_VAL_FRACTION  # share of train/ held out (per class) when a folder has no val/
    split_seed: int = DEFAULT_SPLIT_SEED  # seed of that split and of train_subset: fixed across a sweep's seeds
    train_subset: int | None = None  # keep this many training images (stratified); None: all of them
    augment: str | None = None  # "pad-crop", "random-resized-crop", "none"; None: the data's default
    crop_padding: int = 4
    hflip: bool = True
    autoaugment: str | None = None  # kornia AutoAugment policy ("cifar10", "imagenet", "svhn") or None
    randaugment: int | None = None  # RandAugment magnitude on timm's 0-10 scale (2 ops, kornia); None: off
    train_image_size: int | None = None  # side of the training crops when smaller than the eval side (160 vs 224)
    eval_crop_pct: float = 0.875  # image folders: eval resizes the shorter side to image_size / eval_crop_pct
    mixup: float = 0.0  # mixup alpha: lambda ~ Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # cutmix alpha; with mixup too, each batch takes one of the two at random (timm's rule)
    workers: int = 2  # DataLoader worker processes (image decoding for folders)
    threads: int | None = None  # intra-op CPU threads (torch.set_num_threads); None: torch's default
    # optimisation
    epochs: int = 100
    batch_size: int = 256  # global batch: split over DDP ranks and accumulation steps
    eval_batch_size: int = 512
    eval_every: int = 1  # score the held-out split every N epochs and after the last (long CPU studies)
    optimizer: str = "sgd"  # "sgd" or "lamb" (pytorch-optimizer's LAMB, the `recipes` extra)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on BN parameters and biases (1-D tensors)
    weight_decay_mode: str = "branches"  # "equivalent": decay each unit's folded kernel (nsrep.train.regularize)
    schedule: str = "cosine"
    warmup_epochs: float = 5.0
    warmup_lr: float | None = None  # lr the linear warm-up starts from (timm's warmup_lr); None: lr / warm-up steps
    min_lr: float = 0.0
    step_milestones: tuple[int, ...] = (30, 60, 90)  # schedule "step": epochs where lr is divided by 10
    label_smoothing: float = 0.1
    loss: str = "cross-entropy"  # or "bce": binary cross-entropy of every class (timm's BinaryCrossEntropy)
    bce_target_threshold: float | None = None  # bce: (mixed) targets above it become 1, the rest 0; None: soft
    grad_accum: int = 1
    clip_grad: float | None = None  # max global gradient norm, None: no clipping
    # execution
    device: str = "auto"
    amp: bool | str = "auto"  # mixed precision: "auto" = on for CUDA (bf16 when supported), off on CPU
    channels_last: bool | str = "auto"  # "auto" = on for CUDA
    compile: bool | str = False  # torch.compile (inductor) for training and evaluation; "auto" = on for CUDA
    seed: int = 0
    log_every: int = 20  # progress-bar refresh, in optimiser steps
    progress: bool = True

    def __post_init__(self) -> None:
        self.step_milestones = tuple(self.step_milestones)
        check_choice("architecture", self.arch, list_models())
        check_choice("stem", self.stem, STEMS)
        check_choice("memory mode", self.memory, MEMORY_MODES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("bn_init", self.bn_init, BN_INITS)
        check_choice("weight_decay_mode", self.weight_decay_mode, DECAY_MODES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("loss", self.loss, LOSSES)
        self.unit_config()  # checks the unit options
        check_probability("drop_path_rate", self.drop_path_rate)
        for name in ("amp", "channels_last", "compile"):
            if getattr(self, name) not in AUTO_OR_BOOL:
                raise ValueError(f"{name} must be auto, true or false, got {getattr(self, name)!r}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "eval_every": self.eval_every,
            "grad_accum": self.grad_accum,
            "log_every": self.log_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0:  # a warm-up longer than the run is cut at its end (short smoke runs)
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_lr is not None and not 0 < self.warmup_lr <= self.lr:
            raise ValueError(f"warmup_lr must be in (0, lr={self.lr}] or null, got {self.warmup_lr}")
        if self.bce_target_threshold is not None and (self.loss != "bce" or not 0 <= self.bce_target_threshold < 1):
            raise ValueError(
                f"bce_target_threshold must be in [0, 1) with loss 'bce', or null; got {self.bce_target_threshold} "
                f"with loss {self.loss!r}"
            )
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0 (0: off), got {self.mixup}, {self.cutmix}")
        if self.randaugment is not None and not 0 < self.randaugment < 10:
            raise ValueError(f"randaugment magnitude must be in (0, 10) (timm's scale) or null, got {self.randaugment}")
        if not 0 < self.eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct must be in (0, 1], got {self.eval_crop_pct}")
        if self.train_image_size is not None and self.train_image_size < 1:
            raise ValueError(f"train_image_size must be >= 1 or null, got {self.train_image_size}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or null, got {self.clip_grad}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or null, got {self.train_subset}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        if self.workers < 0 or self.crop_padding < 0:
            raise ValueError(f"workers and crop_padding must be >= 0, got {self.workers}, {self.crop_padding}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML/JSON/checkpoint friendly)."""
        d = asdict(self)
        d["step_milestones"] = list(self.step_milestones)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping, refusing unknown keys (with the closest valid key) and ill-typed values."""
        return apply_overrides(cls(), values, source=source)

    def unit_config(self) -> UnitConfig:
        """The run's unit options as the one typed :class:`~nsrep.UnitConfig`."""
        return UnitConfig(**{name: getattr(self, name) for name in _UNIT_FIELDS})

    def model_kwargs(self) -> dict[str, Any]:
        """The ``nsrep.create_model`` keywords of this run's model (data-dependent ones excluded)."""
        return {
            "arch": self.arch,
            **{name: getattr(self, name) for name in _UNIT_FIELDS},
            "drop_path_rate": self.drop_path_rate,
            "width_mult": self.width_mult,
            "stem": self.stem,
            "stem_unit": self.stem_unit,
            "memory": self.memory,
            "bn_init": self.bn_init,
        }

    def data_kwargs(self) -> dict[str, Any]:
        """The ``nsrep.data.datasets.load_data`` keywords of this run's data."""
        pad_crop = self.augment == "pad-crop"  # train items at the input size, not at the resize side
        return {
            "image_size": self.image_size,
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "train_subset": self.train_subset,
            "train_item_size": self.image_size if pad_crop else None,
            "crop_pct": self.eval_crop_pct,
        }


def list_recipes() -> list[str]:
    """Names of the recipes shipped with nsrep."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The key/value mapping of a shipped recipe (by name) or of a YAML file (by path)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        check_choice("recipe", name_or_path, list_recipes())
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {str(path)!r} is not valid YAML: {err}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {str(path)!r} must be a mapping of keys to values, got {type(values).__name__}")
    TrainConfig.from_dict(values, source=f"recipe {str(path)!r}")  # fail early on unknown keys
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is read as YAML (``0.1``, ``true``, ``null``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: value is not valid YAML: {err}") from err
    return key.strip().replace("-", "_"), value


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any], *, source: str = "override") -> TrainConfig:
    """A new config with ``overrides`` applied; unknown keys and ill-typed values raise ``ValueError``."""
    names = {f.name: f for f in fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {source} key {key!r}; valid keys: {', '.join(names)}.{hint}")
        changes[key] = _coerce(key, value, hints[key], source)
    return dataclasses.replace(config, **changes)


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats, lists for tuples."""
    allowed = _flatten_union(hint)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
            (item_kind, _) = typing.get_args(kind)
            if all(isinstance(v, item_kind) and not isinstance(v, bool) for v in value):
                return tuple(value)
    expected = " or ".join(_type_name(k) for k in allowed)
    raise ValueError(f"{source} key {key!r} expects {expected}, got {value!r}")


def _flatten_union(hint: Any) -> Iterable[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is tuple:
        return f"a list of {typing.get_args(kind)[0].__name__}"
    return kind.__name__
