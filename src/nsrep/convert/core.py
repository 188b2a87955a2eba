"""``convert``: any PyTorch CNN made branch-level (NS) without rewriting it."""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import replace

import torch
from torch import Tensor, nn

from nsrep.convert.fallback import walk
from nsrep.convert.report import Conversion
from nsrep.convert.tracing import rewrite, trace
from nsrep.convert.units import BIASLESS_CONVS, INITS
from nsrep.nn.conv import DEFAULT_MAX_STREAMS, UnitConfig
from nsrep.reparam import unwrap_model, verify_equivalence
from nsrep.validation import check_choice

__all__ = ["convert"]


def convert(
    model: nn.Module,
    family: str = "dbb",
    connectivity: str = "ns",
    stochastic: float = 1.0,
    pair_drop: float = 0.0,
    init: str = "fresh",
    example_input: Tensor | None = None,
    *,
    num_branches: int | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
    biasless_convs: str = "unit",
) -> nn.Module:
    """A branch-level copy of ``model``: every ``Conv2d`` (with the BatchNorm after it) a ``family`` unit.

    ``model`` is traced with ``torch.fx`` and every op between units is made stream-aware (see
    :mod:`nsrep.convert.tracing`); what is not stream-aware runs after a stream sum, and what would have to
    feed stream sets again raises ``ValueError`` naming the op and its module. ``model`` is left untouched.
    Only exact ``nn.Conv2d`` modules become units: a subclass with its own forward (timm's ScaledStdConv2d,
    Conv2dSame) stays as it is, listed in the report's ``unconverted`` with a warning; a model with no
    convertible conv at all raises ``ValueError``.

    ``init="fresh"``: units start from nsrep's init. ``init="preserve"``: the converted model starts as the
    same function as ``model`` in eval mode (conv and BN copied into each unit's k×k branch, every other
    branch starting at zero output), to fine-tune pretrained networks.

    ``biasless_convs="plain"``: a conv with neither a bias nor a BatchNorm after it (DenseNet's) stays a plain
    conv (per stream), listed in the report's ``plain_convs``, because the user's class has nowhere to hold its
    unit's folded bias: :func:`nsrep.fold_into` then works. The default ``"unit"`` converts it too (for
    :func:`nsrep.reparameterize`, which makes its own convs).

    When fx cannot trace ``model``, it falls back to module walking with ``block`` connectivity (a warning
    says so; see :mod:`nsrep.convert.fallback`). ``example_input``, if given, runs the converted model once
    in eval mode (errors surface here) and, with ``init="preserve"``, records its distance to ``model``.

    Returns an ``fx.GraphModule`` (or the fallback's copy of ``model``) with a report ``nsrep_conversion``;
    :func:`nsrep.fold_into` writes its folded weights back into ``model``'s own class, and
    :func:`nsrep.reparameterize` folds it in place of the graph.
    """
    check_choice("init", init, INITS)
    check_choice("biasless_convs", biasless_convs, BIASLESS_CONVS)
    config = UnitConfig(family, connectivity, stochastic, pair_drop, num_branches, max_streams)
    source = unwrap_model(model)
    # Traced in eval mode: code outside torch.nn modules that branches on ``self.training`` (torchvision's
    # StochasticDepth) is frozen at trace time, and its eval form is the one that keeps eval outputs right.
    work = copy.deepcopy(source).eval()
    own_forward = _own_forward_convs(source)
    try:
        graph_module = trace(work)
    except Exception as err:  # fx raises many kinds; any of them means "no graph"
        report = Conversion("module-walk", family, "block", init)
        report.unconverted.append(
            f"<model> ({type(source).__name__}): fx cannot trace it ({type(err).__name__}: {err}); "
            "converted by module walking with block connectivity"
        )
        if connectivity != "block":
            warnings.warn(
                f"nsrep.convert: fx cannot trace {type(source).__name__} ({err}); falling back to module walking "
                f"with block connectivity instead of {connectivity!r}",
                stacklevel=2,
            )
        converted = walk(work, replace(config, connectivity="block"), init, report, biasless_convs)
    else:
        report = Conversion("fx", family, connectivity, init)
        try:
            converted = rewrite(graph_module, config, init, report, biasless_convs)
        except ValueError as err:
            if not own_forward:
                raise
            # the convs left plain may be the real cause (everything around them stays plain): say so
            raise ValueError(
                f"nsrep.convert cannot convert {type(source).__name__}: {_count(own_forward)} of it are left as they "
                f"are: {_kinds(own_forward)} ({_WHY_LEFT}); with them plain, the conversion then fails: {err}"
            ) from None
    report.unconverted += [f"{path!r} ({kind}): {_WHY_LEFT}; left as it is" for path, kind in own_forward]
    if not report.units:
        found = (
            f"its {_count(own_forward)} are {_kinds(own_forward)} ({_WHY_LEFT})"
            if own_forward
            else "it has no torch.nn.Conv2d"
        )
        raise ValueError(f"nsrep.convert found no convolution to convert in {type(source).__name__}: {found}")
    if own_forward:
        warnings.warn(
            f"nsrep.convert: {_count(own_forward)} left as {'it is' if len(own_forward) == 1 else 'they are'}: "
            f"{_kinds(own_forward)} ({_WHY_LEFT}); they stay plain convolutions, fed the stream sum",
            stacklevel=2,
        )
    converted.train(source.training)
    if example_input is not None:
        if init == "preserve":
            report.check = verify_equivalence(source, converted, example_input)
        else:
            was_training = converted.training
            with torch.no_grad():
                converted.eval()(example_input)
            converted.train(was_training)
    return converted


_WHY_LEFT = (
    "Conv2d subclasses with their own forward, e.g. weight standardisation or dynamic padding, which a unit "
    "would not compute"
)


def _own_forward_convs(model: nn.Module) -> list[tuple[str, str]]:
    """``(path, class name)`` of the ``Conv2d`` subclasses whose forward is their own (timm's ScaledStdConv2d,
    Conv2dSame): nsrep makes units of exact ``nn.Conv2d`` only, so these stay as they are and must be named."""
    return [
        (path, type(m).__name__)
        for path, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and type(m).forward is not nn.Conv2d.forward
    ]


def _count(convs: list) -> str:
    return f"{len(convs)} conv{'s' if len(convs) != 1 else ''}"


def _kinds(convs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} ×{n}" for kind, n in Counter(kind for _, kind in convs).items())
