"""The ``nsrep`` command and the model summaries behind it (nsrep.info)."""

from __future__ import annotations

import pytest
from torch import nn

import nsrep
from nsrep.cli import main
from nsrep.info import (
    count_macs,
    count_parameters,
    model_info,
    scientific,
    streams_per_stage,
    topologies_block,
    topologies_branch,
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


@pytest.mark.parametrize(
    ("n", "text"), [(4**20, "1.10e+12"), (999_999, "1.00e+06"), (7, "7.00e+00"), (10**400, "1.00e+400")]
)
def test_scientific(n, text):
    assert scientific(n) == text


# ------------------------------------------------------------------------------------- counting


def test_count_macs_of_one_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, input_size=4) == 8 * 3 * 9 * 16
    assert conv.training  # mode restored


def test_count_parameters():
    assert count_parameters(nn.Conv2d(3, 8, 3)) == 8 * 3 * 9 + 8


def test_ns_training_form_costs_more_and_deploys_to_the_plain_net():
    info = model_info("resnet18", family="ns", connectivity="ns", input_size=16, **SMALL)
    plain = nsrep.create_model("resnet18", deploy=True, **SMALL)
    assert info["train_macs"] > info["deploy_macs"]
    assert info["deploy_macs"] == count_macs(plain, 16)
    assert info["deploy_params"] == count_parameters(plain) < info["train_params"]
    # stem + 8 basic blocks × 2 + 3 downsampling 1×1 units, every one with 4 branches
    assert info["branch_counts"] == [4] * 20
    assert info["topologies_branch"] == 4**20
    assert info["topologies_block"] == 80


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


# ------------------------------------------------------------------------------------- command line


def test_info_command(capsys):
    argv = ["info", "resnet18", "--family", "dbb", "--connectivity", "ns", "--input-size", "16"]
    assert main([*argv, "--width-mult", "0.25", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    train = nsrep.create_model("resnet18", family="dbb", connectivity="ns", **SMALL)
    plain = nsrep.create_model("resnet18", deploy=True, **SMALL)
    assert f"{count_parameters(train):,}" in out
    assert f"{count_parameters(plain):,}" in out
    assert "topolog" in out.lower()
    assert "stages.3" in out


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("info", "train", "eval", "deploy", "export", "demo", "sweep", "report", "analyze", "probe"):
        assert f"    {command}" in out
    assert "95% CIs" in out  # a literal percent sign in a command's summary
    assert "info" in out
    assert "demo" in out
    assert main(["info", "--help"]) == 0
    assert "--connectivity" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--family", "dbx", nsrep.FAMILIES),
        ("--connectivity", "branch", nsrep.CONNECTIVITIES),
    ],
)
def test_unknown_choice_exits_2_naming_valid_values(capsys, option, value, valid):
    assert main(["info", "resnet18", option, value]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nsrep: error: ")
    assert value in captured.err
    assert all(v in captured.err for v in valid)
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_unknown_arch_exits_2(capsys):
    assert main(["info", "resnet19", "--family", "dbb"]) == 2
    err = capsys.readouterr().err
    assert "resnet18" in err
    assert "Did you mean" in err


def test_bad_command_line_exits_2(capsys):
    assert main(["info"]) == 2  # missing architecture: argparse's own message
    assert "arch" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_training_macs_count_every_branch_even_for_block_connectivity():
    """The fast path's eval applies folded kernels; training MACs must still count the per-branch work."""
    from nsrep.info import count_macs, training_macs

    model = nsrep.create_model("resnet18", family="dbb", connectivity="block", num_classes=10, width_mult=0.25)
    deployed = nsrep.create_model("resnet18", deploy=True, num_classes=10, width_mult=0.25)
    assert training_macs(model, 16) > 2 * count_macs(deployed, 16)
