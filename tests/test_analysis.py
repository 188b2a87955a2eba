"""Analyses (paper Sec. 6.4) on tiny models: the numbers, not only that files appear."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

import nsrep
from helpers import train_steps
from nsrep.analysis import (
    analyze,
    block_drop,
    branch_outputs,
    depth_similarity,
    kernel_maps,
    pixel_cosine,
    residual_blocks,
    topology_counts,
)
from nsrep.analysis.analyze import skipped
from nsrep.nn.streams import aggregate
from nsrep.train.config import TrainConfig
from nsrep.train.trainer import train


def tiny_model(family: str = "dbb", connectivity: str = "ns", **kw) -> nn.Module:
    model = nsrep.create_model(
        "resnet18", family=family, connectivity=connectivity, width_mult=0.125, num_classes=4, **kw
    )
    train_steps(model, lambda: torch.randn(8, 3, 16, 16), steps=2)
    return model.eval()


def batches(n: int = 2, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 3, 16, 16, generator=generator), torch.randint(0, 4, (size,), generator=generator))
        for _ in range(n)
    ]


def zero_residual(model: nn.Module, block_name: str) -> None:
    """Make a block the identity: every branch of its last unit outputs exactly zero in eval mode."""
    block = model.get_submodule(block_name)
    with torch.no_grad():
        for branch in block.conv2.branches:
            branch.final_bn.weight.zero_()
            branch.final_bn.bias.zero_()


def test_pixel_cosine_of_a_feature_with_itself_is_one_and_zero_pixels_are_left_out():
    x = torch.randn(2, 5, 3, 3)
    x[0, :, 1, 1] = 0  # a position a ReLU zeroed entirely: no direction
    cos = pixel_cosine(x, x)
    assert cos.numel() == 2 * 9 - 1
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)
    assert torch.allclose(pixel_cosine(x, -x), -torch.ones_like(cos), atol=1e-12)
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    b = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    assert pixel_cosine(a, b).item() == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match="one shape"):
        pixel_cosine(a, torch.ones(1, 3, 1, 1))


def test_identical_consecutive_blocks_have_depth_similarity_one():
    model = tiny_model()
    zero_residual(model, "stages.0.1")  # block 0.1 now passes block 0.0's output through unchanged
    stats = depth_similarity(model, batches())
    same = stats[("stages.0.0", "stages.0.1")]
    assert same.mean == pytest.approx(1.0, abs=1e-6) and same.std < 1e-6
    assert ("stages.0.0", "stages.1.0") not in stats  # different shapes are not compared
    other = stats[("stages.1.0", "stages.1.1")]
    assert other.count > 0 and other.mean < 0.9999


def test_dropping_a_block_that_is_the_identity_changes_nothing():
    model = tiny_model(family="acnet", connectivity="ns")
    zero_residual(model, "stages.2.1")
    data = batches(3)
    baseline, accuracies = block_drop(model, data)
    assert set(accuracies) == {n for n, m in residual_blocks(model) if isinstance(m.shortcut, nn.Identity)}
    assert accuracies["stages.2.1"] == baseline
    deployed = nsrep.reparameterize(model)
    x = data[0][0]
    reference = deployed(x)
    with skipped(deployed, "stages.2.1"):
        assert torch.allclose(deployed(x), reference, rtol=1e-5, atol=1e-5)
        assert isinstance(deployed.get_submodule("stages.2.1"), nn.Identity)
    assert not isinstance(deployed.get_submodule("stages.2.1"), nn.Identity)  # restored
    with skipped(deployed, "stages.0.1"):
        assert not torch.allclose(deployed(x), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("connectivity", ["block", "ns"])
def test_branch_outputs_sum_to_the_units_aggregate(connectivity):
    model = tiny_model(family="dbb", connectivity=connectivity).double()
    inputs = {}
    unit = model.get_submodule("stages.1.1.conv1")
    handle = unit.register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0]))
    outputs = {}
    handle2 = unit.register_forward_hook(lambda m, args, out: outputs.__setitem__("y", out))
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16, dtype=torch.float64))
    handle.remove()
    handle2.remove()
    assert inputs["x"].dim() == 5 and (connectivity == "block" or inputs["x"].shape[0] > 1)
    y = outputs["y"]
    total = branch_outputs(unit, inputs["x"]).sum(0)
    assert torch.allclose(total, aggregate(y) if y.dim() == 5 else y, rtol=1e-10, atol=1e-10)


def test_topology_counts_match_hand_counts():
    # two units of 2 and 3 branches: block level 2 + 3 = 5 paths, branch level 2 * 3 = 6 (paper Eq. 5, 7)
    net = nn.Sequential(
        nsrep.RepConv2d(3, 4, 3, family="convK", num_branches=2),
        nsrep.RepConv2d(4, 4, 3, family="convK", num_branches=3),
    )
    counts = topology_counts(net, "ns")
    assert counts == {"units": 2, "branches": 5, "block_level": 5, "branch_level": 6, "this_model": 6}
    assert topology_counts(net, "block")["this_model"] == 5
    resnet = nsrep.create_model("resnet18", family="convK", num_branches=3, width_mult=0.125)
    t = topology_counts(resnet, "ns")
    assert t["units"] == 20 and t["branches"] == 60  # 17 3×3/stem units + 3 shortcut units, K = 3 each
    assert t["block_level"] == 60 and t["branch_level"] == 3**20


def test_kernel_pictures_are_the_folded_branch_kernels():
    model = tiny_model(family="acnet", connectivity="ns")
    pic = kernel_maps(model, "stages.1.1.conv2")
    assert pic.signed.shape == (3, 3, 3) and pic.signed.abs().max() == pytest.approx(1.0)
    # acnet branches: 3×3, 1×3 (zero first and last rows), 3×1 (zero first and last columns)
    assert torch.all(pic.signed[1][[0, 2], :] == 0) and torch.all(pic.signed[2][:, [0, 2]] == 0)
    assert torch.allclose(pic.cosine.diagonal(), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"no unit named 'stages.9'.*stem"):
        kernel_maps(model, "stages.9")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    base = {"data": "synthetic", "width_mult": 0.125, "epochs": 1, "batch_size": 32, "lr": 0.02, "workers": 0}
    for connectivity in ("block", "ns"):
        config = TrainConfig.from_dict({**base, "family": "acnet", "connectivity": connectivity, "progress": False})
        train(config, root / connectivity)
    return root


def test_analyze_writes_figures_and_the_numbers_behind_them(two_runs, tmp_path):
    report = analyze([two_runs / "block", two_runs / "ns"], tmp_path, max_images=40, batch_size=16, progress=False)
    names = {p.name for p in report.files}
    for stem in ("similarity_depth", "similarity_branches", "kernels", "block_drop"):
        assert f"{stem}.png" in names and f"{stem}.csv" in names
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert "topologies.csv" in names and "summary.txt" in names
    with open(tmp_path / "block_drop.csv") as f:
        rows = list(csv.DictReader(f))
    intact = {r["model"]: float(r["top1"]) for r in rows if r["skipped_block"] == "(none)"}
    assert set(intact) == {"acnet-block", "acnet-ns"}
    for r in rows:
        assert float(r["drop"]) == pytest.approx(intact[r["model"]] - float(r["top1"]))
    with open(tmp_path / "topologies.csv") as f:
        topo = {r["model"]: r for r in csv.DictReader(f)}
    assert int(topo["acnet-block"]["topologies_this_model"]) == int(topo["acnet-block"]["topologies_block_eq5"])
    # 17 acnet 3×3 units (stem included) of 3 branches; the 3 shortcut 1×1 units have a single branch
    assert int(topo["acnet-ns"]["topologies_this_model"]) == 3**17 == int(topo["acnet-ns"]["topologies_branch_eq7"])
    assert "40 test images" in report.summary and "block drop acnet-ns" in report.summary


def test_analyze_command(two_runs, tmp_path, capsys):
    from nsrep.cli import main

    args = ["analyze", str(two_runs / "block"), str(two_runs / "ns"), "--out", str(tmp_path), "--max-images", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "16 test images of synthetic" in out and "topologies acnet-ns" in out
    assert main(["analyze", str(two_runs / "ns"), "--unit", "nope", "--out", str(tmp_path)]) == 2
    assert "no unit named 'nope'" in capsys.readouterr().err


def test_analyze_refuses_mixed_data_and_unknown_units(two_runs, tmp_path):
    with pytest.raises(ValueError, match="no unit named 'conv9'"):
        analyze([two_runs / "ns"], tmp_path, unit="conv9", max_images=8, progress=False)
    with pytest.raises(ValueError, match="at least one checkpoint"):
        analyze([], tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        analyze([tmp_path / "nothing"], tmp_path)
