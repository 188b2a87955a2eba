"""LAMB (You et al. 2020), the authors' ImageNet optimiser, from pytorch-optimizer (the ``recipes`` extra).

The authors use timm's ``Lamb`` through ``create_optimizer_v2("lamb", lr=8e-3, weight_decay=0.01)``: betas
(0.9, 0.999), eps 1e-6, the global gradient norm clipped to 1 inside the step, no weight decay on norm
parameters and biases. nsrep takes pytorch-optimizer's ``Lamb`` with those settings over the same parameter
groups (nsrep.train.trainer.param_groups); timm itself is never needed. Where the two implementations differ
(docs/training.md, "The authors' recipes") is said there, not hidden here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["LAMB_BETAS", "LAMB_EPS", "LAMB_MAX_GRAD_NORM", "build_lamb"]

LAMB_BETAS = (0.9, 0.999)  # timm's defaults, which the authors keep
LAMB_EPS = 1e-6
LAMB_MAX_GRAD_NORM = 1.0  # timm's Lamb clips the global gradient norm to this inside each step


def build_lamb(param_groups: Iterable[dict[str, Any]], *, lr: float) -> torch.optim.Optimizer:
    """pytorch-optimizer's LAMB over ``param_groups`` (each with its own ``weight_decay``)."""
    try:
        from pytorch_optimizer import Lamb
    except ImportError as err:
        raise ImportError(
            "optimizer 'lamb' needs pytorch-optimizer: pip install 'nsrep[recipes]' (or use optimizer 'sgd')"
        ) from err
    return Lamb(list(param_groups), lr=lr, betas=LAMB_BETAS, eps=LAMB_EPS, max_grad_norm=LAMB_MAX_GRAD_NORM)
