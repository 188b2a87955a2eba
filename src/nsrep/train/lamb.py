"""LAMB (You et al. 2020), the authors' ImageNet optimiser, from pytorch-optimizer (the ``recipes`` extra).

The authors use timm's ``Lamb`` through ``create_optimizer_v2("lamb", lr=8e-3, weight_decay=0.01)``: betas
(0.9, 0.999), eps 1e-6, the global gradient norm clipped to 1 before the step, weight decay added to the Adam
direction before the trust ratio (the paper's LAMB, not AdamW's decoupled decay), the trust ratio
``|w| / |update|`` unclamped and applied only to the parameters that are decayed (``always_adapt=False``; the
norm parameters and biases take plain Adam steps). pytorch-optimizer's ``Lamb`` is set up to do the same over
nsrep's parameter groups (nsrep.train.trainer.param_groups); timm itself is never needed. One difference is
left: the Adam direction here is not bias-corrected (pytorch-optimizer's ``adam_debias``: without it the step
would be divided by ``1 - beta1^t``, ten times timm's at step 1). As the trust ratio scales every update to
``lr * |w|``, the step sizes are timm's; only the weight of the decay against the Adam direction differs, by
``sqrt(1 - beta2^t) / (1 - beta1^t)``, in the first few hundred steps, which the warm-up runs at a small lr
(docs/training.md, "The authors' recipes").
"""

from __future__ import annotations

import math
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
    # per group: a group without weight decay takes plain Adam steps (timm's always_adapt=False)
    # every group: no division of the step by the first moment's bias correction (see above)
    groups = [{**group, "adam": group.get("weight_decay", 0.0) == 0.0, "adam_debias": True} for group in param_groups]
    optimizer = Lamb(
        groups,
        lr=lr,
        betas=LAMB_BETAS,
        eps=LAMB_EPS,
        weight_decouple=False,  # decay joins the Adam direction before the trust ratio (timm, the paper)
        pre_norm=True,  # with max_grad_norm: clip the global gradient norm first (timm's max_grad_norm)
        max_grad_norm=LAMB_MAX_GRAD_NORM,
        foreach=False,  # the per-parameter path, whose arithmetic is the one described above
    )
    # pytorch-optimizer clamps |w| at 10 in the trust ratio; timm does not (a ResNet's large convs have |w| > 10)
    optimizer.clamp = math.inf
    return optimizer
