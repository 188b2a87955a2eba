"""Heads on frozen features (paper Table 4): feature files, training every head on the same budget, the table.

A *feature file* is an ``.npz`` with ``train_x (N, D)``, ``train_y (N,)``, ``test_x (M, D)``, ``test_y (M,)``
(labels are integers ``0..C-1``; an optional scalar ``num_classes`` fixes C, else it is ``max(train_y) + 1``).
:func:`run_probe` trains each head of :mod:`nsrep.models.heads` on each file for each seed with the same epochs, batch
size, learning rate and batch order, then folds it and reports test top-1 of both forms. ``nsrep features``
writes feature files from any encoder (:func:`load_encoder`, :func:`extract_features`) or from
scikit-learn's bundled data sets (:func:`sklearn_features`: no download).
"""

from nsrep.probe.constants import DEFAULT_HEADS, EXAMPLE_DATASETS, REQUIRED_KEYS, SKLEARN_DATASETS
from nsrep.probe.encoders import extract_features, load_encoder
from nsrep.probe.features import FeatureSet, load_features, save_features, sklearn_features, validate_features
from nsrep.probe.report import Summary, format_probe_table, plot_probe, probe_notes, summarize, write_probe_outputs
from nsrep.probe.training import ProbeConfig, ProbeResults, ProbeRun, resolve_device, run_probe, train_head

__all__ = [
    "DEFAULT_HEADS",
    "EXAMPLE_DATASETS",
    "REQUIRED_KEYS",
    "SKLEARN_DATASETS",
    "FeatureSet",
    "ProbeConfig",
    "ProbeResults",
    "ProbeRun",
    "Summary",
    "extract_features",
    "format_probe_table",
    "load_encoder",
    "load_features",
    "plot_probe",
    "probe_notes",
    "resolve_device",
    "run_probe",
    "save_features",
    "sklearn_features",
    "summarize",
    "train_head",
    "validate_features",
    "write_probe_outputs",
]
