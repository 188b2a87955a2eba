"""Model registry: ``create_model`` by name with every family/connectivity variant, ``list_models``.

Registration refuses duplicates; an unknown name or keyword gets the valid ones and the closest match.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from nsrep.models.factory import LayerFactory
from nsrep.nn.bn_init import BN_INITS, DEFAULT_BN_INIT, apply_bn_init
from nsrep.nn.unit import UnitConfig, unit_config
from nsrep.validation import check_choice

__all__ = ["create_model", "list_models", "register_model"]

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[ModelBuilder, tuple[str, ...]]] = {}


def register_model(*, options: tuple[str, ...]) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a keyword-only builder under its function name; ``options`` are the keywords it accepts."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is already registered")
        _REGISTRY[fn.__name__] = (fn, options)
        return fn

    return decorator


def list_models() -> list[str]:
    """Names :func:`create_model` accepts."""
    return sorted(_REGISTRY)


def model_options(arch: str) -> tuple[str, ...]:
    """Architecture-specific keywords of ``arch`` (beyond the unit options every model takes)."""
    check_choice("architecture", arch, list_models())
    return _REGISTRY[arch][1]


def create_model(
    arch: str,
    *,
    unit: UnitConfig | None = None,
    family: str | None = None,
    connectivity: str | None = None,
    stochastic: float | None = None,
    pair_drop: float | None = None,
    num_branches: int | None = None,
    max_streams: int | None = None,
    bn_init: str = DEFAULT_BN_INIT,
    deploy: bool = False,
    **options: Any,
) -> nn.Module:
    """Build ``arch`` with units of ``family`` joined by ``connectivity`` (or its fused plain form, ``deploy``).

    Unit options come as one ``unit`` (a :class:`~nsrep.UnitConfig`) or as its fields by keyword (``family``
    "plain", ``connectivity`` "block", ...; see UnitConfig for the defaults); keywords given beside ``unit``
    override its fields. ``options`` are the architecture's own keywords (``num_classes``, ``stem``,
    ``width_mult``, ...; see :func:`model_options`). ``bn_init`` sets where the units' BN scales start
    (nsrep.nn.bn_init.BN_INITS; the training form only). The returned model carries ``nsrep_config``, the
    keywords that rebuild it.
    """
    check_choice("architecture", arch, list_models())
    builder, accepted = _REGISTRY[arch]
    for key in options:
        check_choice(f"option for {arch}", key, accepted)
    unit = unit_config(
        unit,
        family=family,
        connectivity=connectivity,
        stochastic=stochastic,
        pair_drop=pair_drop,
        num_branches=num_branches,
        max_streams=max_streams,
    )
    check_choice("bn_init", bn_init, BN_INITS)
    model = builder(layers=LayerFactory(unit, deploy=deploy), **options)
    apply_bn_init(model, bn_init)
    model.nsrep_config = {"arch": arch, **unit.to_dict(), "bn_init": bn_init, "deploy": deploy, **options}
    return model


def _signature_options(cls: type) -> tuple[str, ...]:
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "layers")
