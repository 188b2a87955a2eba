"""Weight decay on the *equivalent* (folded) kernel of every unit, instead of on each branch's weights.

Plain L2 decay on the branches pulls every branch kernel and BN scale to zero separately, which is not a
penalty on what the deployed conv computes: the folded kernel ``sum_k W_k * gamma_k / sigma_k`` may grow
large (and quantize badly) while each branch stays small. RepVGG's "custom L2" (Ding et al., 2021,
``repvgg.py::get_custom_L2``) penalises the folded kernel instead. Here the folded kernel of every
:class:`~nsrep.nn.conv.RepConv2d` is computed differentiably from its branches with the same ``Branch.affine``
that :func:`nsrep.reparameterize` uses (running BN statistics, as RepVGG), so the penalty is exactly
``||kernel of the deployed conv||²`` for every family and every connectivity (NS units fold to ``sum_k W_k``
as block units do; only the bias carries the stream count).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from nsrep.nn.conv import RepConv2d
from nsrep.validation import check_choice

__all__ = ["DECAY_MODES", "equivalent_kernel_l2", "equivalent_kernels", "unit_parameter_ids"]

# "branches": ordinary L2 on every conv/linear weight; "equivalent": L2 on each unit's folded kernel (plus
# ordinary L2 on the weights outside units: the classifier, a plain stem).
DECAY_MODES = ("branches", "equivalent")


def equivalent_kernels(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, folded kernel) of every conv unit of ``model``, differentiable w.r.t. its branches' parameters.

    The kernel is ``sum_k`` of each branch's eval-mode kernel (running BN statistics), the weight that
    ``reparameterize`` writes into the deployed ``nn.Conv2d``, computed in the model's own dtype.
    """
    for name, module in model.named_modules():
        if isinstance(module, RepConv2d):
            yield name, module.equivalent_kernel()


def equivalent_kernel_l2(model: nn.Module) -> Tensor:
    """``sum over units ||folded kernel||²``: the penalty of ``weight_decay_mode: equivalent`` (times wd/2)."""
    total = None
    for _, kernel in equivalent_kernels(model):
        term = kernel.square().sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("equivalent-kernel weight decay needs a model with nsrep conv units (RepConv2d); found none")
    return total


def unit_parameter_ids(model: nn.Module, mode: str) -> set[int]:
    """ids of the parameters whose ordinary decay ``mode`` replaces (all parameters of conv units, or none)."""
    check_choice("weight_decay_mode", mode, DECAY_MODES)
    if mode == "branches":
        return set()
    return {id(p) for m in model.modules() if isinstance(m, RepConv2d) for p in m.parameters()}
