"""RepConv2d: every family folds exactly over stride × groups × dilation × kernel × padding × in≠out."""

import pytest
import torch
from torch import nn

import nsrep
from helpers import F64_TOL, assert_folds, train_steps
from nsrep.nn.branches import Branch, ConvBN
from nsrep.nn.conv import RepConv2d
from nsrep.nn.geometry import ConvGeometry

# (in, out, kernel, stride, padding (None = same), dilation, groups)
GEOMETRIES = [
    (8, 8, 3, 1, None, 1, 1),  # identity legal
    (8, 16, 3, 2, None, 1, 1),  # strided, in != out
    (8, 8, 3, 1, None, 2, 1),  # dilated
    (8, 16, 3, 1, None, 1, 4),  # grouped (ResNeXt-like)
    (8, 8, 3, 2, None, 1, 8),  # depthwise, strided
    (8, 8, 1, 1, None, 1, 1),  # pointwise, identity legal
    (8, 12, 1, 2, None, 1, 1),  # strided 1×1 (ResNet downsample)
    (4, 8, 5, 1, 1, 1, 1),  # less than same padding: smaller branches crop
    (8, 8, 3, 1, 2, 1, 2),  # more than same padding
    (3, 8, 7, 2, 3, 1, 1),  # ImageNet stem
]
CONNECTIVITIES = [("block", 1.0), ("ns", 1.0), ("ns", 0.0), ("naive", 1.0)]


@pytest.mark.parametrize("family", nsrep.FAMILIES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("connectivity,stochastic", CONNECTIVITIES)
def test_unit_folds_exactly(family, geometry, connectivity, stochastic):
    cin, cout, k, s, p, d, g = geometry
    unit = RepConv2d(
        cin, cout, k, s, p, d, g, family=family, connectivity=connectivity, in_streams=2, stochastic=stochastic,
        num_branches=2 if family in ("mobileone", "convK", "ns") else None,
    ).double()  # fmt: skip

    def make_input():
        return torch.randn(2, 4, cin, 9, 9, dtype=torch.float64)

    train_steps(unit, make_input)
    assert any(m.running_mean.abs().max() > 0 for m in unit.modules() if isinstance(m, nn.BatchNorm2d))

    class Aggregate(nn.Module):  # compare aggregates: the deployed conv computes sum over output streams
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y.sum(0) if y.dim() == 5 else y

    # the deployed conv sees the aggregate of the input streams and computes the aggregate of the output
    model = nn.Sequential(StreamsToAggregate(), Aggregate(unit))
    deployed = assert_folds(model, make_input)
    folded = [m for m in deployed.modules() if isinstance(m, nn.Conv2d)]
    assert len(folded) == 1 and folded[0].bias is not None


class StreamsToAggregate(nsrep.Foldable):
    """Identity on stream sets in training form; the aggregate in deployed form (for unit-level tests)."""

    def forward(self, x):
        return x

    def fold(self):
        return _Sum0()


class _Sum0(nn.Module):
    def forward(self, x):
        return x.sum(0)


@pytest.mark.parametrize("family", nsrep.FAMILIES)
def test_block_unit_is_a_drop_in_conv_on_4d_batches(family):
    unit = RepConv2d(8, 8, 3, family=family).double()
    train_steps(unit, lambda: torch.randn(4, 8, 6, 6, dtype=torch.float64))
    unit.eval()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    y = unit(x)
    assert y.shape == (2, 8, 6, 6)
    torch.testing.assert_close(unit.fold()(x), y, rtol=F64_TOL, atol=1e-12)


def test_branch_counts_of_each_family():
    expected = {
        # (3×3 identity-legal, 3×3 strided, 1×1 identity-legal)
        "plain": (1, 1, 1),
        "acnet": (3, 3, 1),
        "dbb": (4, 4, 2),
        "repvgg": (3, 2, 2),
        "mobileone": (6, 5, 5),
        "convK": (4, 4, 4),
        "ns": (4, 4, 4),
    }
    for family, counts in expected.items():
        got = (
            RepConv2d(8, 8, 3, family=family).num_branches,
            RepConv2d(8, 8, 3, 2, family=family).num_branches,
            RepConv2d(8, 8, 1, family=family).num_branches,
        )
        assert got == counts, family


@pytest.mark.parametrize("connectivity,expected", [("block", 1), ("ns", 4), ("naive", 12)])
def test_out_streams(connectivity, expected):
    unit = RepConv2d(4, 4, 3, family="ns", connectivity=connectivity, in_streams=3)
    assert unit.out_streams == expected
    assert unit(torch.randn(3, 2, 4, 5, 5)).shape == (expected, 2, 4, 5, 5)


def test_in_streams_is_structural_and_checked():
    unit = RepConv2d(4, 4, 3, family="dbb", connectivity="ns", in_streams=3)
    with pytest.raises(ValueError, match="built for 3 input streams"):
        unit(torch.randn(2, 2, 4, 5, 5))
    with pytest.raises(ValueError, match="built for 3 input streams"):
        unit(torch.randn(2, 4, 5, 5))


def test_folded_bias_uses_structural_stream_count_not_last_forward():
    """A freshly built unit that never ran a forward folds with bias multiplier S_in."""
    unit = RepConv2d(4, 4, 3, family="repvgg", connectivity="ns", in_streams=3).double().eval()
    with torch.no_grad():
        for m in unit.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(1.0)
    _, bias = unit.fold_affine()
    torch.testing.assert_close(bias, torch.full((4,), 3.0 * unit.num_branches, dtype=torch.float64))


def test_naive_past_stream_cap_raises():
    with pytest.raises(ValueError, match=r"naive.*emit 80 streams, past max_streams=64"):
        RepConv2d(4, 4, 3, family="convK", num_branches=5, connectivity="naive", in_streams=16)


def test_unknown_family_and_connectivity_list_valid_names():
    with pytest.raises(ValueError, match=r"unknown family 'dbbb'.*plain, acnet, dbb.*Did you mean 'dbb'"):
        RepConv2d(4, 4, 3, family="dbbb")
    with pytest.raises(ValueError, match=r"unknown connectivity 'branch'; valid: block, naive, ns"):
        RepConv2d(4, 4, 3, connectivity="branch")


def test_num_branches_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="does not apply to family 'acnet'"):
        RepConv2d(4, 4, 3, family="acnet", num_branches=3)


def test_bad_probabilities_and_geometry():
    with pytest.raises(ValueError, match="stochastic"):
        RepConv2d(4, 4, 3, stochastic=1.5)
    with pytest.raises(ValueError, match="pair_drop"):
        RepConv2d(4, 4, 3, pair_drop=1.0)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        RepConv2d(4, 4, 3, groups=3)
    with pytest.raises(ValueError, match="cannot be centred"):
        RepConv2d(4, 4, 4, family="acnet")


def test_fold_names_a_branch_that_cannot_fold():
    geometry = ConvGeometry.make(4, 4, 3)
    unit = RepConv2d(4, 4, 3, branches=[ConvBN(geometry), nn.Conv2d(4, 4, 3, padding=1)])
    with pytest.raises(ValueError, match=r"branch 1 \(Conv2d\).*cannot fold"):
        unit.fold()

    class NoFold(Branch):
        def forward(self, x):
            return x

    unit = RepConv2d(4, 4, 3, branches=[ConvBN(geometry), NoFold()])
    with pytest.raises(ValueError, match=r"branch 1 \(NoFold\)"):
        unit.fold()


def test_fold_refuses_bn_without_running_stats_and_reparameterize_names_the_module():
    unit = RepConv2d(4, 4, 3, family="acnet")
    unit.branches[2].bn = nn.BatchNorm2d(4, track_running_stats=False)
    model = nn.Sequential(nn.Identity(), unit)
    with pytest.raises(ValueError, match=r"cannot fold '1' \(RepConv2d\).*running statistics"):
        nsrep.reparameterize(model)
