"""Deployed inference latency and throughput against the plain fused network and the unfolded training form.

    python -m benchmarks.inference --arch resnet18 resnet50 mobilenet_v1

The deployed network is ``reparameterize`` of an NS training form (family ``ns``, connectivity ``ns``); it must
cost what ``create_model(arch, deploy=True)`` costs (ratio 1.00 within noise). The unfolded training form is
timed in eval mode with both unit implementations. Models are timed in interleaved rounds (A, B, C, A, B,
C, ...) so drift in machine load hits all of them alike; each cell is the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import nsrep
from benchmarks.common import describe_machine, save_bar_chart, time_calls, write_report
from nsrep.inspection import count_parameters
from nsrep.nn.conv import set_implementation
from nsrep.report import markdown_table, ratio


def build_forms(arch: str, family: str, device: str, deployed_only: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    options = {"num_classes": 100, "stem": "cifar"}
    train = nsrep.create_model(arch, family=family, connectivity="ns", **options).to(device).eval()
    forms = {
        "plain fused": nsrep.create_model(arch, deploy=True, **options).to(device).eval(),
        "deployed (NS folded)": nsrep.reparameterize(train),
    }
    if not deployed_only:
        reference = nsrep.create_model(arch, family=family, connectivity="ns", **options)
        set_implementation(reference, "reference").load_state_dict(train.state_dict())
        forms["training form, eval (fast)"] = train
        forms["training form, eval (reference)"] = reference.to(device).eval()
    return forms


@torch.inference_mode()
def measure(forms: dict[str, torch.nn.Module], batch: int, rounds: int, calls: int, device: str) -> dict[str, float]:
    x = torch.randn(batch, 3, 32, 32, device=device)
    per_form: dict[str, list[float]] = {name: [] for name in forms}
    for model in forms.values():  # warm-up
        time_calls(lambda m=model: m(x), repeats=1, warmup=2, device=device)
    for _ in range(rounds):
        for name, model in forms.items():
            times = time_calls(lambda m=model: m(x), repeats=calls, warmup=0, device=device)
            per_form[name].append(statistics.median(times))
    return {name: statistics.median(ts) for name, ts in per_form.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet50", "mobilenet_v1"])
    parser.add_argument("--family", default="ns")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--deployed-only", action="store_true", help="time only plain fused vs deployed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = [f"Machine: {describe_machine(args.device, args.threads)}", ""]
    labels, latency_ratio, throughput_ratio = [], [], []
    for arch in args.arch:
        forms = build_forms(arch, args.family, args.device, args.deployed_only)
        params = {name: count_parameters(m) for name, m in forms.items()}
        lat = measure(forms, 1, args.rounds, args.calls, args.device)
        thr_t = measure(forms, args.throughput_batch, args.rounds, args.calls, args.device)
        plain = "plain fused"
        rows = []
        for name in forms:
            rows.append(
                (
                    name,
                    f"{params[name]:,}",
                    f"{lat[name] * 1e3:.2f}",
                    ratio(lat[name], lat[plain]),
                    f"{args.throughput_batch / thr_t[name]:.0f}",
                    ratio(thr_t[name], thr_t[plain]),
                )
            )
        labels.append(arch)
        latency_ratio.append(lat["deployed (NS folded)"] / lat[plain])
        throughput_ratio.append(thr_t["deployed (NS folded)"] / thr_t[plain])
        title = f"### {arch} (family {args.family}, ns), 3x32x32, {args.device}"
        lines += [f"{title}; median of {args.rounds} interleaved rounds", ""]
        lines += markdown_table(
            ("form", "params", "latency b=1 (ms)", "vs plain", f"throughput b={args.throughput_batch} (img/s)",
             "time vs plain"),
            rows,
        )  # fmt: skip
        lines.append("")
    write_report(lines, args.out)
    if args.png:
        save_bar_chart(
            args.png,
            "Deployed NS network vs plain fused network (time ratio, same run)",
            labels,
            {"latency b=1": latency_ratio, f"batch {args.throughput_batch}": throughput_ratio},
            "time ratio to plain fused",
            ref_line=1.0,
        )


if __name__ == "__main__":
    main()
