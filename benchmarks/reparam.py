"""Time to ``reparameterize`` each architecture (full width), per family, median of several runs.

python -m benchmarks.reparam --arch resnet18 resnet50 resnext50_32x4d mobilenet_v1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import nsrep
from benchmarks.common import describe_machine, write_report
from nsrep.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=nsrep.list_models())
    parser.add_argument("--families", nargs="+", default=["acnet", "dbb", "repvgg", "mobileone", "ns"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for arch in args.arch:
        cells = [arch]
        for family in args.families:
            model = nsrep.create_model(arch, family=family, connectivity="ns", num_classes=100)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                nsrep.reparameterize(model)
                times.append(time.perf_counter() - start)
            cells.append(f"{statistics.median(times):.2f}")
        rows.append(cells)
    lines = [f"Machine: {describe_machine('cpu', args.threads)}", "", "Seconds to reparameterize (median):", ""]
    lines += markdown_table(("arch", *args.families), rows)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
