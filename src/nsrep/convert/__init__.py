"""Bring your own model: convert any PyTorch CNN to branch-level re-parameterized training (``convert``), and
fold it back into the user's own architecture (``fold_into``)."""

from nsrep.convert.core import convert
from nsrep.convert.detection import DetectionBackbone
from nsrep.convert.fold_into import fold_into
from nsrep.convert.report import Conversion, ConvertedConv
from nsrep.convert.tracing import ConvertedModel

__all__ = ["Conversion", "ConvertedConv", "ConvertedModel", "DetectionBackbone", "convert", "fold_into"]
