"""``nsrep quantize``: INT8 post-training quantization of a deploy folder with ONNX Runtime."""

from __future__ import annotations

from typing import Any

from nsrep.cli.command import arg, command
from nsrep.deploy.quantize import format_report, quantize_deployed


@command(
    arg("model_dir", help="a deploy folder, or a finished run folder (its deploy/)"),
    arg("--out", required=True, help="new folder for the ONNX models and the report"),
    arg("--calib", metavar="N", help="training images to calibrate on (default: {default})"),
    arg(
        "--method",
        help="activation range calibration: {default} (default; measured best here), entropy, percentile (99.99th)",
    ),
    arg(
        "--keep-float",
        metavar="K",
        help="also write a model keeping the K layers of lowest SQNR in float (default: {default}; 0: none)",
    ),
    arg("--data", help="data to calibrate and evaluate on (default: the data the run was trained on)"),
    arg("--eval-images", help="held-out images to evaluate (default: all)"),
    arg("--threads", help="onnxruntime intra-op threads (default: {default})"),
    arg("--no-latency", help="skip the latency measurement"),
    defaults=quantize_deployed,
)
def quantize(model_dir: str, *, out: str, no_latency: bool = False, **options: Any) -> None:
    """INT8 post-training quantization of a deploy folder with ONNX Runtime; accuracy, per-layer SQNR, latency.

    Writes model.fp32.onnx, model.int8.onnx (and one keeping the worst layers in float), report.md/json,
    layers.csv and quantization.png to OUT, a new folder (see docs/quantization.md).
    """
    report = quantize_deployed(model_dir, out, latency_runs={} if no_latency else None, **options)
    print(format_report(report))
    print(f"written: {out}")
