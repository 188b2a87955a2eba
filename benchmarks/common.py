"""Shared benchmark plumbing: isolated worker processes, timing, machine description, reports and charts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["describe_machine", "run_worker", "save_bar_chart", "sync", "time_calls", "write_report"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int, device: str) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` calls, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def run_worker(module: str, config: dict[str, Any], threads: int, timeout: float = 3600) -> dict[str, Any]:
    """Run ``python -m MODULE --worker JSON`` in a fresh process (clean peak-memory counter); parse its JSON."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode < 0 else f"exit {done.returncode}"
        raise RuntimeError(f"worker {config} failed:\n{done.stderr[-4000:]}\n{why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe_machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"torch {torch.__version__}", f"{cpu}", f"{os.cpu_count()} cores visible, {threads} threads used"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return "; ".join(parts)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def write_report(lines: list[str], out: str | None) -> None:
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def save_bar_chart(
    path: str,
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    ref_line: float | None,
) -> None:
    """Grouped bars (one group per label, one bar per series), with an optional horizontal reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    if ref_line is not None:
        ax.axhline(ref_line, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
