"""``fold_into``: the folded weights of a converted model, written back into the user's own architecture."""

from __future__ import annotations

import copy

import torch
from torch import nn

from nsrep.convert.units import set_identity_bn
from nsrep.nn.conv import RepConv2d
from nsrep.reparam import unwrap_model

__all__ = ["fold_into"]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _module(model: nn.Module, path: str, kind: type, what: str) -> nn.Module:
    try:
        module = model.get_submodule(path)
    except AttributeError as err:
        raise ValueError(f"{what} has no module {path!r}: is it an instance of the converted model's class?") from err
    if not isinstance(module, kind):
        raise ValueError(f"{what}: {path!r} is a {type(module).__name__}, expected {kind.__name__}")
    return module


@torch.no_grad()
def fold_into(original: nn.Module, converted: nn.Module) -> nn.Module:
    """A copy of ``original`` (an instance of the user's own class) holding the folded weights of ``converted``.

    Each converted conv gets its unit's folded kernel; the BatchNorm that followed it becomes the identity
    holding the folded bias (weight 1, running mean 0, running variance ``1 - eps`` rounded so that
    ``var + eps == 1`` exactly); a conv without BN takes the bias itself (``ValueError`` naming it when it was
    built with ``bias=False``). Every other parameter and buffer (SE convs, the classifier, BNs that are not
    after a conv) is copied from ``converted`` by name. The result is in eval mode, its ``state_dict`` loads
    strictly into a fresh instance of the class, and nothing of nsrep is needed to run it.
    """
    converted = unwrap_model(converted)
    report = getattr(converted, "nsrep_conversion", None)
    if report is None:
        raise ValueError("fold_into needs the model returned by nsrep.convert (it has no nsrep_conversion report)")
    out = copy.deepcopy(unwrap_model(original))
    name = type(out).__name__
    done: set[str] = set()
    for record in report.units:
        unit = _module(converted, record.conv, RepConv2d, "the converted model")
        conv = _module(out, record.conv, nn.Conv2d, name)
        kernel, bias = unit.fold_affine()
        if conv.weight.shape != kernel.shape:
            raise ValueError(
                f"conv {record.conv!r} of {name} has weight shape {tuple(conv.weight.shape)}, "
                f"the converted unit folds to {tuple(kernel.shape)}"
            )
        conv.weight.copy_(kernel)
        done.add(f"{record.conv}.weight")
        if record.bn is not None:
            set_identity_bn(_module(out, record.bn, nn.BatchNorm2d, name), bias, record.bn)
            done.update(f"{record.bn}.{key}" for key in _BN_KEYS)
            if conv.bias is not None:
                conv.bias.zero_()
        elif conv.bias is None:
            raise ValueError(
                f"cannot fold into {name}: conv {record.conv!r} has no bias (bias=False) and no BatchNorm after it "
                "to hold its unit's folded bias; convert with biasless_convs='plain' to leave such convs plain, or "
                "build that conv with bias=True"
            )
        else:
            conv.bias.copy_(bias)
        done.add(f"{record.conv}.bias")
    source = converted.state_dict()
    for key, tensor in out.state_dict().items():
        if key in done or key not in source:
            continue
        if source[key].shape != tensor.shape:
            raise ValueError(f"{key!r}: shape {tuple(tensor.shape)} in {name}, {tuple(source[key].shape)} converted")
        tensor.copy_(source[key])
    return out.eval()
