"""Feature networks for dense prediction: ``features_only``/``out_indices``/``feature_info`` for every architecture
and stem, exact folding of feature networks and of a user's backbone+neck+head tree, strict loading of the
deployed feature network, nested outputs in ``verify_equivalence``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nsrep
from helpers import F32_TOL, F64_TOL, assert_folds, train_steps
from nsrep.deploy.export import load_deployed, read_config, save_deployed
from nsrep.reparam import compare_outputs
from nsrep.tasks.dense import FPNNeck, Segmenter, confusion_matrix, make_mosaics, mean_iou

WIDTH = {"resnext50_32x4d": 0.25}  # its grouped 3×3 needs 32 groups of at least one channel
INPUT = {"cifar": 32, "imagenet": 64}


def _width(arch: str) -> float:
    return WIDTH.get(arch, 0.125)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("arch", nsrep.list_models())
def test_feature_shapes_and_info(arch, stem):
    """Every level's map is a plain (B, C, H/r, W/r) batch matching feature_info, training and deployed forms."""
    size = INPUT[stem]
    x = torch.randn(2, 3, size, size)
    train = nsrep.create_model(arch, stem=stem, width_mult=_width(arch), features_only=True)
    deploy = nsrep.create_model(arch, stem=stem, width_mult=_width(arch), features_only=True, deploy=True)
    info = train.feature_info
    assert info.out_indices == tuple(range(5)) and len(info) == 5
    assert info.get_dicts() == deploy.feature_info.get_dicts()
    assert info.reduction() == sorted(info.reduction())
    assert info.reduction(0) == (1 if stem == "cifar" else 2) and info.reduction(-1) == 8 * info.reduction(1)
    assert not hasattr(train, "head") and not any(isinstance(m, nn.Linear) for m in train.modules())
    for model in (train.eval(), deploy.eval()):
        with torch.no_grad():
            features = model(x)
        assert isinstance(features, list) and len(features) == len(info)
        for f, chs, red, name in zip(features, info.channels(), info.reduction(), info.module_name(), strict=True):
            assert f.shape == (2, chs, size // red, size // red), (name, f.shape)
            model.get_submodule(name)  # module_name names a real module
    # a classification model describes all its levels too
    classifier = nsrep.create_model(arch, stem=stem, width_mult=_width(arch))
    assert classifier.feature_info.get_dicts() == info.get_dicts()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v1"])
def test_out_indices_select_and_prune(arch):
    full = nsrep.create_model(arch, width_mult=0.125, features_only=True)
    some = nsrep.create_model(arch, width_mult=0.125, features_only=True, out_indices=(-2, 1))
    assert some.feature_info.out_indices == (1, 3)
    assert some.feature_info.channels() == full.feature_info.channels([1, 3])
    assert some.feature_info.reduction() == full.feature_info.reduction([1, 3])
    # stages past the last chosen level are not built: no unused parameters
    assert set(some.state_dict()) < set(full.state_dict())
    assert len(some(torch.randn(1, 3, 64, 64))) == 2


def test_bad_out_indices():
    with pytest.raises(ValueError, match=r"out_indices entry 5 is out of range; accepted: 0\.\.4 \(or -5\.\.-1"):
        nsrep.create_model("resnet18", width_mult=0.125, features_only=True, out_indices=(1, 5))
    with pytest.raises(ValueError, match="out_indices entry -6 is out of range"):
        nsrep.create_model("mobilenet_v1", width_mult=0.125, features_only=True, out_indices=(-6,))
    with pytest.raises(ValueError, match="names a level twice"):
        nsrep.create_model("resnet18", width_mult=0.125, features_only=True, out_indices=(4, -1))
    with pytest.raises(ValueError, match="entry '1' is not an int"):
        nsrep.create_model("resnet18", width_mult=0.125, features_only=True, out_indices=("1",))
    with pytest.raises(ValueError, match="out_indices is empty"):
        nsrep.create_model("resnet18", width_mult=0.125, features_only=True, out_indices=())
    with pytest.raises(ValueError, match="applies only with features_only=True"):
        nsrep.create_model("resnet18", width_mult=0.125, out_indices=(1,))


def _feature_loss(features) -> Tensor:
    return sum((f.float() ** 2).mean() + f.float().mean() for f in features)


@pytest.mark.parametrize(
    ("arch", "stem", "family", "connectivity"),
    [
        ("resnet18", "imagenet", "dbb", "ns"),
        ("resnet18", "cifar", "repvgg", "block"),
        ("resnet50", "imagenet", "acnet", "ns"),
        ("mobilenet_v1", "cifar", "mobileone", "ns"),
    ],
)
def test_feature_network_folds_and_loads_strictly(arch, stem, family, connectivity, tmp_path):
    """Trained feature network == its fold (float64 and float32), aggregate == deployed map at every level; the
    fold loads strictly into create_model(..., features_only=True, deploy=True) and survives a deploy folder."""
    options = {"stem": stem, "width_mult": 0.125, "features_only": True, "out_indices": (1, 2, 4)}
    size = INPUT[stem]
    model = nsrep.create_model(arch, family=family, connectivity=connectivity, **options)

    def make_input():
        return torch.randn(4, 3, size, size)

    train_steps(model, make_input, loss_fn=_feature_loss)
    deployed = assert_folds(model, make_input)
    assert deployed.nsrep_config["features_only"] and deployed.nsrep_config["deploy"]
    fresh = nsrep.create_model(arch, deploy=True, **options).double()
    fresh.load_state_dict(deployed.state_dict(), strict=True)
    x = make_input().double()
    assert nsrep.verify_equivalence(deployed, fresh, x).max_abs_error == 0

    save_deployed(deployed.float(), tmp_path / "deploy")
    assert read_config(tmp_path / "deploy")["out_indices"] == [1, 2, 4]
    loaded = load_deployed(tmp_path / "deploy")
    assert loaded.feature_info.out_indices == (1, 2, 4)
    assert nsrep.verify_equivalence(deployed.float(), loaded, x.float()).max_abs_error == 0


class Detector(nn.Module):
    """A user's tree: an nsrep backbone, a plain FPN neck, a converted head block (nsrep.convert) beside a plain
    classifier; returns a dict holding a tensor, a list and a tuple."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = FPNNeck(backbone.feature_info.channels(), 8)
        plain_tower = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.tower = nsrep.convert(plain_tower, family="acnet", connectivity="ns")
        self.cls = nn.Conv2d(8, 3, 1)
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> dict:
        levels = self.neck(self.backbone(x))
        towers = [self.tower(level) for level in levels]
        return {"cls": self.cls(towers[0]), "boxes": [self.box(t) for t in towers], "levels": tuple(levels)}


def test_backbone_neck_head_tree_folds_exactly():
    backbone = nsrep.create_model(
        "resnet18", family="dbb", connectivity="ns", stem="cifar", width_mult=0.125, features_only=True,
        out_indices=(2, 3, 4),
    )  # fmt: skip
    model = Detector(backbone)

    def make_input():
        return torch.randn(4, 3, 32, 32)

    def loss(out):
        return out["cls"].pow(2).mean() + sum(b.mean() for b in out["boxes"]) + out["levels"][0].pow(2).mean()

    train_steps(model, make_input, loss_fn=loss)
    deployed = assert_folds(model, make_input)  # nested dict/list/tuple outputs, float64 and float32
    assert not any(isinstance(m, nsrep.Foldable) for m in deployed.modules())
    assert deployed.backbone.nsrep_config["deploy"]  # a nested nsrep model says it is deployed
    fresh = nsrep.create_model("resnet18", stem="cifar", width_mult=0.125, features_only=True,
                               out_indices=(2, 3, 4), deploy=True)  # fmt: skip
    fresh.load_state_dict(deployed.backbone.state_dict(), strict=True)


def test_segmenter_folds_and_keeps_miou():
    """The dense task's model: same predictions and mIoU before and after folding (float32)."""
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    x, y = make_mosaics(images, labels, 12, seed=0)
    backbone = nsrep.create_model("resnet18", family="dbb", connectivity="ns", stem="cifar", width_mult=0.125,
                                  features_only=True, out_indices=(1, 2, 3))  # fmt: skip
    model = Segmenter(backbone, 4, neck_channels=8)
    train_steps(model, lambda: x[:6], loss_fn=lambda out: F.cross_entropy(out, y[:6]))
    folded = nsrep.reparameterize(model)
    eq = nsrep.verify_equivalence(model, folded, x)
    assert eq.max_rel_error <= F32_TOL, str(eq)
    with torch.no_grad():
        before, after = model.eval()(x).argmax(1), folded(x).argmax(1)
    assert torch.equal(before, after)
    assert mean_iou(confusion_matrix(before, y, 4)) == mean_iou(confusion_matrix(after, y, 4))


def test_segmenter_needs_a_feature_backbone():
    with pytest.raises(ValueError, match="features_only=True"):
        Segmenter(nsrep.create_model("resnet18", width_mult=0.125), 10)


def test_mosaics_and_miou():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 4).contiguous()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x, y = make_mosaics(images, labels, 3, grid=2, seed=1)
    assert x.shape == (3, 3, 8, 8) and y.shape == (3, 8, 8)
    # every tile's pixels are one image, and the label map holds that image's label
    for m in range(3):
        for r in range(2):
            for c in range(2):
                tile = x[m, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
                assert (tile == tile[0, 0]).all()
                assert (y[m, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] == labels[int(tile[0, 0])]).all()
    # 12 tiles from 6 images: each drawn exactly twice
    assert torch.bincount(x[:, 0, ::4, ::4].reshape(-1).long(), minlength=6).tolist() == [2] * 6
    perfect = confusion_matrix(y, y, 3)
    assert mean_iou(perfect) == 1.0
    pred = torch.zeros_like(y)  # all class 0: IoU of class 0 = its pixels / all pixels, others 0
    share = float((y == 0).double().mean())
    assert mean_iou(confusion_matrix(pred, y, 3)) == pytest.approx(share / 3)
    with pytest.raises(ValueError, match="count must be a positive int"):
        make_mosaics(images, labels, 0)


def test_compare_outputs_nested():
    a = {"x": torch.ones(2), "y": [torch.full((3,), 100.0), (torch.ones(1, dtype=torch.float64),)]}
    b = copy.deepcopy(a)
    assert compare_outputs(a, b).max_abs_error == 0
    b["y"][1][0][0] = 1.001  # a small error on a small output is found, not hidden by the large one
    eq = compare_outputs(a, b)
    assert eq.max_rel_error == pytest.approx(1e-3) and eq.worst == "['y'][1][0]"
    assert "worst at output['y'][1][0]" in str(eq)
    with pytest.raises(ValueError, match="different keys"):
        compare_outputs(a, {"x": torch.ones(2)})
    with pytest.raises(ValueError, match=r"outputs\['y'\] have different lengths: 2 vs 1"):
        compare_outputs(a, {"x": torch.ones(2), "y": [torch.ones(3)]})
    with pytest.raises(ValueError, match=r"differ in shape at output\['x'\]"):
        compare_outputs(a, {"x": torch.ones(3), "y": b["y"]})
    with pytest.raises(ValueError, match="differ in type: Tensor vs list"):
        compare_outputs(torch.ones(1), [torch.ones(1)])
    assert F64_TOL < F32_TOL
