"""RepLinear, guided activations on feature/token streams, and the heads: every form folds exactly."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nsrep
from helpers import F32_TOL, F64_TOL, assert_folds, classification_loss, train_steps
from nsrep.inspection import count_parameters
from nsrep.models.heads import HEADS, AdapterHead, create_head
from nsrep.nn.activations import guided_feature_activation
from nsrep.nn.guided import GuidedFeatureActivation, GuidedGELU, GuidedReLU
from nsrep.nn.linear import RepLinear
from nsrep.nn.streams import StreamEntry

CONNECTIVITIES = [("block", 1.0), ("ns", 1.0), ("ns", 0.0), ("naive", 1.0)]
LEADING = [(5,), (3, 4)]  # (B, D) features and (B, T, D) tokens


class StreamsToAggregate(nsrep.Foldable):
    """Identity on stream sets in training form; the aggregate in deployed form (for unit-level tests)."""

    def forward(self, x):
        return x

    def fold(self):
        return Sum0()


class Sum0(nn.Module):
    def forward(self, x):
        return x.sum(0)


class Aggregate(nsrep.Foldable):
    """The unit's output streams summed; folds to the unit's linear, which computes that sum from the input's."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).sum(0)

    def fold(self):
        return self.inner.fold()


def bn_moved(module):
    """Real training steps moved every BN's running statistics away from their init (mean 0, var 1)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]
    return all(bn.running_mean.abs().max() > 1e-3 and (bn.running_var - 1).abs().max() > 1e-3 for bn in bns)


# ------------------------------------------------------------------------------------------------ RepLinear folds


@pytest.mark.parametrize("connectivity,stochastic", CONNECTIVITIES)
@pytest.mark.parametrize("bn", [False, True], ids=["bias", "bn"])
@pytest.mark.parametrize("in_streams", [1, 3])
@pytest.mark.parametrize("leading", LEADING, ids=["BD", "BTD"])
def test_replinear_folds_exactly(connectivity, stochastic, bn, in_streams, leading):
    drop = 0.2 if connectivity == "ns" and stochastic == 1.0 else 0.0
    options = {"connectivity": connectivity, "in_streams": in_streams, "stochastic": stochastic, "pair_drop": drop}
    unit = RepLinear(6, 5, num_branches=3, bn=bn, **options).double()

    def make_input():
        return torch.randn(in_streams, *leading, 6, dtype=torch.float64) + 0.5

    model = nn.Sequential(StreamsToAggregate(), Aggregate(unit))
    train_steps(model, make_input, calibrate=0)
    assert bn_moved(unit)
    deployed = assert_folds(model, make_input)
    folded = [m for m in deployed.modules() if isinstance(m, nn.Linear)]
    assert len(folded) == 1 and folded[0].bias is not None
    assert not any(isinstance(m, RepLinear) for m in deployed.modules())


def test_fold_is_computed_in_float64_and_rounded_once():
    unit = RepLinear(16, 8, num_branches=4, bn=True, connectivity="ns", in_streams=3)
    train_steps(nn.Sequential(StreamsToAggregate(), Aggregate(unit)), lambda: torch.randn(3, 32, 16), calibrate=0)
    exact = RepLinear(16, 8, num_branches=4, bn=True, connectivity="ns", in_streams=3)
    exact.load_state_dict(unit.state_dict())
    w64, b64 = exact.double().fold_affine()
    w32, b32 = unit.fold_affine()
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32, w64.float(), rtol=0, atol=0)
    torch.testing.assert_close(b32, b64.float(), rtol=0, atol=0)


def test_folded_bias_uses_structural_stream_count():
    """A freshly built unit that never ran a forward folds with bias multiplier S_in (block: 1)."""
    for connectivity, multiplier in (("ns", 3), ("naive", 3), ("block", 1)):
        unit = RepLinear(4, 2, num_branches=5, bn=True, connectivity=connectivity, in_streams=3).double().eval()
        with torch.no_grad():
            unit.bn.bias.fill_(1.0)
        _, bias = unit.fold_affine()
        torch.testing.assert_close(bias, torch.full((2,), 5.0 * multiplier, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ against an oracle


def branch_oracle(unit):
    """Independent per-branch modules (nn.Linear + nn.BatchNorm1d) holding copies of the unit's branches and
    statistics, in the unit's mode."""
    branches = []
    for k in range(unit.num_branches):
        linear = nn.Linear(unit.in_features, unit.out_features, bias=unit.bias is not None).double()
        bn = nn.BatchNorm1d(unit.out_features).double() if unit.bn is not None else nn.Identity()
        d = unit.out_features
        with torch.no_grad():
            linear.weight.copy_(unit.weight[k])
            if unit.bias is not None:
                linear.bias.copy_(unit.bias[k])
            if unit.bn is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(getattr(unit.bn, name)[k * d : (k + 1) * d])
        branches.append(nn.Sequential(linear, bn).train(unit.training))
    return branches


@pytest.mark.parametrize("connectivity", ["block", "ns", "naive"])
@pytest.mark.parametrize("leading", LEADING, ids=["BD", "BTD"])
def test_training_forward_matches_independent_branches(connectivity, leading):
    """Each branch BN takes statistics over all S_in·N pair inputs (block: over the summed input); outputs,
    running statistics and gradients match K separate nn.Linear+nn.BatchNorm1d modules."""
    s, k, d_in, d_out = 3, 4, 6, 5
    unit = RepLinear(d_in, d_out, num_branches=k, bn=True, connectivity=connectivity, in_streams=s, stochastic=0.0)
    unit = unit.double().train()
    oracle = branch_oracle(unit)
    x = torch.randn(s, *leading, d_in, dtype=torch.float64, requires_grad=True)
    y = unit(x)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = oracle_forward(oracle, x_ref, connectivity)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for j, branch in enumerate(oracle):
        bn = branch[1]
        torch.testing.assert_close(unit.bn.running_mean[j * d_out : (j + 1) * d_out], bn.running_mean)
        torch.testing.assert_close(unit.bn.running_var[j * d_out : (j + 1) * d_out], bn.running_var)
    w = torch.randn_like(y)
    (grad_x,) = torch.autograd.grad((y * w).sum(), x)
    (grad_ref,) = torch.autograd.grad((expected * w).sum(), x_ref)
    torch.testing.assert_close(grad_x, grad_ref, rtol=1e-12, atol=1e-12)


def oracle_forward(oracle, x, connectivity):
    """What a unit computes in training, from separate branch modules (ns with the fixed grouping)."""
    leading, d_in = x.shape[1:-1], x.shape[-1]
    flat = (x.sum(0, keepdim=True) if connectivity == "block" else x).reshape(-1, d_in)
    outs = [branch(flat).view(-1, *leading, branch[0].out_features) for branch in oracle]  # (S or 1, *leading, D)
    if connectivity == "block":
        return sum(outs)
    if connectivity == "ns":  # output j = branch j over all streams
        return torch.stack([o.sum(0) for o in outs])
    return torch.cat(outs)  # naive: pair k*S_in + s


def test_without_bn_all_branches_get_the_same_gradient():
    """Why the NS heads default to BN: affine branches enter the loss only through sum_k W_k (heads.py)."""
    unit = RepLinear(6, 5, num_branches=4, bn=False, connectivity="ns", in_streams=2).double().train()
    act = guided_feature_activation("gelu")
    x = torch.randn(2, 8, 6, dtype=torch.float64)
    loss = (act(unit(x)).sum(0) ** 2).sum()
    loss.backward()
    for k in range(1, 4):
        torch.testing.assert_close(unit.weight.grad[k], unit.weight.grad[0])
    with_bn = RepLinear(6, 5, num_branches=4, bn=True, connectivity="ns", in_streams=2).double().train()
    (act(with_bn(x)).sum(0) ** 2).sum().backward()
    assert (with_bn.weight.grad[1] - with_bn.weight.grad[0]).abs().max() > 1e-6


# ------------------------------------------------------------------------------------------------ partitions, drop


def all_pairs(unit, x):
    """p(k, s) for every branch k and stream s, computed by the oracle (training: batch statistics over all pairs)."""
    oracle = branch_oracle(unit)
    s, d_in = x.shape[0], x.shape[-1]
    return [[branch(x.reshape(-1, d_in)).view(*x.shape[:-1], -1)[si] for si in range(s)] for branch in oracle]


@pytest.mark.parametrize("leading", LEADING, ids=["BD", "BTD"])
def test_random_partition_uses_every_pair_once(leading):
    s, k = 2, 3
    unit = RepLinear(4, 3, num_branches=k, bn=True, connectivity="ns", in_streams=s, stochastic=1.0).double()
    x = torch.randn(s, *leading, 4, dtype=torch.float64)
    pairs = all_pairs(unit, x)
    flat = [pairs[ki][si] for ki in range(k) for si in range(s)]  # pair index k*S_in + s
    seen_non_fixed = False
    for _ in range(8):
        y = unit(x)
        assert y.shape == (k, *leading, 3)
        torch.testing.assert_close(y.sum(0), sum(flat), rtol=1e-12, atol=1e-12)  # the aggregate is preserved
        used = []
        for j in range(k):  # output j is the sum of exactly S_in pairs, and the groups partition all pairs
            match = [
                c for c in itertools.combinations(range(k * s), s) if torch.allclose(y[j], sum(flat[i] for i in c))
            ]
            assert len(match) == 1, match
            used += match[0]
        assert sorted(used) == list(range(k * s))
        seen_non_fixed |= any(sorted(used[j * s : (j + 1) * s]) != list(range(j * s, (j + 1) * s)) for j in range(k))
    assert seen_non_fixed  # with stochastic=1 some draws are not the fixed grouping
    unit.eval()  # eval: fixed grouping
    y = unit(x)
    pairs = all_pairs(unit, x)
    flat = [pairs[ki][si] for ki in range(k) for si in range(s)]
    for j in range(k):
        torch.testing.assert_close(y[j], sum(flat[j * s : (j + 1) * s]), rtol=1e-12, atol=1e-12)


def test_pair_drop_is_per_stream_sample_and_branch_shared_over_tokens():
    unit = RepLinear(4, 3, num_branches=2, bn=False, connectivity="ns", in_streams=1, stochastic=0.0, pair_drop=0.5)
    unit = unit.double()
    x = torch.randn(1, 64, 5, 4, dtype=torch.float64)  # (S, B, T, D)
    full = torch.stack([F.linear(x[0], unit.weight[j], unit.bias[j]) for j in range(2)])  # (K, B, T, D_out)
    y = unit(x)
    ratio = y / full  # per (branch, sample): 0 or 1/(1-rate) = 2, the same for every token and feature
    per_sample = ratio[:, :, :1, :1]
    torch.testing.assert_close(ratio, per_sample.expand_as(ratio))
    values = per_sample.flatten()
    assert set(values.round().tolist()) == {0.0, 2.0}
    assert 0.2 < (values == 0).double().mean() < 0.8
    unit.eval()
    torch.testing.assert_close(unit(x), full)


def test_stream_axis_is_explicit_and_checked():
    unit = RepLinear(4, 3, connectivity="ns", in_streams=2)
    with pytest.raises(ValueError, match=r"built for 2 input streams of 4 features.*StreamEntry"):
        unit(torch.randn(8, 4))  # a plain batch: dim 0 would be read as the stream axis
    with pytest.raises(ValueError, match="built for 2 input streams"):
        unit(torch.randn(3, 8, 4))
    with pytest.raises(ValueError, match="of 4 features"):
        unit(torch.randn(2, 8, 5))
    one = RepLinear(4, 3)
    assert one(StreamEntry()(torch.randn(8, 4))).shape == (1, 8, 3)  # a plain batch enters with StreamEntry


def test_bad_options():
    with pytest.raises(ValueError, match=r"unknown connectivity 'branch'; valid: block, naive, ns"):
        RepLinear(4, 4, connectivity="branch")
    with pytest.raises(ValueError, match="num_branches"):
        RepLinear(4, 4, num_branches=0)
    with pytest.raises(ValueError, match="stochastic"):
        RepLinear(4, 4, stochastic=2.0)
    with pytest.raises(ValueError, match="pair_drop"):
        RepLinear(4, 4, pair_drop=1.0)
    with pytest.raises(ValueError, match="in_streams"):
        RepLinear(4, 4, in_streams=0)
    with pytest.raises(ValueError, match=r"emit 80 streams, past max_streams=64"):
        RepLinear(4, 4, num_branches=5, connectivity="naive", in_streams=16)


# ------------------------------------------------------------------------------------------------ guided activations


@pytest.mark.parametrize("name,plain", [("relu", F.relu), ("gelu", F.gelu)])
@pytest.mark.parametrize("shape", [(3, 4, 6), (3, 2, 5, 6)], ids=["SBD", "SBTD"])
def test_guided_feature_activation_sums_to_plain_activation(name, plain, shape):
    act = guided_feature_activation(name)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = act(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.sum(0), plain(x.sum(0)), rtol=1e-12, atol=1e-14)
    # the summed streams also carry the plain activation's gradient, to every stream
    w = torch.randn(shape[1:], dtype=torch.float64)
    (grad,) = torch.autograd.grad((y.sum(0) * w).sum(), x)
    a = x.detach().sum(0).requires_grad_(True)
    (grad_plain,) = torch.autograd.grad((plain(a) * w).sum(), a)
    for s in range(shape[0]):
        torch.testing.assert_close(grad[s], grad_plain, rtol=1e-12, atol=1e-14)
    assert isinstance(act.fold(), nn.GELU if name == "gelu" else nn.ReLU)


def test_token_stream_sets_are_not_mistaken_for_image_batches():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)  # (S, B, T, D): 4-D like an image batch
    feature = GuidedFeatureActivation(GuidedGELU())(x)
    torch.testing.assert_close(feature, x * (0.5 * (1 + torch.erf(x.sum(0) / math.sqrt(2)))))
    # the conv-network convention is unchanged: a 4-D tensor is one plain batch, a 5-D one a stream set
    torch.testing.assert_close(GuidedReLU()(x), F.relu(x))
    x5 = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(GuidedReLU()(x5).sum(0), F.relu(x5.sum(0)))
    one = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(GuidedFeatureActivation(GuidedReLU())(one), F.relu(one))
    with pytest.raises(ValueError, match="stream axis first"):
        GuidedFeatureActivation(GuidedReLU())(torch.randn(5))


# ------------------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("leading", LEADING, ids=["BD", "BTD"])
def test_heads_fold_exactly_and_load_strictly_into_the_plain_head(name, leading):
    head = create_head(name, 6, 4, expansion=2 if name != "linear" else None).double()

    def make_input():
        return torch.randn(*leading, 6, dtype=torch.float64) * 2 + 1

    def loss(out):
        return classification_loss(4)(out.reshape(-1, 4))

    train_steps(head, make_input, loss_fn=loss, lr=0.05, calibrate=0)
    assert bn_moved(head)
    deployed = assert_folds(head, make_input)
    assert not any(isinstance(m, nsrep.Foldable) for m in deployed.modules())
    assert deployed.nsrep_config == {**head.nsrep_config, "deploy": True}
    plain_name = "linear" if name == "linear" else "mlp"
    for plain in (
        create_head(**deployed.nsrep_config),  # the deploy form of the same head
        create_head(plain_name, 6, 4, expansion=2 if name != "linear" else None),  # the plain head itself
        create_head(plain_name, 6, 4, expansion=2 if name != "linear" else None, deploy=True),
    ):
        plain = plain.double()
        plain.load_state_dict(deployed.state_dict())  # strict
        x = make_input()
        torch.testing.assert_close(plain.eval()(x), deployed(x), rtol=0, atol=0)
        assert count_parameters(plain) == count_parameters(deployed)


def test_ns_mlp_layout():
    head = create_head("ns-mlp", 8, 3)
    assert isinstance(head, AdapterHead)
    assert (head.fc1.in_streams, head.fc1.out_streams, head.fc2.in_streams, head.fc2.out_streams) == (1, 4, 4, 4)
    assert head.fc1.weight.shape == (4, 32, 8) and head.fc2.weight.shape == (4, 8, 32)
    assert head.fc1.bn is not None and head.fc1.connectivity == "ns"
    assert create_head("block-mlp", 8, 3).fc2.in_streams == 1
    plain = create_head("mlp", 8, 3)
    x = torch.randn(5, 8)
    expected = plain.classifier(x + plain.fc2(F.gelu(plain.fc1(x))))  # the documented residual adapter
    torch.testing.assert_close(plain(x), expected)
    relu = create_head("ns-mlp", 8, 3, activation="relu", num_branches=2)
    assert isinstance(nsrep.reparameterize(relu).act, nn.ReLU) and relu.fc1.num_branches == 2


def test_head_factory_refuses_what_does_not_apply():
    with pytest.raises(ValueError, match=r"unknown head 'ns_mlp'.*Did you mean 'ns-mlp'"):
        create_head("ns_mlp", 4, 2)
    with pytest.raises(ValueError, match=r"num_branches=3 do not apply to head 'mlp'; they apply to ns-mlp"):
        create_head("mlp", 4, 2, num_branches=3)
    with pytest.raises(ValueError, match=r"expansion=4 do not apply to head 'linear'"):
        create_head("linear", 4, 2, expansion=4)
    with pytest.raises(ValueError, match=r"head 'ns-mlp' takes connectivity 'ns' or 'naive'.*use head 'block-mlp'"):
        create_head("ns-mlp", 4, 2, connectivity="block")
    with pytest.raises(ValueError, match=r"unknown activation 'gelu2'"):
        create_head("mlp", 4, 2, activation="gelu2")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_head("linear", 4, 0)


def test_float32_head_fold_within_tolerance_after_training():
    """The heads as the probe trains them (float32, AdamW): fold error far inside the float32 tolerance."""
    head = create_head("ns-mlp", 16, 5)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(20):
        x = torch.randn(32, 16) * 3
        loss = F.cross_entropy(head(x), torch.arange(32) % 5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    eq = nsrep.verify_equivalence(head, nsrep.reparameterize(head), torch.randn(64, 16) * 3)
    assert eq.max_rel_error <= F32_TOL, eq
    assert F64_TOL < F32_TOL
