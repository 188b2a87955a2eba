"""Analyses of trained models (paper Sec. 6.4): feature similarity, kernel pictures, block drop, topologies.

``nsrep.analysis.analyze(checkpoints, out_dir)`` is what ``nsrep analyze`` runs.
"""

from nsrep.analysis.analyze import (
    AnalysisReport,
    analyze,
    block_drop,
    branch_similarity,
    depth_similarity,
    kernel_maps,
    load_models,
    topology_counts,
)
from nsrep.analysis.similarity import branch_outputs, pixel_cosine, residual_blocks

__all__ = [
    "AnalysisReport",
    "analyze",
    "block_drop",
    "branch_outputs",
    "branch_similarity",
    "depth_similarity",
    "kernel_maps",
    "load_models",
    "pixel_cosine",
    "residual_blocks",
    "topology_counts",
]
