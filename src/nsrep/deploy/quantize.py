"""INT8 post-training quantization of a deployed (folded) network with ONNX Runtime, and its report.

The deployed network is plain (conv with bias, ReLU, add), so a general-purpose engine quantizes it: the
folder is exported to ONNX (:func:`nsrep.deploy.export.export_onnx`, checked against PyTorch), then ONNX Runtime's
static quantization writes a QDQ model with per-channel 8-bit weights and uint8 activations calibrated on N
training images with the run's eval transform (MinMax, entropy or percentile ranges). ORT rather than
PyTorch's PT2E flow: in torch 2.13 PT2E and its x86 quantizer live in ``torchao``, which nsrep does not
depend on, while onnxruntime is already the ``export`` extra; docs/quantization.md has the measurements.

The report (``report.md``, ``report.json``, ``layers.csv``, ``quantization.png``): FP32 vs INT8 top-1 on the
same held-out images and their top-1 agreement; per layer the SQNR of its int8 weights and of its int8 input
(ORT's ``qdq_loss_debug``) and the SQNR of its output against the float model, so the layers that lose most
are named; a model that keeps those layers in float and what it recovers; CPU latency of every model in the
same engine, measured round-robin at batch 1 and 32.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nsrep.deploy.export import export_onnx, quiet_exporters
from nsrep.fileio import atomic_folder, atomic_write, write_json
from nsrep.plotting import pyplot, save_png
from nsrep.report import markdown_table
from nsrep.storage.folders import DeployFolder, RunFolder
from nsrep.train.runs import eval_data
from nsrep.validation import check_choice

__all__ = [
    "CALIBRATIONS",
    "LayerError",
    "QuantReport",
    "format_report",
    "quantize_deployed",
    "resolve_deploy_folder",
]

CALIBRATIONS = ("minmax", "entropy", "percentile")
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
KEEP_FILE = "model.int8-keep{k}.onnx"
REPORT_FILES = ("report.md", "report.json", "layers.csv", "quantization.png")
_QUANT_OPS = ("Conv", "Gemm", "MatMul")
EXPORT_HINT = 'pip install "nsrep[export]"'


@dataclass(frozen=True)
class LayerError:
    """Quantization error of one conv/linear layer, as signal-to-quantization-noise ratios in dB."""

    layer: str  # the deployed module's name (from the weight initializer), e.g. "stages.0.0.conv1"
    node: str  # the ONNX node name (what ``nodes_to_exclude`` takes)
    weight_sqnr: float  # float weight vs its 8-bit per-channel rounding
    input_sqnr: float  # the layer's input vs its uint8 rounding (inf where the input is not quantized)
    own_sqnr: float  # both noises together: -10 log10(10^(-w/10) + 10^(-i/10)); the ranking key
    input_vs_float: float  # the layer's int8 input vs the float model's (error accumulated up to this layer)


@dataclass
class QuantReport:
    """What ``quantize_deployed`` measured; ``models`` rows: name -> top-1 (%), agreement with FP32 (%)."""

    source: str
    calibration: str
    calib_images: int
    eval_images: int
    eval_split: str  # which images those are, and why (nsrep.train.runs.EvalData.split)
    models: dict[str, dict[str, float]]
    layers: list[LayerError]
    kept_float: list[str]
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {"batch 1": ms, ...}
    threads: int = 1
    files: list[str] = field(default_factory=list)


def _require_onnxruntime() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxruntime.quantization
    except ImportError as err:
        missing = err.name or "onnxruntime"
        raise ValueError(f"INT8 quantization needs onnx and onnxruntime ({missing} is missing): {EXPORT_HINT}") from err
    return onnx, onnxruntime


def resolve_deploy_folder(path: str | os.PathLike) -> Path:
    """A deploy folder, or a finished run folder's ``deploy/``; anything else is refused, naming what it is."""
    path = Path(path)
    run = RunFolder(path)
    if path.is_dir() and DeployFolder(path).exists():
        return path
    if path.is_dir() and run.deploy.record_path.is_file():
        return run.deploy.path
    if (path.is_file() and path.suffix == ".pt") or (path.is_dir() and run.checkpoint_path.is_file()):
        raise ValueError(
            f"{str(path)!r} is a training checkpoint (or an unfinished run), not a deploy folder: "
            f"fold it first with `nsrep deploy {path} --out DIR`, or give a finished run folder"
        )
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist; expected a deploy folder or a finished run folder")
    raise ValueError(
        f"{str(path)!r} is not a deploy folder ({DeployFolder.RECORD} and {DeployFolder.WEIGHTS}) nor a run folder"
    )


class _Batches:
    """ORT ``CalibrationDataReader`` over preprocessed float32 batches (re-iterable with ``rewind``)."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self.batches = list(batches)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"images": self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0

    # the ORT base class is abstract on these two names only; duck typing is what quantize_static checks
    def __iter__(self):
        self.rewind()
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _reader(batches: Sequence[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Batches, CalibrationDataReader):
        pass

    return Reader(batches)


def _prepared(images: torch.utils.data.Dataset, indices: Sequence[int], transform: Any, batch: int) -> list[np.ndarray]:
    out = []
    for start in range(0, len(indices), batch):
        chunk = [images[i][0] for i in indices[start : start + batch]]
        out.append(transform(torch.stack(chunk)).numpy().astype(np.float32))
    return out


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _quantize(fp32: Path, out: Path, calib: Sequence[np.ndarray], method: str, exclude: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    # every range choice spelled out rather than left to ORT's defaults: asymmetric activations (a ReLU's
    # output keeps the whole range); symmetric full-range weights, so that every output channel has the same
    # weight zero point (128), which ORT's QLinearConv requires of per-channel weights
    options: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        options["CalibPercentile"] = 99.99
    tmp = out.with_name(f".{out.name}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing hint on the root logger for every model
    try:
        with quiet_exporters():  # the calibrators print their histogram settings
            quantize_static(
                str(fp32),
                str(tmp),
                _reader(calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                # u8 activations x u8 weights, not the usual u8 x s8: ORT's u8 x s8 kernels on AVX2 CPUs without
                # VNNI add pairs of products in int16 (VPMADDUBSW), which saturates: a model whose QDQ graph agreed
                # with FP32 on 99.7% of images agreed on 91% in those kernels. Its u8 x u8 kernels widen to int16
                # first and accumulate exactly on every x86 CPU; s8 activations would leave most convs in float
                # on x86 (docs/quantization.md has the measurements)
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QUInt8,
                nodes_to_exclude=list(exclude),
                calibrate_method=methods[method],
                extra_options=options,
            )
    finally:
        root.setLevel(level)
    os.replace(tmp, out)


def _layer_nodes(onnx: Any, fp32: Path) -> tuple[list[tuple[str, str, str, str]], set[str]]:
    """(layer, node, input, weight) of every conv/linear node of the float model, in graph order, and the
    names of the tensors that a ReLU produces."""
    graph = onnx.load(str(fp32)).graph
    weights = {init.name for init in graph.initializer}
    rows = []
    for node in graph.node:
        if node.op_type in _QUANT_OPS and len(node.input) > 1 and node.input[1] in weights:
            rows.append((node.input[1].removesuffix(".weight"), node.name, node.input[0], node.input[1]))
    relu_outputs = {node.output[0] for node in graph.node if node.op_type == "Relu"}
    return rows, relu_outputs


def _layer_errors(onnx: Any, fp32: Path, int8: Path, batches: Sequence[np.ndarray], work: Path) -> list[LayerError]:
    """Per-layer SQNRs from ORT's QDQ debugging tools (float and INT8 models run on the same images)."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    aug_fp, aug_q = work / "debug.fp32.onnx", work / "debug.int8.onnx"
    dbg.modify_model_output_intermediate_tensors(str(fp32), str(aug_fp))
    dbg.modify_model_output_intermediate_tensors(str(int8), str(aug_q))
    float_acts = dbg.collect_activations(str(aug_fp), _reader(batches))
    quant_acts = dbg.collect_activations(str(aug_q), _reader(batches))
    matching = dbg.create_activation_matching(quant_acts, float_acts)
    weight_err = _weight_sqnrs(onnx, fp32, int8)
    nodes, relu_outputs = _layer_nodes(onnx, fp32)
    rows = []
    for layer, node, inp, weight in nodes:
        w = float(weight_err.get(weight, math.inf))
        i = a = math.inf
        match = matching.get(inp)
        if match is not None and "post_qdq" in match:
            pre = match["pre_qdq"]
            # ORT drops a ReLU whose input it quantizes (the calibrated range starts at 0, so Q clips), so the
            # tensor before Q holds the pre-ReLU values: compare the rounding against the ReLU of them
            if inp in relu_outputs:
                pre = [np.maximum(t, 0) for t in pre]
            i = _sqnr(pre, match["post_qdq"])
            if "float" in match:
                a = _sqnr(match["float"], match["post_qdq"])
        noise = sum(10 ** (-v / 10) for v in (w, i) if math.isfinite(v))
        own = -10 * math.log10(noise) if noise > 0 else math.inf
        rows.append(LayerError(layer, node, w, i, own, a))
    for path in (aug_fp, aug_q):
        path.unlink(missing_ok=True)
    return rows


def _weight_sqnrs(onnx: Any, fp32: Path, int8: Path) -> dict[str, float]:
    """SQNR (dB) of every weight the INT8 model dequantizes from a constant, by float weight name.

    Not ORT's ``qdq_loss_debug.create_weight_matching``: it subtracts the zero point in the stored type, which
    wraps around for uint8 weights."""
    from onnx import numpy_helper

    floats = {init.name: init for init in onnx.load(str(fp32)).graph.initializer}
    graph = onnx.load(str(int8)).graph
    consts = {init.name: init for init in graph.initializer}
    result = {}
    for node in graph.node:
        name = node.input[0].removesuffix("_quantized")
        if node.op_type != "DequantizeLinear" or node.input[0] not in consts or name not in floats:
            continue
        q, scale, zero = (numpy_helper.to_array(consts[i]).astype(np.float64) for i in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [-1 if d == axis % q.ndim else 1 for d in range(q.ndim)] if scale.ndim else []
        weight = (q - zero.reshape(shape)) * scale.reshape(shape)
        result[name] = _sqnr([numpy_helper.to_array(floats[name])], [weight])
    return result


def _sqnr(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    ref = np.concatenate([r.ravel() for r in reference]).astype(np.float64)
    err = ref - np.concatenate([o.ravel() for o in other]).astype(np.float64)
    return float(10 * np.log10(np.square(ref).sum() / max(np.square(err).sum(), 1e-30)))


def _predictions(sessions: dict[str, Any], batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    preds: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for x in tqdm(batches, desc="evaluate FP32 and INT8", unit="batch", leave=False):
        for name, session in sessions.items():
            preds[name].append(session.run(None, {"images": x})[0].argmax(1))
    return {name: np.concatenate(p) for name, p in preds.items()}


def _latency(sessions: dict[str, Any], example: np.ndarray, runs: dict[int, int]) -> dict[str, dict[str, float]]:
    """Median ms per forward of every session, round-robin (one forward of each in turn) so load hits all alike."""
    result: dict[str, dict[str, float]] = {name: {} for name in sessions}
    for batch, reps in runs.items():
        x = np.ascontiguousarray(np.resize(example, (batch, *example.shape[1:])))
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for rep in tqdm(range(reps + 10), desc=f"latency batch {batch}", leave=False):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"images": x})
                if rep >= 10:  # warm-up
                    times[name].append(1000 * (time.perf_counter() - start))
        for name in sessions:
            result[name][f"batch {batch}"] = statistics.median(times[name])
    return result


def _check_out(out: Path, source: Path) -> None:
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ValueError(f"--out {str(out)!r} is the deploy folder or inside it; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {str(out)!r} exists and is not empty; nothing was written (choose a new folder)")


def quantize_deployed(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calib: int = 512,
    method: str = "minmax",
    keep_float: int = 2,
    data: str | None = None,
    eval_images: int | None = None,
    debug_images: int = 64,
    latency_runs: dict[int, int] | None = None,
    threads: int = 1,
    seed: int = 0,
) -> QuantReport:
    """Quantize a deploy folder (or a finished run's) to INT8 with ONNX Runtime and write the report to ``out``.

    ``calib`` training images (drawn with ``seed``; eval transform) calibrate the activation ranges with
    ``method``; accuracy is measured on the run's held-out split (the first ``eval_images``, all by default);
    ``keep_float`` worst layers (lowest own SQNR) are also kept in float in a second INT8 model. Everything is
    written to a temporary folder renamed to ``out`` at the end: a failed run leaves no partial ``out``.
    """
    onnx, _ = _require_onnxruntime()
    check_choice("calibration method", method, CALIBRATIONS)
    folder = resolve_deploy_folder(source)
    out = Path(out)
    _check_out(out, folder)
    for name, value, low in (("--calib", calib, 1), ("--keep-float", keep_float, 0), ("--threads", threads, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    # calibration draws from the training images, so the run's split applies even to a folder handed in
    chosen = eval_data(
        DeployFolder(folder).read_data_record(), data, batch_size=256, run=str(folder), whole_folder=False
    )
    images, transform, data_source = chosen.images, chosen.transform, chosen.source
    if calib > len(images.train):
        raise ValueError(
            f"--calib {calib} is larger than the {len(images.train)} training images of {data_source!r}; "
            f"choose at most {len(images.train)}"
        )
    n_eval = len(images.test) if eval_images is None else eval_images
    if not 1 <= n_eval <= len(images.test):
        raise ValueError(f"--eval-images must be in [1, {len(images.test)}] for {data_source!r}, got {n_eval}")
    order = torch.randperm(len(images.train), generator=torch.Generator().manual_seed(seed))[:calib].tolist()
    calib_batches = _prepared(images.train, order, transform, 32)
    eval_batches = _prepared(images.test, range(n_eval), transform, 250)
    debug_batches = _prepared(images.test, range(min(debug_images, n_eval)), transform, 32)

    with atomic_folder(out) as work:  # a failed run leaves no partial ``out``
        fp32 = work / FP32_FILE
        export_onnx(folder, fp32)
        paths = {"fp32": fp32, "int8": work / INT8_FILE}
        _quantize(fp32, paths["int8"], calib_batches, method, ())
        layers = _layer_errors(onnx, fp32, paths["int8"], debug_batches, work)
        kept = [row.node for row in sorted(layers, key=lambda r: r.own_sqnr)[:keep_float]]
        if kept:
            name = f"int8 keep {len(kept)} float"
            paths[name] = work / KEEP_FILE.format(k=len(kept))
            _quantize(fp32, paths[name], calib_batches, method, kept)
        sessions = {name: _session(path, threads) for name, path in paths.items()}
        labels = np.concatenate([np.asarray([images.test[i][1] for i in range(n_eval)])])
        preds = _predictions(sessions, eval_batches)
        models = {
            name: {
                "top1": 100.0 * float((p == labels).mean()),
                "agreement": 100.0 * float((p == preds["fp32"]).mean()),
            }
            for name, p in preds.items()
        }
        runs = {1: 200, 32: 30} if latency_runs is None else latency_runs
        latency = _latency(sessions, eval_batches[0][:1], runs) if runs else {}
        kept_layers = [row.layer for row in layers if row.node in kept]
        report = QuantReport(
            source=str(folder),
            calibration=method,
            calib_images=calib,
            eval_images=n_eval,
            eval_split=chosen.split,
            models=models,
            layers=layers,
            kept_float=kept_layers,
            latency_ms=latency,
            threads=threads,
        )
        _write_report(report, work)
    report.files = sorted(str(out / p.name) for p in out.iterdir())
    return report


def format_report(report: QuantReport) -> str:
    """The report's tables as markdown: accuracy, the worst layers, latency."""
    lines = [
        f"{report.source}: {report.calibration} calibration on {report.calib_images} training images, "
        f"{report.eval_images} test images: {report.eval_split}",
        "",
    ]
    fp32 = report.models["fp32"]["top1"]
    rows = [
        (name, f"{m['top1']:.2f}", f"{m['top1'] - fp32:+.2f}", f"{m['agreement']:.2f}")
        for name, m in report.models.items()
    ]
    lines += markdown_table(("model", "top-1 (%)", "vs FP32 (points)", "top-1 agreement with FP32 (%)"), rows)
    lines += ["", "Layers that lose most (lowest own SQNR first; dB):", ""]
    worst = sorted(report.layers, key=lambda r: r.own_sqnr)[:5]
    lines += markdown_table(
        ("layer", "weight SQNR", "input SQNR", "own SQNR", "input vs FP32 model", "kept float"),
        [
            (
                r.layer,
                f"{r.weight_sqnr:.1f}",
                f"{r.input_sqnr:.1f}",
                f"{r.own_sqnr:.1f}",
                f"{r.input_vs_float:.1f}",
                "yes" if r.layer in report.kept_float else "",
            )
            for r in worst
        ],
    )
    if report.latency_ms:
        batches = list(next(iter(report.latency_ms.values())))
        lines += ["", f"CPU latency, onnxruntime, {report.threads} thread(s), median ms, round-robin:", ""]
        lines += markdown_table(
            ("model", *batches), [(n, *(f"{v[b]:.3f}" for b in batches)) for n, v in report.latency_ms.items()]
        )
    return "\n".join(lines)


def _write_report(report: QuantReport, folder: Path) -> None:
    text = format_report(report) + "\n"
    atomic_write(folder / "report.md", lambda f: f.write(text.encode()))
    write_json(folder / "report.json", _jsonable(asdict(report)))
    header = "layer,node,weight_sqnr_db,input_sqnr_db,own_sqnr_db,input_vs_float_sqnr_db\n"
    csv = header + "".join(
        f"{r.layer},{r.node},{r.weight_sqnr:.3f},{r.input_sqnr:.3f},{r.own_sqnr:.3f},{r.input_vs_float:.3f}\n"
        for r in report.layers
    )
    atomic_write(folder / "layers.csv", lambda f: f.write(csv.encode()))
    _plot(report, folder / "quantization.png")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _plot(report: QuantReport, path: Path) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(report.layers))
    finite: Callable[[float], float] = lambda v: v if math.isfinite(v) else np.nan  # noqa: E731
    series = (("weight_sqnr", "weight"), ("own_sqnr", "own (weight + input)"), ("input_vs_float", "input vs FP32"))
    for key, label in series:
        ax.plot(x, [finite(getattr(r, key)) for r in report.layers], marker="o", label=label)
    for i, r in enumerate(report.layers):
        if r.layer in report.kept_float:
            ax.axvspan(i - 0.4, i + 0.4, color="0.85", zorder=0)
    ax.set_xticks(x, [r.layer for r in report.layers], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"per-layer INT8 SQNR ({report.calibration}; grey: kept float)")
    ax.legend(fontsize=8)
    names = list(report.models)
    bx.bar(range(len(names)), [report.models[n]["top1"] for n in names], color=["C0", "C1", "C2"][: len(names)])
    lo = min(m["top1"] for m in report.models.values())
    bx.set_ylim(max(0, lo - 5), min(100, max(m["top1"] for m in report.models.values()) + 2))
    bx.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    bx.set_ylabel("top-1 (%)")
    bx.set_title("held-out top-1")
    fig.tight_layout()
    save_png(fig, path)


def load_report(folder: str | os.PathLike) -> dict[str, Any]:
    """A written report (``report.json``) as a dict."""
    return json.loads((Path(folder) / "report.json").read_text())
