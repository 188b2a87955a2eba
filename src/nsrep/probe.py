"""Heads on frozen features (paper Table 4): feature files, training every head on the same budget, the table.

A *feature file* is an ``.npz`` with ``train_x (N, D)``, ``train_y (N,)``, ``test_x (M, D)``, ``test_y (M,)``
(labels are integers ``0..C-1``; an optional scalar ``num_classes`` fixes C, else it is ``max(train_y) + 1``).
:func:`run_probe` trains each head of :mod:`nsrep.heads` on each file for each seed with the same epochs, batch
size, learning rate and batch order, then folds it and reports test top-1 of both forms. ``nsrep features``
writes feature files from any encoder (:func:`load_encoder`, :func:`extract_features`) or from
scikit-learn's bundled data sets (:func:`sklearn_features`: no download).
"""

from __future__ import annotations

import csv
import importlib
import io
import math
import os
import re
import statistics
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.fileio import atomic_write
from nsrep.heads import HEADS, create_head
from nsrep.info import markdown_table
from nsrep.linear import RepLinear
from nsrep.reparam import reparameterize
from nsrep.validation import check_choice

__all__ = [
    "DEFAULT_HEADS",
    "EXAMPLE_DATASETS",
    "REQUIRED_KEYS",
    "SKLEARN_DATASETS",
    "FeatureSet",
    "ProbeConfig",
    "ProbeResults",
    "ProbeRun",
    "Summary",
    "extract_features",
    "format_probe_table",
    "load_encoder",
    "load_features",
    "plot_probe",
    "probe_notes",
    "resolve_device",
    "run_probe",
    "save_features",
    "sklearn_features",
    "summarize",
    "train_head",
    "validate_features",
    "write_probe_outputs",
]

REQUIRED_KEYS = ("train_x", "train_y", "test_x", "test_y")
DEFAULT_HEADS = ("linear", "mlp", "ns-mlp")
SKLEARN_DATASETS = ("digits", "breast_cancer", "wine")
EXAMPLE_DATASETS = ("digits", "breast_cancer")  # the embedded example of ``nsrep probe --example``
SKLEARN_TEST_FRACTION, SKLEARN_SPLIT_SEED = 0.2, 0  # as the digits images of nsrep.train.data
AVERAGE = "Avg."
DEVICES = ("auto", "cpu", "cuda")


# ------------------------------------------------------------------------------------------------ feature files


@dataclass(frozen=True)
class FeatureSet:
    """Train/test features and labels of one data set, validated (:func:`validate_features`)."""

    name: str
    train_x: np.ndarray = field(repr=False)  # (N, D) float32
    train_y: np.ndarray = field(repr=False)  # (N,) int64 in 0..num_classes-1
    test_x: np.ndarray = field(repr=False)  # (M, D) float32
    test_y: np.ndarray = field(repr=False)  # (M,) int64
    num_classes: int

    @property
    def in_features(self) -> int:
        return self.train_x.shape[1]

    def __str__(self) -> str:
        return (
            f"{self.name}: {len(self.train_y)} train / {len(self.test_y)} test samples, "
            f"{self.in_features} features, {self.num_classes} classes"
        )


def validate_features(
    arrays: Mapping[str, Any], *, source: str, name: str | None = None, num_classes: int | None = None
) -> FeatureSet:
    """Check feature arrays (``REQUIRED_KEYS``, optional ``num_classes``); errors name ``source`` and the key."""
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"{source}: missing array(s) {', '.join(map(repr, missing))}; a feature file needs "
            f"{', '.join(REQUIRED_KEYS)} (optional: num_classes)"
        )
    xs = {key: _features_array(arrays[key], key, source) for key in ("train_x", "test_x")}
    ys = {key: _labels_array(arrays[key], key, source) for key in ("train_y", "test_y")}
    for x_key, y_key in (("train_x", "train_y"), ("test_x", "test_y")):
        if xs[x_key].shape[0] != ys[y_key].shape[0]:
            raise ValueError(
                f"{source}: lengths differ: {x_key!r} has {xs[x_key].shape[0]} rows but {y_key!r} has "
                f"{ys[y_key].shape[0]} labels"
            )
    if xs["test_x"].shape[1] != xs["train_x"].shape[1]:
        raise ValueError(
            f"{source}: 'test_x' has {xs['test_x'].shape[1]} features per row but 'train_x' has "
            f"{xs['train_x'].shape[1]}"
        )
    if num_classes is None and "num_classes" in arrays:
        num_classes = _scalar_int(arrays["num_classes"], "num_classes", source)
    origin = "num_classes" if num_classes is not None else "max(train_y) + 1"
    if num_classes is None:
        num_classes = int(ys["train_y"].max()) + 1 if ys["train_y"].size else 0
    if num_classes < 2:
        raise ValueError(f"{source}: a classifier needs at least 2 classes, got {num_classes} ({origin})")
    for key, y in ys.items():
        if y.size and y.min() < 0:
            index = int(np.argmax(y < 0))
            raise ValueError(
                f"{source}: {key!r} has the negative label {int(y[index])} at index {index}; labels must be "
                f"0..{num_classes - 1}"
            )
        if y.size and y.max() >= num_classes:
            index = int(np.argmax(y >= num_classes))
            raise ValueError(
                f"{source}: {key!r} has the label {int(y[index])} at index {index}, out of range: the classes are "
                f"0..{num_classes - 1} ({origin})"
            )
    return FeatureSet(name or source, xs["train_x"], ys["train_y"], xs["test_x"], ys["test_y"], int(num_classes))


def _features_array(value: Any, key: str, source: str) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{source}: {key!r} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: {key!r} must be 2-D (samples, features) and non-empty, got shape {x.shape}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: {key!r} has {int(bad.sum())} non-finite value(s) (NaN or inf, or too large for float32), "
            f"the first at row {row}, column {col}"
        )
    return x


def _labels_array(value: Any, key: str, source: str) -> np.ndarray:
    y = np.asarray(value)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be integers, but {key!r} has dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{source}: {key!r} must be 1-D (one label per sample), got shape {y.shape}")
    return y.astype(np.int64)


def _scalar_int(value: Any, key: str, source: str) -> int:
    v = np.asarray(value)
    if v.shape != () or v.dtype.kind not in "iu":
        raise ValueError(f"{source}: {key!r} must be one integer, got dtype {v.dtype} shape {v.shape}")
    return int(v)


def load_features(path: str | os.PathLike, *, name: str | None = None) -> FeatureSet:
    """Read and validate a feature file (``.npz``); ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz feature file: {err}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(path)!r} holds a single array, not an .npz with {', '.join(REQUIRED_KEYS)}")
    arrays = {}
    with loaded as npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as err:  # object arrays need pickle, which a data file must not run
                raise ValueError(f"{path}: array {key!r} cannot be read without pickle ({err})") from err
    return validate_features(arrays, source=str(path), name=name or path.stem)


def save_features(path: str | os.PathLike, features: FeatureSet) -> Path:
    """Write ``features`` as an ``.npz`` (float32 features, int64 labels, ``num_classes``), atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        train_x=features.train_x.astype(np.float32),
        train_y=features.train_y.astype(np.int64),
        test_x=features.test_x.astype(np.float32),
        test_y=features.test_y.astype(np.int64),
        num_classes=np.int64(features.num_classes),
    )
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def sklearn_features(name: str) -> FeatureSet:
    """A scikit-learn bundled data set (no download) as features: its pixel or tabular values, split 80/20
    stratified with ``random_state=0`` (both splits in the original order).

    ``digits``: 8×8 pixels (64 features, 10 classes, 1797 samples); ``breast_cancer``: 30 cell-nucleus
    measurements (2 classes, 569); ``wine``: 13 chemical measurements (3 classes, 178).
    """
    check_choice("scikit-learn data set", name, SKLEARN_DATASETS)
    try:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ValueError("the scikit-learn data sets need scikit-learn (pip install scikit-learn)") from error
    bunch = getattr(datasets, f"load_{name}")()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(y)), test_size=SKLEARN_TEST_FRACTION, random_state=SKLEARN_SPLIT_SEED, stratify=y
    )
    train, test = np.sort(train), np.sort(test)
    arrays = {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}
    return validate_features(arrays, source=f"sklearn {name}", name=name, num_classes=int(y.max()) + 1)


# ------------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class ProbeConfig:
    """The budget every head gets: AdamW with a cosine schedule to 0, same epochs, batch and batch order."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01  # AdamW's default, on linear weights only (not biases, not BN)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")


@dataclass(frozen=True)
class ProbeRun:
    """One head trained on one data set with one seed; accuracies are test top-1 in percent."""

    dataset: str
    head: str
    seed: int
    train_form_top1: float  # the training form (branches, streams) in eval mode
    deployed_top1: float  # the folded plain head
    disagreements: int  # test samples whose predicted class differs between the two forms
    max_rel_logit_diff: float  # max |logit difference| / max |logit| between the two forms
    train_loss: float  # mean training loss of the last epoch
    seconds: float
    train_params: int
    deployed_params: int


def _standardize(features: FeatureSet) -> tuple[Tensor, Tensor]:
    """Train and test features standardised with the train mean and std (constant features: std 1)."""
    mean = features.train_x.astype(np.float64).mean(0)
    std = features.train_x.astype(np.float64).std(0)
    std[std < 1e-12] = 1.0  # e.g. the always-blank corner pixels of digits

    def apply(x: np.ndarray) -> Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    return apply(features.train_x), apply(features.test_x)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the (branch) weights of linear layers only, the same rule for every head."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear | RepLinear)}
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


def train_head(
    features: FeatureSet,
    head: str,
    seed: int,
    config: ProbeConfig | None = None,
    *,
    head_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> ProbeRun:
    """Train head ``head`` on ``features`` with ``seed``; test top-1 of the training form and of its fold.

    The seed fixes the head's initialisation, the NS partitions and the batch order; the batch order depends on
    the seed only, so every head sees the same batches. The caller's global RNG state is left as it was.
    """
    config = config or ProbeConfig()
    device = torch.device(device)
    x_train, x_test = (t.to(device) for t in _standardize(features))
    y_train = torch.from_numpy(features.train_y).to(device)
    y_test = torch.from_numpy(features.test_y).to(device)
    n = x_train.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch  # the last partial batch is dropped (a 1-sample batch breaks BatchNorm)
    total = config.epochs * steps_per_epoch
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = create_head(head, features.in_features, features.num_classes, **(head_options or {})).to(device)
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
        )
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=order).to(device)
            losses = []
            for i in range(steps_per_epoch):
                index = perm[i * batch : (i + 1) * batch]
                loss = F.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.detach())
        train_loss = torch.stack(losses).mean().item()
        model.eval()
        deployed = reparameterize(model)
        with torch.no_grad():
            logits, logits_deployed = model(x_test), deployed(x_test)
    pred, pred_deployed = logits.argmax(1), logits_deployed.argmax(1)
    diff = (logits.double() - logits_deployed.double()).abs().max().item()
    scale = logits.double().abs().max().item()
    return ProbeRun(
        dataset=features.name,
        head=head,
        seed=seed,
        train_form_top1=100.0 * (pred == y_test).double().mean().item(),
        deployed_top1=100.0 * (pred_deployed == y_test).double().mean().item(),
        disagreements=int((pred != pred_deployed).sum().item()),
        max_rel_logit_diff=diff / scale if scale > 0 else diff,
        train_loss=train_loss,
        seconds=time.perf_counter() - start,
        train_params=sum(p.numel() for p in model.parameters()),
        deployed_params=sum(p.numel() for p in deployed.parameters()),
    )


@dataclass(frozen=True)
class ProbeResults:
    """Every run of :func:`run_probe`, with the data sets, heads and seeds in the order they were given."""

    runs: tuple[ProbeRun, ...]
    datasets: tuple[str, ...]
    heads: tuple[str, ...]
    seeds: tuple[int, ...]
    config: ProbeConfig


def run_probe(
    datasets: Sequence[str | os.PathLike | FeatureSet],
    heads: Sequence[str] = DEFAULT_HEADS,
    seeds: Sequence[int] = (0, 1, 2),
    config: ProbeConfig | None = None,
    *,
    head_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ProbeResults:
    """Train every head on every data set (feature files or :class:`FeatureSet`) with every seed.

    ``head_options`` maps a head name to extra :func:`~nsrep.heads.create_head` keywords. A tqdm bar counts
    the runs. Every data set is read and checked before the first run starts.
    """
    config = config or ProbeConfig()
    if not datasets:
        raise ValueError("no data sets: give feature files (.npz) or use the embedded example")
    heads, seeds = tuple(heads), tuple(seeds)
    if not heads:
        raise ValueError(f"no heads; valid: {', '.join(HEADS)}")
    for head in heads:
        check_choice("head", head, HEADS)
    for name in head_options or {}:
        check_choice("head in head_options", name, heads)
    if len(set(heads)) != len(heads) or len(set(seeds)) != len(seeds):
        raise ValueError(f"heads and seeds must not repeat, got heads {heads} and seeds {seeds}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be one or more non-negative ints, got {seeds}")
    sets = [d if isinstance(d, FeatureSet) else load_features(d) for d in datasets]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"data set names must be unique (they label the table's columns), got {names}")
    dev = resolve_device(device)
    runs = []
    from tqdm.auto import tqdm

    with tqdm(total=len(sets) * len(heads) * len(seeds), desc="probe", unit="run", disable=not progress) as bar:
        for features in sets:
            for head in heads:
                for seed in seeds:
                    bar.set_postfix_str(f"{features.name} / {head} / seed {seed}")
                    options = (head_options or {}).get(head)
                    runs.append(train_head(features, head, seed, config, head_options=options, device=dev))
                    bar.update()
    return ProbeResults(tuple(runs), tuple(names), heads, seeds, config)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` as a ``torch.device``; refuses CUDA where there is none."""
    if isinstance(device, torch.device):
        return device
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; valid here: auto, cpu")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ reporting


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n-1) of a cell over seeds; std is NaN for one seed."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.2f} (n={self.n})"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def _summary(values: Sequence[float]) -> Summary:
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Summary(statistics.fmean(values), std, len(values))


def summarize(results: ProbeResults) -> dict[str, dict[str, Summary]]:
    """``{head: {dataset or "Avg.": Summary}}`` of the deployed heads' test top-1 over seeds.

    "Avg." averages the data sets within each seed first, then summarises those per-seed averages, so its
    spread is the seed-to-seed spread of the average (not a mix of data-set differences).
    """
    table: dict[str, dict[str, Summary]] = {}
    for head in results.heads:
        acc = {(r.dataset, r.seed): r.deployed_top1 for r in results.runs if r.head == head}
        row = {d: _summary([acc[d, s] for s in results.seeds]) for d in results.datasets}
        per_seed = [statistics.fmean(acc[d, s] for d in results.datasets) for s in results.seeds]
        row[AVERAGE] = _summary(per_seed)
        table[head] = row
    return table


def format_probe_table(results: ProbeResults) -> str:
    """Markdown: one row per head, one column per data set plus "Avg.", cells "mean ± std (n=seeds)"."""
    summary = summarize(results)
    header = ("head", *results.datasets, AVERAGE)
    rows = [(head, *(str(summary[head][c]) for c in header[1:])) for head in results.heads]
    return "\n".join(markdown_table(header, rows))


def probe_notes(results: ProbeResults) -> list[str]:
    """What a reader should know beyond the table: does every fold agree with its training form?"""
    disagreeing = [r for r in results.runs if r.disagreements or r.train_form_top1 != r.deployed_top1]
    worst = max(r.max_rel_logit_diff for r in results.runs)
    if not disagreeing:
        return [
            f"training and deployed forms agree on every test prediction in all {len(results.runs)} runs "
            f"(max relative logit difference {worst:.1e})"
        ]
    return [
        f"WARNING: {r.dataset} / {r.head} / seed {r.seed}: the deployed head disagrees with its training form on "
        f"{r.disagreements} test samples (top-1 {r.train_form_top1:.2f} vs {r.deployed_top1:.2f}, max relative "
        f"logit difference {r.max_rel_logit_diff:.1e})"
        for r in disagreeing
    ]


def plot_probe(results: ProbeResults, path: str | os.PathLike) -> Path:
    """Grouped bar chart (PNG): mean test top-1 per data set and head, error bars one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    columns = [*results.datasets, AVERAGE]
    width = 0.8 / len(results.heads)
    fig, ax = plt.subplots(figsize=(2.8 + 1.3 * len(columns) * max(1, len(results.heads) / 3), 4), layout="constrained")
    lows = []
    for i, head in enumerate(results.heads):
        means = [summary[head][c].mean for c in columns]
        stds = [0.0 if math.isnan(summary[head][c].std) else summary[head][c].std for c in columns]
        xs = [j + (i - (len(results.heads) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=head)
        lows += [m - s for m, s in zip(means, stds, strict=True)]
    ax.set_xticks(range(len(columns)), columns)
    bottom = max(0.0, math.floor(min(lows) / 5) * 5 - 5)  # zoomed: the heads differ by a few points
    ax.set_ylim(bottom, 100)
    ax.set_ylabel(f"test top-1 (%), axis from {bottom:g}")
    ax.set_title(f"Heads on frozen features: mean ± std over {len(results.seeds)} seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: never over a bar
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_probe_outputs(results: ProbeResults, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``table.md`` (table and notes), ``runs.csv`` (every run) and ``probe.png`` in ``out_dir``, atomically."""
    out = Path(out_dir)
    table = "\n".join([format_probe_table(results), "", *probe_notes(results), ""])
    buffer = io.StringIO()
    names = list(ProbeRun.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for run in results.runs:
        writer.writerow(asdict(run))
    return {
        "table": atomic_write(out / "table.md", lambda f: f.write(table.encode())),
        "runs": atomic_write(out / "runs.csv", lambda f: f.write(buffer.getvalue().encode())),
        "plot": plot_probe(results, out / "probe.png"),
    }


# ------------------------------------------------------------------------------------------------ encoders

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
    """Features of ``data`` (an :class:`nsrep.train.data.ImageData`) under ``encoder``, train and test splits.

    Images go through the data set's eval transform (centre crop, normalise), in batches with a progress bar;
    the encoder's outputs (B, ...) are flattened to float32 (B, D).
    """
    from nsrep.train.augment import build_transform

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
