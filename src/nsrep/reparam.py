"""``reparameterize``: a new plain eval-mode network from any module tree holding foldable modules."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nsrep.nn.foldable import Foldable

__all__ = ["Equivalence", "compare_outputs", "reparameterize", "unwrap_model", "verify_equivalence"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _swap_foldables(module: nn.Module, prefix: str) -> None:
    for name, child in list(module.named_children()):
        qualified = f"{prefix}.{name}" if prefix else name
        if isinstance(child, Foldable):
            try:
                folded = child.fold()
            except ValueError as err:
                raise ValueError(f"cannot fold {qualified!r} ({type(child).__name__}): {err}") from err
            setattr(module, name, folded)
        else:
            _swap_foldables(child, qualified)


def reparameterize(model: nn.Module) -> nn.Module:
    """A new eval-mode network with every unit folded into one conv and every stream op made plain.

    ``model`` is left untouched (deep-copied first). Works on any module tree containing nsrep modules,
    including units inside a user's own model; wrappers (DDP, ``torch.compile``) are removed first.
    """
    deployed = copy.deepcopy(unwrap_model(model)).eval()
    if isinstance(deployed, Foldable):
        return deployed.fold().eval()
    _swap_foldables(deployed, "")
    # every nsrep model in the tree (the root, or a backbone inside a user's detector) is now rebuilt by the
    # same keywords with deploy=True
    for module in deployed.modules():
        config = getattr(module, "nsrep_config", None)
        if isinstance(config, dict):
            module.nsrep_config = {**config, "deploy": True}
    return deployed.eval()


@dataclass(frozen=True)
class Equivalence:
    """How far a deployed network is from its training form: max |difference| and that over max |output|."""

    max_abs_error: float
    max_rel_error: float
    worst: str = ""  # for nested outputs: the path of the output with the largest relative error, e.g. "[2]"

    def __str__(self) -> str:
        where = f" (worst at output{self.worst})" if self.worst else ""
        return f"max abs error {self.max_abs_error:.3e}, max rel error {self.max_rel_error:.3e}{where}"


@torch.no_grad()
def verify_equivalence(train_form: nn.Module, deploy_form: nn.Module, inputs: Tensor) -> Equivalence:
    """Run both networks in eval mode on ``inputs``; relative error is to the training form's max |output|.

    Outputs may be tensors or lists, tuples and dicts of them (nested), as feature networks, detectors and
    segmenters return; both must have the same structure, and each tensor is compared on its own scale.
    Both modules are put in eval mode and restored to their previous mode afterwards.
    """
    modes = [(m, m.training) for m in (train_form, deploy_form)]
    try:
        reference = train_form.eval()(inputs)
        deployed = deploy_form.eval()(inputs)
    finally:
        for m, was_training in modes:
            m.train(was_training)
    return compare_outputs(reference, deployed)


def compare_outputs(reference: Any, other: Any) -> Equivalence:
    """Max |other - reference| and that over max |reference| (in float64), for tensors of one shape or lists,
    tuples and dicts of them; over several tensors, the largest of each (every tensor on its own scale)."""
    pairs = _leaves(reference, other, "")
    if not pairs:
        raise ValueError("outputs hold no tensor to compare")
    results = [(path, _compare_tensors(a, b, path)) for path, a, b in pairs]
    worst_path, worst = max(results, key=lambda r: r[1].max_rel_error)
    max_abs = max(r.max_abs_error for _, r in results)
    return Equivalence(max_abs, worst.max_rel_error, worst_path if len(results) > 1 else "")


def _compare_tensors(reference: Tensor, other: Tensor, path: str) -> Equivalence:
    if reference.shape != other.shape:
        where = f" at output{path}" if path else ""
        raise ValueError(f"outputs differ in shape{where}: {tuple(reference.shape)} vs {tuple(other.shape)}")
    diff = (reference.double() - other.double()).abs().max().item() if reference.numel() else 0.0
    scale = reference.double().abs().max().item() if reference.numel() else 0.0
    return Equivalence(diff, diff / scale if scale > 0 else diff)


def _leaves(reference: Any, other: Any, path: str) -> list[tuple[str, Tensor, Tensor]]:
    """The tensor pairs of two nested outputs with their paths; raises where the structures differ."""
    if isinstance(reference, Tensor) and isinstance(other, Tensor):
        return [(path, reference, other)]
    if isinstance(reference, Mapping) and isinstance(other, Mapping):
        if set(reference) != set(other):
            raise ValueError(
                f"outputs{path} have different keys: {sorted(map(str, reference))} vs {sorted(map(str, other))}"
            )
        return [leaf for key in reference for leaf in _leaves(reference[key], other[key], f"{path}[{key!r}]")]
    if isinstance(reference, list | tuple) and isinstance(other, list | tuple):
        if len(reference) != len(other):
            raise ValueError(f"outputs{path} have different lengths: {len(reference)} vs {len(other)}")
        return [
            leaf
            for i, (a, b) in enumerate(zip(reference, other, strict=True))
            for leaf in _leaves(a, b, f"{path}[{i}]")
        ]
    if type(reference) is not type(other) or isinstance(reference, Tensor) or isinstance(other, Tensor):
        raise ValueError(f"outputs{path} differ in type: {type(reference).__name__} vs {type(other).__name__}")
    return []  # non-tensor leaves (None, ints) of the same type are not compared
