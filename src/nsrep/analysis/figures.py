"""The analysis figures (matplotlib, Agg backend): one PNG per analysis, written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nsrep.analysis.similarity import RunningStats
from nsrep.plotting import pyplot, save_png

__all__ = ["block_drop_figure", "branch_similarity_figure", "depth_similarity_figure", "kernel_figure"]


def _short(block: str) -> str:
    """``stages.1.0`` -> ``1.0``: block names without the container prefix, for tick labels."""
    parts = block.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else block


def depth_similarity_figure(stats: Mapping[str, Mapping[tuple[str, str], RunningStats]], path: Path) -> Path:
    """Fig. 5a: per pair of equal-shape blocks, sampled pixel similarities (dots) and their mean (bar)."""
    plt = pyplot()
    pairs = sorted({pair for st in stats.values() for pair in st}, key=lambda p: (p[0], p[1]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(pairs) * max(len(stats), 1) + 2), 4.5), constrained_layout=True)
    width = 0.8 / max(len(stats), 1)
    generator = torch.Generator().manual_seed(0)
    for i, (label, st) in enumerate(stats.items()):
        for j, pair in enumerate(pairs):
            if pair not in st:
                continue
            x0 = j + (i - (len(stats) - 1) / 2) * width
            sample = st[pair].sample
            jitter = (torch.rand(len(sample), generator=generator) - 0.5) * width * 0.8
            ax.scatter([x0 + float(d) for d in jitter], sample, s=4, alpha=0.35, color=f"C{i}")
            ax.hlines(st[pair].mean, x0 - width / 2, x0 + width / 2, color=f"C{i}", linewidth=2)
        ax.scatter([], [], color=f"C{i}", label=label)
    ax.set_xticks(range(len(pairs)), [f"{_short(a)}–{_short(b)}" for a, b in pairs], rotation=45, ha="right")
    ax.set(xlabel="pair of residual blocks", ylabel="cosine similarity of pixel features", ylim=(-1.05, 1.05))
    ax.set_title("Feature similarity across depths (dots: pixels, bars: mean)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=9)
    return save_png(fig, path)


def branch_similarity_figure(points: Sequence[tuple[str, str, str, int, float]], path: Path) -> Path:
    """Fig. 5b: mean similarity between a unit's branches against the number of branches; one line per
    (family, connectivity), colour by connectivity, marker by family."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    lines: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
    for label, family, connectivity, k, value in points:
        lines.setdefault((family, connectivity), []).append((k, value, label))
    connectivities = sorted({c for _, c in lines})
    families = sorted({f for f, _ in lines})
    for (family, connectivity), values in sorted(lines.items()):
        values.sort()
        ax.plot(
            [k for k, _, _ in values],
            [v for _, v, _ in values],
            marker="osD^v<>"[families.index(family) % 7],
            color=f"C{connectivities.index(connectivity)}",
            label=f"{family}, {connectivity}",
        )
    ax.set(xlabel="branches per unit (K)", ylabel="mean cosine similarity between branches")
    ax.set_title("Feature similarity between the branches of a unit")
    ax.set_xticks(sorted({k for *_, k, _ in points}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save_png(fig, path)


def kernel_figure(kernels: Mapping[str, Any], unit: str, path: Path) -> Path:
    """Fig. 6a: one row per model, one column per branch: the branch's folded-space kernel for the channel
    pair where the unit's folded kernel is largest (signed, scaled to max |w| = 1 per model)."""
    plt = pyplot()
    rows = len(kernels)
    cols = max(pic.signed.shape[0] for pic in kernels.values())
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1.2, 1.9 * rows + 0.9), squeeze=False)
    image = None
    for r, (label, pic) in enumerate(kernels.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < pic.signed.shape[0]:
                image = ax.imshow(pic.signed[c].numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
                if r == 0:
                    ax.set_title(f"branch {c}", fontsize=9)
            else:
                ax.axis("off")
        o, i = pic.channels
        axes[r][0].set_ylabel(f"{label}\n(out {o}, in {i})", fontsize=8)
    fig.suptitle(f"Folded-space kernels of the branches of {unit}", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight / max |weight|")
    return save_png(fig, path)


def block_drop_figure(
    drops: Mapping[str, tuple[float, Mapping[str, float]]], pairs: Sequence[tuple[str, str]], path: Path
) -> Path:
    """Fig. 6b: accuracy lost when each block is skipped, per model; below, for every (branch-level,
    block-level) pair of the same family and K, the branch-level accuracy minus the block-level one (red)."""
    plt = pyplot()
    blocks = sorted({b for _, accs in drops.values() for b in accs})
    rows = 2 if pairs else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 0.9 * len(blocks) + 3), 3.8 * rows), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(drops), 1)
    for i, (label, (base, accs)) in enumerate(drops.items()):
        xs = [j + (i - (len(drops) - 1) / 2) * width for j, b in enumerate(blocks) if b in accs]
        ax.bar(xs, [base - accs[b] for b in blocks if b in accs], width, label=f"{label} (intact {base:.1f}%)")
    ax.set_xticks(range(len(blocks)), [_short(b) for b in blocks])
    ax.set(xlabel="skipped block", ylabel="top-1 lost (points)", title="Accuracy lost when one block is dropped")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    if pairs:
        ax = axes[1][0]
        width = 0.8 / len(pairs)
        reds = plt.get_cmap("Reds")
        for i, (branch, block) in enumerate(pairs):
            a, b = drops[branch][1], drops[block][1]
            common = [x for x in blocks if x in a and x in b]
            xs = [blocks.index(x) + (i - (len(pairs) - 1) / 2) * width for x in common]
            colour = reds(0.45 + 0.5 * (i + 1) / len(pairs))
            ax.bar(xs, [a[x] - b[x] for x in common], width, color=colour, label=f"{branch} − {block}")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(blocks)), [_short(b) for b in blocks])
        ax.set(xlabel="skipped block", ylabel="top-1 difference (points)")
        ax.set_title("Branch-level minus block-level accuracy with the block dropped", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
