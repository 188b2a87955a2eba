"""Deployment: a folded model's folder (:class:`nsrep.storage.folders.DeployFolder`), ONNX and TorchScript
export (:mod:`nsrep.deploy.export`) and INT8 post-training quantization (:mod:`nsrep.deploy.quantize`)."""

from nsrep.deploy.export import (
    export_onnx,
    export_torchscript,
    load_deployed,
    read_config,
    read_preprocess,
    read_record,
    save_deployed,
)

__all__ = [
    "export_onnx",
    "export_torchscript",
    "load_deployed",
    "read_config",
    "read_preprocess",
    "read_record",
    "save_deployed",
]
