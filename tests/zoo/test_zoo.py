"""timm and torchvision as their users use them, in the zoo environment (``make test-zoo``); skipped elsewhere.

timm ``features_only`` backbones convert and fold into their own class; a folded classifier loads strictly into
a fresh ``timm.create_model`` and then works with timm's own tools (``reparameterize_model``, ONNX export); a
torchvision detector around a converted backbone (:class:`nsrep.convert.DetectionBackbone`) is equivalent,
as a whole, to the same detector around the folded one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nsrep
from helpers import F64_TOL, train_steps
from nsrep.convert import DetectionBackbone
from nsrep.nn.conv import set_implementation

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _images(batch: int = 2, size: int = 64):
    return lambda: torch.randn(batch, 3, size, size, dtype=torch.float64)


def _features_loss(out) -> torch.Tensor:
    return sum((m.float() ** 2).mean() for m in out)


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "efficientnet_b0"])
def test_timm_features_only_converts_and_folds(name):
    original = timm.create_model(name, pretrained=False, features_only=True).double().eval()
    converted = nsrep.convert(original, family="dbb", connectivity="ns")
    assert converted.nsrep_conversion.method == "fx"
    train_steps(converted, _images(), steps=2, loss_fn=_features_loss)
    folded = nsrep.fold_into(original, converted)
    x = _images()()
    eq = nsrep.verify_equivalence(set_implementation(copy.deepcopy(converted), "reference"), folded, x)
    assert eq.max_rel_error <= F64_TOL, eq
    fresh = timm.create_model(name, pretrained=False, features_only=True).double()
    fresh.load_state_dict(folded.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["mobileone_s0", "repvgg_a0"])
def test_folded_timm_model_works_with_timms_own_tools(name, tmp_path):
    """timm's own re-parameterizable models: nsrep's units inside timm's branches fold into timm's class, whose
    own ``reparameterize_model`` and ONNX export then work on it."""
    original = timm.create_model(name, pretrained=False, num_classes=5).double().eval()
    converted = nsrep.convert(original, family="acnet", connectivity="ns")
    target = torch.arange(2) % 5
    train_steps(converted, _images(), steps=2, loss_fn=lambda out: F.cross_entropy(out.float(), target))
    fresh = timm.create_model(name, pretrained=False, num_classes=5).double()
    fresh.load_state_dict(nsrep.fold_into(original, converted).state_dict(), strict=True)
    x = _images()()
    eq = nsrep.verify_equivalence(set_implementation(copy.deepcopy(converted), "reference"), fresh.eval(), x)
    assert eq.max_rel_error <= F64_TOL, eq
    fused = timm.utils.reparameterize_model(copy.deepcopy(fresh))
    assert nsrep.verify_equivalence(fresh, fused, x).max_rel_error <= F64_TOL
    pytest.importorskip("onnx")
    from timm.utils.onnx import onnx_export

    onnx_export(fused.float(), str(tmp_path / f"{name}.onnx"), example_input=x.float(), check=True)
    assert (tmp_path / f"{name}.onnx").stat().st_size > 0


def _detector(backbone, num_classes: int = 3):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    anchors = AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone, num_classes, min_size=96, max_size=96, rpn_anchor_generator=anchors, box_roi_pool=pool
    ).double()


@pytest.mark.parametrize("source", ["timm_features_only", "torchvision_trunk"])
def test_detector_around_a_converted_backbone_folds_as_a_whole(source):
    if source == "timm_features_only":
        trunk = timm.create_model("resnet10t", pretrained=False, features_only=True, out_indices=(3,))
    else:
        resnet = torchvision.models.resnet18(weights=None)
        trunk = torch.nn.Sequential(*list(resnet.children())[:-3])  # up to layer3: stride 16, 256 channels
    trunk = trunk.double().eval()
    example = _images(1, 96)()
    converted = nsrep.convert(trunk, family="dbb", connectivity="ns")
    detector = _detector(DetectionBackbone(converted, example_input=example))
    images = [torch.rand(3, 96, 96, dtype=torch.float64) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]], dtype=torch.float64), "labels": torch.tensor([1])}
        for _ in images
    ]
    detector.train()
    losses = detector(images, targets)
    sum(losses.values()).backward()
    folded = copy.deepcopy(detector)
    folded.backbone.body = nsrep.fold_into(trunk, converted)
    reference = copy.deepcopy(detector)
    reference.backbone.body = set_implementation(reference.backbone.body, "reference")
    eq = nsrep.verify_equivalence(reference, folded, images)
    assert eq.max_rel_error <= F64_TOL, eq


README = Path(__file__).resolve().parents[2] / "README.md"
ZOO_BLOCKS = re.findall(r"```py\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(ZOO_BLOCKS)))
def test_readme_zoo_example_runs(index, capsys):
    """The README's timm/torchvision examples (```py blocks, which the main environment cannot run) run here,
    and every fold error they print is that of an exact fold (float32 tolerance)."""
    exec(compile(ZOO_BLOCKS[index], f"README.md[py block {index}]", "exec"), {})
    errors = [float(e) for e in re.findall(r"max rel error ([0-9.eE+-]+)", capsys.readouterr().out)]
    assert errors and max(errors) <= 1e-4, errors
