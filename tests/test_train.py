"""Training, resuming, deploying and exporting: end to end on the synthetic data with tiny models."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import nsrep
from helpers import TINY, folder_digests, tiny_config
from nsrep.cli import main
from nsrep.deploy.export import export_onnx, export_torchscript, load_deployed, read_config
from nsrep.storage.checkpoint import load_checkpoint
from nsrep.storage.data_record import HeldOut
from nsrep.storage.folders import DeployFolder
from nsrep.train.config import TrainConfig, apply_overrides, list_recipes, load_recipe, parse_override
from nsrep.train.runs import evaluate_path
from nsrep.train.trainer import lr_factor, param_groups, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished NS run shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("run") / "dbb-ns"
    train(tiny_config(family="dbb", connectivity="ns"), run_dir)
    return run_dir


# ----------------------------------------------------------------------------------------------- config


def test_shipped_recipes_load_and_cifar100_is_the_authors_recipe():
    assert {"cifar100", "imagenet", "demo"} <= set(list_recipes())
    for name in list_recipes():
        TrainConfig.from_dict(load_recipe(name))
    c = TrainConfig.from_dict(load_recipe("cifar100"))
    assert (c.nesterov, c.weight_decay, c.decay_norm_and_bias) == (True, 1e-4, False)
    assert (c.schedule, c.warmup_epochs, c.label_smoothing, c.epochs, c.batch_size) == ("cosine", 5, 0.1, 100, 256)
    assert (c.augment, c.crop_padding, c.hflip, c.autoaugment) == ("pad-crop", 4, True, "cifar10")
    imagenet = TrainConfig.from_dict(load_recipe("imagenet"))
    assert (imagenet.augment, imagenet.image_size, imagenet.stem) == ("random-resized-crop", 224, "imagenet")


def test_unknown_recipe_key_names_the_key_and_a_close_match(tmp_path):
    with pytest.raises(ValueError, match=r"unknown override key 'lerning_rate'.*valid keys:"):
        apply_overrides(TrainConfig(), {"lerning_rate": 0.1})
    with pytest.raises(ValueError, match=r"Did you mean 'weight_decay'"):
        apply_overrides(TrainConfig(), {"weight_decy": 0.1})
    bad = tmp_path / "mine.yaml"
    bad.write_text("epochs: 3\nnesterof: true\n")
    with pytest.raises(ValueError, match=r"recipe .*mine.yaml.* key 'nesterof'.*Did you mean 'nesterov'"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match=r"unknown recipe 'cifar-10'.*cifar100"):
        load_recipe("cifar-10")


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [("lr=0.05", "lr", 0.05), ("autoaugment=null", "autoaugment", None), ("batch-size=8", "batch_size", 8)],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": "ten"}, r"'epochs' expects int, got 'ten'"),
        ({"epochs": 0}, r"epochs must be >= 1"),
        ({"family": "dbbb"}, r"unknown family 'dbbb'.*Did you mean 'dbb'"),
        ({"schedule": "linear"}, r"unknown schedule 'linear'; valid: cosine, step, constant"),
        ({"batch_size": 10, "grad_accum": 4}, r"not divisible by grad_accum"),
        ({"amp": "yes"}, r"amp must be auto, true or false"),
    ],
)
def test_bad_config_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), changes)


def test_lr_schedule_warms_up_linearly_then_follows_the_cosine():
    config = TrainConfig(lr=0.1, min_lr=0.01, warmup_epochs=1, epochs=5)
    factors = [lr_factor(s, total_steps=50, warmup_steps=10, config=config, steps_per_epoch=10) for s in range(50)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    middle = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 20 / 40))
    assert factors[30] == pytest.approx(middle)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    step = TrainConfig(schedule="step", warmup_epochs=0, step_milestones=(1, 3), epochs=5)
    assert [lr_factor(s, total_steps=50, warmup_steps=0, config=step, steps_per_epoch=10) for s in (5, 15, 35)] == (
        pytest.approx([1.0, 0.1, 0.01])
    )


def test_no_weight_decay_on_norms_and_biases():
    model = nsrep.create_model("resnet18", family="dbb", width_mult=0.125, num_classes=4)
    decay, no_decay = param_groups(model, 1e-4, decay_norm_and_bias=False)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=True)) == 1


# ----------------------------------------------------------------------------------------------- runs


def test_finished_run_folder_and_both_forms_agree(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["train_form"]["top1"] == pytest.approx(summary["deployed_form"]["top1"])
    assert summary["max_rel_logit_diff"] < 1e-4 and summary["fold_check_rel_error"] < 1e-4
    assert summary["deploy_params"] < summary["train_params"]
    lines = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert {"train_loss", "test_top1", "test_top5", "lr", "images_per_second"} <= set(lines[0])
    # the tiny model learns the synthetic classes (chance is 25%)
    assert lines[-1]["test_top1"] > 40


def test_deploy_folder_loads_with_create_model_config(finished_run):
    from safetensors.torch import load_file

    deploy = finished_run / "deploy"
    config = read_config(deploy)
    plain = nsrep.create_model(**config, deploy=True)
    plain.load_state_dict(load_file(deploy / "model.safetensors"), strict=True)
    state = load_checkpoint(finished_run / "checkpoint.pt")
    from nsrep.train.runs import model_from_checkpoint

    train_form = model_from_checkpoint(state)
    x = torch.randn(4, 3, 16, 16)
    error = nsrep.verify_equivalence(train_form, plain, x)
    assert error.max_rel_error < 1e-4
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in load_deployed(deploy).parameters())


def test_eval_before_and_after_folding_agree(finished_run, capsys):
    report = evaluate_path(finished_run)
    assert report.train_form.top1 == pytest.approx(report.deployed_form.top1)
    assert report.train_form.loss == pytest.approx(report.deployed_form.loss, rel=1e-4)
    assert report.max_rel_logit_diff < 1e-4
    summary = json.loads((finished_run / "summary.json").read_text())
    assert report.deployed_form.top1 == pytest.approx(summary["deployed_form"]["top1"])
    assert main(["eval", str(finished_run / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert "| training" in out and "| deployed" in out and "max relative logit difference" in out
    assert main(["eval", str(finished_run / "deploy")]) == 0
    assert "| deployed" in capsys.readouterr().out


def test_deploy_command_and_export(finished_run, tmp_path, capsys):
    out = tmp_path / "deployed"
    assert main(["deploy", str(finished_run), "--out", str(out)]) == 0
    assert "vs the unfolded branches" in capsys.readouterr().out
    assert folder_digests(out)["model.safetensors"] == folder_digests(finished_run / "deploy")["model.safetensors"]
    onnx_path, onnx_error = export_onnx(out)
    assert onnx_path.is_file() and onnx_error < 1e-4
    ts_path, ts_error = export_torchscript(out)
    assert ts_path.is_file() and ts_error < 1e-5
    assert main(["export", str(out)]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    config = tiny_config(family="dbb", connectivity="ns", stochastic=1.0, pair_drop=0.1)
    whole = train(config, tmp_path / "whole")
    first = train(config, tmp_path / "split", stop_after=1)
    assert not first.finished and first.epochs_done == 1
    assert not (tmp_path / "split" / "summary.json").exists()
    rest = train(config, tmp_path / "split", resume=True)
    a = load_checkpoint(tmp_path / "whole")["model"]
    b = load_checkpoint(tmp_path / "split")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert whole.deployed_digests == rest.deployed_digests
    keep = ("train_loss", "test_top1", "lr")
    assert [{k: m[k] for k in keep} for m in whole.metrics] == [{k: m[k] for k in keep} for m in rest.metrics]


def test_channels_last_and_gradient_accumulation_run(tmp_path):
    result = train(
        tiny_config(family="acnet", connectivity="ns", channels_last=True, grad_accum=2, clip_grad=1.0, epochs=1),
        tmp_path / "run",
    )
    assert result.finished and result.max_rel_logit_diff < 1e-4
    state = load_checkpoint(tmp_path / "run")
    assert state["scheduler"]["last_epoch"] == 256 // 32  # optimiser steps, not micro-batches


def test_image_folder_trains_with_pillow_workers_and_random_resized_crops(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("val", 3)):
        for label, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = tmp_path / "images" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(0, 50, (40, 48, 3), generator=generator, dtype=torch.uint8)
                pixels = (torch.tensor(colour, dtype=torch.uint8) + noise).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    config = tiny_config(data=str(tmp_path / "images"), image_size=32, batch_size=8, workers=1, epochs=1)
    result = train(config, tmp_path / "run")
    assert config.augment is None and result.finished  # the folder's default: random-resized crop
    assert result.train_form.count == 6 and result.max_rel_logit_diff < 1e-4
    meta = json.loads((tmp_path / "run" / "deploy" / "preprocess.json").read_text())
    assert meta["class_names"] == ["class0", "class1"] and meta["input_size"] == 32


def test_mixed_precision_on_cpu_trains_and_the_fold_is_checked_in_float32(tmp_path):
    result = train(tiny_config(family="repvgg", connectivity="ns", amp=True, epochs=1), tmp_path / "run")
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert result.fold_check < 1e-4 and result.max_rel_logit_diff < 1e-4


# ----------------------------------------------------------------------------------------------- bad input


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_input_gives_a_clear_error_and_overwrites_nothing(finished_run, tmp_path, capsys):
    before = folder_digests(finished_run)
    base = ["train", "--recipe", "demo", "--set", "workers=0", "--set", "progress=false", "--epochs", "1"]

    code, err = run_cli([*base, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "unknown data source" in err and "nowhere" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli([*base, "--data", str(empty), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "matches no known layout" in err and "cifar-10-batches-py" in err
    code, err = run_cli([*base, "--set", "lerning_rate=0.1", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "unknown --set key 'lerning_rate'" in err
    code, err = run_cli([*base, "--recipe", "cifar1000"], capsys)
    assert code == 2 and "Did you mean 'cifar100'" in err
    assert not any((tmp_path / name).exists() for name in "abc")

    # an existing run is never overwritten, and a checkpoint of another architecture is refused by --resume
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("epochs",)]
    tiny += ["--family", "dbb", "--connectivity", "ns"]
    code, err = run_cli(["train", *tiny, "--out", str(finished_run)], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    code, err = run_cli(["train", "--arch", "resnet34", "--out", str(finished_run), "--resume"], capsys)
    assert code == 2 and "arch='resnet18' in the checkpoint, 'resnet34' asked" in err
    code, err = run_cli(["eval", str(finished_run), "--data", "digits"], capsys)
    assert code == 2 and "num_classes=4" in err and "num_classes=10" in err
    code, err = run_cli(["eval", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli(["deploy", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "not a readable nsrep checkpoint" in err and not (tmp_path / "d").exists()
    assert folder_digests(finished_run) == before


# ------------------------------------------------------------------------------------ threads, held-out folders


def test_pinned_threads_make_a_run_independent_of_the_callers_thread_count(tmp_path):
    """``threads`` fixes the intra-op thread count for the run (results depend on it) and restores the caller's."""
    digests = []
    for caller_threads in (2, 1):
        torch.set_num_threads(caller_threads)
        try:
            result = train(tiny_config(threads=1, epochs=1), tmp_path / f"run{caller_threads}")
            assert torch.get_num_threads() == caller_threads  # the caller's setting is left as it was
        finally:
            torch.set_num_threads(1)  # conftest's setting for the other tests
        digests.append(result.deployed_digests)
        losses = result.metrics[0]["step_losses"]
        assert len(losses) == 256 // 32 and all(math.isfinite(v) for v in losses)
    assert digests[0] == digests[1]


def test_cifar10_cpu_recipe_on_a_folder_without_val(tmp_path, capsys):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in range(3):
        folder = tmp_path / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(20):
            pixels = (torch.rand(32, 32, 3, generator=generator) * 80 + 60 * label).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    overrides = ["train_subset=30", "epochs=1", "batch_size=10", "progress=false", "val_fraction=0.25"]
    argv = ["train", "--recipe", "cifar10-cpu", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "run")]
    assert main([*argv, *[x for o in overrides for x in ("--set", o)]]) == 0
    config = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]
    assert (config["val_fraction"], config["split_seed"], config["train_subset"]) == (0.25, 0, 30)
    meta = DeployFolder(tmp_path / "run" / "deploy").read_data_record()
    assert (meta.split, meta.input_size) == (HeldOut(0.25, 0), 32)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["deployed_form"]["count"] == 15  # 25% of 60 images held out, 5 per class
    err = capsys.readouterr().err
    assert "30 train / 15 held-out validation" in err and "decoded once, cached" in err
    # nsrep eval finds the same held-out images again from what the run recorded
    evaluation = evaluate_path(tmp_path / "run" / "checkpoint.pt")  # the folder the run recorded
    assert meta.source == str(tmp_path / "train") and evaluation.deployed_form.count == 15
    assert evaluation.deployed_form.top1 == summary["deployed_form"]["top1"]


def test_eval_every_scores_the_held_out_split_only_every_n_epochs_and_always_at_the_end(tmp_path):
    # Long CPU studies evaluate 5,000 held-out images in about the time a 2,000-image training epoch takes:
    # eval_every keeps learning curves while training dominates the run's cost. Weights are unaffected.
    every = train(tiny_config(epochs=3, eval_every=2), tmp_path / "every2")
    each = train(tiny_config(epochs=3), tmp_path / "every1")
    assert [("test_top1" in m) for m in every.metrics] == [False, True, True]
    assert [m["train_loss"] for m in every.metrics] == [m["train_loss"] for m in each.metrics]
    assert every.metrics[-1]["test_top1"] == each.metrics[-1]["test_top1"]
    assert every.deployed_digests == each.deployed_digests
    with pytest.raises(ValueError, match="eval_every must be >= 1, got 0"):
        tiny_config(eval_every=0)


def test_compile_option_trains_and_evaluates_through_the_compiled_wrapper(tmp_path, monkeypatch):
    """``--set compile=true`` wraps the training and evaluation model in ``torch.compile``; checkpoints and the
    deployed form come from the unwrapped model (no ``_orig_mod.`` prefix). Dynamo's graph capture runs for
    real; its ``eager`` backend keeps this fast (inductor itself: tests/test_compile.py)."""
    compiled = []
    real_compile = torch.compile

    def spy(model, **options):
        wrapper = real_compile(model, **{**options, "backend": "eager"})
        compiled.append(wrapper)
        return wrapper

    monkeypatch.setattr(torch, "compile", spy)
    config = tiny_config(family="dbb", connectivity="ns", epochs=1)
    config = apply_overrides(config, dict([parse_override("compile=true")]))
    result = train(config, tmp_path / "run")
    assert len(compiled) == 1 and compiled[0]._orig_mod is not None
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert result.fold_check < 1e-4 and result.max_rel_logit_diff < 1e-4
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    assert not any(key.startswith("_orig_mod.") for key in state)
    assert TrainConfig().compile is False


@pytest.mark.slow
def test_compile_option_with_inductor_trains_a_network(tmp_path):
    result = train(tiny_config(family="dbb", connectivity="ns", epochs=1, compile=True), tmp_path / "run")
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert result.fold_check < 1e-4 and result.max_rel_logit_diff < 1e-4
