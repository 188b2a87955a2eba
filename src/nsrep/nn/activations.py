"""The one activation table: each activation as a guided op, the plain module it folds to, and the calls the
converter recognises. The layer factory, the heads and the converter all read it; a new activation is one row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.nn.guided import (
    GuidedActivation,
    GuidedFeatureActivation,
    GuidedGELU,
    GuidedHardswish,
    GuidedLeakyReLU,
    GuidedReLU,
    GuidedReLU6,
    GuidedSiLU,
)
from nsrep.validation import check_choice

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "Activation",
    "activation_of_call",
    "activation_of_module",
    "guided_activation",
    "guided_feature_activation",
    "plain_activation",
]


@dataclass(frozen=True)
class Activation:
    """One activation function in every form nsrep meets it: the guided op on stream sets, the plain module
    it folds to, and the functions and tensor methods the converter recognises in a user's graph."""

    guided: type[GuidedActivation]
    plain: type[nn.Module]
    functions: tuple[Callable[..., Tensor], ...] = ()
    methods: tuple[str, ...] = ()
    option: str | None = None  # the one keyword the guided op and the plain module share
    option_default: Any = None


# The one activation table: the layer factory, the heads and the converter all read it.
ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(GuidedReLU, nn.ReLU, (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_")),
    "relu6": Activation(GuidedReLU6, nn.ReLU6, (F.relu6,)),
    "leaky_relu": Activation(GuidedLeakyReLU, nn.LeakyReLU, (F.leaky_relu,), (), "negative_slope", 0.01),
    "silu": Activation(GuidedSiLU, nn.SiLU, (F.silu,)),
    "gelu": Activation(GuidedGELU, nn.GELU, (F.gelu,), (), "approximate", "none"),
    "hardswish": Activation(GuidedHardswish, nn.Hardswish, (F.hardswish,)),
}
ACTIVATION_NAMES = tuple(ACTIVATIONS)


def activation_of_module(module: nn.Module) -> str | None:
    """The table name of a plain activation module (``nn.ReLU`` -> ``"relu"``), None for anything else."""
    return next((name for name, act in ACTIVATIONS.items() if type(module) is act.plain), None)


def activation_of_call(target: object, method: bool) -> str | None:
    """The table name of an activation function (or, with ``method``, a tensor method name), else None."""
    for name, act in ACTIVATIONS.items():
        if (target in act.methods) if method else any(target is f for f in act.functions):
            return name
    return None


def guided_activation(name: str, **kwargs) -> GuidedActivation:
    """A guided activation by name (``relu``, ``relu6``, ``leaky_relu``, ``silu``, ``gelu``, ``hardswish``)."""
    check_choice("activation", name, ACTIVATION_NAMES)
    return ACTIVATIONS[name].guided(**kwargs)


def plain_activation(name: str, **kwargs) -> nn.Module:
    """The plain module of an activation by name: what its guided op folds to."""
    check_choice("activation", name, ACTIVATION_NAMES)
    return ACTIVATIONS[name].plain(**kwargs)


def guided_feature_activation(name: str, **kwargs) -> GuidedFeatureActivation:
    """A guided activation by name for feature/token stream sets ``(S, *leading, D)`` (stream axis always dim 0)."""
    return GuidedFeatureActivation(guided_activation(name, **kwargs))
