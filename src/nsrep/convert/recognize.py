"""Recognising ops in a traced graph: what kind of op a call node is, and which guided op replaces it.

The rewriter (:mod:`nsrep.convert.tracing`) asks :func:`classify` for every call node and acts on the kind; the
activation kinds come from the one activation table (:mod:`nsrep.nn.activations`).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from nsrep.convert.modes import drop_path_rate
from nsrep.nn.activations import ACTIVATIONS, activation_of_call, activation_of_module, guided_activation
from nsrep.nn.guided import GuidedActivation

__all__ = ["GUIDED_SET", "classify", "dim_op_name", "guided_op", "is_constant", "is_global_size", "node_arg"]

GUIDED_SET = ", ".join(act.plain.__name__ for act in ACTIVATIONS.values()) + (
    " (Sigmoid/Hardsigmoid only as multiplicative gates)"
)

_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim"}
_PASS_METHODS = {"contiguous", "clone"}
_DIM_FUNCTIONS = {
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.chunk: "chunk",
    torch.split: "split",
    torch.sum: "sum",
    torch.mean: "mean",
}
_DIM_METHODS = {"transpose", "permute", "chunk", "split", "sum"}


def dim_op_name(node: fx.Node) -> str:
    """Which of transpose/permute/chunk/split/sum/mean a ``dim_op`` (or ``mean``) node calls."""
    return node.target if node.op == "call_method" else _DIM_FUNCTIONS[node.target]


def node_arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def is_constant(value) -> bool:
    return not any(isinstance(v, fx.Node) for v in (value if isinstance(value, tuple | list) else (value,)))


def is_global_size(size) -> bool:
    return size == 1 or (isinstance(size, tuple | list) and len(size) == 2 and all(s == 1 for s in size))


def classify(node: fx.Node, module: nn.Module | None) -> str:
    """The op kind of a call node (what it becomes on stream sets)."""
    if module is not None:
        table = {
            nn.Conv2d: "conv",
            nn.BatchNorm2d: "bn",
            nn.MaxPool2d: "maxpool",
            nn.AvgPool2d: "per_stream",
            nn.Upsample: "per_stream",
            nn.UpsamplingNearest2d: "per_stream",
            nn.UpsamplingBilinear2d: "per_stream",
            nn.ConvTranspose2d: "conv_transpose",
            nn.Linear: "linear",
            nn.LayerNorm: "layer_norm",
            nn.AdaptiveAvgPool2d: "adaptive_avg",
            nn.Flatten: "flatten",
            nn.Dropout: "dropout",
            nn.Dropout2d: "dropout",
            nn.Identity: "pass",
            nn.Sigmoid: "gate",
            nn.Hardsigmoid: "gate",
        }
        if activation_of_module(module) is not None:
            return "act"
        kind = table.get(type(module), "other")
        if kind == "other" and drop_path_rate(module) is not None:
            return "drop_path"
        return kind
    target = node.target
    if node.op == "call_method":
        if activation_of_call(target, method=True) is not None:
            return "act"
        if target == "sigmoid":
            return "gate"
        if target in ("add", "add_"):
            return "add"
        if target in ("sub", "sub_"):
            return "sub"
        if target in ("mul", "mul_"):
            return "mul"
        if target in ("div", "div_"):
            return "div"
        if target == "flatten":
            return "flatten"
        if target in ("view", "reshape"):
            return "reshape"
        if target == "mean":
            return "mean"
        if target in _SHAPE_METHODS:
            return "shape"
        if target in _PASS_METHODS:
            return "pass"
        if target in _DIM_METHODS:
            return "dim_op"
        return "other"
    if activation_of_call(target, method=False) is not None:
        return "act"
    if target in _GATE_FUNCTIONS:
        return "gate"
    if target in _ADD:
        return "add"
    if target in _SUB:
        return "sub"
    if target in _MUL:
        return "mul"
    if target in _DIV:
        return "div"
    if target in _CAT:
        return "cat"
    if target is torch.mean:
        return "mean"
    if target in _DIM_FUNCTIONS:
        return "dim_op"
    if target is operator.getitem:
        return "getitem"
    if target is torch.flatten:
        return "flatten"
    if target is torch.reshape:
        return "reshape"
    if target is F.pad:
        return "pad"
    if target is F.max_pool2d:
        return "maxpool"
    if target in (F.avg_pool2d, F.interpolate):
        return "per_stream"
    if target is F.layer_norm:
        return "layer_norm"
    if target is F.adaptive_avg_pool2d:
        return "adaptive_avg"
    if target in (F.dropout, F.dropout2d):
        return "dropout"
    if target is getattr and node.args[1] in _SHAPE_ATTRS:
        return "shape"
    return "other"


def guided_op(node: fx.Node, module: nn.Module | None) -> GuidedActivation | None:
    """The guided version of an activation call, or None when its arguments are not constants."""
    if module is not None:
        name = activation_of_module(module)
        option = ACTIVATIONS[name].option
        options = {} if option is None else {option: getattr(module, option)}
    else:
        name = activation_of_call(node.target, method=node.op == "call_method")
        act = ACTIVATIONS[name]
        options = {} if act.option is None else {act.option: node_arg(node, 1, act.option, act.option_default)}
        if not all(is_constant(v) for v in options.values()):
            return None
    return guided_activation(name, **options)
