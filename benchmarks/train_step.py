"""Training-step time and peak memory of re-parameterizable variants, as ratios to plain in the same run.

    python -m benchmarks.train_step --arch resnet18 --batch-size 64 --steps 5
    python -m benchmarks.train_step --arch resnet18 resnet50 --batch-size 64 128 --device cuda
    python -m benchmarks.train_step --width 0.125 --threads 1 --classes 10 --variants plain acnet-block ...
    python -m benchmarks.train_step --compile --width 0.125 --variants plain dbb-block dbb-ns ns-ns

``--compile``: every variant eager and under ``torch.compile`` (inductor), each in its own process; the table
gives both step times, their ratio and the compile seconds (the first compiled step's time less a compiled
step's median). A compiling worker that passes ``--compile-limit`` seconds is reported as such, not waited for.

One step = forward + backward + SGD update on a CIFAR-shaped batch (3×32×32, 100 classes unless --classes).
Every variant runs in its own process (so its peak memory is its own): ``warmup`` steps, then the median of
``steps``. CPU memory is the peak resident set size above the process's size before the first step (weights,
gradients, momentum and activations at the peak); CUDA memory is ``max_memory_allocated``. CUDA runs use AMP
(bf16) and channels-last.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess

import torch
import torch.nn.functional as F

import nsrep
from benchmarks.common import describe_machine, run_worker, save_bar_chart, time_calls, write_report
from nsrep.nn.conv import set_implementation
from nsrep.report import markdown_table, ratio

# (label, family, connectivity, implementation, memory)
VARIANTS = {
    "plain": ("plain", "block", "fast", "default"),
    "acnet-block": ("acnet", "block", "fast", "default"),
    "dbb-block": ("dbb", "block", "fast", "default"),
    "ns-block": ("ns", "block", "fast", "default"),
    "acnet-ns": ("acnet", "ns", "fast", "default"),
    "convK2-block": ("convK", "block", "fast", "default"),
    "convK2-ns": ("convK", "ns", "fast", "default"),
    "acnet-ns padded": ("acnet", "ns", "fast-padded", "default"),
    "dbb-ns": ("dbb", "ns", "fast", "default"),
    "ns-ns": ("ns", "ns", "fast", "default"),
    "ns-ns padded": ("ns", "ns", "fast-padded", "default"),
    "ns-ns+ckpt": ("ns", "ns", "fast", "checkpoint"),
    "ns-ns reference": ("ns", "ns", "reference", "default"),
}


def worker(cfg: dict) -> dict:
    torch.manual_seed(0)
    device = cfg["device"]
    family, connectivity, implementation, memory = VARIANTS[cfg["variant"]]
    model = nsrep.create_model(
        cfg["arch"],
        num_classes=cfg["classes"],
        stem="cifar",
        family=family,
        connectivity=connectivity,
        memory=memory,
        width_mult=cfg["width"],
        **({"num_branches": 2} if family == "convK" else {}),
    )
    set_implementation(model, implementation).to(device)
    trained = model
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(cfg["batch_size"], 3, 32, 32, device=device)
    y = torch.randint(0, cfg["classes"], (cfg["batch_size"],), device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    if cfg.get("compile"):
        trained = torch.compile(model)

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(trained(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first = time_calls(step, repeats=1, warmup=0, device=device)[0]  # compiles, when compiling
    times = time_calls(step, repeats=cfg["steps"], warmup=cfg["warmup"], device=device)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20  # KiB -> GiB
    median = statistics.median(times)
    return {"median_s": median, "times": times, "peak_gib": peak, "first_s": first, "compile_s": first - median}


def compile_report(args: argparse.Namespace, arch: str, batch: int) -> list[str]:
    """Eager against compiled step time, and compile seconds, of every variant: one table."""
    rows = []
    for variant in args.variants:
        cfg = {"arch": arch, "batch_size": batch, "variant": variant, "device": args.device}
        cfg.update(steps=args.steps, warmup=args.warmup, width=args.width, classes=args.classes)
        eager = run_worker("benchmarks.train_step", cfg, args.threads)
        try:
            compiled = run_worker("benchmarks.train_step", {**cfg, "compile": True}, args.threads, args.compile_limit)
        except subprocess.TimeoutExpired:
            rows.append((variant, f"{eager['median_s']:.3f}", "-", "-", f"> {args.compile_limit:.0f} (stopped)"))
            print(f"  {arch} b{batch} {variant}: compiling passed {args.compile_limit:.0f} s, stopped", flush=True)
            continue
        rows.append(
            (
                variant,
                f"{eager['median_s']:.3f}",
                f"{compiled['median_s']:.3f}",
                ratio(compiled["median_s"], eager["median_s"]),
                f"{compiled['compile_s']:.0f}",
            )
        )
        print(f"  {arch} b{batch} {variant}: eager {eager['median_s']:.3f} s, compiled {compiled['median_s']:.3f} s, "
              f"compile {compiled['compile_s']:.0f} s", flush=True)  # fmt: skip
    return [
        f"### {arch} (width {args.width}), batch {batch}, CIFAR shape, {args.device}: eager vs torch.compile "
        f"(inductor; median of {args.steps} steps after {args.warmup} warm-up)",
        "",
        *markdown_table(("variant", "eager step (s)", "compiled step (s)", "compiled vs eager", "compile (s)"), rows),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--arch", nargs="+", default=["resnet18"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[64])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0, help="width_mult of every variant")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument("--png", default=None, help="write a bar chart of the ratios here")
    parser.add_argument("--compile", action="store_true", help="eager against torch.compile (inductor) per variant")
    parser.add_argument("--compile-limit", type=float, default=1200, help="seconds a compiling worker may run")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    lines = [f"Machine: {describe_machine(args.device, args.threads)}", ""]
    if args.compile:
        for arch in args.arch:
            for batch in args.batch_size:
                lines += compile_report(args, arch, batch)
        write_report(lines, args.out)
        return
    chart_labels, time_ratio, mem_ratio = [], [], []
    for arch in args.arch:
        for batch in args.batch_size:
            results, failed = {}, {}
            for variant in args.variants:
                cfg = {"arch": arch, "batch_size": batch, "variant": variant, "device": args.device}
                cfg.update(steps=args.steps, warmup=args.warmup, width=args.width, classes=args.classes)
                try:
                    results[variant] = run_worker("benchmarks.train_step", cfg, args.threads)
                except RuntimeError as err:  # e.g. killed for memory: report it, keep the other variants
                    failed[variant] = str(err).strip().splitlines()[-1][:120]
                    print(f"  {arch} b{batch} {variant}: FAILED ({failed[variant]})", flush=True)
                    continue
                r = results[variant]
                print(f"  {arch} b{batch} {variant}: {r['median_s']:.3f} s, {r['peak_gib']:.2f} GiB", flush=True)
            plain = results.get("plain")
            reference = results.get("ns-ns reference")
            rows = [(variant, f"failed: {why}", *["-"] * 6) for variant, why in failed.items()]
            for variant, r in results.items():
                rows.append(
                    (
                        variant,
                        f"{r['median_s']:.3f}",
                        f"{min(r['times']):.3f}-{max(r['times']):.3f}",
                        ratio(r["median_s"], plain and plain["median_s"]),
                        ratio(r["median_s"], reference and reference["median_s"]),
                        f"{r['peak_gib']:.2f}",
                        ratio(r["peak_gib"], plain and plain["peak_gib"]),
                        ratio(r["peak_gib"], reference and reference["peak_gib"]),
                    )
                )
                if reference:
                    chart_labels.append(f"{arch} b{batch}\n{variant}")
                    time_ratio.append(r["median_s"] / reference["median_s"])
                    mem_ratio.append(r["peak_gib"] / reference["peak_gib"])
            lines += [
                f"### {arch} (width {args.width}), batch {batch}, CIFAR shape, {args.device} "
                f"(median of {args.steps} steps after {args.warmup} warm-up)",
                "",
            ]
            lines += markdown_table(
                ("variant", "step (s)", "range (s)", "vs plain", "vs reference", "peak (GiB)", "mem vs plain",
                 "mem vs reference"),
                rows,
            )  # fmt: skip
            lines.append("")
    write_report(lines, args.out)
    if args.png and chart_labels:
        save_bar_chart(
            args.png,
            "Training step vs the per-branch reference path (ns-family NS, same run)",
            chart_labels,
            {"time ratio": time_ratio, "peak memory ratio": mem_ratio},
            "ratio to reference",
            ref_line=1.0,
        )


if __name__ == "__main__":
    main()
