"""Run and deploy folders: their states, the model record of models and heads, old and unknown versions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import nsrep
from nsrep.deploy.export import load_deployed, read_record, save_deployed
from nsrep.storage.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from nsrep.storage.folders import DeployFolder, RunFolder
from nsrep.storage.model_record import ModelRecord
from nsrep.train.config import TrainConfig
from nsrep.train.runs import evaluate_path, model_from_checkpoint

TINY = {"data": "synthetic", "arch": "resnet18", "width_mult": 0.125, "workers": 0, "progress": False}
MODEL = {"arch": "resnet18", "width_mult": 0.125, "num_classes": 4, "family": "dbb", "connectivity": "ns"}


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tiny_checkpoint(path: Path, **changes) -> dict:
    """A format-2 checkpoint of a real (untrained) model, as the trainer writes it."""
    model = nsrep.create_model(**MODEL)
    state = {
        "config": TrainConfig.from_dict({**TINY, "family": "dbb", "connectivity": "ns"}).to_dict(),
        "model_record": ModelRecord.of(model).to_dict(),
        "epoch": 1,
        "model": model.state_dict(),
        **changes,
    }
    save_checkpoint(state, path)
    return state


# ------------------------------------------------------------------------------------------ run folder states


def test_run_folder_states(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.state == "new"  # missing
    folder.path.mkdir()
    assert folder.state == "new"  # empty
    folder.write_config(TrainConfig.from_dict(TINY))
    (folder.path / ".checkpoint.pt.tmp-abc").write_bytes(b"killed write")
    assert folder.state == "new"  # a run killed before its first checkpoint
    tiny_checkpoint(folder.checkpoint_path)
    assert folder.state == "resumable"
    folder.write_summary({"epochs": 1})
    assert folder.state == "finished" and folder.read_summary() == {"epochs": 1}
    (folder.path / "notes.txt").write_text("mine")
    assert folder.state == "foreign" and folder.foreign_entries() == ["notes.txt"]
    plain_file = tmp_path / "a-file"
    plain_file.write_text("x")
    assert RunFolder(plain_file).state == "foreign"


def test_open_refuses_existing_runs_other_configs_and_missing_checkpoints(tmp_path):
    config = TrainConfig.from_dict({**TINY, "family": "dbb", "connectivity": "ns"})
    folder = RunFolder(tmp_path / "run")
    assert folder.open(config, resume=False) is None
    with pytest.raises(ValueError, match="nothing to resume"):
        folder.open(config, resume=True)
    saved = tiny_checkpoint(folder.checkpoint_path)
    with pytest.raises(ValueError, match=r"already holds a run; pass --resume"):
        folder.open(config, resume=False)
    assert folder.open(config, resume=True)["epoch"] == saved["epoch"]
    other = TrainConfig.from_dict({**TINY, "arch": "resnet34", "family": "dbb", "connectivity": "ns"})
    with pytest.raises(ValueError, match=r"arch='resnet18' in the checkpoint, 'resnet34' asked"):
        folder.open(other, resume=True)


def test_foreign_folder_is_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    (foreign / "config.yaml").write_text("mine: true\n")  # a run file name among foreign files
    before = digests(foreign)
    config = TrainConfig.from_dict({**TINY, "epochs": 1})
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"is not an nsrep run folder \(it holds holiday.jpg\)"):
            nsrep.train.train(config, foreign, resume=resume)
    with pytest.raises(ValueError, match="not an nsrep run folder"):
        RunFolder(foreign).write_config(config)
    assert digests(foreign) == before


# ------------------------------------------------------------------------------------------ model records


def test_model_record_round_trips_through_a_deploy_folder(tmp_path):
    model = nsrep.create_model(**MODEL).eval()
    deployed = nsrep.reparameterize(model)
    save_deployed(deployed, tmp_path / "model")
    stored = json.loads((tmp_path / "model" / DeployFolder.RECORD).read_text())
    assert stored["record_version"] == 2 and stored["kind"] == "model" and stored["name"] == "resnet18"
    assert "deploy" not in stored["options"] and "bn_init" not in stored["options"]
    loaded = load_deployed(tmp_path / "model")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), deployed(x))
    assert loaded.nsrep_config == deployed.nsrep_config
    assert read_record(tmp_path / "model").build(deploy=True).nsrep_config == deployed.nsrep_config


def test_folded_ns_mlp_head_round_trips_through_a_deploy_folder(tmp_path):
    head = nsrep.create_head("ns-mlp", in_features=8, num_classes=3)
    head(torch.randn(16, 8)).sum().backward()  # train mode once: BN statistics move
    deployed = nsrep.reparameterize(head.eval())
    save_deployed(deployed, tmp_path / "head", preprocess={"note": "features"})
    record = read_record(tmp_path / "head")
    assert (record.kind, record.name, record.options["in_features"]) == ("head", "ns-mlp", 8)
    loaded = load_deployed(tmp_path / "head")
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), deployed(x))
    assert loaded.nsrep_config == deployed.nsrep_config
    assert DeployFolder(tmp_path / "head").read_preprocess() == {"note": "features"}


def test_schema_1_record_still_loads(tmp_path):
    deployed = nsrep.reparameterize(nsrep.create_model(**MODEL).eval())
    save_deployed(deployed, tmp_path / "old")
    old = {k: v for k, v in deployed.nsrep_config.items() if k not in ("deploy", "bn_init")}  # the former file
    (tmp_path / "old" / DeployFolder.RECORD).write_text(json.dumps(old))
    assert read_record(tmp_path / "old") == ModelRecord(
        "model", "resnet18", {k: v for k, v in old.items() if k != "arch"}
    )
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(load_deployed(tmp_path / "old")(x), deployed(x))
    head_v1 = {"name": "linear", "in_features": 4, "num_classes": 2, "deploy": True}
    assert ModelRecord.from_dict(head_v1).build().nsrep_config == head_v1


def test_unknown_record_version_is_refused_with_the_versions(tmp_path):
    save_deployed(nsrep.reparameterize(nsrep.create_model(**MODEL).eval()), tmp_path / "new")
    path = tmp_path / "new" / DeployFolder.RECORD
    path.write_text(json.dumps({**json.loads(path.read_text()), "record_version": 7}))
    with pytest.raises(ValueError, match=r"has model record version 7; this nsrep reads versions 1, 2"):
        load_deployed(tmp_path / "new")
    with pytest.raises(ValueError, match="names neither an architecture"):
        ModelRecord.from_dict({"width_mult": 0.5})


def test_a_failed_deploy_write_leaves_the_folder_as_it_was(tmp_path):
    folder = DeployFolder(tmp_path / "deploy")
    folder.write(nsrep.reparameterize(nsrep.create_model(**MODEL).eval()), preprocess={"input_size": 16})
    before = digests(folder.path)
    with pytest.raises(TypeError):  # preprocess that cannot be serialised: nothing may be written
        folder.write(nsrep.reparameterize(nsrep.create_model(**MODEL).eval()), preprocess={"bad": object()})
    with pytest.raises(ValueError, match="save_deployed expects"):
        folder.write(nsrep.create_model(**MODEL))  # the training form
    assert digests(folder.path) == before and not list(folder.path.glob(".*tmp-*"))


# ------------------------------------------------------------------------------------------ checkpoint formats


def test_format_1_checkpoint_still_reads_and_evaluates(tmp_path):
    current = tiny_checkpoint(tmp_path / "current.pt")
    data = {"data": "synthetic", "source": "synthetic", "num_classes": 4, "in_chans": 3, "input_size": 16}
    old = {k: v for k, v in current.items() if k != "model_record"}
    model_config = nsrep.create_model(**MODEL).nsrep_config  # format 1: the bare keyword dict
    old |= {"format_version": 1, "model_config": model_config, "data": data}
    torch.save(old, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert ModelRecord.from_dict(state["model_record"]) == ModelRecord.from_keywords(model_config)
    model = model_from_checkpoint(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, current["model"][name])
    evaluation = evaluate_path(tmp_path / "old.pt", batch_size=128)
    assert evaluation.train_form.count == 128 and evaluation.max_rel_logit_diff < 1e-4
    assert FORMAT_VERSION == 2 and load_checkpoint(tmp_path / "current.pt")["format_version"] == 2


def test_unknown_checkpoint_format_is_refused_naming_it(tmp_path):
    state = tiny_checkpoint(tmp_path / "run" / "checkpoint.pt")
    torch.save({**state, "format_version": 9}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"has checkpoint format 9; this nsrep reads formats 1, 2"):
        load_checkpoint(tmp_path / "run")


def test_a_key_added_after_a_run_was_written_counts_as_its_default():
    # A finished run of an older nsrep lacks the keys added since (eval_every, optimizer, mixup, ...): it ran
    # with their defaults, so a sweep must reuse it rather than refuse it; a key set otherwise still conflicts.
    from nsrep.storage.folders import config_conflicts

    saved = TrainConfig().to_dict()
    for key in ("eval_every", "optimizer", "mixup", "drop_path_rate"):
        del saved[key]
    assert config_conflicts(saved, TrainConfig()) == []
    assert config_conflicts(saved, TrainConfig(eval_every=2)) == [
        "eval_every=1 (absent: the default) in the checkpoint, 2 asked"
    ]
    assert config_conflicts({**saved, "lr": 0.5}, TrainConfig()) == ["lr=0.5 in the checkpoint, 0.1 asked"]
