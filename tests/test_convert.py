"""nsrep.convert / nsrep.fold_into on user-written networks (torchvision layouts in tests/convert_layouts.py)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import nsrep
from convert_layouts import LAYOUTS, NUM_CLASSES, Conv2dNormActivation, SqueezeExcitation
from helpers import F32_TOL, F64_TOL, classification_loss, train_steps
from nsrep.convert.ops import StreamBatchNorm2d, StreamDropout
from nsrep.convert.units import identity_running_var, set_identity_bn
from nsrep.nn.conv import RepConv2d, set_implementation

FAMILIES = ["dbb", "acnet", "repvgg"]
CONNECTIVITIES = ["block", "ns"]


def _input(dtype=torch.float64, size=16, batch=4):
    return lambda: torch.randn(batch, 3, size, size, dtype=dtype)


@torch.no_grad()
def _randomize(model: nn.Module) -> nn.Module:
    """Pretrained-looking BN statistics, affine parameters and conv biases (init values would hide bias bugs)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.uniform_(-0.5, 0.5)
    return model


def _assert_fold_into(original: nn.Module, converted: nn.Module, make_input, fresh: nn.Module) -> nn.Module:
    """converted (every branch unfolded) == fold_into(original, converted) in float64 and float32; the folded
    state dict loads strictly into ``fresh`` (a new instance of the original class)."""
    x = make_input()
    folded = nsrep.fold_into(original, converted)
    assert type(folded) is type(original) and not folded.training
    assert not any(isinstance(m, nsrep.Foldable) for m in folded.modules())
    unfolded = set_implementation(copy.deepcopy(converted), "reference")
    eq = nsrep.verify_equivalence(unfolded, folded, x)
    assert eq.max_rel_error <= F64_TOL, f"float64: {eq}"
    eq_fast = nsrep.verify_equivalence(converted, folded, x)
    assert eq_fast.max_rel_error <= F64_TOL, f"float64, fast eval: {eq_fast}"

    converted32 = copy.deepcopy(converted).float()
    folded32 = nsrep.fold_into(copy.deepcopy(original).float(), converted32)
    eq32 = nsrep.verify_equivalence(set_implementation(converted32, "reference"), folded32, x.float())
    assert eq32.max_rel_error <= F32_TOL, f"float32: {eq32}"

    fresh.load_state_dict(folded.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), folded(x), rtol=0, atol=0)
    return folded


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_trained_conversion_folds_into_the_original_class(layout, family, connectivity):
    cls, kwargs = LAYOUTS[layout]
    original = cls(**kwargs).double()
    before = copy.deepcopy(original.state_dict())
    converted = nsrep.convert(original, family=family, connectivity=connectivity)
    assert converted.nsrep_conversion.method == "fx"
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    _assert_fold_into(original, converted, _input(), cls(**kwargs).double())
    for key, value in original.state_dict().items():  # the user's model is never modified
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("connectivity", CONNECTIVITIES)
def test_preserve_starts_as_the_original_function(layout, family, connectivity):
    cls, kwargs = LAYOUTS[layout]
    original = _randomize(cls(**kwargs).double()).eval()
    x = _input()()
    converted = nsrep.convert(original, family=family, connectivity=connectivity, init="preserve", example_input=x)
    assert converted.nsrep_conversion.check.max_rel_error <= F64_TOL
    unfolded = set_implementation(copy.deepcopy(converted), "reference")
    eq = nsrep.verify_equivalence(original, unfolded, _input()())
    assert eq.max_rel_error <= F64_TOL, str(eq)
    # and the untrained conversion folds back into the very same weights' function
    folded = nsrep.fold_into(original, converted)
    assert nsrep.verify_equivalence(original, folded, x).max_rel_error <= F64_TOL


def test_ns_streams_and_report():
    cls, kwargs = LAYOUTS["mobilenet_v3"]
    converted = nsrep.convert(cls(**kwargs), family="dbb", connectivity="ns")
    report = converted.nsrep_conversion
    convs = [name for name, m in cls(**kwargs).named_modules() if isinstance(m, nn.Conv2d)]
    se_convs = [name for name in convs if ".fc" in name]
    assert sorted(report.plain_convs) == sorted(se_convs)  # SE stays plain, on the pooled aggregate
    assert sorted(u.conv for u in report.units) == sorted(set(convs) - set(se_convs))
    assert all(u.bn == u.conv[:-1] + "1" for u in report.units)  # Conv2dNormActivation: conv "0", BN "1"
    assert report.units[0].in_streams == 1 and report.units[0].out_streams == 4
    assert all(u.in_streams in (2, 4) for u in report.units[1:])  # dbb: 4 branches, 2 on 1×1 units
    assert any("Linear module 'classifier.0'" in op for op in report.after_sum)
    assert any("Hardswish" in op for op in report.guided)
    assert isinstance(converted.get_submodule("features.0.0"), RepConv2d)
    assert "units" in str(report) and "plain convs" in str(report)
    report_copy = copy.deepcopy(converted).nsrep_conversion  # the report survives deepcopy (and reparameterize)
    assert report_copy.units == report.units


def test_reparameterize_folds_the_converted_graph():
    cls, kwargs = LAYOUTS["regnet_y"]
    converted = nsrep.convert(cls(**kwargs).double(), family="acnet", connectivity="ns")
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    deployed = nsrep.reparameterize(converted)
    assert not any(isinstance(m, nsrep.Foldable | nn.BatchNorm2d) for m in deployed.modules())
    eq = nsrep.verify_equivalence(set_implementation(copy.deepcopy(converted), "reference"), deployed, _input()())
    assert eq.max_rel_error <= F64_TOL


class FunctionalOps(nn.Module):
    """Functional and method forms: F.relu/leaky_relu/gelu/hardswish, channel cat, sub, scaling, F.max/avg pools,
    interpolate, F.dropout, a mean-pooled SE with Linear layers, and a view(x.size(0), -1) head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.a = nn.Conv2d(6, 6, 3, padding=1, bias=True)  # bias, no BN: the unit's BN holds it
        self.b = nn.Conv2d(12, 8, 3, stride=2, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.head = nn.Linear(8 * 4 * 4, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.bn(self.stem(x)), 0.2)
        y = F.gelu(self.a(x))
        x = torch.cat([x, y - 0.5 * x], dim=1)
        x = F.hardswish(self.bn_b(self.b(x)))
        s = x.mean((2, 3))  # SE on the pooled aggregate, with Linear layers
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = x * s.view(s.size(0), -1, 1, 1) / 2.0
        x = F.avg_pool2d(F.max_pool2d(x, 2), 1) + F.interpolate(F.avg_pool2d(x, 4), scale_factor=2.0)
        x = F.dropout(x, 0.3, training=self.training)
        return self.head(x.view(x.size(0), -1))


@pytest.mark.parametrize("family", FAMILIES)
def test_functional_ops(family):
    converted = nsrep.convert(FunctionalOps().double(), family=family, connectivity="ns")
    report = converted.nsrep_conversion
    assert report.plain_convs == [] and len(report.units) == 3
    assert not any(isinstance(m, nn.Linear) and ".fc" in n for n, m in converted.named_modules() if "unit" in n)
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    original = FunctionalOps().double()
    _assert_fold_into(original, converted, _input(), FunctionalOps().double())
    preserved = nsrep.convert(_randomize(original).eval(), family=family, init="preserve")
    assert nsrep.verify_equivalence(original, preserved, _input()()).max_rel_error <= F64_TOL


def test_functional_dropout_follows_the_mode():
    """fx would freeze ``training=self.training`` at trace time; the converted dropout follows the module."""
    converted = nsrep.convert(FunctionalOps(), family="acnet")
    x = _input(torch.float32)()
    converted.eval()
    torch.testing.assert_close(converted(x), converted(x))
    converted.train()
    assert not torch.equal(converted(x), converted(x))


class PreActivation(nn.Module):
    """BN before the conv (pre-activation ResNet): the BN is not part of a unit and acts on stream sets."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = x + self.conv2(F.relu(self.bn1(x)))
        x = x + self.conv3(F.relu(self.bn2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_batchnorm_not_after_a_conv_uses_the_aggregate_statistics():
    original = PreActivation().double()
    converted = nsrep.convert(original, family="repvgg", connectivity="ns")
    assert isinstance(converted.bn1, StreamBatchNorm2d) and isinstance(converted.bn2, StreamBatchNorm2d)
    assert [u.bn for u in converted.nsrep_conversion.units] == [None, None, None]
    # in training too, the streams of a guided BN sum to the deployed BN of their aggregate
    bn = StreamBatchNorm2d.from_bn(_randomize(nn.BatchNorm2d(6)).double())
    plain = copy.deepcopy(bn).fold()
    x = torch.randn(3, 4, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(bn.train()(x).sum(0), plain.train()(x.sum(0)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=0, atol=0)
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    _assert_fold_into(original, converted, _input(), PreActivation().double())
    preserved = nsrep.convert(_randomize(original).eval(), family="repvgg", init="preserve")
    assert nsrep.verify_equivalence(original, preserved, _input()()).max_rel_error <= F64_TOL


def test_fold_into_needs_a_bias_or_a_batchnorm_for_every_conv():
    original = PreActivation(bias=False)
    converted = nsrep.convert(original, family="acnet")
    with pytest.raises(ValueError, match=r"conv 'conv1' has no bias .* and no BatchNorm after it"):
        nsrep.fold_into(original, converted)


def test_stream_dropout_draws_one_mask_for_every_stream():
    drop = StreamDropout(0.5).train()
    y = drop(torch.ones(3, 4, 2, 5, 5))
    assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[2]) and (y == 0).any()
    y2d = StreamDropout(0.5, channelwise=True).train()(torch.ones(2, 8, 6, 3, 3))
    assert torch.equal(y2d[0], y2d[1]) and (y2d.amax((3, 4)) == y2d.amin((3, 4))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 1e-6, 0.1])
def test_identity_bn_is_exact(dtype, eps):
    bn = nn.BatchNorm2d(4, eps=eps).to(dtype)
    bias = torch.randn(4, dtype=dtype)
    set_identity_bn(bn, bias, "bn")
    assert (torch.tensor(identity_running_var(eps, dtype), dtype=dtype) + torch.tensor(eps, dtype=dtype)) == 1
    x = torch.randn(2, 4, 3, 3, dtype=dtype)
    torch.testing.assert_close(bn.eval()(x), x + bias.view(1, -1, 1, 1), rtol=0, atol=0)


class Tanh(nn.Module):
    def __init__(self, op, then_conv: bool):
        super().__init__()
        self.op, self.then_conv = op, then_conv
        self.stem = Conv2dNormActivation(3, 4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        x = self.op(self.stem(x))
        if self.then_conv:
            x = self.conv(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "op,match",
    [
        (torch.tanh, r"cannot convert Conv2d module 'conv'.*function 'tanh' \(graph node 'tanh'\)"),
        (lambda x: torch.softmax(x, 1), r"Conv2d module 'conv'.*'softmax'"),
        (lambda x: x * x, r"Conv2d module 'conv'.*'mul'"),
        (lambda x: torch.sigmoid(x), r"Conv2d module 'conv'.*takes the gate function 'sigmoid'"),
    ],
    ids=["tanh", "softmax", "square", "sigmoid-not-a-gate"],
)
def test_unsupported_op_feeding_a_unit_is_refused(op, match):
    with pytest.raises(ValueError, match=match):
        nsrep.convert(Tanh(op, then_conv=True))


def test_unsupported_op_after_the_last_conv_runs_on_the_stream_sum():
    original = Tanh(torch.tanh, then_conv=False).double()
    converted = nsrep.convert(original, family="dbb", connectivity="ns")
    assert any("'tanh'" in op for op in converted.nsrep_conversion.after_sum)
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    _assert_fold_into(original, converted, _input(), Tanh(torch.tanh, then_conv=False).double())


def test_gate_from_a_stream_set_multiplies_the_streams():
    """A spatial-attention gate sigmoid(conv(x)) * x: the gate is taken from the aggregate, exact."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = Conv2dNormActivation(3, 4)
            self.att = Conv2dNormActivation(4, 4, activation_layer=None)
            self.fc = nn.Linear(4, NUM_CLASSES)

        def forward(self, x):
            x = self.stem(x)
            x = torch.sigmoid(self.att(x)) * x
            return self.fc(x.mean((2, 3)))

    original = Attention().double()
    converted = nsrep.convert(original, family="acnet", connectivity="ns")
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    _assert_fold_into(original, converted, _input(), Attention().double())


def test_se_squeeze_ops_are_plain_on_the_aggregate():
    se = SqueezeExcitation(4, 2)
    converted = nsrep.convert(nn.Sequential(Conv2dNormActivation(3, 4), se), connectivity="ns")
    assert sorted(converted.nsrep_conversion.plain_convs) == ["1.fc1", "1.fc2"]
    assert type(converted.get_submodule("1.fc1")) is nn.Conv2d


def test_stream_sets_leaving_the_model_are_summed():
    """A feature extractor (no head) returns the aggregate; a plain residual operand counts once."""

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(Conv2dNormActivation(3, 3), Conv2dNormActivation(3, 3, activation_layer=None))

        def forward(self, x):
            y = self.body(x) + x  # x is the plain input: spread as x/S over the streams
            return y, torch.cat([y, 2 * x], 1)

    original = _randomize(Features().double()).eval()
    converted = nsrep.convert(original, family="dbb", connectivity="ns", init="preserve")
    x = _input()()
    for got, want in zip(converted.eval()(x), original(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: fx cannot trace it; its blocks trace."""

    def __init__(self):
        super().__init__()
        self.stem = Conv2dNormActivation(3, 6, stride=2)
        self.block = LAYOUTS["resnet_basic"][0](**LAYOUTS["resnet_basic"][1]).layer1  # Sequential(BasicBlock)
        self.extra = nn.Conv2d(6, 4, 1, bias=True)  # no BN: becomes a unit alone, its bias holds the folded one
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x) if x.mean() > 0 else self.block(-x)  # data-dependent: symbolic tracing fails here
        return self.fc(F.relu(self.extra(x)).mean((2, 3)))


def test_untraceable_model_falls_back_to_block_units():
    original = _randomize(Untraceable().double()).eval()
    original.block[0].conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False).double()  # BasicBlock widths: 6 channels
    original.block[0].bn1 = _randomize(nn.BatchNorm2d(6).double()).eval()
    original.block[0].conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False).double()
    original.block[0].bn2 = _randomize(nn.BatchNorm2d(6).double()).eval()
    with pytest.warns(UserWarning, match="falling back to module walking with block connectivity"):
        preserved = nsrep.convert(original, family="dbb", connectivity="ns", init="preserve")
    report = preserved.nsrep_conversion
    assert report.method == "module-walk" and report.connectivity == "block"
    assert type(preserved) is Untraceable
    pairs = {u.conv: u.bn for u in report.units}
    assert pairs == {"stem.0": "stem.1", "block.0.conv1": "block.0.bn1", "block.0.conv2": "block.0.bn2", "extra": None}
    assert any("fx cannot trace" in line for line in report.unconverted)
    assert nsrep.verify_equivalence(original, preserved, _input()()).max_rel_error <= F64_TOL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = nsrep.convert(original, family="dbb", connectivity="ns")
    train_steps(converted, _input(), loss_fn=classification_loss(NUM_CLASSES))
    _assert_fold_into(original, converted, _input(), copy.deepcopy(original))


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        nsrep.convert(nn.Conv2d(3, 3, 3), init="pretrained")
    with pytest.raises(ValueError, match="nsrep_conversion"):
        nsrep.fold_into(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match=r"conv '1'.*padding_mode='reflect'"):
        nsrep.convert(nn.Sequential(nn.Identity(), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")))


# torchvision's own models, run by `make test-zoo` (its environment has torchvision; the main one does not),
# each with the hand-written layout of tests/convert_layouts.py that covers the same structure everywhere.
TORCHVISION = {
    "resnet18": "resnet_basic",
    "resnext50_32x4d": "resnext_bottleneck",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3",
    "vgg11_bn": "vgg11_bn",
    "regnet_y_400mf": "regnet_y",
    "efficientnet_b0": "efficientnet",
}


def test_every_torchvision_case_has_a_hand_written_layout():
    assert set(TORCHVISION.values()) <= set(LAYOUTS)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models(name):
    try:
        import torchvision.models as models
    except Exception as error:  # ImportError, or torchvision's operator registration failing on this torch
        pytest.skip(f"torchvision does not import ({type(error).__name__}); covered by layout {TORCHVISION[name]!r}")
    original = _randomize(models.get_model(name, num_classes=NUM_CLASSES)).eval()
    x = _input(torch.float32, size=32, batch=2)()
    converted = nsrep.convert(original, family="acnet", connectivity="ns", init="preserve")
    assert nsrep.verify_equivalence(original, converted, x).max_rel_error <= F32_TOL
    # statistics re-estimated on several larger batches, as after real training: one batch of 2 at 32x32 leaves
    # some running variances of the deepest (1x1) maps exactly 0, and float32 then measures the conditioning
    train_steps(converted, _input(torch.float32, size=64, batch=8), steps=1, lr=1e-3, calibrate=4)
    folded = nsrep.fold_into(original, converted)
    eq = nsrep.verify_equivalence(set_implementation(copy.deepcopy(converted), "reference"), folded, x)
    assert eq.max_rel_error <= F32_TOL
    models.get_model(name, num_classes=NUM_CLASSES).load_state_dict(folded.state_dict(), strict=True)


class TinyUNet(nn.Module):
    """A user's segmentation network: encoder-decoder with skip connections, channel concatenation, learned
    (ConvTranspose2d) and fixed (nn.Upsample, F.interpolate) upsampling, per-pixel logits."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.enc1 = nn.Sequential(Conv2dNormActivation(3, 6), Conv2dNormActivation(6, 6))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), Conv2dNormActivation(6, 8))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), Conv2dNormActivation(8, 8))
        self.up3 = nn.ConvTranspose2d(8, 8, 2, stride=2)  # with a bias: it must count once over the streams
        self.dec2 = Conv2dNormActivation(16, 8)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = Conv2dNormActivation(14, 6)
        self.out = nn.Conv2d(6, classes, 1)  # bias, no BN: a unit alone

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up2(d2), e1], 1))
        logits = self.out(d1)
        return {"out": logits, "aux": F.interpolate(d2, scale_factor=2.0, mode="nearest")}


@pytest.mark.parametrize(("family", "connectivity"), [("dbb", "ns"), ("acnet", "block"), ("repvgg", "ns")])
def test_segmentation_network_folds_back_exactly(family, connectivity):
    """Encoder-decoder with skips, concat and upsampling: trained, folded into the user's class, equal outputs
    (dict outputs compared leaf by leaf)."""
    original = _randomize(TinyUNet().double())
    converted = nsrep.convert(original, family=family, connectivity=connectivity)
    report = converted.nsrep_conversion
    assert report.method == "fx" and not report.after_sum, report.after_sum  # nothing ran on a stream sum
    assert isinstance(converted.get_submodule("up3"), nsrep.Foldable)
    assert len(report.units) == 7

    def loss(out):
        target = torch.arange(out["out"].numel() // 3).remainder(3).view(out["out"].shape[0], *out["out"].shape[2:])
        return F.cross_entropy(out["out"], target) + out["aux"].pow(2).mean()

    train_steps(converted, _input(), loss_fn=loss)
    folded = _assert_fold_into(original, converted, _input(), TinyUNet().double())
    assert type(folded.up3) is nn.ConvTranspose2d


def test_transposed_conv_bias_counts_once_on_streams():
    """Untrained, with init="preserve": the NS conversion computes exactly the original U-Net (bias split)."""
    original = _randomize(TinyUNet().double()).eval()
    x = _input()()
    converted = nsrep.convert(original, family="dbb", connectivity="ns", init="preserve", example_input=x)
    assert converted.nsrep_conversion.check.max_rel_error <= F64_TOL


class StdConv(nn.Conv2d):
    """A weight-standardised conv (the idea of timm's StdConv2d / ScaledStdConv2d): a ``Conv2d`` subclass whose own
    forward a unit would not compute."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_conv_subclasses_with_their_own_forward_are_named_and_left_as_they_are():
    original = nn.Sequential(Conv2dNormActivation(3, 4), StdConv(4, 4, 3, padding=1)).double().eval()
    with pytest.warns(UserWarning, match=r"1 conv left as it is: StdConv ×1 .*own forward"):
        converted = nsrep.convert(original, connectivity="ns", init="preserve")
    report = converted.nsrep_conversion
    assert [u.conv for u in report.units] == ["0.0"]
    assert any(line.startswith("'1' (StdConv)") for line in report.unconverted)
    assert nsrep.verify_equivalence(original, converted, _input()()).max_rel_error <= F64_TOL


def test_a_model_without_a_convertible_conv_is_refused():
    with pytest.raises(ValueError, match=r"no convolution to convert in Sequential: its 2 convs are StdConv ×2"):
        nsrep.convert(nn.Sequential(StdConv(3, 4, 3), nn.ReLU(), StdConv(4, 4, 3)))
    with pytest.raises(ValueError, match=r"no convolution to convert in Sequential: it has no torch.nn.Conv2d"):
        nsrep.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))


def test_a_refusal_names_the_conv_subclasses_it_left_plain():
    """NF-RegNet's pattern: weight-standardised convs (left plain) between SE blocks, whose first gate then feeds the
    next SE; the refusal must say that the convs were never converted, not only blame the gate."""
    model = nn.Sequential(
        StdConv(3, 4, 3, padding=1), SqueezeExcitation(4, 2), StdConv(4, 4, 3), SqueezeExcitation(4, 2)
    )
    with pytest.raises(ValueError, match=r"convert Sequential: 2 convs of it are left as they are: StdConv ×2.*gate"):
        nsrep.convert(model)
