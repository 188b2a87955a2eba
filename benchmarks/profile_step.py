"""Where an eager training step's time goes, by operator kind: what ``torch.compile`` can and cannot speed up.

    python -m benchmarks.profile_step --width 0.125 --threads 1 --variants plain dbb-block dbb-ns ns-ns

Self CPU time of two profiled steps (``torch.profiler``, after one warm-up step), split into convolutions
(forward and backward: inductor calls the same oneDNN kernels on a CPU), matrix products, BatchNorm and the
rest (element-wise and copies: what inductor can fuse).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import nsrep
from benchmarks.common import describe_machine, write_report
from benchmarks.train_step import VARIANTS
from nsrep.nn.conv import set_implementation
from nsrep.report import markdown_table

KINDS = {
    "convolution": ("convolution", "conv2d", "conv_depthwise", "slow_conv"),
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm"),
    "batch norm": ("batch_norm",),
}


def profile_variant(variant: str, arch: str, width: float, batch: int, classes: int) -> dict[str, float]:
    """Seconds of self CPU time per step, and the share of each operator kind."""
    family, connectivity, implementation, memory = VARIANTS[variant]
    torch.manual_seed(0)
    model = nsrep.create_model(
        arch,
        family=family,
        connectivity=connectivity,
        memory=memory,
        width_mult=width,
        num_classes=classes,
        stem="cifar",
    )
    set_implementation(model, implementation)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, classes, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {
        kind: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys)) / total
        for kind, keys in KINDS.items()
    }
    return {"step_s": total / 2 / 1e6, **shares, "rest": 1 - sum(shares.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--variants", nargs="+", default=["plain", "dbb-block", "dbb-ns", "ns-ns"], choices=VARIANTS)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for variant in args.variants:
        r = profile_variant(variant, args.arch, args.width, args.batch_size, args.classes)
        shares = [f"{100 * r[kind]:.0f}%" for kind in (*KINDS, "rest")]
        rows.append((variant, f"{r['step_s']:.2f}", *shares))
    header = ("variant", "self CPU s/step", "convolution", "matmul", "batch norm", "rest (fusable)")
    lines = [
        f"Machine: {describe_machine('cpu', args.threads)}",
        "",
        f"### {args.arch} (width {args.width}), batch {args.batch_size}: eager step by operator kind",
        "",
        *markdown_table(header, rows),
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
