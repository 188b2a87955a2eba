"""The fx graph rewrite behind :func:`nsrep.convert`: which values carry stream sets, and what each op becomes.

Every value of the traced graph gets a state:

- ``Plain``: an ordinary tensor or constant never derived from a stream set (the input, shapes, parameters);
- ``Streams(S)``: a stream set ``(S, B, ...)``;
- ``Merged(restriction, origin)``: a plain tensor computed from a stream *sum* (the aggregate). Its
  ``restriction`` says where it may go: ``None`` (a global average pool's output: anything, e.g. the SE
  squeeze path or the head), ``"gate"`` (a Sigmoid/Hardsigmoid of streams, computed on their aggregate: it
  may multiply stream sets and feed plain ops, nothing else), ``"forced"`` (an op that is not stream-aware
  ran on the aggregate: only plain ops may follow, up to the output).

Ops, given the states of their inputs (streams-first stream sets, docs/architecture.md):

- ``Conv2d`` on the input or on streams: a unit (absorbing the ``BatchNorm2d`` that is its only user); on a
  ``Merged`` value (SE convs, head convs): kept plain, on the aggregate, so its bias counts once;
- ReLU, ReLU6, LeakyReLU, SiLU, GELU, Hardswish (modules, functions, methods): guided activations;
  max-pool: guided max-pool; a BatchNorm not after a conv: :class:`~nsrep.convert.ops.StreamBatchNorm2d`;
- avg-pool, adaptive avg-pool (not global), upsampling (``nn.Upsample``, ``F.interpolate``), a transposed conv
  (kept plain, its bias split over the streams), flatten, view/reshape, channel cat, add/sub, multiplication and
  division by a plain value (an SE gate, a constant), dropout (one mask for all streams): per stream, a plain
  operand of add/sub/cat split over the streams so that it counts once;
- a global average pool (adaptive to 1×1, mean over H and W): on the aggregate (same result, cheaper);
- anything else on streams: on the aggregate, after a stream sum (``after_sum`` in the report). If its result
  would have to flow back into a unit or a stream set, the conversion is refused with a ``ValueError`` naming
  the op and the module, never silently mishandled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NoReturn

import torch.nn.functional as F
from torch import fx, nn

from nsrep.convert.modes import ModeAwareTracer, drop_path_rate, frozen_training_flag, norm_act_children
from nsrep.convert.ops import (
    Call,
    FirstStream,
    GuidedLayerNormCall,
    PerStream,
    StreamArith,
    StreamBatchNorm2d,
    StreamCat,
    StreamConv2d,
    StreamConvTranspose2d,
    StreamDimOp,
    StreamDropout,
    StreamFlatten,
    StreamIndex,
    StreamLayerNorm,
    StreamLinear,
    StreamReshape,
)
from nsrep.convert.recognize import GUIDED_SET, classify, dim_op_name, guided_op, is_constant, is_global_size, node_arg
from nsrep.convert.report import Conversion, ConvertedConv
from nsrep.convert.units import build_unit
from nsrep.nn.conv import UnitConfig
from nsrep.nn.drop_path import DropPath
from nsrep.nn.guided import GuidedMaxPool2d
from nsrep.nn.streams import StreamEntry, StreamSum

__all__ = ["ConvertedModel", "rewrite", "trace"]


class ConvertedModel(fx.GraphModule):
    """A converted network: an fx ``GraphModule`` whose report survives ``copy.deepcopy`` (kept in ``meta``)."""

    @property
    def nsrep_conversion(self) -> Conversion:
        return self.meta["nsrep_conversion"]

    @nsrep_conversion.setter
    def nsrep_conversion(self, report: Conversion) -> None:
        self.meta["nsrep_conversion"] = report


@dataclass(frozen=True)
class Plain:
    pass


@dataclass(frozen=True)
class Streams:
    count: int


@dataclass(frozen=True)
class StreamTuple:
    """A tuple of stream sets with ``count`` streams each (chunk, split): only indexing may take it."""

    count: int


@dataclass(frozen=True)
class Merged:
    restriction: str | None  # None, "gate" or "forced"
    origin: str


PLAIN = Plain()
_RANK = {None: 0, "gate": 1, "forced": 2}


class _GraphState:
    """What the rewrite knows of each graph value (plain, streams, merged) and the graph edits it makes:
    installing a module in a node's place, summing a stream set once, refusing with the op named."""

    def __init__(
        self, gm: fx.GraphModule, config: UnitConfig, init: str, report: Conversion, biasless_convs: str = "unit"
    ) -> None:
        self.gm, self.graph, self.config, self.init, self.report = gm, gm.graph, config, init, report
        self.biasless_convs = biasless_convs
        self.state: dict[fx.Node, Plain | Streams | StreamTuple | Merged] = {}
        self.sums: dict[fx.Node, fx.Node] = {}
        self.erased: set[fx.Node] = set()
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        gm.add_submodule("nsrep_entry", StreamEntry())
        gm.add_submodule("nsrep_sum", StreamSum())
        gm.add_submodule("nsrep_first", FirstStream())

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{type(self.module(node)).__name__} module {node.target!r}"
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        kind = "method" if node.op == "call_method" else "function"
        stack = node.meta.get("nn_module_stack") or {}
        where = f" in module {next(reversed(stack.values()))[0]!r}" if stack else ""
        return f"{kind} {name!r} (graph node {node.name!r}{where})"

    def st(self, value) -> Plain | Streams | StreamTuple | Merged:
        return self.state[value] if isinstance(value, fx.Node) else PLAIN

    def combine(self, node: fx.Node) -> Plain | Merged:
        merged = [s for s in map(self.st, node.all_input_nodes) if isinstance(s, Merged)]
        return max(merged, key=lambda m: _RANK[m.restriction]) if merged else PLAIN

    def refuse(self, node: fx.Node, merged: Merged) -> NoReturn:
        what = (
            f"it takes the gate {merged.origin}, which nsrep computes on the stream aggregate and which may only "
            "multiply stream sets"
            if merged.restriction == "gate"
            else f"its input comes from {merged.origin}, which is not stream-aware (guided set: {GUIDED_SET}) and "
            "so runs on the stream sum"
        )
        raise ValueError(
            f"nsrep.convert cannot convert {self.describe(node)}: {what}; the stream sum cannot be moved after it "
            "because this op needs stream sets again. Replace the op by a supported one, or move it after the last "
            "convolution."
        )

    def check_mixable(self, node: fx.Node, values) -> None:
        """Values combined with stream sets must not carry a restricted aggregate."""
        for v in values:
            s = self.st(v)
            if isinstance(s, Merged) and s.restriction is not None:
                self.refuse(node, s)

    def set_module(self, path: str, module: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        setattr(self.gm.get_submodule(parent), name, module)

    def install(self, node: fx.Node, module: nn.Module, args: tuple, kwargs: dict | None = None) -> fx.Node:
        """Replace ``node`` by a call of ``module``: at the node's own module path when that module is called
        only here (names stay readable), else at ``nsrep_ops.<node>``."""
        if node.op == "call_module" and self.calls[node.target] == 1:
            path = node.target
            self.set_module(path, module)
        else:
            path = f"nsrep_ops.{node.name}"
            self.gm.add_submodule(path, module)
        with self.graph.inserting_after(node):
            new = self.graph.call_module(path, args, kwargs or {})
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        self.erased.add(node)
        return new

    def summed(self, value: fx.Node) -> fx.Node:
        """The stream sum of ``value`` (one node per summed value)."""
        if value not in self.sums:
            with self.graph.inserting_after(value):
                self.sums[value] = self.graph.call_module("nsrep_sum", (value,))
        return self.sums[value]

    def sum_inputs(self, node: fx.Node) -> None:
        for value in node.all_input_nodes:
            if isinstance(self.st(value), Streams):
                node.replace_input_with(value, self.summed(value))


class _Rewriter(_GraphState):
    """One pass over the graph in order: each node goes to ``visit_<kind>`` (its kind from
    :func:`nsrep.convert.recognize.classify`) when stream sets reach it, which rewrites it and says what it
    outputs; nodes that see no stream set stay as they are."""

    def run(self) -> None:
        self.refuse_frozen_training()
        self.expand_norm_acts()
        for node in list(self.graph.nodes):
            if node in self.erased:
                continue
            if node.op in ("placeholder", "get_attr"):
                self.state[node] = PLAIN
            elif node.op == "output":
                self.sum_inputs(node)
            else:
                module = self.module(node)
                kind = classify(node, module)
                inputs = [self.st(v) for v in node.all_input_nodes]
                if any(isinstance(s, StreamTuple) for s in inputs) and kind != "getitem":
                    raise ValueError(
                        f"nsrep.convert cannot convert {self.describe(node)}: it takes a whole tuple of stream sets "
                        "(from chunk or split); index the tuple first, or move the op after the last convolution"
                    )
                if any(isinstance(s, Streams | StreamTuple) for s in inputs) or kind in ("conv", "dropout"):
                    result = getattr(self, f"visit_{kind}")(node, module)
                else:
                    result = (node, self.combine(node))
                    if isinstance(result[1], Merged) and kind not in ("shape", "conv"):
                        self.report.after_sum.append(self.describe(node))
                self.state[result[0]] = result[1]
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()

    def refuse_frozen_training(self) -> None:
        """A function call that took ``training=False`` from ``self.training`` at trace time would keep its eval
        behaviour in training: refused (dropout calls excepted: they become :class:`StreamDropout`)."""
        for node in self.graph.nodes:
            if frozen_training_flag(node) and classify(node, None) != "dropout":
                raise ValueError(
                    f"nsrep.convert cannot convert {self.describe(node)}: fx traced it with training=False (the "
                    "value of self.training in eval mode, frozen into the graph), so the converted model would "
                    "keep its eval behaviour in training. Call it through a torch.nn module (e.g. nn.BatchNorm2d) "
                    "or a module of its own, which nsrep keeps whole so that it follows model.train()."
                )

    def expand_norm_acts(self) -> None:
        """Each norm-act layer (:func:`nsrep.convert.modes.norm_act_children`) becomes a plain BatchNorm2d at its
        own path (its children kept on it) and one call per child after it, so that the conv before it absorbs
        the BN and its activation is guided like any other; state-dict keys stay the same."""
        for node in list(self.graph.nodes):
            module = self.module(node)
            if module is None or type(module) is nn.BatchNorm2d or not isinstance(module, nn.BatchNorm2d):
                continue
            children = norm_act_children(module)
            if children is None or self.calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
                self.report.unconverted.append(
                    f"{node.target} ({type(module).__name__}): a BatchNorm whose forward is not BatchNorm2d's "
                    "followed by its children; kept whole (it follows train/eval), on the stream sum"
                )
                continue
            plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum).to(module.weight)
            plain.load_state_dict(module.state_dict(), strict=False)
            for name, child in module.named_children():
                plain.add_module(name, child)
            self.set_module(node.target, plain.train(module.training))
            last = node
            users = list(node.users)
            for name in children:
                with self.graph.inserting_after(last):
                    last = self.graph.call_module(f"{node.target}.{name}", (last,))
                self.calls[last.target] += 1
            for user in users:
                user.replace_input_with(node, last)

    def visit_drop_path(self, node: fx.Node, module: nn.Module):
        """Drop-path on a stream set: one per-sample mask shared by every stream (:mod:`nsrep.nn.drop_path`)."""
        if len(node.args) != 1 or node.kwargs or self.calls[node.target] != 1:
            return self.visit_other(node, module)
        self.set_module(node.target, DropPath(drop_path_rate(module), batch_dim=1).train(module.training))
        self.report.stream_ops.append(self.describe(node))
        return node, self.st(node.args[0])

    def visit_other(self, node: fx.Node, module: nn.Module | None):
        self.sum_inputs(node)
        origin = self.describe(node)
        self.report.after_sum.append(origin)
        return node, Merged("forced", origin)

    def visit_pass(self, node, module):
        return node, self.st(node.args[0])

    def visit_conv(self, node: fx.Node, conv: nn.Conv2d):
        x = node.args[0]
        s = self.st(x)
        if isinstance(s, Merged):
            if s.restriction is not None:
                self.refuse(node, s)
            self.report.plain_convs.append(node.target)
            return node, s
        if self.calls[node.target] != 1:
            raise ValueError(
                f"nsrep.convert cannot convert conv {node.target!r}: it is applied {self.calls[node.target]} times "
                "(shared weights); each conv position needs its own unit"
            )
        bn_node = self.following_bn(node, conv)
        if bn_node is None and conv.bias is None and self.biasless_convs == "plain":
            return self.keep_conv_plain(node, conv, s, "no bias, no BatchNorm after it")
        bn = self.module(bn_node) if bn_node is not None else None
        in_streams = s.count if isinstance(s, Streams) else 1
        try:
            unit = build_unit(conv, bn, in_streams, self.config, self.init, node.target)
        except ValueError as err:
            if all(k % 2 for k in conv.kernel_size):
                raise
            return self.keep_conv_plain(node, conv, s, f"{'x'.join(map(str, conv.kernel_size))} kernel: {err}")
        if isinstance(s, Plain):
            with self.graph.inserting_before(node):
                x = self.graph.call_module("nsrep_entry", (x,))
        self.set_module(node.target, unit)
        node.args, node.kwargs = (x,), {}
        if bn_node is not None:
            if next(self.module(bn_node).children(), None) is not None:  # a norm-act's drop and act stay called
                holder = nn.Module()
                for child_name, child in self.module(bn_node).named_children():
                    holder.add_module(child_name, child)
                self.set_module(bn_node.target, holder)
            bn_node.replace_all_uses_with(node)
            self.graph.erase_node(bn_node)
            self.erased.add(bn_node)
        self.report.units.append(
            ConvertedConv(node.target, bn_node.target if bn_node else None, in_streams, unit.out_streams)
        )
        return node, Streams(unit.out_streams)

    def keep_conv_plain(self, node: fx.Node, conv: nn.Conv2d, s: Plain | Streams, why: str):
        """A conv that is not made a unit: as it is on a plain input, per stream (bias split) on a stream set."""
        self.report.plain_convs.append(f"{node.target} ({why})")
        if isinstance(s, Streams):
            self.set_module(node.target, StreamConv2d.from_module(conv))
        return node, s

    def following_bn(self, node: fx.Node, conv: nn.Conv2d) -> fx.Node | None:
        """The BatchNorm2d that is the conv's only user, applied once, on the conv output alone."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,) or users[0].kwargs:
            return None
        bn = self.module(users[0])
        ok = type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
        if not ok or bn.num_features != conv.out_channels or self.calls[users[0].target] != 1:
            return None
        return users[0]

    def visit_conv_transpose(self, node: fx.Node, conv: nn.ConvTranspose2d):
        """A transposed conv on streams stays plain, per stream (bias counted once); not a unit."""
        if len(node.args) != 1 or node.kwargs or conv.padding_mode != "zeros" or self.calls[node.target] != 1:
            return self.visit_other(node, conv)
        self.set_module(node.target, StreamConvTranspose2d.from_module(conv))
        self.report.stream_ops.append(self.describe(node))
        return node, self.st(node.args[0])

    def visit_linear(self, node: fx.Node, linear: nn.Linear):
        """A linear layer on streams (a channels-last MLP) stays plain, per stream (bias counted once)."""
        if not isinstance(self.st(node.args[0]), Streams) or len(node.args) != 1 or self.calls[node.target] != 1:
            return self.visit_other(node, linear)
        self.set_module(node.target, StreamLinear.from_module(linear))
        self.report.stream_ops.append(self.describe(node))
        return node, self.st(node.args[0])

    def visit_layer_norm(self, node: fx.Node, norm: nn.LayerNorm | None):
        """LayerNorm guided by the aggregate (statistics of the stream sum, applied to every stream)."""
        x = node.args[0]
        others = [v for v in node.all_input_nodes if v is not x]
        if not isinstance(self.st(x), Streams) or any(not isinstance(self.st(v), Plain) for v in others):
            return self.visit_other(node, norm)
        self.report.guided.append(f"{self.describe(node)} (statistics of the aggregate)")
        if norm is None:
            return self.install(node, GuidedLayerNormCall(), node.args, node.kwargs), self.st(x)
        if len(node.args) != 1 or node.kwargs or self.calls[node.target] != 1:
            return self.visit_other(node, norm)
        self.set_module(node.target, StreamLayerNorm.from_module(norm))
        return node, self.st(x)

    def visit_bn(self, node: fx.Node, bn: nn.BatchNorm2d):
        if not (bn.affine and bn.track_running_stats) or node.kwargs or len(node.args) != 1:
            return self.visit_other(node, bn)
        if not isinstance(bn, StreamBatchNorm2d):  # replaced at its own path: same state-dict keys
            self.set_module(node.target, StreamBatchNorm2d.from_bn(bn))
        self.report.guided.append(f"BatchNorm2d {node.target!r} (statistics of the aggregate)")
        return node, self.st(node.args[0])

    def visit_act(self, node: fx.Node, module):
        guided = guided_op(node, module)
        if guided is None:
            return self.visit_other(node, module)
        self.report.guided.append(self.describe(node))
        s = self.st(node.args[0])
        return self.install(node, guided, (node.args[0],)), s

    def visit_gate(self, node: fx.Node, module):
        self.sum_inputs(node)
        origin = self.describe(node)
        self.report.after_sum.append(f"{origin} (gate of the aggregate)")
        return node, Merged("gate", origin)

    def visit_maxpool(self, node: fx.Node, module):
        if module is not None:
            options = [module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode]
            indices = module.return_indices
        else:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
            defaults = (None, None, 0, 1, False)
            options = [node_arg(node, i + 1, n, d) for i, (n, d) in enumerate(zip(names, defaults, strict=True))]
            indices = node_arg(node, 6, "return_indices", False)
        if indices or not all(is_constant(o) for o in options):
            return self.visit_other(node, module)
        self.report.guided.append(self.describe(node))
        s = self.st(node.args[0])
        return self.install(node, GuidedMaxPool2d(*options), (node.args[0],)), s

    def visit_per_stream(self, node: fx.Node, module):
        if not isinstance(self.st(node.args[0]), Streams) or any(
            isinstance(self.st(v), Streams) for v in node.all_input_nodes if v is not node.args[0]
        ):
            return self.visit_other(node, module)
        s = self.st(node.args[0])
        op = PerStream(module) if module is not None else PerStream(Call(node.target))
        self.report.stream_ops.append(self.describe(node))
        return self.install(node, op, node.args, node.kwargs), s

    def global_pool(self, node: fx.Node):
        self.sum_inputs(node)
        origin = self.describe(node)
        self.report.after_sum.append(f"{origin} (global average pool of the aggregate)")
        return node, Merged(None, origin)

    def visit_adaptive_avg(self, node: fx.Node, module):
        size = module.output_size if module is not None else node_arg(node, 1, "output_size")
        if is_global_size(size):
            return self.global_pool(node)
        return self.visit_per_stream(node, module)

    def visit_mean(self, node: fx.Node, module):
        dims = node_arg(node, 1, "dim")
        dims = {dims} if isinstance(dims, int) else set(dims or ())
        if len(node.all_input_nodes) == 1 and (dims >= {2, 3} or dims >= {-1, -2}):
            return self.global_pool(node)
        return self.visit_dim_op(node, module)

    def visit_pad(self, node: fx.Node, module):
        """``F.pad`` is per stream when it pads with zeros or copies values (reflect, replicate, circular): the
        padded aggregate is then the sum of the padded streams. A non-zero fill would be added once per stream."""
        value, mode = node_arg(node, 3, "value", None), node_arg(node, 2, "mode", "constant")
        if not (is_constant(node_arg(node, 1, "pad")) and is_constant(mode)) or (
            mode == "constant" and value not in (None, 0)
        ):
            return self.visit_other(node, module)
        return self.visit_per_stream(node, module)

    def visit_add(self, node: fx.Node, module, op: str = "add"):
        if len(node.args) != 2 or node.kwargs:  # alpha=..., out=...: not handled
            return self.visit_other(node, module)
        a, b = node.args
        self.check_mixable(node, (a, b))
        sa, sb = (s.count if isinstance(s, Streams) else None for s in (self.st(a), self.st(b)))
        arith = StreamArith(op, sa, sb, self.config.max_streams)
        self.report.stream_ops.append(self.describe(node))
        return self.install(node, arith, (a, b)), Streams(arith.out_streams)

    def visit_sub(self, node: fx.Node, module):
        return self.visit_add(node, module, "sub")

    def visit_mul(self, node: fx.Node, module, divide: bool = False):
        if len(node.args) != 2 or node.kwargs:
            return self.visit_other(node, module)
        a, b = node.args
        states = [self.st(a), self.st(b)]
        streamed = [isinstance(s, Streams) for s in states]
        if all(streamed) or (divide and not streamed[0]):  # a product of streams is not linear in them
            return self.visit_other(node, module)
        other = states[1] if streamed[0] else states[0]
        if isinstance(other, Merged) and other.restriction == "forced":
            self.refuse(node, other)
        self.report.stream_ops.append(self.describe(node))
        return node, states[0] if streamed[0] else states[1]  # broadcasting a plain factor over the streams

    def visit_div(self, node: fx.Node, module):
        return self.visit_mul(node, module, divide=True)

    def visit_cat(self, node: fx.Node, module):
        tensors, dim = node.args[0], node_arg(node, 1, "dim", 0)
        if not isinstance(tensors, tuple | list) or not isinstance(dim, int):
            return self.visit_other(node, module)
        self.check_mixable(node, tensors)
        streams = [self.st(t).count if isinstance(self.st(t), Streams) else None for t in tensors]
        cat = StreamCat(streams, dim, self.config.max_streams)
        self.report.stream_ops.append(self.describe(node))
        return self.install(node, cat, (list(tensors),)), Streams(cat.out_streams)

    def visit_flatten(self, node: fx.Node, module):
        if module is not None:
            start, end = module.start_dim, module.end_dim
        else:
            start, end = node_arg(node, 1, "start_dim", 0), node_arg(node, 2, "end_dim", -1)
        if not (isinstance(start, int) and isinstance(end, int)) or len(node.all_input_nodes) != 1:
            return self.visit_other(node, module)
        self.report.stream_ops.append(self.describe(node))
        s = self.st(node.args[0])
        return self.install(node, StreamFlatten(start, end), (node.args[0],)), s

    def visit_reshape(self, node: fx.Node, module):
        if node.kwargs or any(isinstance(self.st(v), Streams) for v in node.all_input_nodes[1:]):
            return self.visit_other(node, module)
        self.report.stream_ops.append(self.describe(node))
        s = self.st(node.args[0])
        return self.install(node, StreamReshape(), node.args), s

    def visit_dim_op(self, node: fx.Node, module):
        """transpose, permute, chunk, split, sum and mean over given dims on stream sets: per stream, their dims
        moved past the stream axis."""
        x = node.args[0]
        s = self.st(x)
        arguments = [self.st(v) for v in node.all_input_nodes if v is not x]
        name = dim_op_name(node)
        allowed = {"dim", "keepdim"} if name in ("sum", "mean") else {"dim", "dims"}
        if not isinstance(s, Streams) or set(node.kwargs) - allowed or arguments.count(PLAIN) != len(arguments):
            return self.visit_other(node, module)
        kwargs = dict(node.kwargs)
        rest_args = (kwargs.pop("dims"),) if name == "permute" and "dims" in kwargs else tuple(node.args[1:])
        if name in ("sum", "mean") and node_arg(node, 1, "dim") in (None, (), []):
            return self.visit_other(node, module)  # over every dim: the streams would be added up too
        self.report.stream_ops.append(self.describe(node))
        new = self.install(node, StreamDimOp(name), (x, *rest_args), kwargs)
        return new, StreamTuple(s.count) if name in ("chunk", "split") else s

    def visit_getitem(self, node: fx.Node, module):
        """An element of a chunk/split tuple, or an index of every stream (GhostNet's ``x[:, :c]``)."""
        x, index = node.args
        s = self.st(x)
        index_nodes = [v for v in node.all_input_nodes if v is not x]
        if any(not isinstance(self.st(v), Plain) for v in index_nodes):
            return self.visit_other(node, module)
        if isinstance(s, StreamTuple):
            if isinstance(index, int):
                return node, Streams(s.count)
            if isinstance(index, slice) and is_constant((index.start, index.stop, index.step)):
                return node, s
            return self.visit_other(node, module)
        self.report.stream_ops.append(self.describe(node))
        return self.install(node, StreamIndex(), (x, index)), s

    def visit_shape(self, node: fx.Node, module):
        """Shape queries on a stream set answer for one stream (``x[0]``: a free view)."""
        x = node.args[0]
        with self.graph.inserting_before(node):
            first = self.graph.call_module("nsrep_first", (x,))
        node.replace_input_with(x, first)
        self.state[first] = PLAIN
        return node, PLAIN

    def visit_dropout(self, node: fx.Node, module):
        s = self.st(node.args[0])
        on_streams = isinstance(s, Streams)
        result = s if on_streams else self.combine(node)
        if module is not None:
            if not on_streams:
                return node, result
            p, channelwise = module.p, isinstance(module, nn.Dropout2d)
        else:
            p, channelwise = node_arg(node, 1, "p", 0.5), node.target is F.dropout2d
            if not is_constant(p):
                return self.visit_other(node, module) if on_streams else (node, result)
        if on_streams:
            self.report.stream_ops.append(self.describe(node))
        return self.install(node, StreamDropout(p, channelwise, on_streams), (node.args[0],)), result


def trace(model: nn.Module) -> ConvertedModel:
    """``model`` traced by fx as a graph module (sharing ``model``'s submodules); raises what fx raises."""
    tracer = ModeAwareTracer()
    graph = tracer.trace(model)
    return ConvertedModel(tracer.root, graph, f"{type(model).__name__}NS")


def rewrite(
    gm: ConvertedModel, config: UnitConfig, init: str, report: Conversion, biasless_convs: str = "unit"
) -> ConvertedModel:
    """Make the traced ``gm`` branch-level, in place; ``ValueError`` for what cannot be converted."""
    gm.nsrep_conversion = report
    _Rewriter(gm, config, init, report, biasless_convs).run()
    return gm
