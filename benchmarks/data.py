"""What the input side costs per batch, stage by stage, against the training step it feeds.

    python -m benchmarks.data --data data/train --out docs/benchmarks/data.md --png docs/benchmarks/data.png

On CIFAR-10's JPEG folder (``tar -xzf ../shared/data/cifar10-jpg-train.tar.gz -C data``), batch 64, each
stage is timed alone in this process (median of ``--repeats`` batches after warm-up): JPEG decoding with
Pillow (what DataLoader workers did every epoch), indexing the decoded-once cache, collation, kornia's
pad-crop + flip, AutoAugment per chunk of 8 images (one sub-policy per chunk) and on the whole batch (one
sub-policy per batch), normalisation, and one training step (forward, backward, SGD) of plain ResNet-18 at
width 0.25. The pipelines at the end add up their stages; "end to end" pulls batches through the real
DataLoader and transform as the trainer does. Every number is a ratio to the step in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

import nsrep
from benchmarks.common import describe_machine, save_bar_chart, write_report
from nsrep.data.augment import build_transform
from nsrep.data.datasets import load_data
from nsrep.report import markdown_table


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _end_to_end_ms(loader: DataLoader, transform: Callable, batches: int) -> float:
    """Wall ms per batch of pulling ``batches`` batches through ``loader`` and ``transform`` (workers started)."""
    it = iter(loader)
    transform(next(it)[0])  # start the workers, warm the transform
    start = time.perf_counter()
    for _ in range(batches):
        transform(next(it)[0])
    return 1e3 * (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/train", help="the CIFAR-10 JPEG class folders")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the JPEG pipeline")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out")
    parser.add_argument("--png")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(
            f"{args.data} is not a folder; extract the images first: "
            "mkdir -p data && tar -xzf ../shared/data/cifar10-jpg-train.tar.gz -C data"
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch_size

    jpeg = load_data(args.data, image_size=32, train_item_size=32, cache=False)
    cached = load_data(args.data, image_size=32, train_item_size=32)
    n = len(cached.train)
    rng = torch.Generator().manual_seed(0)

    def indices() -> list[int]:
        return torch.randint(0, n, (b,), generator=rng).tolist()

    pad_flip = build_transform("pad-crop", train=True, image_size=32, mean=jpeg.mean, std=jpeg.std)
    chunked = build_transform(
        "pad-crop", train=True, image_size=32, mean=jpeg.mean, std=jpeg.std, autoaugment="cifar10"
    )
    from kornia.augmentation.auto import AutoAugment

    whole_batch_aa = AutoAugment("cifar10")
    batch = default_collate([cached.train[i] for i in indices()])[0]
    floats = batch.float().div(255)
    mean, std = pad_flip.mean, pad_flip.std

    model = nsrep.create_model("resnet18", num_classes=10, stem="cifar", width_mult=args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x, y = pad_flip(batch), torch.randint(0, 10, (b,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    stages = {
        "decode (Pillow, 64 JPEGs)": lambda: [jpeg.train[i] for i in indices()],
        "cache index (decoded once)": lambda: [cached.train[i] for i in indices()],
        "collate": lambda items=[cached.train[i] for i in range(b)]: default_collate(items),
        "uint8 -> float": lambda: batch.float().div_(255),
        "pad-crop + flip (kornia)": lambda: pad_flip.augment(floats),
        "AutoAugment, per chunk of 8": lambda: chunked.augment[-1](floats),
        "AutoAugment, whole batch": lambda: whole_batch_aa(floats),
        "normalise": lambda: (floats - mean) / std,
    }
    ms = {name: _median_ms(fn, args.repeats) for name, fn in stages.items()}
    step_ms = _median_ms(step, args.repeats)

    before = ["decode (Pillow, 64 JPEGs)", "collate", "uint8 -> float", "pad-crop + flip (kornia)"]
    before += ["AutoAugment, per chunk of 8", "normalise"]
    after = ["cache index (decoded once)", "collate", "uint8 -> float", "pad-crop + flip (kornia)", "normalise"]
    pipelines = {
        "before: JPEG decode + pad-crop/flip + chunked AutoAugment (cifar100 recipe)": before,
        "after, with AutoAugment per chunk": [s if s != "decode (Pillow, 64 JPEGs)" else after[0] for s in before],
        "after, with AutoAugment per batch": [*after[:4], "AutoAugment, whole batch", "normalise"],
        "after: cache + pad-crop/flip (cifar10-cpu recipe)": after,
    }
    sums = {name: sum(ms[s] for s in parts) for name, parts in pipelines.items()}

    jpeg_loader = DataLoader(jpeg.train, batch_size=b, shuffle=True, num_workers=args.workers, drop_last=True)
    cache_loader = DataLoader(cached.train, batch_size=b, shuffle=True, num_workers=0, drop_last=True)
    batches = max(args.repeats, 10)
    e2e = {
        f"before, end to end ({args.workers} workers decoding)": _end_to_end_ms(jpeg_loader, chunked, batches),
        "after, end to end (cache, no workers)": _end_to_end_ms(cache_loader, pad_flip, batches),
    }

    lines = [
        "## Input side per batch vs one training step",
        "",
        f"{describe_machine('cpu', args.threads)}; batch {b}, CIFAR-10 JPEGs 32x32 ({n} cached train images); "
        f"step = plain ResNet-18 width {args.width}, forward + backward + SGD: **{step_ms:.1f} ms**. Medians of "
        f"{args.repeats} batches.",
        "",
    ]
    rows = [(name, f"{value:.2f}", f"{100 * value / step_ms:.1f}%") for name, value in ms.items()]
    lines += markdown_table(("stage", "ms / batch", "of the step"), rows)
    lines += ["", "Pipelines (sum of their stages) and the real loader + transform:", ""]
    rows = [(name, f"{value:.2f}", f"{100 * value / step_ms:.1f}%") for name, value in {**sums, **e2e}.items()]
    lines += markdown_table(("input side", "ms / batch", "of the step"), rows)
    write_report(lines, args.out)
    if args.png:
        labels = [name.split(":")[0].replace("AutoAugment", "AA") for name in {**sums, **e2e}]
        save_bar_chart(
            args.png,
            f"Input side per batch of {b} as a share of the plain ResNet-18 x{args.width} step",
            labels,
            {"% of the training step": [100 * v / step_ms for v in {**sums, **e2e}.values()]},
            "% of one training step",
            ref_line=10.0,
        )


if __name__ == "__main__":
    main()
