"""Modules that compute something else in training than in eval, found and recognised by what they compute.

fx traces a model in one mode (eval, see :func:`nsrep.convert`), so code outside ``torch.nn`` that reads
``self.training`` is frozen at its eval form: a BatchNorm subclass with its own forward (timm's
``BatchNormAct2d``) becomes ``F.batch_norm(..., training=False)``, a drop-path module becomes the identity, and
the converted model would silently keep that eval behaviour in training. So the tracer here keeps every such
module whole, as one call that follows ``model.train()`` (:class:`ModeAwareTracer`), and the converter then
recognises two kinds by probing them on a copy:

- a **norm-act** layer: a ``BatchNorm2d`` subclass computing ``BatchNorm2d.forward`` then its own child modules
  in order (timm's ``BatchNormAct2d``: drop, act), in training and in eval (:func:`norm_act_children`);
- a **drop-path**: the identity in eval; in training each sample either zeroed or scaled by one ``1/(1 - rate)``
  (timm's ``DropPath``, torchvision's ``StochasticDepth(mode="row")``) (:func:`drop_path_rate`).

Any other such module stays as it is (its own forward, its own mode), on the stream sum.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager

import torch
from torch import fx, nn

__all__ = ["ModeAwareTracer", "drop_path_rate", "frozen_training_flag", "norm_act_children", "reads_training"]

_PROBE_SEED = 0
_DROP_PROBE_SAMPLES = 4096
_DROP_PROBE_TRIALS = 4


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own forward: every submodule is a leaf call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _own_code(module: nn.Module, training: bool) -> str | None:
    was = module.training
    module.training = training
    try:
        root = _ChildrenAsLeaves().trace(module)
        return fx.GraphModule(module, root).code
    except Exception:  # fx raises many kinds; a module it cannot trace alone is judged by the whole trace
        return None
    finally:
        module.training = was


def reads_training(module: nn.Module) -> bool:
    """Whether ``module``'s own forward (its submodules not looked into) traces differently in train and eval."""
    if type(module).forward is nn.Module.forward:
        return False
    train, evaluation = _own_code(module, True), _own_code(module, False)
    return train is not None and evaluation is not None and train != evaluation


class ModeAwareTracer(fx.Tracer):
    """fx's tracer, but a module whose own forward reads ``self.training`` (and every BatchNorm) is one leaf
    call, kept whole so that it follows the converted model's train/eval mode (``mode_leaves``: their paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode_leaves: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or reads_training(m):
            self.mode_leaves.append(module_qualified_name)
            return True
        return False


def _probe_copy(module: nn.Module, training: bool) -> tuple[nn.Module, torch.dtype]:
    """A CPU copy of ``module`` in the given mode (probes never touch the user's module or device), and the
    floating dtype to probe it with."""
    probe = copy.deepcopy(module).cpu().train(training)
    tensor = next(iter(probe.state_dict().values()), None)
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float64
    return probe, dtype


@contextmanager
def _seeded(seed: int = _PROBE_SEED):
    """The same random state for every probe, the caller's own restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def norm_act_children(bn: nn.Module) -> list[str] | None:
    """The child names of a BatchNorm2d-like ``bn`` (``[]`` for ``nn.BatchNorm2d`` itself), or ``None``.

    Like: an affine ``BatchNorm2d`` subclass with running statistics whose forward equals ``BatchNorm2d.forward``
    followed by its direct children in registration order, output and updated statistics, in training and eval.
    """
    if type(bn) is nn.BatchNorm2d:
        return []
    if not isinstance(bn, nn.BatchNorm2d) or not (bn.affine and bn.track_running_stats):
        return None
    names = [name for name, _ in bn.named_children()]
    for training in (True, False):
        own, dtype = _probe_copy(bn, training)
        plain, _ = _probe_copy(bn, training)
        x = torch.randn(4, bn.num_features, 3, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
        try:
            with _seeded():
                y_own = own(x)
            with _seeded():
                y_plain = nn.BatchNorm2d.forward(plain, x)
                for name in names:
                    y_plain = getattr(plain, name)(y_plain)
        except Exception:  # a forward that does not take one 4-D batch is not BatchNorm-like
            return None
        states = zip(own.state_dict().values(), plain.state_dict().values(), strict=True)
        if not torch.equal(y_own, y_plain) or not all(torch.equal(a, b) for a, b in states):
            return None
    return names


@torch.no_grad()
def drop_path_rate(module: nn.Module) -> float | None:
    """The rate of a drop-path ``module`` (see the module docstring), or ``None`` if it is not one.

    A rate above 0 is accepted only once the probe has seen samples treated differently (so a whole-batch drop
    is not mistaken for it), and only with kept samples rescaled (the rate is read from the scale).
    """
    if not reads_training(module):
        return None
    evaluated, dtype = _probe_copy(module, False)
    trained, _ = _probe_copy(module, True)
    x = torch.rand(_DROP_PROBE_SAMPLES, 1, 1, 1, generator=torch.Generator().manual_seed(0)).to(dtype) + 1.0
    try:
        if not torch.equal(evaluated(x), x):
            return None
        ratios = []
        for trial in range(_DROP_PROBE_TRIALS):
            with _seeded(_PROBE_SEED + trial):
                ratios.append((trained(x) / x).flatten())
    except Exception:  # a forward that does not take a plain batch is not a drop-path
        return None
    ratio = torch.cat(ratios)
    kept = ratio[ratio != 0]
    if kept.numel() == 0:
        return 1.0
    scale = kept[0].item()
    if not torch.allclose(kept, kept.new_tensor(scale), rtol=1e-6, atol=0):
        return None
    if scale == 1.0:
        return 0.0 if kept.numel() == ratio.numel() else None  # dropping without rescaling: rate unknown
    if scale < 1.0 or not any(bool((r == 0).any() & (r != 0).any()) for r in ratios):
        return None
    return _shortest_rate(scale, dtype)


def _shortest_rate(scale: float, dtype: torch.dtype) -> float:
    """The rate with the fewest decimals whose ``1/(1 - rate)`` is ``scale`` in ``dtype`` (0.1, not the
    0.10000002 that a float32 scale reads back as)."""
    rate = 1.0 - 1.0 / scale
    for digits in range(1, 17):
        candidate = round(rate, digits)
        if candidate < 1 and torch.tensor(1.0 / (1.0 - candidate), dtype=dtype).item() == scale:
            return candidate
    return rate


def frozen_training_flag(node: fx.Node) -> bool:
    """Whether a traced function call got ``training=False`` (fx froze ``self.training`` at trace time)."""
    if node.op != "call_function":
        return False
    try:
        parameters = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):  # builtins without a signature take no training flag
        return False
    if "training" not in parameters:
        return False
    index = parameters.index("training")
    value = node.args[index] if len(node.args) > index else node.kwargs.get("training", True)
    return value is False
