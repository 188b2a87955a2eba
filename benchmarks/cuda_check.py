"""One prepared check of nsrep on a GPU: correctness first (exit status 1 on any failure), then timings.

    python -m benchmarks.cuda_check                       # the whole check, ≤ 5 minutes on one GPU
    python -m benchmarks.cuda_check --out docs/benchmarks/cuda_check.md
    python -m benchmarks.cuda_check --device cpu --quick  # the same code paths at toy size (what the tests run)

Correctness, on a small network holding every stream op (units, guided ReLU and max pool, a residual stream
add, the head), for every family × connectivity:

- fold exactness: a few real training steps (BN statistics move), then the eval-mode per-branch training
  form against the folded network, float64 (≤ 1e-10 relative) and float32 with TF32 off (≤ 1e-4);
- fast path against the per-branch reference: one float64 training step under the same seeded partitions
  and pair-drop masks, outputs and gradients (≤ 1e-9);
- AMP: bf16 and fp16 (with the gradient scaler) training steps in channels-last: finite losses, then the
  float32 fold check;
- compiled (inductor, random ops drawn by eager's generators): training steps and evaluation against eager
  (float32, TF32 off, ≤ 1e-4) for the NS-connected families.

Then step time and peak memory of plain, dbb-block, dbb-ns and ns-ns ResNet-18 (fast and fast-padded, eager
and compiled; AMP bf16, channels-last) at batch 64 and 256 on CIFAR-shaped input, and ResNet-50 at 224 px,
batch 64. Timings stop when ``--budget`` seconds have passed (the rows left are marked), so a slow card or a
long compile cannot push the check past its time. Everything is printed as one table.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import nsrep
from benchmarks.common import describe_machine, sync, write_report
from nsrep.models.factory import LayerFactory
from nsrep.nn.conv import reference_copy, set_implementation
from nsrep.nn.families import ALL_FAMILIES
from nsrep.nn.unit import UnitConfig
from nsrep.report import markdown_table

CONNECTIVITIES = ("block", "naive", "ns")
F64_TOL, F32_TOL, FAST_TOL = 1e-10, 1e-4, 1e-9
TIMED_VARIANTS = {"plain": ("plain", "block"), "dbb-block": ("dbb", "block"), "dbb-ns": ("dbb", "ns"),
                  "ns-ns": ("ns", "ns")}  # fmt: skip


class SmallNet(nn.Module):
    """Stem unit, guided ReLU, a residual unit with a stream add, guided max pool, head: every stream op of the
    zoo's networks, small enough to compile in seconds and to run ``naive`` connectivity."""

    def __init__(self, unit: UnitConfig, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        layers = LayerFactory(unit)
        self.entry = layers.entry()
        self.stem = layers.conv(3, channels, 3, streams=1)
        s = self.stem.out_streams
        self.act = layers.act()
        self.conv = layers.conv(channels, channels, 3, streams=s)
        self.add = layers.add(self.conv.out_streams, s)
        self.pool = layers.max_pool(2, 2)
        self.merge = layers.merge()
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(self.entry(x)))
        x = self.pool(self.act(self.add(self.conv(x), x)))
        return self.head(self.merge(x).mean((2, 3)))


@dataclass
class Row:
    section: str
    case: str
    value: str
    ok: bool | None  # None: a measurement, not a pass/fail check


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off (restored after): float32 tolerances mean float32 with it off."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def unit_matrix(families=ALL_FAMILIES, connectivities=CONNECTIVITIES) -> list[tuple[str, UnitConfig]]:
    """(name, unit options) of every family × connectivity; pair drop on wherever there are pairs to drop."""
    return [
        (f"{f}-{c}", UnitConfig(family=f, connectivity=c, pair_drop=0.0 if c == "block" else 0.2))
        for f in families
        for c in connectivities
    ]


def _inputs(batch: int, size: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, device=device, dtype=dtype)


def _train(model: nn.Module, make_input: Callable[[], torch.Tensor], steps: int, amp: torch.dtype | None = None):
    """SGD steps (autocast and the gradient scaler for fp16 when ``amp``); returns the losses."""
    device = next(model.parameters()).device.type
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)
    losses = []
    model.train()
    for _ in range(steps):
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(make_input())
            loss = out.float().square().mean() + out.float().mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def _fold_error(model: nn.Module, x: torch.Tensor) -> float:
    """Eval-mode per-branch training form against its folded network, relative to the output's scale."""
    return nsrep.verify_equivalence(reference_copy(model), nsrep.reparameterize(model), x).max_rel_error


def check_folding(device: str, batch: int, size: int, units=None) -> list[Row]:
    rows = []
    for name, unit in units or unit_matrix():
        torch.manual_seed(0)
        model = SmallNet(unit).to(device).double()
        _train(model, lambda: _inputs(batch, size, device, torch.float64), steps=3)
        x = _inputs(batch, size, device, torch.float64)
        err64 = _fold_error(model, x)
        with tf32(False):
            err32 = _fold_error(copy.deepcopy(model).float(), x.float())
        ok = err64 <= F64_TOL and err32 <= F32_TOL
        rows.append(Row("fold exactness", name, f"f64 {err64:.1e}, f32 {err32:.1e}", ok))
    return rows


def check_fast_path(device: str, batch: int, size: int, units=None) -> list[Row]:
    rows = []
    for name, unit in units or unit_matrix():
        torch.manual_seed(0)
        fast = SmallNet(unit).to(device).double()
        ref = set_implementation(copy.deepcopy(fast), "reference")
        x = _inputs(batch, size, device, torch.float64)
        outs = []
        for model in (fast, ref):
            torch.manual_seed(1)
            out = model(x)
            (out * torch.linspace(-1, 1, out.numel(), device=device, dtype=out.dtype).view_as(out)).sum().backward()
            outs.append(out.detach())
        # gradients relative to the largest of all: some (an inner BN's shift under a final BN) are 0 up to rounding
        grads = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (fast, ref)]
        err = max(_max_rel(outs[0], outs[1]), _max_rel(*grads))
        rows.append(Row("fast vs reference", name, f"{err:.1e}", err <= FAST_TOL))
    return rows


def check_amp(device: str, batch: int, size: int, units=None) -> list[Row]:
    rows = []
    for amp in (torch.bfloat16, torch.float16):
        for name, unit in units or unit_matrix():
            torch.manual_seed(0)
            model = SmallNet(unit).to(device, memory_format=torch.channels_last)

            def make_input() -> torch.Tensor:
                return _inputs(batch, size, device).contiguous(memory_format=torch.channels_last)

            losses = _train(model, make_input, steps=3, amp=amp)
            with tf32(False):
                err = _fold_error(model, make_input())
            ok = all(math.isfinite(v) for v in losses) and err <= F32_TOL
            label = str(amp).removeprefix("torch.")
            rows.append(Row(f"AMP {label}, channels-last", name, f"loss {losses[-1]:.3g}, fold {err:.1e}", ok))
    return rows


def check_compiled(device: str, batch: int, size: int) -> list[Row]:
    rows = []
    for name in ("dbb-ns", "ns-ns", "repvgg-naive"):
        family, connectivity = name.split("-")
        unit = UnitConfig(family=family, connectivity=connectivity, pair_drop=0.2)
        torch.manual_seed(0)
        eager = SmallNet(unit).to(device)
        model = copy.deepcopy(eager)
        compiled = torch.compile(model)
        err, seconds = 0.0, time.perf_counter()
        with tf32(False), torch._inductor.config.patch(fallback_random=True):
            for step in range(3):
                x = _inputs(batch, size, device)
                outs = []
                for m in (eager, compiled):
                    torch.manual_seed(step)
                    out = m(x)
                    out.square().mean().backward()
                    outs.append(out.detach())
                grads = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (model, eager)]
                err = max(err, _max_rel(outs[1], outs[0]), _max_rel(*grads))
                eager.zero_grad(set_to_none=True), model.zero_grad(set_to_none=True)
            eager.eval(), compiled.eval()
            with torch.no_grad():
                x = _inputs(batch, size, device)
                err = max(err, _max_rel(compiled(x), eager(x)))
        seconds = time.perf_counter() - seconds
        rows.append(Row("compiled vs eager", name, f"{err:.1e} ({seconds:.0f} s with compiling)", err <= F32_TOL))
        torch._dynamo.reset()
    return rows


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def time_step(
    arch: str,
    variant: str,
    implementation: str,
    compiled: bool,
    batch: int,
    size: int,
    device: str,
    steps: int,
    width: float = 1.0,
) -> tuple[float, float, float]:
    """Median step seconds (AMP bf16, channels-last), peak GiB (CUDA; NaN elsewhere), first-step seconds."""
    family, connectivity = TIMED_VARIANTS[variant]
    stem = "cifar" if size <= 64 else "imagenet"
    torch.manual_seed(0)
    model = nsrep.create_model(
        arch, family=family, connectivity=connectivity, stem=stem, num_classes=100, width_mult=width
    )
    model = set_implementation(model, implementation).to(device, memory_format=torch.channels_last)
    trained = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = _inputs(batch, size, device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)
    cuda = device.startswith("cuda")

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = F.cross_entropy(trained(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    torch._dynamo.reset()
    return statistics.median(times), peak, first


def timing_cases(quick: bool) -> list[tuple[str, str, str, bool, int, int]]:
    """(arch, variant, implementation, compiled, batch, image size) of every timed row."""
    if quick:  # the same code paths at toy size
        return [("resnet18", "dbb-ns", "fast", False, 2, 8), ("resnet18", "dbb-ns", "fast-padded", False, 2, 8)]
    cases = []
    for batch in (64, 256):
        for variant in TIMED_VARIANTS:
            for implementation in ("fast", "fast-padded") if variant != "plain" else ("fast",):
                for compiled in (False, True):
                    cases.append(("resnet18", variant, implementation, compiled, batch, 32))
    cases += [("resnet50", variant, "fast", False, 64, 224) for variant in TIMED_VARIANTS]
    return cases


def measure(device: str, quick: bool, steps: int, budget: float, started: float) -> list[Row]:
    rows, section = [], "step time (AMP bf16, channels-last)"
    width = 0.125 if quick else 1.0
    for arch, variant, implementation, compiled, batch, size in timing_cases(quick):
        case = f"{arch} {variant} {implementation} {'compiled' if compiled else 'eager'} b{batch} {size}px"
        if time.perf_counter() - started > budget:
            rows.append(Row(section, case, f"not run: past the {budget:.0f} s budget", None))
            continue
        try:
            median, peak, first = time_step(arch, variant, implementation, compiled, batch, size, device, steps, width)
        except torch.OutOfMemoryError:
            rows.append(Row(section, case, "out of memory", None))
            torch.cuda.empty_cache()
            continue
        extra = f", first step {first:.1f} s" if compiled else ""
        memory = f", peak {peak:.2f} GiB" if not math.isnan(peak) else ""
        rows.append(Row(section, case, f"{1000 * median:.1f} ms{memory}{extra}", None))
    return rows


def run_check(device: str, quick: bool = False, budget: float = 300.0, steps: int = 5) -> tuple[list[Row], bool]:
    """Every correctness check (then the timings, within ``budget`` seconds from the start); all passed?"""
    started = time.perf_counter()
    batch, size = (2, 8) if quick else (8, 16)
    rows = []
    for check in (check_folding, check_fast_path, check_amp, check_compiled):
        rows += check(device, batch, size)
        print(f"  {check.__name__}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows += measure(device, quick, 1 if quick else steps, budget, started)
    return rows, all(row.ok is not False for row in rows)


def report(rows: list[Row], device: str) -> list[str]:
    status = {True: "ok", False: "FAILED", None: ""}
    table = markdown_table(
        ("check", "case", "result", "status"), [(r.section, r.case, r.value, status[r.ok]) for r in rows]
    )
    return [f"Machine: {describe_machine(device, torch.get_num_threads())}", "", *table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes: the same code paths in seconds")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds after which timings stop")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per timing row")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run this check on a machine with a GPU (or --device cpu --quick)")
    rows, passed = run_check(args.device, args.quick, args.budget, args.steps)
    write_report(report(rows, args.device), args.out)
    failed = [r for r in rows if r.ok is False]
    print(f"{len(failed)} correctness failure(s)" if failed else "all correctness checks passed", flush=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
