"""Which 8-bit types ONNX Runtime's int8 kernels compute exactly on this CPU: activations x weights.

    python -m benchmarks.int8_types RUN_OR_DEPLOY_FOLDER [--calib 128] [--out benchmarks/results/int8_types.md]

The deploy folder's network is exported to ONNX and quantized (QDQ, per-channel weights, MinMax on ``--calib``
training images) with each choice below. For each: top-1 agreement with FP32 on the held-out split in ORT's
int8 kernels and when the same QDQ graph is evaluated in float (no graph optimization, so no int8 kernel
runs), the SQNR between those two outputs (how far the kernels are from what the graph says), how many convs
ORT fuses into int8 kernels (QLinearConv) and the median latency (round-robin, one thread). On x86 CPUs
without VNNI, u8 x s8 kernels add pairs of products in int16 (VPMADDUBSW), which saturates.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from benchmarks.common import describe_machine, save_bar_chart, write_report
from nsrep.deploy.export import export_onnx, quiet_exporters
from nsrep.deploy.quantize import _latency, _prepared, _reader, _session, resolve_deploy_folder
from nsrep.report import markdown_table
from nsrep.storage.folders import DeployFolder
from nsrep.train.runs import eval_data

CHOICES = {  # name -> quantize_static keywords
    "u8 x s8": {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8},
    "u8 x s8, reduce_range": {
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "reduce_range": True,
    },
    "s8 x s8": {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8},
    "u8 x u8 (nsrep)": {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8},
}


def logits(path: Path, batches: list[np.ndarray], optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"images": x})[0] for x in batches]).astype(np.float64)


def fused_convs(path: Path, work: Path) -> int:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # level 3 cannot be saved
    options.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node].count("QLinearConv")


def sqnr(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.square(reference).sum() / max(np.square(other - reference).sum(), 1e-30)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="deploy folder or finished run folder")
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file (and a PNG next to it)")
    args = parser.parse_args()
    folder = resolve_deploy_folder(args.source)
    chosen = eval_data(
        DeployFolder(folder).read_data_record(), None, batch_size=256, run=str(folder), whole_folder=False
    )
    images, transform = chosen.images, chosen.transform
    order = torch.randperm(len(images.train), generator=torch.Generator().manual_seed(0))[: args.calib].tolist()
    calib = _prepared(images.train, order, transform, 32)
    batches = _prepared(images.test, range(len(images.test)), transform, 250)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = {"fp32": work / "fp32.onnx"}
        export_onnx(folder, paths["fp32"])
        reference = logits(paths["fp32"], batches, optimize=True)
        rows, agreement = [], {}
        for name, keywords in CHOICES.items():
            paths[name] = work / f"{len(paths)}.onnx"
            with quiet_exporters():
                quantize_static(
                    str(paths["fp32"]),
                    str(paths[name]),
                    _reader(calib),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    **keywords,
                )
            graph, kernels = logits(paths[name], batches, False), logits(paths[name], batches, True)
            agree = {
                k: 100 * float((v.argmax(1) == reference.argmax(1)).mean()) for k, v in (("g", graph), ("k", kernels))
            }
            agreement[name] = (agree["k"], agree["g"])
            rows.append(
                [
                    name,
                    f"{agree['k']:.2f}",
                    f"{agree['g']:.2f}",
                    f"{sqnr(graph, kernels):.1f}",
                    f"{sqnr(reference, kernels):.1f}",
                    fused_convs(paths[name], work),
                ]
            )
        x = batches[0][:1]
        latency = _latency({name: _session(path, 1) for name, path in paths.items()}, x, {1: 300, 32: 60})
    for row in rows:
        row += [f"{latency[row[0]]['batch 1']:.3f}", f"{latency[row[0]]['batch 32']:.3f}"]
    rows.append(
        ["fp32", "100.00", "100.00", "", "", 0, *(f"{latency['fp32'][b]:.3f}" for b in ("batch 1", "batch 32"))]
    )
    header = (
        "activations x weights",
        "agreement, int8 kernels (%)",
        "agreement, QDQ graph in float (%)",
        "kernels vs graph SQNR (dB)",
        "kernels vs FP32 SQNR (dB)",
        "QLinearConv",
        "ms batch 1",
        "ms batch 32",
    )
    lines = [
        f"{folder}: {len(images.test)} held-out images, {args.calib} calibration images; "
        f"{describe_machine('cpu', 1)}; onnxruntime {ort.__version__}",
        "",
    ]
    write_report(lines + markdown_table(header, rows), args.out)
    if args.out:
        series = {
            "int8 kernels": [a[0] for a in agreement.values()],
            "QDQ graph in float": [a[1] for a in agreement.values()],
        }
        save_bar_chart(
            str(Path(args.out).with_suffix(".png")),
            "top-1 agreement with FP32",
            list(agreement),
            series,
            "agreement (%)",
            98.0,
        )


if __name__ == "__main__":
    main()
