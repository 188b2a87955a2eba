"""The ``nsrep`` command. Every subcommand is a typed, documented function of this module (STYLE take 13).

A subcommand is registered in :func:`build_parser` with arguments whose ``dest`` names are the function's
parameters; :func:`main` parses, then calls the function with them. User errors (``ValueError``: an unknown
architecture, family, connectivity, ...) print ``nsrep: error: ...`` and exit with status 2, no traceback.
Commands: ``info``, ``train``, ``eval``, ``deploy``, ``export``, ``quantize``, ``demo``, ``probe``, ``features``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nsrep.info import format_info, model_info
from nsrep.models import list_models
from nsrep.models.heads import HEADS, MLP_HEADS, REP_HEADS
from nsrep.nn.connectivity import CONNECTIVITIES
from nsrep.nn.families import ALL_FAMILIES, DEFAULT_NUM_BRANCHES
from nsrep.nn.unit import UnitConfig
from nsrep.probe import DEFAULT_HEADS, EXAMPLE_DATASETS, SKLEARN_DATASETS, ProbeConfig
from nsrep.report import forms_table
from nsrep.train.config import list_recipes

__all__ = [
    "analyze",
    "build_parser",
    "demo",
    "deploy",
    "evaluate",
    "export",
    "features",
    "info",
    "main",
    "probe",
    "quantize",
    "train",
]

PROG = "nsrep"
EXIT_USAGE = 2  # argparse's status for a bad command line; user-input errors reuse it


# ----------------------------------------------------------------------------------------------- commands


def info(
    arch: str,
    *,
    family: str = "plain",
    connectivity: str = "block",
    input_size: int = 32,
    stem: str = "cifar",
    num_classes: int = 100,
    num_branches: int | None = None,
    width_mult: float = 1.0,
    stem_unit: bool = True,
) -> None:
    """Print parameters, MACs, streams per stage and topology counts of a variant and its deployed form."""
    report = model_info(
        arch,
        family=family,
        connectivity=connectivity,
        input_size=input_size,
        stem=stem,
        num_classes=num_classes,
        num_branches=num_branches,
        width_mult=width_mult,
        stem_unit=stem_unit,
    )
    print(format_info(report))


def train(
    *,
    recipe: str | None = None,
    data: str | None = None,
    arch: str | None = None,
    family: str | None = None,
    connectivity: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    out: str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    overrides: Sequence[str] = (),
) -> None:
    """Train a model with a recipe (YAML) plus overrides, then fold it and save the deployed form.

    ``--resume`` continues the run in ``--out`` with its stored configuration (options given must agree).
    Under ``torchrun --nproc_per_node N`` every rank runs this; rank 0 writes the run folder.
    """
    from nsrep.train.config import TrainConfig, apply_overrides, load_recipe, parse_override
    from nsrep.train.trainer import stored_config
    from nsrep.train.trainer import train as run_training

    if resume and recipe is None and out is not None:
        config = stored_config(out)
    else:
        recipe = recipe or "demo"
        config = TrainConfig.from_dict(load_recipe(recipe), source=f"recipe {recipe!r}")
    flags = {"data": data, "arch": arch, "family": family, "connectivity": connectivity}
    flags |= {"epochs": epochs, "batch_size": batch_size}
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None}, source="option")
    config = apply_overrides(config, dict(parse_override(o) for o in overrides), source="--set")
    result = run_training(config, out, resume=resume, stop_after=stop_after)
    if result.finished and int(os.environ.get("RANK", "0")) == 0:
        forms = [("training", result.train_form, result.train_params)]
        print(forms_table([*forms, ("deployed", result.deployed_form, result.deploy_params)]))
        print(f"max relative logit difference (deployed vs training form): {result.max_rel_logit_diff:.2e}")
        if out is not None:
            print(f"run folder: {out} (deployed model in {Path(out) / 'deploy'})")


def evaluate(checkpoint: str, *, data: str | None = None, batch_size: int = 512, device: str = "auto") -> None:
    """Evaluate a training checkpoint before and after folding (same batches), or a deploy folder."""
    from nsrep.train.runs import evaluate_path

    report = evaluate_path(checkpoint, data, batch_size=batch_size, device=device)
    forms = [] if report.train_form is None else [("training", report.train_form, report.train_params)]
    print(forms_table([*forms, ("deployed", report.deployed_form, report.deploy_params)]))
    if report.max_rel_logit_diff is not None:
        print(f"max relative logit difference (deployed vs training form): {report.max_rel_logit_diff:.2e}")


def deploy(checkpoint: str, *, out: str) -> None:
    """Fold a training checkpoint into the plain network; save safetensors weights and config.json in OUT."""
    from nsrep.train.runs import deploy_checkpoint

    folder, equivalence = deploy_checkpoint(checkpoint, out)
    print(f"deployed model written to {folder}; vs the unfolded branches: {equivalence}")


def export(model_dir: str, *, onnx: bool = False, torchscript: bool = False) -> None:
    """Export a deploy folder to ONNX (checked with onnxruntime) and/or TorchScript."""
    from nsrep.export import export_onnx, export_torchscript

    if not (onnx or torchscript):
        raise ValueError("nothing to export: pass --onnx and/or --torchscript")
    if onnx:
        path, error = export_onnx(model_dir)
        print(f"ONNX: {path} (onnxruntime vs PyTorch: max rel error {error:.2e})")
    if torchscript:
        path, error = export_torchscript(model_dir)
        print(f"TorchScript: {path} (vs eager: max rel error {error:.2e})")


def quantize(
    model_dir: str,
    *,
    out: str,
    calib: int = 512,
    method: str = "minmax",
    keep_float: int = 2,
    data: str | None = None,
    eval_images: int | None = None,
    threads: int = 1,
    no_latency: bool = False,
) -> None:
    """INT8 post-training quantization of a deploy folder with ONNX Runtime; accuracy, per-layer SQNR, latency.

    Writes model.fp32.onnx, model.int8.onnx (and one keeping the worst layers in float), report.md/json,
    layers.csv and quantization.png to OUT, a new folder (see docs/quantization.md).
    """
    from nsrep.quantize import format_report, quantize_deployed

    report = quantize_deployed(
        model_dir,
        out,
        calib=calib,
        method=method,
        keep_float=keep_float,
        data=data,
        eval_images=eval_images,
        threads=threads,
        latency_runs={} if no_latency else None,
    )
    print(format_report(report))
    print(f"written: {out}")


def demo(*, out: str = "runs/demo", epochs: int | None = None, fresh: bool = False) -> None:
    """Train the plain baseline, block-level DBB and NS on the bundled digits; print a table, plot curves."""
    from nsrep.train.demo import CURVES_FILE, format_demo_table, run_demo

    overrides = {"epochs": epochs} if epochs is not None else {}
    rows = run_demo(out, overrides=overrides, fresh=fresh)
    print(format_demo_table(rows))
    print(f"learning curves: {Path(out) / CURVES_FILE}")


def sweep(spec: str, *, out: str | None = None, shard: str | None = None, max_runs: int | None = None) -> None:
    """Run a sweep spec (grid x methods x seeds), skipping finished runs; collect results.csv."""
    from nsrep.experiments import load_spec, parse_shard, run_sweep

    out = out or str(Path("runs") / "sweeps" / load_spec(spec).name)
    status = run_sweep(spec, out, shard=parse_shard(shard), max_runs=max_runs)
    print(
        f"sweep folder {out}: trained {len(status.trained)}, skipped {len(status.skipped)} finished, "
        f"{len(status.remaining)} left for later; results in {status.results}"
    )


def report(sweep_dir: str, *, reference: Sequence[str] = ()) -> None:
    """Tables (mean ± std over seeds, paired differences with 95% CIs, training cost) and plots of a sweep."""
    from nsrep.experiments import build_report
    from nsrep.train.config import parse_override

    ref = dict(parse_override(r) for r in reference) if reference else None
    result = build_report(sweep_dir, reference=ref)
    print(result.markdown)
    print(f"written: {', '.join(str(p) for p in result.files)}")


def analyze(
    checkpoints: Sequence[str],
    *,
    data: str | None = None,
    out: str = "analysis",
    unit: str | None = None,
    max_images: int = 512,
    batch_size: int = 128,
) -> None:
    """Feature similarity, kernel pictures, block drop and topology counts of trained checkpoints (PNG + CSV)."""
    from nsrep.analysis import analyze as run_analysis

    report = run_analysis(checkpoints, out, data=data, unit=unit, max_images=max_images, batch_size=batch_size)
    print(report.summary)
    print(f"figures and tables: {', '.join(str(p) for p in report.files)}")


def probe(
    files: Sequence[str] = (),
    *,
    example: bool = False,
    heads: str = ",".join(DEFAULT_HEADS),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = ProbeConfig.epochs,
    batch_size: int = ProbeConfig.batch_size,
    lr: float = ProbeConfig.lr,
    weight_decay: float = ProbeConfig.weight_decay,
    num_branches: int | None = None,
    expansion: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    out: str | None = None,
) -> None:
    """Train linear / MLP / NS-MLP heads on frozen features with several seeds; print a table like Table 4.

    FILES are feature files (.npz: train_x, train_y, test_x, test_y); ``--example`` adds the embedded example
    (scikit-learn's bundled digits pixels and breast-cancer measurements, no download). Every head gets the
    same budget; cells are the deployed (folded) heads' test top-1, mean ± std over the seeds.
    ``--threads 1`` is fastest for small features on a busy CPU (intra-op threads only wait for each other).
    """
    import torch

    from nsrep.probe import format_probe_table, probe_notes, run_probe, sklearn_features, write_probe_outputs

    datasets: list[Any] = [sklearn_features(name) for name in EXAMPLE_DATASETS] if example else []
    datasets += list(files)
    if not datasets:
        raise ValueError("no features to probe: give .npz feature files and/or --example")
    head_names = tuple(h.strip() for h in heads.split(",") if h.strip())
    options: dict[str, dict[str, Any]] = {}
    for head in head_names:
        if head in MLP_HEADS and expansion is not None:
            options.setdefault(head, {})["expansion"] = expansion
        if head in REP_HEADS and num_branches is not None:
            options.setdefault(head, {})["num_branches"] = num_branches
    config = ProbeConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    results = run_probe(datasets, head_names, tuple(seeds), config, head_options=options, device=device)
    print(format_probe_table(results))
    print()
    print("\n".join(probe_notes(results)))
    if out is not None:
        written = write_probe_outputs(results, out)
        print(f"outputs: {', '.join(str(p) for p in written.values())}")


def features(
    *,
    out: str,
    encoder: str | None = None,
    data: str | None = None,
    sklearn: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> None:
    """Write a feature file (.npz) for ``nsrep probe``: an encoder's features of image data, or a scikit-learn set.

    ``--encoder`` is a TorchScript file, an ONNX file or ``module:function`` (called with no arguments, it
    returns the encoder); ``--data`` anything ``nsrep train --data`` takes. Images get the data set's eval
    transform; the encoder's outputs are flattened to (N, D) float32.
    """
    from nsrep.probe import extract_features, load_encoder, resolve_device, save_features, sklearn_features

    if sklearn is not None:
        if encoder is not None or data is not None or image_size is not None:
            raise ValueError("--sklearn writes a bundled data set as it is; drop --encoder, --data and --image-size")
        result = sklearn_features(sklearn)
    else:
        if encoder is None or data is None:
            raise ValueError("give --encoder and --data (or --sklearn NAME for a bundled data set)")
        from nsrep.train.data import load_data

        dev = resolve_device(device)
        images = load_data(data, image_size=image_size)
        result = extract_features(load_encoder(encoder, dev), images, batch_size=batch_size, device=dev)
    save_features(out, result)
    print(f"wrote {out}: {result}")


# ----------------------------------------------------------------------------------------------- parser


def _add_command(
    subparsers: argparse._SubParsersAction, command: Callable[..., None], name: str | None = None
) -> argparse.ArgumentParser:
    """A subparser for ``command``; its help is the first line of the function's docstring."""
    doc = (command.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else ""
    # argparse %-formats help strings (not descriptions): "95% CI" in a docstring must not break --help
    parser = subparsers.add_parser(name or command.__name__, help=summary.replace("%", "%%"), description=doc)
    parser.set_defaults(_command=command)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that pick one model variant (shared by commands that build a model)."""
    # Values are checked by the library, not argparse ``choices``, so errors name a close match too.
    parser.add_argument("arch", help=f"architecture: {', '.join(list_models())}")
    unit = UnitConfig()
    parser.add_argument(
        "--family", default=unit.family, help=f"unit family: {', '.join(ALL_FAMILIES)} (default: {unit.family})"
    )
    parser.add_argument(
        "--connectivity",
        default=unit.connectivity,
        help=f"how branches connect: {', '.join(CONNECTIVITIES)} (default: {unit.connectivity})",
    )
    parser.add_argument("--stem", default="cifar", help="cifar (3x3, stride 1) or imagenet (default: cifar)")
    parser.add_argument("--num-classes", type=int, default=100, help="classifier outputs (default: 100)")
    parser.add_argument(
        "--num-branches",
        type=int,
        default=None,
        metavar="K",
        help=f"K for {', '.join(DEFAULT_NUM_BRANCHES)} (default: the family's own)",
    )
    parser.add_argument("--width-mult", type=float, default=1.0, help="channel multiplier (default: 1.0)")
    parser.add_argument(
        "--plain-stem",
        dest="stem_unit",
        action="store_false",
        help="keep the stem a plain conv+BN instead of a unit of the family",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``nsrep`` parser: one subparser per command function."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structural re-parameterization with Neural Substitution: inspect, train, fold networks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add_command(subparsers, info)
    _add_model_arguments(p)
    p.add_argument("--input-size", type=int, default=32, help="input height and width (default: 32)")

    p = _add_command(subparsers, train)
    p.add_argument(
        "--recipe",
        help=f"recipe name ({', '.join(list_recipes())}) or a YAML path (default: demo; with --resume: the run's)",
    )
    p.add_argument("--data", help="digits, synthetic, a CIFAR python folder or an ImageNet-style folder")
    p.add_argument("--arch", help=f"architecture: {', '.join(list_models())}")
    p.add_argument("--family", help=f"unit family: {', '.join(ALL_FAMILIES)}")
    p.add_argument("--connectivity", help=f"how branches connect: {', '.join(CONNECTIVITIES)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over ranks and accumulation steps)")
    p.add_argument("--out", help="run folder: checkpoint.pt, metrics.jsonl, summary.json, deploy/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop this invocation after N epochs")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key (value read as YAML), e.g. --set lr=0.05 --set autoaugment=null",
    )

    p = _add_command(subparsers, evaluate, name="eval")
    p.add_argument("checkpoint", help="a run folder, its checkpoint.pt, or a deploy folder")
    p.add_argument("--data", help="data to evaluate on (default: the data the run was trained on)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    p = _add_command(subparsers, deploy)
    p.add_argument("checkpoint", help="a run folder or its checkpoint.pt")
    p.add_argument("--out", required=True, help="deploy folder to write")

    p = _add_command(subparsers, export)
    p.add_argument("model_dir", help="a deploy folder (from nsrep train or nsrep deploy)")
    p.add_argument("--onnx", action="store_true", help="write model.onnx and check it with onnxruntime")
    p.add_argument("--torchscript", action="store_true", help="write model.torchscript.pt")

    p = _add_command(subparsers, quantize)
    p.add_argument("model_dir", help="a deploy folder, or a finished run folder (its deploy/)")
    p.add_argument("--out", required=True, help="new folder for the ONNX models and the report")
    p.add_argument("--calib", type=int, default=512, metavar="N", help="training images to calibrate on (default: 512)")
    p.add_argument(
        "--method",
        default="minmax",
        help="activation range calibration: minmax (default; measured best here), entropy, percentile (99.99th)",
    )
    p.add_argument(
        "--keep-float",
        type=int,
        default=2,
        metavar="K",
        help="also write a model keeping the K layers of lowest SQNR in float (default: 2; 0: none)",
    )
    p.add_argument("--data", help="data to calibrate and evaluate on (default: the data the run was trained on)")
    p.add_argument("--eval-images", type=int, help="held-out images to evaluate (default: all)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")

    p = _add_command(subparsers, demo)
    p.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    p.add_argument("--epochs", type=int, help="epochs per variant (default: the demo recipe's)")
    p.add_argument("--fresh", action="store_true", help="retrain variants even when a finished run exists")

    p = _add_command(subparsers, sweep)
    p.add_argument("spec", help="sweep YAML (see experiments/)")
    p.add_argument("--out", help="sweep folder (default: runs/sweeps/NAME)")
    p.add_argument("--shard", metavar="i/n", help="run every n-th run starting at i (several machines or GPUs)")
    p.add_argument("--max-runs", type=int, help="stop after training this many runs (resume later)")

    p = _add_command(subparsers, report)
    p.add_argument("sweep_dir", help="a folder written by nsrep sweep")
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reference row for the differences (default: the spec's report.reference)",
    )

    p = _add_command(subparsers, analyze)
    p.add_argument(
        "checkpoints", nargs="+", help="run folders or checkpoint.pt files (e.g. a block-level and an NS run)"
    )
    p.add_argument("--data", help="data to analyse on (default: the data the runs were trained on)")
    p.add_argument("--out", default="analysis", help="folder for the PNG figures and CSV tables (default: analysis)")
    p.add_argument("--unit", help="unit whose branch kernels to picture (default: a middle 3x3 unit)")
    p.add_argument("--max-images", type=int, default=512, help="test images to analyse (default: 512)")
    p.add_argument("--batch-size", type=int, default=128)

    p = _add_command(subparsers, probe)
    p.add_argument("files", nargs="*", metavar="FILE.npz", help="feature files (train_x, train_y, test_x, test_y)")
    p.add_argument(
        "--example",
        action="store_true",
        help=f"add the embedded example: scikit-learn's {' and '.join(EXAMPLE_DATASETS)} (no download)",
    )
    p.add_argument(
        "--heads",
        default=",".join(DEFAULT_HEADS),
        help=f"comma-separated heads from {', '.join(HEADS)} (default: {','.join(DEFAULT_HEADS)})",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one run each (default: 0 1 2)")
    p.add_argument("--epochs", type=int, default=ProbeConfig.epochs, help=f"default: {ProbeConfig.epochs}")
    p.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size, help=f"default: {ProbeConfig.batch_size}")
    p.add_argument("--lr", type=float, default=ProbeConfig.lr, help=f"AdamW peak lr (default: {ProbeConfig.lr})")
    p.add_argument(
        "--weight-decay", type=float, default=ProbeConfig.weight_decay, help=f"default: {ProbeConfig.weight_decay}"
    )
    p.add_argument("--num-branches", type=int, metavar="K", help=f"K of {', '.join(REP_HEADS)} (default: 4)")
    p.add_argument("--expansion", type=int, help="hidden width / input width of the MLP heads (default: 4)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", help="folder for table.md, runs.csv (every run) and probe.png")

    p = _add_command(subparsers, features)
    p.add_argument("--out", required=True, help="feature file to write (.npz)")
    p.add_argument("--encoder", help="TorchScript file, ONNX file (.onnx) or module:function")
    p.add_argument("--data", help="digits, synthetic, a CIFAR python folder or an ImageNet-style folder")
    p.add_argument("--sklearn", help=f"a scikit-learn bundled data set instead: {', '.join(SKLEARN_DATASETS)}")
    p.add_argument("--image-size", type=int, help="input size for image folders and synthetic data")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nsrep`` console script; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = vars(parser.parse_args(argv))
    except SystemExit as exit_:  # --help, or a malformed command line (argparse has printed why)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    command = args.pop("_command")
    args.pop("command")
    try:
        command(**args)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
