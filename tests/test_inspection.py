"""Model counting and inspection (nsrep.inspection): parameters, MACs, streams per stage, topology counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nsrep
from nsrep.inspection import (
    count_macs,
    count_parameters,
    profile,
    streams_per_stage,
    topologies,
    topologies_block,
    topologies_branch,
    topology_level,
    training_macs,
    unit_branch_counts,
)

SMALL = {"stem": "cifar", "num_classes": 10, "width_mult": 0.25}


# ------------------------------------------------------------------------------------- topology counts


@pytest.mark.parametrize(
    ("counts", "inputs", "block", "branch"),
    [
        ([3, 3], 1, 6, 9),  # paths through 2 units of 3: one of 6 branches, or one of 3*3 branch chains
        ([3, 3], 2, 12, 18),
        ([2, 3], 1, 5, 6),
        ([1], 1, 1, 1),
        ([], 1, 0, 1),
    ],
)
def test_topology_counts_hand_counted(counts, inputs, block, branch):
    assert topologies_block(counts, inputs) == block
    assert topologies_branch(counts, inputs) == branch


@pytest.mark.parametrize(("n", "b", "d"), [(1, 4, 20), (4, 4, 20), (3, 2, 7), (2, 5, 100)])
def test_topology_counts_reduce_to_paper_equations(n, b, d):
    assert topologies_block([b] * d, inputs=n) == n * b * d  # Eq. 5
    assert topologies_branch([b] * d, inputs=n) == n * b**d  # Eq. 7, exact past float range too


def test_topology_counts_refuse_empty_units():
    with pytest.raises(ValueError, match="branch counts"):
        topologies_branch([2, 0])
    with pytest.raises(ValueError, match="inputs"):
        topologies_block([2], inputs=0)


# ------------------------------------------------------------------------------------- counting


def test_count_macs_of_one_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, input_size=4) == 8 * 3 * 9 * 16
    assert conv.training  # mode restored


def test_count_parameters():
    assert count_parameters(nn.Conv2d(3, 8, 3)) == 8 * 3 * 9 + 8


def test_streams_per_stage():
    ns = nsrep.create_model("resnet18", family="dbb", connectivity="ns", **SMALL)
    assert streams_per_stage(ns, 16) == [
        ("stem", 4, (16, 16, 16)),
        ("stages.0", 4, (16, 16, 16)),
        ("stages.1", 4, (32, 8, 8)),
        ("stages.2", 4, (64, 4, 4)),
        ("stages.3", 4, (128, 2, 2)),
    ]
    block = nsrep.create_model("mobilenet_v1", family="dbb", connectivity="block", **SMALL)
    stages = streams_per_stage(block, 16)
    assert [name for name, _, _ in stages] == ["stem", *(f"stages.{i}" for i in range(13))]
    assert {s for _, s, _ in stages} == {1}


def test_unit_branch_counts_plain_stem():
    model = nsrep.create_model("resnet18", family="acnet", connectivity="block", stem_unit=False, **SMALL)
    counts = unit_branch_counts(model)
    assert counts[0] == 1  # the plain stem is a one-branch unit
    assert counts.count(1) == 1 + 3  # and the 1×1 downsampling units have no asymmetric kernels
    assert counts.count(3) == 16


def test_training_macs_count_every_branch_even_for_block_connectivity():
    """The fast path's eval applies folded kernels; training MACs must still count the per-branch work."""
    model = nsrep.create_model("resnet18", family="dbb", connectivity="block", num_classes=10, width_mult=0.25)
    deployed = nsrep.create_model("resnet18", deploy=True, num_classes=10, width_mult=0.25)
    assert training_macs(model, 16) > 2 * count_macs(deployed, 16)


def test_topologies_pick_the_equation_of_the_connectivity():
    counts = [3, 3, 2]
    assert [topology_level(c) for c in nsrep.CONNECTIVITIES] == ["block", "branch", "branch"]
    assert topologies(counts, "block") == 8  # Eq. 5: 3 + 3 + 2
    assert topologies(counts, "ns") == topologies(counts, "naive") == 18  # Eq. 7: 3 * 3 * 2
    assert topologies(counts, "ns", inputs=2) == 36


# ------------------------------------------------------------------------------------- hand-counted


def test_count_parameters_of_a_tiny_net_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    # conv 4·3·3·3 = 108; BN weight and bias 2·4 = 8 (running stats are buffers); linear 16·5 + 5 = 85
    assert count_parameters(net) == 108 + 8 + 85
    assert count_parameters(nn.ReLU()) == 0


def test_count_macs_of_a_strided_conv_by_hand():
    # 2 -> 6 channels, 3x3, stride 2, no padding, on 9x9: output 4x4; each output element is 2·3·3 = 18 MACs
    conv = nn.Conv2d(2, 6, 3, stride=2, bias=False).eval()
    assert count_macs(conv, input_size=9, in_chans=2) == 6 * 4 * 4 * 18 == 1728
    assert not conv.training  # mode restored, eval stays eval


def test_count_macs_of_conv_then_linear_by_hand():
    # conv 1->2, 1x1 on 3x3: 2·9·1 = 18 MACs; linear 18 -> 4: 72 MACs
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(18, 4))
    assert count_macs(net, input_size=3, in_chans=1) == 18 + 72


def test_profile_skips_what_is_not_asked_for():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert profile(conv, 4, count_flops=False) == (0, [])
    assert count_macs(conv, 4) == profile(conv, 4)[0]


def test_count_macs_refuses_an_empty_input():
    with pytest.raises(ValueError, match="input_size"):
        count_macs(nn.Conv2d(3, 8, 3), input_size=0)


def test_count_macs_follows_the_model_dtype():
    conv = nn.Conv2d(3, 8, 3, padding=1).to(torch.float64)
    assert count_macs(conv, input_size=4) == 8 * 3 * 9 * 16
