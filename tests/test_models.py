"""Every architecture × family × connectivity: train, fold, compare; deployed weights load strictly."""

import copy

import pytest
import torch
from torch import nn

import nsrep
from helpers import assert_folds, classification_loss, train_steps
from nsrep.inspection import count_parameters
from nsrep.nn.conv import RepConv2d
from nsrep.nn.guided import GuidedMaxPool2d, GuidedReLU
from nsrep.nn.streams import StreamAdd, StreamEntry, StreamSum

# reduced widths so the whole matrix stays fast; the block structure (depth, strides, groups) is the real one
SMALL = {
    "resnet18": {"width_mult": 0.125},
    "resnet34": {"width_mult": 0.125},
    "resnet50": {"width_mult": 0.125},
    "resnet101": {"width_mult": 0.125},
    "resnext50_32x4d": {"width_mult": 0.25},
    "mobilenet_v1": {"width_mult": 0.125},
}
CONNECTIVITIES = [("block", 1.0), ("ns", 1.0), ("ns", 0.0)]
CONNECTIVITY_IDS = ["block", "ns-stoch1", "ns-stoch0"]
NUM_CLASSES = 5
FAST_ARCHS = ("resnet18", "mobilenet_v1")


def _fold_matrix():
    """Every architecture × family × connectivity; ``make test`` runs every case on the two small networks and,
    on the deep ones, a Latin square (each deep network with every family, each family-connectivity pair on
    at least one deep network); the rest is marked slow (``make test-all``)."""
    deep = [a for a in sorted(SMALL) if a not in FAST_ARCHS]
    cases = []
    for (connectivity, stochastic), cid in zip(CONNECTIVITIES, CONNECTIVITY_IDS, strict=True):
        for j, family in enumerate(nsrep.FAMILIES):
            for arch in sorted(SMALL):
                fast = arch in FAST_ARCHS or (deep.index(arch) + j + CONNECTIVITY_IDS.index(cid)) % 3 == 0
                marks = () if fast else (pytest.mark.slow,)
                cases.append(
                    pytest.param(arch, family, connectivity, stochastic, marks=marks, id=f"{cid}-{family}-{arch}")
                )
    return cases


def test_list_models():
    assert nsrep.list_models() == sorted(SMALL)


def _input(size=8, batch=4):
    return lambda: torch.randn(batch, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("arch,family,connectivity,stochastic", _fold_matrix())
def test_model_folds_exactly_and_loads_into_deploy_model(arch, family, connectivity, stochastic):
    options = {"num_classes": NUM_CLASSES, "stem": "cifar", **SMALL[arch]}
    model = nsrep.create_model(arch, family=family, connectivity=connectivity, stochastic=stochastic, **options)
    model = model.double()
    train_steps(model, _input(), loss_fn=classification_loss(NUM_CLASSES))
    deployed = assert_folds(model, _input())

    plain = nsrep.create_model(arch, deploy=True, **options).double()
    plain.load_state_dict(deployed.state_dict(), strict=True)
    assert count_parameters(deployed) == count_parameters(plain)
    x = _input()()
    torch.testing.assert_close(plain.eval()(x), deployed(x), rtol=0, atol=0)
    assert not any(isinstance(m, nsrep.Foldable | nn.BatchNorm2d) for m in deployed.modules())


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet_v1"])
@pytest.mark.parametrize("family", ["dbb", "ns", "repvgg"])
@pytest.mark.parametrize("stem_unit", [True, False])
def test_imagenet_stem_and_plain_stem(arch, family, stem_unit):
    options = {"num_classes": NUM_CLASSES, "stem": "imagenet", "stem_unit": stem_unit, **SMALL[arch]}
    model = nsrep.create_model(arch, family=family, connectivity="ns", **options).double()
    stem_conv = model.stem.conv
    assert stem_conv.num_branches == (nsrep.RepConv2d(3, 8, 7, family=family).num_branches if stem_unit else 1)
    train_steps(model, _input(32), loss_fn=classification_loss(NUM_CLASSES))
    deployed = assert_folds(model, _input(32))
    nsrep.create_model(arch, deploy=True, **options).load_state_dict(deployed.state_dict())


@pytest.mark.parametrize("family", ["dbb", "acnet", "ns", "mobileone", "repvgg"])
def test_ns_equals_block_with_zero_shifts_and_means(family):
    """In eval mode an ns network computes, in its aggregate, the block network with branch biases scaled by
    S_in; with every BN shift and running mean at zero the two give the same output (docs/architecture.md)."""
    options = {"num_classes": NUM_CLASSES, "stem": "cifar", "width_mult": 0.125}
    ns = nsrep.create_model("resnet18", family=family, connectivity="ns", **options).double()
    train_steps(ns, _input(), loss_fn=classification_loss(NUM_CLASSES))
    with torch.no_grad():
        for m in ns.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.zero_()
                m.running_mean.zero_()
    block = nsrep.create_model("resnet18", family=family, connectivity="block", **options).double()
    block.load_state_dict(ns.state_dict(), strict=True)
    x = _input()()
    torch.testing.assert_close(ns.eval()(x), block.eval()(x), rtol=1e-10, atol=1e-12)
    # ... and with the shifts restored they differ (the bias multiplier is real)
    with torch.no_grad():
        for m in ns.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(0.1)
    block.load_state_dict(ns.state_dict())
    assert not torch.allclose(ns(x), block(x))


def _tiny_naive_net(family: str) -> nn.Sequential:
    """A user's own module tree: naive connectivity multiplies streams (1 -> K -> K^2), a residual add spreads."""
    u1 = RepConv2d(3, 6, 3, family=family, connectivity="naive", in_streams=1)
    u2 = RepConv2d(6, 6, 3, family=family, connectivity="naive", in_streams=u1.out_streams)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = u2
            self.add = StreamAdd(u2.out_streams, u1.out_streams)

        def forward(self, x):
            return self.add(self.conv(x), x)

    return nn.Sequential(
        StreamEntry(),
        u1,
        GuidedReLU(),
        GuidedMaxPool2d(2, 2),
        Residual(),
        GuidedReLU(),
        StreamSum(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, NUM_CLASSES),
    )


@pytest.mark.parametrize("family", ["acnet", "dbb", "repvgg"])
def test_naive_connectivity_on_a_tiny_net(family):
    net = _tiny_naive_net(family).double()
    u1, u2 = net[1], net[4].conv
    assert u1.out_streams == u1.num_branches and u2.out_streams == u1.num_branches * u2.num_branches
    train_steps(net, _input(8), loss_fn=classification_loss(NUM_CLASSES))
    assert_folds(net, _input(8))


def test_naive_past_cap_refused_on_a_real_network():
    with pytest.raises(ValueError, match="past max_streams=64"):
        nsrep.create_model("resnet18", family="dbb", connectivity="naive")


def test_reparameterize_leaves_the_input_untouched():
    model = nsrep.create_model("resnet18", family="dbb", connectivity="ns", num_classes=3, width_mult=0.125)
    train_steps(model, lambda: torch.randn(2, 3, 16, 16), loss_fn=classification_loss(3))
    before = copy.deepcopy(model.state_dict())
    deployed = nsrep.reparameterize(model)
    assert model.training and not deployed.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, RepConv2d) for m in model.modules())


def test_nsrep_config_rebuilds_the_model():
    model = nsrep.create_model("resnet34", family="mobileone", connectivity="ns", num_branches=2, width_mult=0.125)
    config = model.nsrep_config
    assert config["arch"] == "resnet34" and config["num_branches"] == 2
    assert config["deploy"] is False
    rebuilt = nsrep.create_model(**config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    deployed = nsrep.reparameterize(model)
    assert deployed.nsrep_config == {**config, "deploy": True}
    nsrep.create_model(**deployed.nsrep_config).load_state_dict(deployed.state_dict())


def test_streams_flow_as_built():
    model = nsrep.create_model("resnet18", family="ns", connectivity="ns", stem="cifar", width_mult=0.125)
    assert model.stem.out_streams == 4
    assert all(block.out_streams == 4 for stage in model.stages for block in stage)
    feats = model.forward_features(torch.randn(2, 3, 8, 8))
    assert feats.shape == (4, 2, 64, 1, 1)
    block = nsrep.create_model("resnet18", family="ns", connectivity="block", width_mult=0.125)
    assert block.forward_features(torch.randn(2, 3, 32, 32)).shape[0] == 1


def test_create_model_errors_name_valid_values():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet19'.*resnet18.*Did you mean"):
        nsrep.create_model("resnet19")
    with pytest.raises(ValueError, match=r"unknown family 'DBB'.*acnet"):
        nsrep.create_model("resnet18", family="DBB")
    with pytest.raises(ValueError, match=r"unknown connectivity 'nss'.*block, naive, ns"):
        nsrep.create_model("resnet18", connectivity="nss")
    with pytest.raises(ValueError, match=r"unknown option for resnet18 'num_class'.*num_classes"):
        nsrep.create_model("resnet18", num_class=10)
    with pytest.raises(ValueError, match=r"unknown stem 'tiny'; valid: cifar, imagenet"):
        nsrep.create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="resnext50_32x4d has groups=32; got groups=8"):
        nsrep.create_model("resnext50_32x4d", groups=8)
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        nsrep.create_model("mobilenet_v1", width_mult=0)


def test_registry_refuses_duplicates():
    from nsrep.models.registry import register_model

    with pytest.raises(ValueError, match="already registered"):

        @register_model(options=())
        def resnet18(**kwargs):
            return nn.Identity()
