"""Training stability at the start of a run: per-step loss, each unit's aggregate scale, per-stage gradients.

A branch-level unit with K branches fed S_in streams sums K·S_in batch-normalised pairs, so with every BN
scale at 1 its aggregate starts up to K·S_in times a plain conv+BN's. This traces what that does in the first
optimiser steps of a recipe: the loss of every step, the standard deviation of every unit's aggregate output
(the quantity the deployed conv computes) and of the features the head sees, and the gradient norm of each
stage, for any model configuration; ``python -m nsrep.analysis.stability`` compares variants and bn_init
schemes side by side (CSV + PNG).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from nsrep.data.datasets import load_data
from nsrep.fileio import atomic_write
from nsrep.models import create_model
from nsrep.nn.conv import RepConv2d
from nsrep.plotting import pyplot, save_png
from nsrep.train.config import TrainConfig, apply_overrides, load_recipe, parse_override
from nsrep.train.trainer import build_optimizer, lr_factor, pinned_threads, train_transform

__all__ = ["StabilityTrace", "trace_stability"]

STAGES = ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "head")


@dataclass
class StabilityTrace:
    """What one configuration did in its first steps; per-step lists, index 0 = the first optimiser step."""

    label: str
    loss: list[float] = field(default_factory=list)
    # unit name -> aggregate std per step (the forward of that step, before its update)
    unit_std: dict[str, list[float]] = field(default_factory=dict)
    features_std: list[float] = field(default_factory=list)  # the stream sum entering the head
    grad_norm: dict[str, list[float]] = field(default_factory=dict)  # stage -> gradient L2 norm per step
    total_grad_norm: list[float] = field(default_factory=list)

    def stage_std(self, stage: str) -> list[float]:
        """Mean aggregate std over the units of ``stage`` per step."""
        rows = [v for k, v in self.unit_std.items() if _stage_of(k) == stage]
        return [sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0]))] if rows else []

    @property
    def max_loss(self) -> float:
        return max(self.loss)

    def largest_jump(self, window: int = 10) -> float:
        """The largest rise of a step's loss above the mean of the ``window`` steps before it (0 if none)."""
        jumps = [self.loss[i] - sum(self.loss[i - window : i]) / window for i in range(window, len(self.loss))]
        return max([0.0, *jumps])


def _stage_of(name: str) -> str:
    for stage in STAGES:
        if name == stage or name.startswith(stage + "."):
            return stage
    return name.split(".")[0]


def _aggregate_std(output: Tensor) -> float:
    aggregate = output.sum(0) if output.dim() == 5 else output  # (S, B, C, H, W) -> (B, C, H, W)
    return aggregate.detach().float().std().item()


def trace_stability(config: TrainConfig, steps: int, *, label: str = "", progress: bool = True) -> StabilityTrace:
    """Train ``config`` for ``steps`` optimiser steps as the trainer would (same data, augmentation, optimiser,
    warm-up and schedule over the configured epochs, clipping) and record the trace; single process, CPU.
    ``config.threads`` applies for the trace only, as in the trainer."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with pinned_threads(config.threads):
        return _trace(config, steps, label, progress)


def _trace(config: TrainConfig, steps: int, label: str, progress: bool) -> StabilityTrace:
    data = load_data(config.data, **config.data_kwargs())
    transform = train_transform(config, data)
    torch.manual_seed(config.seed)
    model = create_model(**config.model_kwargs(), num_classes=data.num_classes, in_chans=data.in_chans)
    model.train()
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=generator)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    trace = StabilityTrace(label or f"{config.family}-{config.connectivity}")
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, RepConv2d):
            trace.unit_std[name] = []
            hooks.append(
                module.register_forward_hook(lambda m, i, o, n=name: trace.unit_std[n].append(_aggregate_std(o)))
            )
    hooks.append(model.head.register_forward_pre_hook(lambda m, i: trace.features_std.append(_aggregate_std(i[0]))))
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(_stage_of(name), []).append(p)

    bar = tqdm(total=steps, desc=trace.label, unit="step", disable=not progress, file=sys.stderr)
    step = 0
    try:
        while step < steps:
            for images, labels in loader:
                if step >= steps:
                    break
                for g in optimizer.param_groups:
                    g["lr"] = config.lr * lr_factor(
                        step, total_steps=total, warmup_steps=warmup, config=config, steps_per_epoch=steps_per_epoch
                    )
                loss = criterion(model(transform(images)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for stage, params in groups.items():
                    norms = [p.grad.norm() for p in params if p.grad is not None]
                    trace.grad_norm.setdefault(stage, []).append(torch.stack(norms).norm().item() if norms else 0.0)
                if config.clip_grad is not None:
                    total_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                else:
                    total_norm = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()
                trace.total_grad_norm.append(float(total_norm))
                optimizer.step()
                trace.loss.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{trace.loss[-1]:.3f}")
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
    if not all(math.isfinite(v) for v in trace.loss):
        print(f"nsrep: {trace.label}: the loss became non-finite", file=sys.stderr)
    return trace


def write_traces(traces: Sequence[StabilityTrace], out: Path) -> list[Path]:
    """``stability_steps.csv`` (one row per variant and step), ``stability_summary.csv`` and ``stability.png``."""
    stages = [s for s in STAGES if any(t.stage_std(s) for t in traces)]
    rows = []
    for t in traces:
        for i, loss in enumerate(t.loss):
            row: dict[str, Any] = {"variant": t.label, "step": i + 1, "loss": loss, "grad_norm": t.total_grad_norm[i]}
            row |= {f"std_{s}": t.stage_std(s)[i] for s in stages}
            row |= {f"grad_{s}": t.grad_norm[s][i] for s in STAGES if s in t.grad_norm}
            row["std_features"] = t.features_std[i]
            rows.append(row)
    summary = [
        {
            "variant": t.label,
            "steps": len(t.loss),
            "first_loss": t.loss[0],
            "max_loss": t.max_loss,
            "final_loss_mean10": sum(t.loss[-10:]) / len(t.loss[-10:]),
            "largest_jump": t.largest_jump(),
            "init_features_std": t.features_std[0],
            **{f"init_std_{s}": t.stage_std(s)[0] for s in stages},
            "max_grad_norm": max(t.total_grad_norm),
        }
        for t in traces
    ]
    paths = [_write_csv(out / "stability_steps.csv", rows), _write_csv(out / "stability_summary.csv", summary)]
    paths.append(_plot(traces, stages, out / "stability.png"))
    return paths


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def _plot(traces: Sequence[StabilityTrace], stages: Sequence[str], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for t in traces:
        axes[0].plot(range(1, len(t.loss) + 1), t.loss, label=t.label, lw=1)
        axes[2].plot(range(1, len(t.total_grad_norm) + 1), t.total_grad_norm, label=t.label, lw=1)
    axes[0].set(xlabel="optimiser step", ylabel="training loss", title="loss per step")
    axes[2].set(xlabel="optimiser step", ylabel="global gradient norm", yscale="log", title="gradient norm")
    width = 0.8 / max(len(traces), 1)
    for j, t in enumerate(traces):
        values = [t.stage_std(s)[0] for s in stages]
        axes[1].bar([i + j * width for i in range(len(stages))], values, width, label=t.label)
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(stages))], stages)
    axes[1].set(ylabel="mean unit aggregate std", yscale="log", title="unit output scale at initialisation")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nsrep.analysis.stability",
        description="Trace loss, unit output scale and gradient norms over the first steps of several variants.",
    )
    parser.add_argument("--recipe", default="cifar10-cpu")
    parser.add_argument("--steps", type=int, default=78, help="optimiser steps (78 = one cifar10-cpu epoch)")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="LABEL:key=value,key=value (TrainConfig keys), e.g. dbb-ns:family=dbb,connectivity=ns",
    )
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="key=value for every variant")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    base = TrainConfig.from_dict(load_recipe(args.recipe), source=f"recipe {args.recipe!r}")
    base = apply_overrides(base, dict(parse_override(o) for o in args.overrides), source="--set")
    traces = []
    for spec in args.variant:
        label, _, keys = spec.partition(":")
        values = dict(parse_override(kv) for kv in keys.split(",") if kv)
        traces.append(
            trace_stability(apply_overrides(base, values, source=f"variant {label!r}"), args.steps, label=label)
        )
    out = Path(os.fspath(args.out))
    for path in write_traces(traces, out):
        print(f"wrote {path}")
    for t in traces:
        print(
            f"{t.label:28s} loss {t.loss[0]:.3f} -> {sum(t.loss[-10:]) / len(t.loss[-10:]):.3f}  max {t.max_loss:.3f}"
            f"  largest jump {t.largest_jump():.3f}  features std at init {t.features_std[0]:.3g}  max grad norm "
            f"{max(t.total_grad_norm):.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
