"""The ``nsrep`` command and the model summary behind ``nsrep info``."""

from __future__ import annotations

import pytest

import nsrep
from nsrep.cli import main
from nsrep.info import model_info
from nsrep.inspection import count_macs, count_parameters

SMALL = {"stem": "cifar", "num_classes": 10, "width_mult": 0.25}


# ------------------------------------------------------------------------------------- nsrep info


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
