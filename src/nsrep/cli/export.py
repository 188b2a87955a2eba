"""``nsrep export``: a deploy folder to ONNX and/or TorchScript."""

from __future__ import annotations

from nsrep.cli.command import arg, command


@command(
    arg("model_dir", help="a deploy folder (from nsrep train or nsrep deploy)"),
    arg("--onnx", help="write model.onnx and check it with onnxruntime"),
    arg("--torchscript", help="write model.torchscript.pt"),
)
def export(model_dir: str, *, onnx: bool = False, torchscript: bool = False) -> None:
    """Export a deploy folder to ONNX (checked with onnxruntime) and/or TorchScript."""
    from nsrep.deploy.export import export_onnx, export_torchscript

    if not (onnx or torchscript):
        raise ValueError("nothing to export: pass --onnx and/or --torchscript")
    if onnx:
        path, error = export_onnx(model_dir)
        print(f"ONNX: {path} (onnxruntime vs PyTorch: max rel error {error:.2e})")
    if torchscript:
        path, error = export_torchscript(model_dir)
        print(f"TorchScript: {path} (vs eager: max rel error {error:.2e})")
