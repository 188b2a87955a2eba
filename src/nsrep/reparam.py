"""``reparameterize``: a new plain eval-mode network from any module tree holding foldable modules."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nsrep.foldable import Foldable

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
    config = getattr(deployed, "nsrep_config", None)
    if isinstance(config, dict):  # the deployed net is rebuilt by the same keywords with deploy=True
        deployed.nsrep_config = {**config, "deploy": True}
    return deployed.eval()


@dataclass(frozen=True)
class Equivalence:
    """How far a deployed network is from its training form: max |difference| and that over max |output|."""

    max_abs_error: float
    max_rel_error: float

    def __str__(self) -> str:
        return f"max abs error {self.max_abs_error:.3e}, max rel error {self.max_rel_error:.3e}"


@torch.no_grad()
def verify_equivalence(train_form: nn.Module, deploy_form: nn.Module, inputs: Tensor) -> Equivalence:
    """Run both networks in eval mode on ``inputs``; relative error is to the training form's max |output|.

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


def compare_outputs(reference: Tensor, other: Tensor) -> Equivalence:
    """Max |other - reference| and that over max |reference| (in float64), for outputs of one shape."""
    if reference.shape != other.shape:
        raise ValueError(f"outputs differ in shape: {tuple(reference.shape)} vs {tuple(other.shape)}")
    diff = (reference.double() - other.double()).abs().max().item()
    scale = reference.double().abs().max().item()
    return Equivalence(diff, diff / scale if scale > 0 else diff)
