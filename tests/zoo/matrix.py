"""The zoo matrix: popular timm and torchvision CNNs through ``nsrep.convert``, trained, folded and loaded back.

Run in the zoo environment (``make test-zoo``): ``python tests/zoo/matrix.py [--out docs/zoo.md]``. Each
architecture, randomly initialised (no downloads) in float64, is converted with ``dbb``/``ns`` and with
``acnet``/``block``; each conversion takes two SGD steps (so BatchNorm statistics are real), then the eval-mode
training form (every branch unfolded) is compared with its ``fold_into`` copy of the user's class, whose state
dict must load strictly into a fresh instance; with ``acnet``/``block``, ``init="preserve"`` must start as the
same function. A conversion ``convert`` refuses
is a result too (its message names the op): the expected ones are listed in ``REFUSED`` with the reason, and
anything else that fails makes the exit status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import nsrep
from nsrep.fileio import atomic_write
from nsrep.nn.conv import set_implementation

NUM_CLASSES = 5
SIZE = 32
BATCH = 2
CONFIGS = (("dbb", "ns"), ("acnet", "block"))
F64_TOL = 1e-10

# Small variants (float64 and units with several branches multiply the memory of a model): ~40 architectures in
# ten minutes on two cores.
TORCHVISION = [
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "mnasnet0_5",
    "squeezenet1_1",
    "densenet121",
    "googlenet",
]
TIMM = [
    "resnet10t",
    "seresnet18",
    "resnest14d",
    "efficientnet_b0",
    "tf_efficientnet_b0",
    "mixnet_s",
    "mobilenetv3_small_050",
    "mobilenetv4_conv_small",
    "lcnet_050",
    "tinynet_e",
    "semnasnet_050",
    "fbnetc_100",
    "rexnet_100",
    "ghostnet_100",
    "regnetx_002",
    "regnety_002",
    "repvgg_a0",
    "mobileone_s0",
    "repvit_m0_9",
    "fastvit_t8",
    "cs3darknet_s",
    "ese_vovnet19b_dw",
    "dla46_c",
    "dpn48b",
    "hrnet_w18_small",
    "densenet121",
    "hgnetv2_b0",
    "gernet_s",
    "nf_regnet_b0",
    "convnext_atto",
    "edgenext_xx_small",
]

# What convert still refuses, and why (the matrix fails when one of these converts, or anything else fails).
REFUSED: dict[str, str] = {
    "nf_regnet_b0": "weight-standardised convs (ScaledStdConv2d, a Conv2d subclass with its own forward) are not "
    "converted, and the SE gate then feeds the next block's SE",
    "edgenext_xx_small": "cross-covariance attention (unbind, softmax of q.k) is not linear in the streams: "
    "refused by design",
}


def build(source: str, name: str) -> nn.Module:
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES, **kwargs)


@dataclass
class Row:
    model: str
    config: str
    units: str = ""
    plain: int = 0
    fold_error: float = math.nan
    preserve_error: float = math.nan
    loss: float = math.nan
    seconds: float = 0.0
    result: str = ""


def _inputs(seed: int) -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _train(model: nn.Module, steps: int = 2, calibrate: int = 2) -> float:
    """``steps`` SGD steps, then BatchNorm statistics re-estimated on ``calibrate`` batches (cumulative average,
    as after a real run: after two momentum updates a random deep net's eval output reaches 1e72 in mixnet_s and
    overflows once converted, which would measure the conditioning, not the fold)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.arange(BATCH) % NUM_CLASSES
    model.train()
    for step in range(steps):
        loss = F.cross_entropy(_first(model(_inputs(step))), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        for batch in range(calibrate):
            model(_inputs(100 + batch))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return loss.item()


def _first(out):
    return out[0] if isinstance(out, tuple | list) else out


def check(make: Callable[[], nn.Module], family: str, connectivity: str, row: Row, preserve: bool) -> Row:
    """Convert, train, fold into the user's class, load strictly into a fresh instance; with ``preserve``, also
    ``init="preserve"`` equivalence."""
    start = time.perf_counter()
    original = make().double().eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = nsrep.convert(original, family=family, connectivity=connectivity, biasless_convs="plain")
    except ValueError as err:
        row.result = "refused: " + str(err).split(": ", 1)[-1][:160]
        row.seconds = time.perf_counter() - start
        return row
    report = converted.nsrep_conversion
    convs = sum(isinstance(m, nn.Conv2d) for m in original.modules())
    row.units, row.plain = f"{len(report.units)}/{convs}", len(report.plain_convs)
    row.loss = _train(converted)
    folded = nsrep.fold_into(original, converted)
    x = _inputs(99)
    # every branch run unfolded (the fast path's eval already applies folded kernels: comparing it alone is circular)
    row.fold_error = nsrep.verify_equivalence(set_implementation(converted, "reference"), folded, x).max_rel_error
    del converted
    make().double().load_state_dict(folded.state_dict(), strict=True)
    if preserve:
        preserved = nsrep.convert(
            original, family=family, connectivity=connectivity, init="preserve", biasless_convs="plain"
        )
        row.preserve_error = nsrep.verify_equivalence(original, preserved, x).max_rel_error
    errors = [row.fold_error] + ([row.preserve_error] if preserve else [])
    ok = max(errors) <= F64_TOL and math.isfinite(row.loss)
    row.result = "ok" if ok else "FAILED: error above 1e-10 or loss not finite"
    row.seconds = time.perf_counter() - start
    return row


def run_model(model: tuple[str, str]) -> list[Row]:
    """Both configurations of one architecture (one worker process, one torch thread)."""
    torch.set_num_threads(1)
    source, name = model
    rows = []
    for i, (family, connectivity) in enumerate(CONFIGS):
        torch.manual_seed(0)
        row = Row(f"{source}/{name}", f"{family}/{connectivity}")
        try:
            rows.append(check(lambda s=source, n=name: build(s, n), family, connectivity, row, preserve=i == 1))
        except Exception as err:  # any crash is a result of the matrix, reported in its row
            row.result = f"FAILED: {type(err).__name__}: {str(err)[:160]}"
            rows.append(row)
    return rows


def run(models: list[tuple[str, str]], jobs: int) -> list[Row]:
    with ProcessPoolExecutor(jobs) as pool:
        results = list(tqdm(pool.map(run_model, models), total=len(models), desc="zoo", unit="model"))
    return [row for rows in results for row in rows]


def table(rows: list[Row]) -> str:
    head = "| model | config | units / convs | kept plain | fold error (f64) | preserve error | loss | s | result |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.config} | {r.units} | {r.plain} | {r.fold_error:.1e} | {r.preserve_error:.1e} | "
            f"{r.loss:.3f} | {r.seconds:.1f} | {r.result.replace('|', '/')} |"
        )
    return "\n".join(lines)


def unexpected(rows: list[Row]) -> list[str]:
    bad = []
    for r in rows:
        name = r.model.split("/", 1)[1]
        refused = r.result.startswith("refused")
        if (r.model in REFUSED or name in REFUSED) != refused or r.result.startswith("FAILED"):
            bad.append(f"{r.model} {r.config}: {r.result}")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here, e.g. docs/zoo.md")
    parser.add_argument("--only", nargs="*", help="source/name of the models to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    args = parser.parse_args(argv)
    models = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
    if args.only:
        models = [m for m in models if "/".join(m) in args.only]
    start = time.perf_counter()
    rows = run(models, args.jobs)
    text = table(rows)
    converted = sorted({r.model for r in rows} - {r.model for r in rows if r.result != "ok"})
    summary = (
        f"{len(converted)} of {len(models)} architectures convert and fold exactly in both configurations "
        f"(float64, {BATCH}x3x{SIZE}x{SIZE}); {time.perf_counter() - start:.0f} s in all."
    )
    print(text)
    print(summary)
    if args.out:
        atomic_write(args.out, lambda f: f.write((PAGE.format(table=text, summary=summary)).encode()))
    bad = unexpected(rows)
    for line in bad:
        print("unexpected:", line, file=sys.stderr)
    return 1 if bad else 0


PAGE = """# The zoo matrix

`nsrep.convert` on timm's and torchvision's own models, written by `make test-zoo`
(`python tests/zoo/matrix.py --out docs/zoo.md` in the zoo environment). Random initialisation, float64,
two SGD steps before folding. *units / convs*: convs made units of all the model's `Conv2d`s; *kept plain*:
convs left plain (`biasless_convs="plain"`, even kernels; `Conv2d` subclasses with their own forward, such as
`Conv2dSame`, are in neither column: convert leaves them as they are, with a warning); *fold error*: the
eval-mode training form (every branch unfolded) vs `fold_into` (the user's class), relative; *preserve
error*: `init="preserve"` vs the original (checked with `acnet`/`block`). Every `ok` row's folded state dict
loaded strictly into a fresh instance of the model's class; *s*: seconds for the row (one torch thread, two
models at a time).

{summary}

{table}
"""

if __name__ == "__main__":
    sys.exit(main())
