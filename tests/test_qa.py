"""Quantization-aware units (QARepVGG-style: one BN after the sum) fold exactly and decay their folded kernel."""

from __future__ import annotations

import pytest
import torch

import nsrep
from helpers import assert_folds, classification_loss, train_steps
from nsrep.nn.conv import RepConv2d
from nsrep.nn.families import norm_placement
from nsrep.nn.qa import NoNorm, QARepConv2d, conv_unit_class
from nsrep.train.regularize import equivalent_kernel_l2, equivalent_kernels


@pytest.mark.parametrize("family,connectivity", [("qarepvgg", "block"), ("qadbb", "block"), ("qadbb", "ns")])
def test_qa_model_folds_exactly_and_penalty_matches(family, connectivity):
    model = nsrep.create_model(
        "resnet18", num_classes=5, family=family, connectivity=connectivity, width_mult=0.0625
    ).double()
    units = [m for m in model.modules() if isinstance(m, RepConv2d)]
    assert units and all(isinstance(u, QARepConv2d) for u in units)
    stem = model.stem.conv  # only the k×k branch keeps its final BN; the sum gets one
    assert not isinstance(stem.branches[0].final_bn, NoNorm)
    assert all(isinstance(b.final_bn, NoNorm) for b in stem.branches[1:])
    make_input = lambda: torch.randn(4, 3, 8, 8, dtype=torch.float64)  # noqa: E731
    train_steps(model, make_input, loss_fn=classification_loss(5))
    assert stem.post_bn.running_var.sub(1).abs().max() > 0.01  # trained statistics, not the init
    deployed = assert_folds(model, make_input)
    expected = sum(deployed.get_submodule(n).weight.square().sum() for n, _ in equivalent_kernels(model))
    torch.testing.assert_close(equivalent_kernel_l2(model.eval()), expected, rtol=1e-12, atol=0)


def test_qa_family_needs_the_qa_unit():
    with pytest.raises(ValueError, match=r"QARepConv2d"):
        RepConv2d(8, 8, 3, family="qadbb")
    with pytest.raises(ValueError, match=r"QA family"):
        QARepConv2d(8, 8, 3, family="dbb")


def test_where_a_family_keeps_its_norm_picks_its_unit_class_and_its_stripped_branches():
    assert [conv_unit_class(f) for f in ("dbb", "repvgg", "qadbb", "qarepvgg")] == [RepConv2d] * 2 + [QARepConv2d] * 2
    assert norm_placement("qadbb") == "sum" and norm_placement("dbb") == "branches"
    unit = QARepConv2d(8, 8, 3, family="qadbb")
    # DBB's branches: conv+BN, 1x1+BN, 1x1+BN then avg+BN, 1x1+BN then kxk+BN; only the first keeps its final BN
    assert [type(b.final_bn) for b in unit.branches] == [torch.nn.BatchNorm2d] + [NoNorm] * (len(unit.branches) - 1)
    with pytest.raises(ValueError, match=r"unknown family 'qa'; valid: plain"):
        norm_placement("qa")


def test_qa_fold_rounds_once_to_the_unit_dtype():
    torch.manual_seed(0)
    unit = QARepConv2d(8, 8, 3, family="qadbb")
    train_steps(unit, lambda: torch.randn(4, 8, 6, 6), steps=2, calibrate=0)
    unit.eval()
    kernel64, bias64 = unit.fold_affine64()  # the exact fold, post-sum BN included, in float64
    kernel, bias = unit.fold_affine()
    assert kernel64.dtype == torch.float64 and kernel.dtype == torch.float32
    assert torch.equal(kernel, kernel64.float()) and torch.equal(bias, bias64.float())
