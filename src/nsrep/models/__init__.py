"""Architectures: one definition each, every family/connectivity variant through a layer factory."""

from __future__ import annotations

from typing import Any

from nsrep.models.factory import LayerFactory
from nsrep.models.mobilenet import MobileNetV1
from nsrep.models.registry import _signature_options, create_model, list_models, model_options, register_model
from nsrep.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["LayerFactory", "MobileNetV1", "ResNet", "create_model", "list_models", "model_options"]

_RESNET_OPTIONS = tuple(o for o in _signature_options(ResNet) if o not in ("groups", "width_per_group"))
_RESNEXT_OPTIONS = _signature_options(ResNet)


@register_model(options=_RESNET_OPTIONS)
def resnet18(*, layers: LayerFactory, **kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), layers=layers, **kwargs)


@register_model(options=_RESNET_OPTIONS)
def resnet34(*, layers: LayerFactory, **kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), layers=layers, **kwargs)


@register_model(options=_RESNET_OPTIONS)
def resnet50(*, layers: LayerFactory, **kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), layers=layers, **kwargs)


@register_model(options=_RESNET_OPTIONS)
def resnet101(*, layers: LayerFactory, **kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), layers=layers, **kwargs)


@register_model(options=_RESNEXT_OPTIONS)
def resnext50_32x4d(*, layers: LayerFactory, **kwargs: Any) -> ResNet:
    """ResNeXt-50 32×4d; ``groups``/``width_per_group`` may be given only with their fixed values 32 and 4."""
    for key, fixed in (("groups", 32), ("width_per_group", 4)):
        if kwargs.setdefault(key, fixed) != fixed:
            raise ValueError(f"resnext50_32x4d has {key}={fixed}; got {key}={kwargs[key]} (use resnet50 with it)")
    return ResNet(Bottleneck, (3, 4, 6, 3), layers=layers, **kwargs)


@register_model(options=_signature_options(MobileNetV1))
def mobilenet_v1(*, layers: LayerFactory, **kwargs: Any) -> MobileNetV1:
    return MobileNetV1(layers=layers, **kwargs)
