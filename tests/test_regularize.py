"""Weight decay on the equivalent (folded) kernel: equals the deployed kernels' L2, differentiable, optimiser groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nsrep
from helpers import train_steps
from nsrep.train.config import TrainConfig
from nsrep.train.regularize import equivalent_kernel_l2, equivalent_kernels, unit_parameter_ids
from nsrep.train.trainer import build_optimizer


@pytest.mark.parametrize(
    "family,connectivity", [("plain", "block"), ("dbb", "block"), ("dbb", "ns"), ("repvgg", "ns"), ("ns", "ns")]
)
def test_penalty_is_the_l2_of_the_kernels_reparameterize_writes(family, connectivity):
    model = nsrep.create_model(
        "resnet18", num_classes=5, family=family, connectivity=connectivity, width_mult=0.0625
    ).double()
    train_steps(model, lambda: torch.randn(4, 3, 8, 8, dtype=torch.float64), steps=2)  # non-trivial BN statistics
    model.eval()
    deployed = nsrep.reparameterize(model)
    names = [name for name, _ in equivalent_kernels(model)]
    expected = sum(deployed.get_submodule(n).weight.square().sum() for n in names)
    assert len(names) == 20  # every conv unit of ResNet-18, stem and shortcuts included
    torch.testing.assert_close(equivalent_kernel_l2(model), expected, rtol=1e-12, atol=0)


def test_penalty_gradient_reaches_every_branch():
    model = nsrep.create_model("resnet18", num_classes=5, family="dbb", connectivity="ns", width_mult=0.0625)
    equivalent_kernel_l2(model).backward()
    unit = model.stem.conv
    grads = [p.grad for p in unit.parameters() if p.ndim > 1]
    assert len(grads) == 5 and all(g is not None and g.abs().sum() > 0 for g in grads)  # 4 branches, 5 kernels


def test_equivalent_mode_moves_unit_weights_out_of_ordinary_decay():
    model = nsrep.create_model("resnet18", num_classes=5, family="dbb", width_mult=0.0625)
    config = TrainConfig(weight_decay=5e-4, weight_decay_mode="equivalent")
    decayed = {id(p) for g in build_optimizer(model, config).param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.head.fc.weight)}  # only the classifier keeps ordinary decay
    assert unit_parameter_ids(model, "branches") == set()
    assert isinstance(model.head.fc, nn.Linear)
    with pytest.raises(ValueError, match=r"weight_decay_mode.*branches, equivalent"):
        TrainConfig(weight_decay_mode="folded")
    with pytest.raises(ValueError, match=r"RepConv2d"):
        equivalent_kernel_l2(nn.Conv2d(1, 1, 1))
