"""The ``nsrep`` command and the model summary behind ``nsrep info``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import subprocess
import sys
import typing

import pytest

import nsrep
from nsrep.cli import build_parser, main
from nsrep.cli.command import COMMANDS, add_commands, arg, field_arg
from nsrep.cli.command import command as register
from nsrep.info import model_info
from nsrep.inspection import count_macs, count_parameters
from nsrep.nn.unit import UnitConfig
from nsrep.probe import ProbeConfig
from nsrep.train.config import TrainConfig

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
    assert main(["info", "--help"]) == 0
    assert "--connectivity" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--set KEY=VALUE" in out and "cifar100" in out


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


# ------------------------------------------------------------------------------------- defaults written once


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def _options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(name)._actions if a.dest != "help"}


def test_unit_options_take_their_defaults_from_unit_config():
    options = _options("info")
    unit = UnitConfig()
    shared = set(options) & set(UnitConfig.field_names())
    assert shared == {"family", "connectivity", "num_branches"}
    for dest in shared:
        assert options[dest].default == getattr(unit, dest), dest
    assert options["num_branches"].type is int  # from the field's annotation, int | None
    assert parse(["info", "resnet18"])["family"] == unit.family


def test_pass_through_training_options_are_typed_like_train_config_and_unset_by_default():
    options = _options("train")
    shared = set(options) & {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared == {"data", "arch", "family", "connectivity", "epochs", "batch_size"}
    hints = typing.get_type_hints(TrainConfig)
    for dest in shared:
        assert options[dest].default is None, dest  # None: the recipe's value
        assert options[dest].type is (hints[dest] if hints[dest] in (int, float) else None), dest
    # and the training defaults of the unit options are UnitConfig's own
    assert {k: getattr(TrainConfig(), k) for k in UnitConfig.field_names() if hasattr(TrainConfig, k)} == {
        k: v for k, v in UnitConfig.defaults().items() if hasattr(TrainConfig, k)
    }
    demo = _options("demo")["epochs"]
    assert demo.default is None and demo.type is int


def test_probe_budget_defaults_are_probe_config_defaults():
    options = _options("probe")
    for f in dataclasses.fields(ProbeConfig):
        assert options[f.name].default == f.default, f.name
        assert options[f.name].type is type(f.default), f.name
        assert f"default: {f.default}" in options[f.name].help


def test_help_texts_show_the_defaults_they_are_given(capsys):
    assert main(["info", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"(default: {UnitConfig.family})" in out
    assert f"(default: {UnitConfig.connectivity})" in out
    assert "(default: 100)" in out  # --num-classes, from model_info's signature
    assert main(["probe", "--help"]) == 0
    assert "(default: 0 1 2)" in " ".join(capsys.readouterr().out.split())


@dataclasses.dataclass
class _Options:
    alpha: int = 7
    beta: float | None = None
    gamma: tuple[int, ...] = (1, 2)


def test_command_derives_default_type_and_help_from_a_dataclass():
    def probe_command(*, flag: bool = False, **options) -> None:
        """A summary line."""

    try:
        register(
            field_arg(_Options, "alpha", help="alpha (default: {default})"),
            field_arg(_Options, "beta", given_only=True),
            field_arg(_Options, "gamma", nargs="+", help="gamma (default: {default})"),
            arg("--flag"),
            name="_test_command",
        )(probe_command)
        parser = argparse.ArgumentParser(prog="t")
        add_commands(parser.add_subparsers(dest="command"), ["_test_command"])
        args = vars(parser.parse_args(["_test_command"]))
        assert args["alpha"] == 7 and args["beta"] is None and args["gamma"] == [1, 2] and args["flag"] is False
        args = vars(parser.parse_args(["_test_command", "--alpha", "3", "--beta", "0.5", "--gamma", "4", "--flag"]))
        assert (args["alpha"], args["beta"], args["gamma"], args["flag"]) == (3, 0.5, [4], True)
        resolved = dict((flags[0], options) for flags, options in COMMANDS["_test_command"].resolved)
        assert resolved["--alpha"]["help"] == "alpha (default: 7)"
        assert resolved["--gamma"]["help"] == "gamma (default: 1 2)"
    finally:
        COMMANDS.pop("_test_command", None)


def test_command_refuses_a_default_written_twice_or_an_unknown_parameter():
    def twice(*, alpha: int = 7) -> None:
        """Restates alpha's default."""

    with pytest.raises(TypeError, match="default in _Options"):
        register(field_arg(_Options, "alpha"), name="_twice")(twice)
    with pytest.raises(TypeError, match="lacks"):
        register(arg("--delta"), name="_unknown")(twice)
    with pytest.raises(TypeError, match="no field"):
        field_arg(_Options, "delta")
    assert "_twice" not in COMMANDS and "_unknown" not in COMMANDS


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "nsrep.cli", "info", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "--connectivity" in done.stdout


def parse(argv: list[str]) -> dict:
    return vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("name", "function", "dests"),
    [
        ("info", "nsrep.info:model_info", ("input_size", "stem", "num_classes", "width_mult", "stem_unit")),
        ("eval", "nsrep.train.runs:evaluate_path", ("data", "batch_size", "device")),
        ("analyze", "nsrep.analysis:analyze", ("data", "unit", "max_images", "batch_size")),
        (
            "quantize",
            "nsrep.deploy.quantize:quantize_deployed",
            ("calib", "method", "keep_float", "eval_images", "threads"),
        ),
        ("features", "nsrep.probe:extract_features", ("batch_size",)),
        ("probe", "nsrep.probe:run_probe", ("seeds", "device")),
    ],
)
def test_options_passed_to_a_library_function_take_its_defaults(name, function, dests):
    module, attr = function.split(":")
    parameters = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    options = _options(name)
    for dest in dests:
        default = parameters[dest].default
        assert options[dest].default == (list(default) if isinstance(default, tuple) else default), dest
