"""``nsrep analyze``: the paper's Sec. 6.4 analyses of trained checkpoints, as numbers (CSV) and figures (PNG).

1. feature similarity across depths (Fig. 5a) and across the branches of each unit (Fig. 5b);
2. the folded-space kernels of every branch of one unit (Fig. 6a), with their mutual cosine similarity;
3. accuracy when each residual block is skipped (Fig. 6b), on the deployed network;
4. sub-network topology counts (Eq. 5 and Eq. 7).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nsrep.analysis import figures
from nsrep.analysis.similarity import (
    RunningStats,
    branch_outputs,
    pairwise_branch_similarity,
    pixel_cosine,
    residual_blocks,
)
from nsrep.fileio import atomic_write
from nsrep.inspection import topologies, topologies_block, topologies_branch, unit_branch_counts
from nsrep.nn.conv import RepConv2d
from nsrep.nn.streams import aggregate
from nsrep.reparam import reparameterize
from nsrep.report import count_text
from nsrep.storage.checkpoint import checkpoint_data_record, load_checkpoint
from nsrep.storage.data_record import DataRecord
from nsrep.train.runs import eval_data, model_from_checkpoint

__all__ = [
    "AnalysisReport",
    "AnalyzedModel",
    "analyze",
    "block_drop",
    "branch_similarity",
    "depth_similarity",
    "kernel_maps",
    "load_models",
    "topology_counts",
]


@dataclass
class AnalyzedModel:
    """A trained training-form model (eval mode) and what the analyses need to know of its run."""

    label: str
    model: nn.Module
    connectivity: str
    family: str
    data_record: DataRecord | None = None

    @property
    def num_branches(self) -> int:
        """The most common branch count among the model's k×k (k > 1) units (1 if it has none)."""
        counts = [u.num_branches for u in _units(self.model) if max(u.geometry.kernel_size) > 1]
        return Counter(counts).most_common(1)[0][0] if counts else 1


def _units(model: nn.Module) -> list[RepConv2d]:
    return [m for m in model.modules() if isinstance(m, RepConv2d)]


def load_models(paths: Sequence[str | os.PathLike]) -> list[AnalyzedModel]:
    """Training-form models of run folders / checkpoints, labelled ``family-connectivity`` (+ K, + folder)."""
    if not paths:
        raise ValueError("analyze needs at least one checkpoint")
    loaded = []
    for path in paths:
        state = load_checkpoint(path)
        config = state["config"]
        model = model_from_checkpoint(state)
        k = config.get("num_branches")
        label = f"{config['family']}-{config['connectivity']}" + (f"-K{k}" if k else "")
        loaded.append(
            AnalyzedModel(label, model, config["connectivity"], config["family"], checkpoint_data_record(state, path))
        )
    labels = Counter(m.label for m in loaded)
    for m, path in zip(loaded, paths, strict=True):
        if labels[m.label] > 1:  # same variant twice (e.g. two seeds): tell them apart by their folder
            m.label += f" ({Path(path).resolve().name if Path(path).is_dir() else Path(path).resolve().parent.name})"
    return loaded


def _take_batches(loader: DataLoader, transform: nn.Module, max_images: int) -> list[tuple[Tensor, Tensor]]:
    batches, seen = [], 0
    for images, labels in loader:
        keep = min(len(labels), max_images - seen)
        batches.append((transform(images[:keep]), labels[:keep]))
        seen += keep
        if seen >= max_images:
            break
    return batches


# ----------------------------------------------------------------------------------------------- Fig. 5a


@torch.no_grad()
def depth_similarity(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, progress: bool = False, keep: int = 200
) -> dict[tuple[str, str], RunningStats]:
    """Pixel cosine similarity between the (aggregate) outputs of every two residual blocks of equal shape."""
    blocks = residual_blocks(model)
    if len(blocks) < 2:
        raise ValueError(f"{type(model).__name__} has {len(blocks)} residual blocks; depth similarity needs two")
    outputs: dict[str, Tensor] = {}
    stats: dict[tuple[str, str], RunningStats] = {}
    with _hooks([(m, _store_output(outputs, n)) for n, m in blocks]):
        for images, _ in tqdm(batches, desc="depth similarity", unit="batch", leave=False, disable=not progress):
            model(images)
            for (a, _), (b, _) in itertools.combinations(blocks, 2):
                if outputs[a].shape == outputs[b].shape:
                    stats.setdefault((a, b), RunningStats(keep=keep)).add(pixel_cosine(outputs[a], outputs[b]))
    return stats


def _store_output(store: dict[str, Tensor], name: str) -> Any:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        store[name] = aggregate(output) if output.dim() == 5 else output

    return hook


@contextlib.contextmanager
def _hooks(pairs: Sequence[tuple[nn.Module, Any]], *, pre: bool = False) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h) for m, h in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------- Fig. 5b


@torch.no_grad()
def branch_similarity(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, progress: bool = False
) -> dict[str, RunningStats]:
    """Per unit with ≥2 branches: pixel cosine similarity between its branches' contributions (eval)."""
    units = [(n, m) for n, m in model.named_modules() if isinstance(m, RepConv2d) and m.num_branches > 1]
    stats = {n: RunningStats(keep=0) for n, _ in units}
    inputs: dict[str, Tensor] = {}

    def store_input(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[name] = args[0]

        return hook

    with _hooks([(m, store_input(n)) for n, m in units], pre=True):
        for images, _ in tqdm(batches, desc="branch similarity", unit="batch", leave=False, disable=not progress):
            model(images)
            for name, unit in units:
                stats[name].add(pairwise_branch_similarity(branch_outputs(unit, inputs[name])))
    return stats


# ----------------------------------------------------------------------------------------------- Fig. 6a


@dataclass(frozen=True)
class KernelPicture:
    """Folded-space kernels of the branches of one unit (paper Fig. 6a)."""

    signed: Tensor  # (K, kh, kw): every branch's kernel for one (out, in) channel pair, scaled to max |w| = 1
    mean_abs: Tensor  # (K, kh, kw): mean |w| over all channel pairs, each branch scaled to max 1
    cosine: Tensor  # (K, K): cosine similarity of the branches' whole flattened kernels
    channels: tuple[int, int]  # the (out, in) pair shown: the one where the folded kernel is largest


def kernel_maps(model: nn.Module, unit_name: str) -> KernelPicture:
    """The branches of ``unit_name`` as kernels in the folded space (1×1, 1×k, k×1 zero-padded to k×k)."""
    units = dict((n, m) for n, m in model.named_modules() if isinstance(m, RepConv2d))
    if unit_name not in units:
        raise ValueError(f"no unit named {unit_name!r}; units: {', '.join(units)}")
    kernels = torch.stack([k for k, _ in units[unit_name].branch_folds()]).double()  # (K, O, I, kh, kw)
    tiny = torch.finfo(torch.float64).tiny
    total = kernels.sum(0).flatten(2).norm(dim=2)  # (O, I): strength of each channel pair after folding
    out_ch, in_ch = divmod(int(total.argmax()), total.shape[1])
    signed = kernels[:, out_ch, in_ch]
    signed = signed / signed.abs().max().clamp_min(tiny)
    mean_abs = kernels.abs().mean(dim=(1, 2))
    mean_abs = mean_abs / mean_abs.flatten(1).amax(1).clamp_min(tiny)[:, None, None]
    flat = torch.nn.functional.normalize(kernels.flatten(1), dim=1)
    return KernelPicture(signed, mean_abs, flat @ flat.T, (out_ch, in_ch))


def default_unit(model: nn.Module) -> str:
    """The middle k×k (k > 1) unit with the most branches: a unit deep enough to have learnt something."""
    units = [(n, m) for n, m in model.named_modules() if isinstance(m, RepConv2d) and max(m.geometry.kernel_size) > 1]
    if not units:
        raise ValueError("the model has no k×k units to picture")
    most = max(m.num_branches for _, m in units)
    candidates = [n for n, m in units if m.num_branches == most]
    return candidates[len(candidates) // 2]


# ----------------------------------------------------------------------------------------------- Fig. 6b


@torch.no_grad()
def _accuracy(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * hits / sum(len(y) for _, y in batches)


@contextlib.contextmanager
def skipped(model: nn.Module, block_name: str) -> Iterator[None]:
    """Replace one residual block by the identity while the context is open."""
    parent_name, _, child = block_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    original = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, child, original)


def block_drop(
    model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, progress: bool = False
) -> tuple[float, dict[str, float]]:
    """Accuracy of the deployed network, and with each identity-shortcut residual block skipped in turn.

    Blocks whose shortcut changes the shape (downsampling) cannot be skipped and are left out. The deployed
    network computes the training form's aggregate, so this is the eval-mode ensemble test of paper Fig. 6b.
    """
    deployed = reparameterize(model)
    baseline = _accuracy(deployed, batches)
    droppable = [n for n, m in residual_blocks(deployed) if isinstance(m.shortcut, nn.Identity)]
    accuracies = {}
    for name in tqdm(droppable, desc="block drop", unit="block", leave=False, disable=not progress):
        with skipped(deployed, name):
            accuracies[name] = _accuracy(deployed, batches)
    return baseline, accuracies


# ----------------------------------------------------------------------------------------------- Eq. 5 / 7


def topology_counts(model: nn.Module, connectivity: str) -> dict[str, Any]:
    """Units, branches per unit, and topologies with block-level (Eq. 5) and branch-level (Eq. 7) connectivity."""
    counts = unit_branch_counts(model)
    return {
        "units": len(counts),
        "branches": sum(counts),
        "block_level": topologies_block(counts),
        "branch_level": topologies_branch(counts),
        "this_model": topologies(counts, connectivity),
    }


# ----------------------------------------------------------------------------------------------- all of it


@dataclass
class AnalysisReport:
    """Where the figures and tables went, and the text summary printed by ``nsrep analyze``."""

    out_dir: Path
    files: list[Path]
    summary: str


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def analyze(
    checkpoints: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    unit: str | None = None,
    max_images: int = 512,
    batch_size: int = 128,
    progress: bool = True,
) -> AnalysisReport:
    """Run every analysis on the checkpoints' test data; write PNG figures and CSV tables into ``out_dir``."""
    if max_images < 1 or batch_size < 1:
        raise ValueError(f"max_images and batch_size must be >= 1, got {max_images}, {batch_size}")
    models = load_models(checkpoints)
    records = {m.data_record for m in models}
    if data is None and len(records) > 1:
        seen = sorted(str((r.source, r.input_size) if r is not None else None) for r in records)
        raise ValueError(f"the checkpoints were trained on different data ({seen}); pass --data")
    chosen = eval_data(models[0].data_record, data, batch_size=batch_size, run=str(checkpoints[0]))
    images = chosen.images
    batches = _take_batches(chosen.loader, chosen.transform, max_images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    lines = [f"{len(models)} model(s), {sum(len(y) for _, y in batches)} test images of {images.name}"]

    # Fig. 5a
    depth = {m.label: depth_similarity(m.model, batches, progress=progress) for m in models}
    rows = [(label, a, b, s.mean, s.std, s.count) for label, st in depth.items() for (a, b), s in st.items()]
    files.append(
        _write_csv(out / "similarity_depth.csv", ("model", "block_a", "block_b", "mean", "std", "pixels"), rows)
    )
    files.append(figures.depth_similarity_figure(depth, out / "similarity_depth.png"))
    for label, st in depth.items():
        lines.append(f"depth similarity {label}: mean {_mean_of(st.values()):.3f} over {len(st)} block pairs")

    # Fig. 5b
    branch = {m.label: branch_similarity(m.model, batches, progress=progress) for m in models}
    rows = [
        (m.label, m.connectivity, m.num_branches, name, s.mean, s.std, s.count)
        for m in models
        for name, s in branch[m.label].items()
    ]
    header = ("model", "connectivity", "branches", "unit", "mean", "std", "pixel_pairs")
    files.append(_write_csv(out / "similarity_branches.csv", header, rows))
    points = [(m.label, m.family, m.connectivity, m.num_branches, _mean_of(branch[m.label].values())) for m in models]
    files.append(figures.branch_similarity_figure(points, out / "similarity_branches.png"))
    for label, _, _, k, value in points:
        lines.append(f"branch similarity {label} (K={k}): mean {value:.3f}")

    # Fig. 6a
    unit_name = unit or default_unit(models[0].model)
    kernels = {m.label: kernel_maps(m.model, unit_name) for m in models}
    rows = [
        (label, unit_name, k, *pic.channels, _row_major(pic.signed[k]), _row_major(pic.mean_abs[k]))
        for label, pic in kernels.items()
        for k in range(pic.signed.shape[0])
    ]
    header = ("model", "unit", "branch", "out_channel", "in_channel", "kernel_row_major", "mean_abs_row_major")
    files.append(_write_csv(out / "kernels.csv", header, rows))
    files.append(figures.kernel_figure(kernels, unit_name, out / "kernels.png"))
    for label, pic in kernels.items():
        off = pic.cosine[~torch.eye(pic.cosine.shape[0], dtype=torch.bool)]
        value = off.mean().item() if off.numel() else float("nan")
        lines.append(f"kernel cosine similarity between branches of {unit_name}, {label}: {value:.3f}")

    # Fig. 6b
    drops = {m.label: block_drop(m.model, batches, progress=progress) for m in models}
    rows = [(label, "(none)", base, 0.0) for label, (base, _) in drops.items()]
    rows += [(label, n, acc, base - acc) for label, (base, accs) in drops.items() for n, acc in accs.items()]
    files.append(_write_csv(out / "block_drop.csv", ("model", "skipped_block", "top1", "drop"), rows))
    files.append(figures.block_drop_figure(drops, _block_level_pairs(models), out / "block_drop.png"))
    for label, (base, accs) in drops.items():
        if accs:
            lines.append(
                f"block drop {label}: top-1 {base:.2f}% intact, mean drop {_mean_of_values(base, accs):.2f} points "
                f"over {len(accs)} skippable blocks"
            )

    # Eq. 5 / Eq. 7
    topo = {m.label: topology_counts(m.model, m.connectivity) for m in models}
    rows = [
        (label, t["units"], t["branches"], t["block_level"], t["branch_level"], t["this_model"])
        for label, t in topo.items()
    ]
    header = ("model", "units", "branches", "topologies_block_eq5", "topologies_branch_eq7", "topologies_this_model")
    files.append(_write_csv(out / "topologies.csv", header, rows))
    for label, t in topo.items():
        block, branch, this = (count_text(t[k], exact=False) for k in ("block_level", "branch_level", "this_model"))
        lines.append(
            f"topologies {label}: {t['units']} units, {t['branches']} branches; block-level (Eq. 5) {block}, "
            f"branch-level (Eq. 7) {branch}; this model {this}"
        )
    summary = "\n".join(lines)
    files.append(atomic_write(out / "summary.txt", lambda f: f.write((summary + "\n").encode())))
    return AnalysisReport(out, files, summary)


def _block_level_pairs(models: Sequence[AnalyzedModel]) -> list[tuple[str, str]]:
    """(branch-level model, its block-level counterpart): same family and branch count, connectivity block."""
    pairs = []
    for m in models:
        if m.connectivity == "block":
            continue
        match = [
            r for r in models if r.connectivity == "block" and (r.family, r.num_branches) == (m.family, m.num_branches)
        ]
        if match:
            pairs.append((m.label, match[0].label))
    return pairs


def _row_major(kernel: Tensor) -> str:
    return " ".join(f"{v:.4f}" for v in kernel.flatten().tolist())


def _mean_of(stats: Any) -> float:
    stats = [s for s in stats if s.count]
    total = sum(s.total for s in stats)
    count = sum(s.count for s in stats)
    return total / count if count else float("nan")


def _mean_of_values(base: float, accs: dict[str, float]) -> float:
    return sum(base - a for a in accs.values()) / len(accs)
