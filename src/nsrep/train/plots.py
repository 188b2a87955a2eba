"""Figures of training runs (PNG via matplotlib's non-interactive backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nsrep.plotting import pyplot, save_png

__all__ = ["plot_learning_curves"]


def plot_learning_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, *, title: str = "Learning curves"
) -> Path:
    """Test top-1 and training loss per epoch, one line per run (``metrics.jsonl`` records), saved as PNG."""
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for label, records in runs.items():
        scored = [r for r in records if "test_top1" in r]  # runs with eval_every > 1 score some epochs only
        ax_acc.plot(
            [r["epoch"] for r in scored], [r["test_top1"] for r in scored], marker="o", markersize=3, label=label
        )
        ax_loss.plot(
            [r["epoch"] for r in records], [r["train_loss"] for r in records], marker="o", markersize=3, label=label
        )
    ax_acc.set(xlabel="epoch", ylabel="test top-1 accuracy (%)", title="Test accuracy (training form)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(title)
    return save_png(fig, path)
