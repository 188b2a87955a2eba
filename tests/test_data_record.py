"""The data record a run leaves (checkpoint "data", deploy/preprocess.json) and the commands that read it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from nsrep.analysis import analyze
from nsrep.cli import main
from nsrep.storage.checkpoint import load_checkpoint
from nsrep.storage.data_record import DATA_RECORD_VERSION, DataRecord, HeldOut, read_data_record
from nsrep.train.runs import evaluate_path

CLASSES, PER_CLASS, TEST_PER_CLASS = 3, 20, 7


def _class_folders(root: Path, per_class: int, seed: int) -> Path:
    """CIFAR-style JPEG class folders, each class a brightness band so a tiny model learns something."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for label in range(CLASSES):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(32, 32, 3, generator=generator) * 80 + 60 * label).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run on a folder of class folders (no val/: a held-out split), and a test folder of its own."""
    root = tmp_path_factory.mktemp("folder_run")
    train_dir = _class_folders(root / "train", PER_CLASS, seed=0)
    test_dir = _class_folders(root / "mytest", TEST_PER_CLASS, seed=1)
    overrides = ["train_subset=30", "epochs=1", "batch_size=10", "progress=false", "val_fraction=0.25"]
    argv = ["train", "--recipe", "cifar10-cpu", "--data", str(train_dir), "--out", str(root / "run")]
    assert main([*argv, *[x for o in overrides for x in ("--set", o)]]) == 0
    return root / "run", test_dir


def test_analyze_reads_the_recorded_source_of_an_image_folder_run(folder_run, tmp_path):
    run, _ = folder_run  # recorded kind "imagefolder", which is no data source: the folder path is
    report = analyze([run], tmp_path, max_images=8, batch_size=8, progress=False)
    assert "8 test images of imagefolder" in report.summary


def test_eval_of_a_folder_handed_in_scores_every_image_and_says_so(folder_run, capsys):
    run, test_dir = folder_run
    evaluation = evaluate_path(run, data=str(test_dir))
    assert evaluation.deployed_form.count == evaluation.train_form.count == CLASSES * TEST_PER_CLASS
    assert main(["eval", str(run), "--data", str(test_dir)]) == 0
    out = capsys.readouterr().out
    assert f"every image of {test_dir}" in out
    assert re.search(rf"\| deployed +\| {CLASSES * TEST_PER_CLASS} +\|", out)  # the table's image count


def test_eval_of_the_run_itself_keeps_its_held_out_split_and_names_it(folder_run, capsys):
    run, _ = folder_run
    held_out = round(0.25 * CLASSES * PER_CLASS)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "held-out 0.25 of the training images (split seed 0)" in out and "as in training" in out
    assert re.search(rf"\| deployed +\| {held_out} +\|", out)
    train_dir = str(run.parent / "train")
    assert evaluate_path(run, data=train_dir).deployed_form.count == held_out  # the run's own folder: its split


def test_every_command_reads_one_record_for_old_and_new_runs(folder_run):
    run, _ = folder_run
    written = load_checkpoint(run / "checkpoint.pt")["data"]
    assert written["data_record_version"] == DATA_RECORD_VERSION == 2
    record = read_data_record(written)
    assert record == read_data_record(json.loads((run / "deploy" / "preprocess.json").read_text()))
    assert record.source == str(run.parent / "train") and record.kind == "imagefolder"
    assert record.split == HeldOut(0.25, 0) and record.input_size == 32 and len(record.class_names) == CLASSES
    assert read_data_record(record.to_dict()) == record
    # version 1 (unversioned, before the record was typed): "data" named the kind; the oldest had no source
    old = {"data": "imagefolder", "source": record.source, "num_classes": 3, "in_chans": 3, "input_size": 32}
    old |= {"mean": record.mean, "std": record.std, "class_names": record.class_names}
    # records written before the evaluation resize was recorded carry none (load_data's default, 0.875, applies)
    assert record.crop_pct == 0.875
    assert read_data_record({**old, "val_fraction": 0.25, "split_seed": 0}) == dataclasses.replace(
        record, crop_pct=None
    )
    assert read_data_record({"data": "digits", "input_size": 8}) == DataRecord("digits", "digits", input_size=8)
    assert read_data_record({"data": "cifar10"}).source is None  # a path it never recorded: --data is asked for
    assert read_data_record({}) is None


def test_an_unreadable_data_record_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"data record version 7 .* reads versions 1, 2"):
        read_data_record({"data_record_version": 7})
    with pytest.raises(ValueError, match=r"kind must be one of cifar10, .*got 'mnist'"):
        read_data_record({"data": "mnist"})
    with pytest.raises(ValueError, match=r"does not record where its data was; pass --data"):
        read_data_record({"data": "cifar10"}).require_source("RUN")
