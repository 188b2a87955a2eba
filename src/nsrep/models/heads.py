"""Classifier heads on frozen features (paper Table 4): a linear probe, an MLP adapter, and the adapter with NS.

Table 4 compares "FC" (a linear classifier on CLIP image features), "MLP/FC" (a 4×-scale MLP visual adapter
followed by the FC classifier) and "NS MLP/FC" (the adapter's layers re-parameterizable, joined by NS). Here:

- ``linear``: ``Linear(D, C)``.
- ``mlp``: ``Linear(D, e·D) -> act -> Linear(e·D, D)`` as a residual adapter ``x + adapter(x)``, then
  ``Linear(D, C)``. The residual is CLIP-Adapter's design (and a transformer MLP block's): the adapter refines
  the frozen features instead of replacing them, so the head contains the linear probe (adapter output 0) and
  "MLP/FC vs FC" measures what the adapter adds. Without it, the adapter's last linear and the classifier
  would be two consecutive linear maps, i.e. one rank-D classifier on the hidden layer.
- ``ns-mlp``: the same with both adapter linears as :class:`~nsrep.nn.linear.RepLinear` units (K branches, BN
  per branch by default) joined by NS connectivity, a guided activation between them, the shortcut spread over
  the K streams (:class:`~nsrep.nn.streams.StreamAdd`), the streams summed before the plain classifier.
- ``block-mlp``: the same units with block-level connectivity: the control that separates what NS changes from
  what the extra branches and their BNs change.

Why BN is on by default in the re-parameterized heads: without BN (and without pair drop) every branch is
affine, the guided activation passes each stream through the aggregate's gate, so the loss depends on the
branches only through ``sum_k W_k``: all K branches get the same gradient, and NS or block would train exactly a
plain MLP (with K times the step). Branch BNs make branches differ: under NS, each second-layer branch BN takes
its statistics over the K individual streams (S_in·N pair inputs) rather than their sum.

Every head folds to the plain form: ``reparameterize(create_head("ns-mlp", ...))`` has exactly the state dict
of ``create_head("mlp", ...)`` and ``create_head(name, ..., deploy=True)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from nsrep.nn.activations import ACTIVATION_NAMES, guided_activation, guided_feature_activation
from nsrep.nn.connectivity import CONNECTIVITIES
from nsrep.nn.linear import DEFAULT_LINEAR_BRANCHES, RepLinear
from nsrep.nn.streams import Add, StreamAdd, StreamEntry, StreamSum
from nsrep.nn.unit import UnitConfig
from nsrep.validation import check_choice

__all__ = ["DEFAULT_EXPANSION", "HEADS", "MLP_HEADS", "REP_HEADS", "AdapterHead", "LinearHead", "create_head"]

HEADS: tuple[str, ...] = ("linear", "mlp", "ns-mlp", "block-mlp")
MLP_HEADS: tuple[str, ...] = ("mlp", "ns-mlp", "block-mlp")  # take expansion and activation
REP_HEADS: tuple[str, ...] = ("ns-mlp", "block-mlp")  # take the unit options (K, bn, connectivity, ...)
DEFAULT_EXPANSION = 4  # the paper's "4x-scale MLP visual adapter"
_REP_HEADS = {"ns-mlp": ("ns", "naive"), "block-mlp": ("block",)}  # accepted connectivities; the first: default
# The head's own defaults (K of a linear unit, a BN per branch); the shared unit options' come from UnitConfig.
_UNIT_DEFAULTS: dict[str, Any] = {
    "num_branches": DEFAULT_LINEAR_BRANCHES,
    "bn": True,
    "stochastic": UnitConfig.stochastic,
    "pair_drop": UnitConfig.pair_drop,
}


class LinearHead(nn.Module):
    """The linear probe: ``(..., D) -> (..., C)``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


class AdapterHead(nn.Module):
    """``classifier(x + fc2(act(fc1(x))))`` on features ``(..., D)``: plain layers, or units on stream sets.

    ``entry``/``merge`` add and sum the stream axis (identities in the plain form); ``add`` is the residual add
    of the adapter's streams and the 1-stream shortcut.
    """

    def __init__(
        self,
        entry: nn.Module,
        fc1: nn.Module,
        act: nn.Module,
        fc2: nn.Module,
        add: nn.Module,
        merge: nn.Module,
        classifier: nn.Linear,
    ) -> None:
        super().__init__()
        self.entry, self.fc1, self.act, self.fc2 = entry, fc1, act, fc2
        self.add, self.merge, self.classifier = add, merge, classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.entry(x)  # training form: (1, *leading, D)
        h = self.fc2(self.act(self.fc1(x)))  # (S, *leading, D)
        return self.classifier(self.merge(self.add(h, x)))


def create_head(
    name: str,
    in_features: int,
    num_classes: int,
    *,
    expansion: int | None = None,
    activation: str | None = None,
    num_branches: int | None = None,
    bn: bool | None = None,
    connectivity: str | None = None,
    stochastic: float | None = None,
    pair_drop: float | None = None,
    deploy: bool = False,
) -> nn.Module:
    """Build head ``name`` (see :data:`HEADS`) for ``in_features`` features and ``num_classes`` classes.

    ``expansion`` (default 4) and ``activation`` (default ``"gelu"``, any guided activation name) apply to the
    MLP heads; ``num_branches`` (K, default 4), ``bn`` (default True), ``connectivity``, ``stochastic`` and
    ``pair_drop`` to ``ns-mlp``/``block-mlp`` only, and are refused elsewhere. ``deploy=True`` builds the plain
    folded form. The head carries ``nsrep_config``: ``create_head(**head.nsrep_config)`` rebuilds it.
    """
    check_choice("head", name, HEADS)
    for key, value in (("in_features", in_features), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    given = {"num_branches": num_branches, "bn": bn, "connectivity": connectivity}
    given |= {"stochastic": stochastic, "pair_drop": pair_drop}
    if name not in _REP_HEADS:
        _refuse(name, {k: v for k, v in given.items() if v is not None}, ", ".join(REP_HEADS))
    if name == "linear":
        mlp_only = {k: v for k, v in (("expansion", expansion), ("activation", activation)) if v is not None}
        _refuse(name, mlp_only, ", ".join(MLP_HEADS))
        head = LinearHead(in_features, num_classes)
        head.nsrep_config = {"name": name, "in_features": in_features, "num_classes": num_classes, "deploy": deploy}
        return head

    expansion = DEFAULT_EXPANSION if expansion is None else expansion
    activation = "gelu" if activation is None else activation
    if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
        raise ValueError(f"expansion must be a positive int, got {expansion!r}")
    check_choice("activation", activation, ACTIVATION_NAMES)
    config: dict[str, Any] = {"name": name, "in_features": in_features, "num_classes": num_classes}
    config |= {"expansion": expansion, "activation": activation}
    hidden = expansion * in_features
    unit = None
    if name in _REP_HEADS:
        accepted = _REP_HEADS[name]
        unit = {k: _UNIT_DEFAULTS[k] if given[k] is None else given[k] for k in _UNIT_DEFAULTS}
        unit["connectivity"] = accepted[0] if connectivity is None else connectivity
        check_choice("connectivity", unit["connectivity"], CONNECTIVITIES)
        if unit["connectivity"] not in accepted:
            other = next(h for h, conns in _REP_HEADS.items() if unit["connectivity"] in conns)
            raise ValueError(
                f"head {name!r} takes connectivity {' or '.join(map(repr, accepted))}, got "
                f"{unit['connectivity']!r}; use head {other!r} for it"
            )
        config |= unit
    if deploy or unit is None:
        head = AdapterHead(
            nn.Identity(),
            nn.Linear(in_features, hidden),
            guided_activation(activation).plain(),
            nn.Linear(hidden, in_features),
            Add(),
            nn.Identity(),
            nn.Linear(in_features, num_classes),
        )
    else:
        fc1 = RepLinear(in_features, hidden, in_streams=1, **unit)
        fc2 = RepLinear(hidden, in_features, in_streams=fc1.out_streams, **unit)
        head = AdapterHead(
            StreamEntry(),
            fc1,
            guided_feature_activation(activation),
            fc2,
            StreamAdd(fc2.out_streams, 1),
            StreamSum(),
            nn.Linear(in_features, num_classes),
        )
    head.nsrep_config = {**config, "deploy": deploy}
    return head


def _refuse(name: str, given: dict[str, Any], applies_to: str) -> None:
    """Refuse options that do not apply to head ``name`` (instead of silently ignoring them)."""
    if given:
        options = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(f"option(s) {options} do not apply to head {name!r}; they apply to {applies_to}")
