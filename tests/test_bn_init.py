"""BatchNorm initialisation schemes: where each unit's branch BN scales start, and exact folding with them."""

from __future__ import annotations

import math

import pytest
import torch

import nsrep
from helpers import assert_folds, classification_loss, train_steps
from nsrep.nn.bn_init import BN_INITS, pairs_in_aggregate
from nsrep.nn.conv import RepConv2d


def _final_gammas(unit: RepConv2d) -> list[torch.Tensor]:
    return [branch.final_bn.weight for branch in unit.branches]


def _resnet18(**options):
    """A tiny CIFAR-stem ResNet-18 (width 0.125, 5 classes) with the given unit and init options."""
    return nsrep.create_model("resnet18", num_classes=5, stem="cifar", width_mult=0.125, **options)


def _units(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, RepConv2d)}


@pytest.mark.parametrize("connectivity", ["block", "ns"])
def test_scaled_sets_one_over_root_of_pairs(connectivity):
    model = _resnet18(
        family="dbb",
        connectivity=connectivity,
        bn_init="scaled",
    )
    for name, unit in _units(model).items():
        pairs = unit.num_branches * (unit.in_streams if connectivity == "ns" else 1)
        assert pairs_in_aggregate(unit) == pairs
        for gamma in _final_gammas(unit):
            assert torch.allclose(gamma, torch.full_like(gamma, 1 / math.sqrt(pairs))), name
    # the stem unit of an NS net sees one stream: K pairs; later units K·S_in = 16
    units = _units(model)
    assert pairs_in_aggregate(units["stem.conv"]) == 4
    if connectivity == "ns":
        assert pairs_in_aggregate(units["stages.1.0.conv1"]) == 16


def test_zero_residual_zeroes_only_the_unit_that_ends_each_residual_branch():
    model = _resnet18(
        family="acnet",
        connectivity="ns",
        bn_init="zero-residual",
    )
    for name, unit in _units(model).items():
        expected = 0.0 if name.endswith(".conv2") else 1.0
        for gamma in _final_gammas(unit):
            assert (gamma == expected).all(), name
    bottleneck = nsrep.create_model("resnet50", num_classes=5, stem="cifar", width_mult=0.125, bn_init="zero-residual")
    zeroed = {n for n, u in _units(bottleneck).items() if all((g == 0).all() for g in _final_gammas(u))}
    assert zeroed and all(n.endswith(".conv3") for n in zeroed) and len(zeroed) == 16


def test_zero_residual_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    model = _resnet18(
        family="dbb",
        connectivity="ns",
        bn_init="zero-residual",
    ).train()
    block = model.stages[0][0]
    x = torch.relu(torch.randn(4, 2, 8, 8, 8))  # (S, B, C, H, W), non-negative like a ReLU output
    assert torch.equal(block(x), x)  # identity shortcut, residual branch all zero, guided ReLU of x >= 0


def test_default_scales_branch_level_units_only_and_deploy_form_ignores_the_scheme():
    ns = _resnet18(family="dbb", connectivity="ns")
    assert ns.nsrep_config["bn_init"] == "auto"
    assert (ns.stages[0][0].conv1.branches[0].final_bn.weight == 0.25).all()  # 1/sqrt(4 branches x 4 streams)
    assert (ns.stem.conv.branches[0].final_bn.weight == 0.5).all()  # the stem sees one stream: 1/sqrt(4)
    for block_level in (_resnet18(family="dbb"), _resnet18(), _resnet18(family="dbb", bn_init="ones")):
        assert all((g == 1).all() for u in _units(block_level).values() for g in _final_gammas(u))
    scaled_block = _resnet18(family="dbb", bn_init="scaled")
    for unit in _units(scaled_block).values():  # block level: P = K (4 for 3x3 DBB units, 2 for 1x1 ones)
        assert all(torch.allclose(g, torch.full_like(g, unit.num_branches**-0.5)) for g in _final_gammas(unit))
    deployed = _resnet18(deploy=True, bn_init="zero-residual")
    assert not _units(deployed)


@pytest.mark.parametrize("scheme", [s for s in BN_INITS if s != "ones"])
@pytest.mark.parametrize("family, connectivity", [("dbb", "ns"), ("ns", "ns"), ("acnet", "block")])
def test_folds_exactly_with_every_scheme_after_training(scheme, family, connectivity):
    torch.manual_seed(0)
    model = _resnet18(
        family=family,
        connectivity=connectivity,
        bn_init=scheme,
    )
    make_input = lambda: torch.randn(4, 3, 16, 16)  # noqa: E731
    train_steps(model, make_input, steps=3, loss_fn=classification_loss(5))
    assert_folds(model, make_input)


def test_bad_scheme_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown bn_init 'zero'; valid: auto, ones, scaled, zero-residual"):
        nsrep.create_model("resnet18", bn_init="zero")


def test_stability_trace_records_every_step_and_scaled_starts_at_the_plain_scale(tmp_path):
    from nsrep.analysis.stability import trace_stability, write_traces
    from nsrep.train.config import TrainConfig

    base = {"data": "synthetic", "width_mult": 0.125, "batch_size": 32, "epochs": 1, "workers": 0, "threads": 1}
    traces = {
        scheme: trace_stability(
            TrainConfig.from_dict({**base, "family": "dbb", "connectivity": "ns", "bn_init": scheme}),
            3,
            label=scheme,
            progress=False,
        )
        for scheme in ("ones", "scaled")
    }
    for t in traces.values():
        assert len(t.loss) == len(t.total_grad_norm) == len(t.features_std) == 3
        assert set(t.grad_norm) == {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"}
        assert all(len(v) == 3 for v in t.unit_std.values()) and "stages.3.1.conv2" in t.unit_std
    # NS units with every gamma at 1 start well above a plain conv+BN's unit scale; scaled brings them down
    ones, scaled = traces["ones"].stage_std("stages.1")[0], traces["scaled"].stage_std("stages.1")[0]
    assert ones > 2 * scaled and 0.4 < scaled < 1.5
    paths = write_traces(list(traces.values()), tmp_path)
    assert {p.name for p in paths} == {"stability_steps.csv", "stability_summary.csv", "stability.png"}
    assert len((tmp_path / "stability_steps.csv").read_text().splitlines()) == 1 + 6
