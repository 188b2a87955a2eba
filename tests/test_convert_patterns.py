"""nsrep.convert on the layer patterns of timm and torchvision, hand-written in tests/zoo_patterns.py so that
they run without either library: each op class handled by what it computes, or refused before training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nsrep
from helpers import F32_TOL, F64_TOL, classification_loss, train_steps
from nsrep.nn.conv import set_implementation
from zoo_patterns import (
    BatchNormAct2d,
    ConvNeXtLike,
    ConvNormAct,
    CrossStage,
    DenseLayer,
    DropPath,
    GhostLike,
    Net,
    PaddedStem,
    ResidualDrop,
    ShiftedBatchNorm,
    ShuffleBlock,
    SplitAttention,
    StochasticDepth,
    Transition,
    stochastic_depth,
)

NUM_CLASSES = 5


def _input(batch: int = 4, size: int = 16):
    return lambda: torch.randn(batch, 3, size, size, dtype=torch.float64)


def _train_mode_outputs(model: nn.Module, x: Tensor, seed: int = 0) -> Tensor:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model.train()(x)


def _assert_same_training_function(original: nn.Module, converted: nn.Module) -> None:
    """With ``init="preserve"`` and block units every extra branch outputs exactly 0 in training too, so the
    converted model in train mode computes the original in train mode, BatchNorm batch statistics included."""
    original = copy.deepcopy(original)
    x = _input()()
    torch.testing.assert_close(_train_mode_outputs(converted, x), _train_mode_outputs(original, x))


def _assert_folds_after_training(original: nn.Module, converted: nn.Module, fresh: nn.Module) -> None:
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    folded = nsrep.fold_into(original, converted)
    x = _input()()
    eq = nsrep.verify_equivalence(set_implementation(copy.deepcopy(converted), "reference"), folded, x)
    assert eq.max_rel_error <= F64_TOL, eq
    deployed = nsrep.reparameterize(converted)
    assert nsrep.verify_equivalence(converted, deployed, x).max_rel_error <= F64_TOL
    converted32 = copy.deepcopy(converted).float()
    folded32 = nsrep.fold_into(copy.deepcopy(original).float(), converted32)
    eq32 = nsrep.verify_equivalence(set_implementation(converted32, "reference"), folded32, x.float())
    assert eq32.max_rel_error <= F32_TOL, eq32
    fresh.load_state_dict(folded.state_dict(), strict=True)


class _LastNormAct(nn.Module):
    """Plain stem and conv, then a conv whose BatchNormAct2d is the last op before the head."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.norm = norm
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.norm(self.conv(self.stem(x))), 1).flatten(1))


@pytest.mark.parametrize("norm", [BatchNormAct2d(8), ShiftedBatchNorm(8)], ids=["norm_act", "not_bn_like"])
def test_batchnorm_subclass_before_the_head_keeps_training_behaviour(norm):
    """A BatchNorm subclass with its own forward, traced in eval mode, used to become ``F.batch_norm(...,
    training=False)`` on the stream sum: its statistics never updated in training, silently."""
    original = _LastNormAct(norm).double()
    with torch.no_grad():  # running statistics far from any batch's, so that eval-mode BN cannot pass for training
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(9.0)
    converted = nsrep.convert(original, family="dbb", connectivity="block", init="preserve")
    assert converted.nsrep_conversion.method == "fx"
    if isinstance(norm, BatchNormAct2d):  # absorbed by the unit before it
        _assert_same_training_function(original, converted)
    else:  # kept whole on the stream sum, and said so
        assert any(u.startswith("norm (ShiftedBatchNorm)") for u in converted.nsrep_conversion.unconverted)
    stats = [m.running_mean.clone() for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    converted.train()(_input()())
    after = [m.running_mean for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.equal(a, b) for a, b in zip(stats, after, strict=True))


def test_norm_act_after_a_conv_is_absorbed_and_its_activation_guided():
    original = Net(ConvNormAct(8, 8), ConvNormAct(8, 8, groups=8)).double()
    converted = nsrep.convert(original, family="dbb", connectivity="ns")
    report = converted.nsrep_conversion
    assert [u.bn for u in report.units] == ["stem.bn", "body.0.bn", "body.1.bn"]
    assert len(report.after_sum) == 3, report  # only the global pool, flatten and the head run on the stream sum
    _assert_folds_after_training(original, converted, Net(ConvNormAct(8, 8), ConvNormAct(8, 8, groups=8)).double())


def test_norm_act_not_after_a_conv_uses_the_aggregate_statistics():
    original = Net(BatchNormAct2d(8, act=nn.SiLU), ConvNormAct(8, 8)).double()
    converted = nsrep.convert(original, family="acnet", connectivity="ns")
    assert any("body.0" in g for g in converted.nsrep_conversion.guided)
    _assert_folds_after_training(original, converted, Net(BatchNormAct2d(8, act=nn.SiLU), ConvNormAct(8, 8)).double())


def test_mode_dependent_module_feeding_a_unit_is_refused_naming_it():
    model = Net(ShiftedBatchNorm(8), ConvNormAct(8, 8))
    with pytest.raises(ValueError, match=r"ShiftedBatchNorm module 'body\.0'"):
        nsrep.convert(model)


class _FunctionalBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("var", torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(self.conv(x), self.mean, self.var, training=self.training)


def test_functional_op_with_a_frozen_training_flag_is_refused():
    with pytest.raises(ValueError, match=r"function 'batch_norm'.*training"):
        nsrep.convert(_FunctionalBatchNorm())


@pytest.mark.parametrize(
    "drop",
    [lambda: DropPath(0.25), lambda: StochasticDepth(0.25, "row")],
    ids=["timm_module", "torchvision_fx_wrapped"],
)
def test_stochastic_depth_before_a_residual_add_shares_one_mask_over_the_streams(drop):
    original = Net(ResidualDrop(8, drop()), ResidualDrop(8, drop())).double()
    converted = nsrep.convert(original, family="dbb", connectivity="ns")
    paths = [f"body.{i}.drop_path" for i in (0, 1)]
    assert all(isinstance(converted.get_submodule(p), nsrep.nn.drop_path.DropPath) for p in paths)
    assert converted.get_submodule(paths[0]).rate == 0.25
    _assert_folds_after_training(original, converted, Net(ResidualDrop(8, drop()), ResidualDrop(8, drop())).double())
    # block units carry one stream: the converted model then drops exactly the samples the original drops
    block = nsrep.convert(original, family="dbb", connectivity="block", init="preserve")
    _assert_same_training_function(original, block)


class _BatchDrop(nn.Module):
    """Drops the whole batch (torchvision's mode="batch"): not a per-sample drop-path, kept as it is."""

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_depth(x, 0.5, "batch", self.training)


def test_whole_batch_drop_is_not_taken_for_drop_path():
    with pytest.raises(ValueError, match=r"_BatchDrop module 'body\.0\.drop_path'"):
        nsrep.convert(Net(ResidualDrop(8, _BatchDrop()), ResidualDrop(8, _BatchDrop())))


@pytest.mark.parametrize(
    "body",
    [
        lambda: [ShuffleBlock(8), ShuffleBlock(8)],
        lambda: [CrossStage(8), CrossStage(8)],
        lambda: [GhostLike(8, 7), ConvNormAct(7, 8)],
    ],
    ids=["shuffle_chunk_transpose", "split_permute", "slice"],
)
@pytest.mark.parametrize("connectivity", ["ns", "block"])
def test_channel_plumbing_acts_per_stream(body, connectivity):
    original = Net(*body()).double()
    converted = nsrep.convert(original, family="acnet", connectivity=connectivity)
    assert len(converted.nsrep_conversion.after_sum) == 3, converted.nsrep_conversion
    _assert_folds_after_training(original, converted, Net(*body()).double())


@pytest.mark.parametrize("connectivity", ["ns", "block"])
def test_split_attention_sums_over_its_radix_per_stream(connectivity):
    """ResNeSt: the splits of a grouped conv summed over the radix dim (``x.sum(dim=1)`` of a 5-d view), and the
    attention-weighted splits summed again, per stream; the attention itself is computed from the aggregate."""
    original = Net(SplitAttention(8), ConvNormAct(8, 8)).double()
    converted = nsrep.convert(original, family="dbb", connectivity=connectivity)
    report = converted.nsrep_conversion
    assert [u.conv for u in report.units] == ["stem.conv", "body.0.conv", "body.1.conv"]
    assert sum("sum" in op for op in report.stream_ops) == 2, report.stream_ops
    _assert_folds_after_training(original, converted, Net(SplitAttention(8), ConvNormAct(8, 8)).double())


def test_pad_with_zeros_or_copies_is_per_stream_and_a_non_zero_fill_is_not():
    """HGNetV2's stem: ``F.pad`` with zeros (and by reflection) pads every stream; a fill of 1 would be added once
    per stream, so that pad runs on the aggregate and the max pool after it is refused."""
    original = Net(PaddedStem(8), ConvNormAct(8, 8)).double()
    converted = nsrep.convert(original, family="acnet", connectivity="ns")
    assert sum("pad" in op for op in converted.nsrep_conversion.stream_ops) == 2
    assert [u.conv for u in converted.nsrep_conversion.units] == [
        "stem.conv",
        "body.0.conv",
        "body.0.mix.conv",
        "body.1.conv",
    ]
    _assert_folds_after_training(original, converted, Net(PaddedStem(8), ConvNormAct(8, 8)).double())
    filled = Net(PaddedStem(8, value=1.0), ConvNormAct(8, 8)).double()
    with pytest.raises(ValueError, match="function 'pad'"):
        nsrep.convert(filled, family="acnet", connectivity="ns")


def _dense_net() -> Net:
    return Net(DenseLayer(8), DenseLayer(12), Transition(16, 8)).double()


def test_biasless_convs_kept_plain_fold_into_the_original_class():
    """DenseNet's convs with neither a bias nor a BN after them: units by default (fold_into has nowhere to put
    their bias, and says so), kept plain per stream with ``biasless_convs="plain"``."""
    original = _dense_net()
    with pytest.raises(ValueError, match=r"conv 'body\.0\.conv2'.*biasless_convs='plain'"):
        nsrep.fold_into(original, nsrep.convert(original))
    converted = nsrep.convert(original, family="dbb", connectivity="ns", biasless_convs="plain")
    report = converted.nsrep_conversion
    assert [u.conv for u in report.units] == ["stem.conv", "body.0.conv1", "body.1.conv1"]
    assert [p.split()[0] for p in report.plain_convs] == ["body.0.conv2", "body.1.conv2", "body.2.2"]
    _assert_folds_after_training(original, converted, _dense_net())
    with pytest.raises(ValueError, match="unknown biasless_convs 'bias'; valid: unit, plain"):
        nsrep.convert(original, biasless_convs="bias")


@pytest.mark.parametrize("family", ["dbb", "acnet"])
def test_convnext_layer_norm_guided_and_even_kernels_kept_plain(family):
    """ConvNeXt: LayerNorm over channels (module and timm's F.layer_norm form) takes its statistics from the
    aggregate and applies them to every stream; the channels-last MLP runs per stream; the 4x4 and 2x2 convs,
    in which no 1x1 or 1xk branch can be centred, stay plain (and say why)."""
    original = ConvNeXtLike().double()
    converted = nsrep.convert(original, family=family, connectivity="ns")
    report = converted.nsrep_conversion
    assert [u.conv for u in report.units] == ["stage1.dw", "stage2.dw"]
    assert [p.split()[0] for p in report.plain_convs] == ["stem.0", "down.1"]
    assert "kernel" in report.plain_convs[0]
    assert sum("statistics of the aggregate" in g for g in report.guided) == 3  # block norms and the downsample's
    _assert_folds_after_training(original, converted, ConvNeXtLike().double())


def test_guided_layer_norm_sums_to_the_layer_norm_of_the_aggregate():
    from nsrep.convert.ops import guided_layer_norm

    x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    expected = F.layer_norm(x.sum(0), (6,), weight, bias, 1e-6)
    torch.testing.assert_close(guided_layer_norm(x, (6,), weight, bias, 1e-6).sum(0), expected, rtol=1e-13, atol=1e-13)


def test_detection_backbone_gives_detectors_an_ordered_dict_and_out_channels():
    from nsrep.convert import DetectionBackbone

    class TwoMaps(nn.Module):
        def __init__(self, second: int) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, second, 3, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return [y, self.b(y)]

    x = _input()()
    backbone = DetectionBackbone(nsrep.convert(TwoMaps(4).double()), example_input=x)
    maps = backbone(x)
    assert list(maps) == ["0", "1"] and backbone.out_channels == 4 and maps["1"].shape[1] == 4
    with pytest.raises(ValueError, match=r"\[4, 6\] channels"):
        DetectionBackbone(TwoMaps(6).double(), example_input=x)
