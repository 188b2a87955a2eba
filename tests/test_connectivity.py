"""Pair partitions (paper Alg. 1 with a joint permutation) and pair drop."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsrep.nn import connectivity as conn
from nsrep.nn.conv import RepConv2d


@settings(deadline=None, max_examples=60)
@given(k=st.integers(1, 6), s=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_random_partition_uses_every_pair_exactly_once(k, s, seed):
    g = torch.Generator().manual_seed(seed)
    part = conn.random_partition(k, s, generator=g)
    assert part.shape == (k, s)
    assert torch.equal(part.flatten().sort().values, torch.arange(k * s))


@settings(deadline=None, max_examples=40)
@given(k=st.integers(1, 5), s=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_grouping_preserves_the_aggregate(k, s, seed):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randn(k, s, 2, 3, 4, 4, dtype=torch.float64, generator=g)
    for part in (conn.random_partition(k, s, generator=g), conn.fixed_partition(k, s)):
        out = conn.group_pairs(pairs, part)
        assert out.shape == (k, 2, 3, 4, 4)
        torch.testing.assert_close(out.sum(0), pairs.sum((0, 1)), rtol=1e-12, atol=1e-12)


def test_fixed_partition_groups_pairs_by_branch():
    pairs = torch.randn(3, 2, 1, 1, 1, 1)
    torch.testing.assert_close(conn.group_pairs(pairs, conn.fixed_partition(3, 2)), pairs.sum(1))


@settings(deadline=None, max_examples=25)
@given(
    family=st.sampled_from(["dbb", "acnet", "ns", "repvgg", "convK"]),
    s=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_ns_unit_in_train_mode_preserves_the_aggregate(family, s, seed):
    """With pair drop 0 the output streams of a stochastic ns unit sum to the sum of all its pairs."""
    torch.manual_seed(seed)
    unit = RepConv2d(4, 4, 3, family=family, connectivity="ns", in_streams=s, stochastic=1.0).double().train()
    x = torch.randn(s, 3, 4, 6, 6, dtype=torch.float64)
    y = unit(x)
    assert y.shape[0] == unit.num_branches
    # reference: every pair computed on the same stream set (BN sees the same S*B batch, so same statistics)
    flat = x.reshape(s * 3, 4, 6, 6)
    all_pairs = sum(branch(flat).view(s, 3, 4, 6, 6).sum(0) for branch in unit.branches)
    torch.testing.assert_close(y.sum(0), all_pairs, rtol=1e-10, atol=1e-10)


def test_stochastic_draws_new_partitions_and_zero_is_fixed():
    x = torch.randn(4, 2, 4, 5, 5, dtype=torch.float64)
    fixed = RepConv2d(4, 4, 3, family="convK", connectivity="ns", in_streams=4, stochastic=0.0).double()
    torch.testing.assert_close(fixed(x), fixed(x))
    rand = RepConv2d(4, 4, 3, family="convK", connectivity="ns", in_streams=4, stochastic=1.0).double()
    rand.load_state_dict(fixed.state_dict())
    outs = [rand(x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    rand.load_state_dict(fixed.state_dict())  # same running statistics
    rand.eval()  # eval mode: fixed grouping, identical to stochastic=0
    fixed.eval()
    torch.testing.assert_close(rand(x), fixed(x))


def test_pair_drop_is_training_only_and_unbiased():
    pairs = torch.ones(4, 3, 2000, 1, 1, 1, dtype=torch.float64)
    dropped = pairs * conn.pair_drop_mask((4, 3, 2000, 1, 1, 1), 0.25, pairs)
    assert set(dropped.unique().tolist()) <= {0.0, 1.0 / 0.75}
    assert abs(dropped.mean().item() - 1.0) < 0.03
    # all channels/pixels of one (branch, stream, sample) share the decision
    ones = torch.ones(2, 2, 50, 3, 4, 4)
    wide = ones * conn.pair_drop_mask((2, 2, 50, 1, 1, 1), 0.5, ones)
    assert torch.all(wide.amax((3, 4, 5)) == wide.amin((3, 4, 5)))

    unit = RepConv2d(4, 4, 3, family="acnet", connectivity="ns", in_streams=2, pair_drop=0.5, stochastic=0).eval()
    x = torch.randn(2, 2, 4, 5, 5)
    torch.testing.assert_close(unit(x), unit(x))
