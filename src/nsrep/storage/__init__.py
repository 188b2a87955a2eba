"""What a run leaves on disk: run and deploy folders, checkpoints, the model record and the data record.

Every tool (training, evaluation, deployment, analysis) reads and writes these files through this package,
so each file's layout, version and atomic write are written once.
"""

from nsrep.storage.checkpoint import load_checkpoint, save_checkpoint
from nsrep.storage.data_record import DataRecord, read_data_record
from nsrep.storage.folders import DeployFolder, RunFolder
from nsrep.storage.model_record import ModelRecord

__all__ = [
    "DataRecord",
    "DeployFolder",
    "ModelRecord",
    "RunFolder",
    "load_checkpoint",
    "read_data_record",
    "save_checkpoint",
]
