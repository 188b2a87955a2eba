"""The fallback of :func:`nsrep.convert` when fx cannot trace a model (data-dependent control flow, ...).

Without a graph nothing proves which ops see a conv's output, so no stream set may leave a unit: every
``Conv2d`` becomes a ``block`` unit, which maps a ``(B, C, H, W)`` batch to a batch exactly like a conv, so
the rest of the model runs unchanged whatever its forward does (whatever connectivity was asked for). A
BatchNorm is absorbed into the unit (and replaced by ``nn.Identity``) only where a traced forward proves it is
applied to that conv's output alone: the largest submodules that fx *can* trace (an ``nn.Sequential``, a
residual block) are traced for this, on the assumption that no ancestor reaches past a traced module into
its children. Other convs become units alone, followed by their BN as before (``fold_into`` then needs the
conv to have a bias to hold the folded one).
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn

from nsrep.convert.report import Conversion, ConvertedConv
from nsrep.convert.units import build_unit
from nsrep.nn.conv import UnitConfig

__all__ = ["walk"]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_conv(module: nn.Module) -> bool:
    return any(type(m) is nn.Conv2d for m in module.modules())


def _proven_pairs(module: nn.Module, prefix: str, pairs: dict[str, str], report: Conversion) -> None:
    """conv path -> BN path for the pairs a trace of ``module`` (or of its largest traceable parts) proves."""
    if type(module) is nn.Conv2d or not _has_conv(module):
        return
    try:
        graph = fx.Tracer().trace(module)
    except Exception as err:  # fx raises many kinds; any of them means "look at the children"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        report.unconverted.append(f"{prefix or '<model>'} ({type(module).__name__}): fx cannot trace it ({reason})")
        for name, child in module.named_children():
            _proven_pairs(child, _join(prefix, name), pairs, report)
        return
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or type(module.get_submodule(node.target)) is not nn.Conv2d:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,) or users[0].kwargs:
            continue
        bn = module.get_submodule(users[0].target)
        conv = module.get_submodule(node.target)
        if (
            type(bn) is nn.BatchNorm2d
            and bn.affine
            and bn.track_running_stats
            and bn.num_features == conv.out_channels
            and calls[node.target] == 1
            and calls[users[0].target] == 1
        ):
            pairs[_join(prefix, node.target)] = _join(prefix, users[0].target)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def walk(
    model: nn.Module, config: UnitConfig, init: str, report: Conversion, biasless_convs: str = "unit"
) -> nn.Module:
    """Replace, in place, every ``Conv2d`` of ``model`` by a block unit (see the module docstring)."""
    seen = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs: dict[str, str] = {}
    _proven_pairs(model, "", pairs, report)
    for path, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d:
            continue
        if seen[id(conv)] > 1:
            raise ValueError(f"nsrep.convert cannot convert conv {path!r}: the same module sits at several places")
        bn_path = pairs.get(path)
        if bn_path is None and conv.bias is None and biasless_convs == "plain":
            report.plain_convs.append(f"{path} (no bias, no BatchNorm after it)")
            continue
        bn = model.get_submodule(bn_path) if bn_path else None
        _set(model, path, build_unit(conv, bn, 1, config, init, path))
        if bn_path:
            _set(model, bn_path, nn.Identity())
        else:
            report.unconverted.append(f"{path}: converted alone (no BatchNorm proven to follow it)")
        report.units.append(ConvertedConv(path, bn_path, 1, 1))
    model.nsrep_conversion = report
    return model
