"""The old import path of :mod:`nsrep.deploy` (README examples used ``nsrep.export.load_deployed``); kept so
user code that imports it keeps working. New code imports :mod:`nsrep.deploy`."""

from nsrep.deploy import (
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
