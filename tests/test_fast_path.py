"""The fast unit implementation computes what the per-branch reference computes: outputs, gradients, BN
running statistics, in train and eval mode, under the same (seeded) stochastic partitions and pair drops."""

import copy

import pytest
import torch
from torch import nn

import nsrep
from nsrep.nn.conv import RepConv2d, reference_copy, set_implementation

GEOMETRIES = [
    (8, 8, 3, 1, None, 1, 1),
    (8, 16, 3, 2, None, 1, 1),
    (8, 8, 3, 1, None, 2, 1),
    (8, 16, 3, 1, None, 1, 4),
    (8, 8, 3, 2, None, 1, 8),
    (8, 12, 1, 2, None, 1, 1),
    (4, 8, 5, 1, 1, 1, 1),
]
CONNECTIVITIES = [("block", 1.0, 0.0), ("ns", 1.0, 0.0), ("ns", 0.0, 0.0), ("ns", 1.0, 0.3), ("naive", 1.0, 0.2)]


def _pair(unit, implementation="fast"):
    fast = copy.deepcopy(unit)
    set_implementation(unit, "reference")
    set_implementation(fast, implementation)
    return unit, fast


def _run(module, x, seed):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y, x.grad


@pytest.mark.parametrize("family", nsrep.FAMILIES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("connectivity,stochastic,pair_drop", CONNECTIVITIES)
@pytest.mark.parametrize("implementation", ["fast", "fast-padded"])
def test_fast_path_matches_reference(family, geometry, connectivity, stochastic, pair_drop, implementation):
    cin, cout, k, s, p, d, g = geometry
    unit = RepConv2d(
        cin, cout, k, s, p, d, g, family=family, connectivity=connectivity, in_streams=3,
        stochastic=stochastic, pair_drop=pair_drop, num_branches=3 if family in ("mobileone", "convK", "ns") else None,
    ).double()  # fmt: skip
    with torch.no_grad():  # non-trivial BN affine and running statistics
        for m in unit.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    ref, fast = _pair(unit, implementation)
    x = torch.randn(3, 4, cin, 9, 9, dtype=torch.float64)
    for step in range(2):  # train mode, same partitions and masks by seeding
        y_ref, gx_ref = _run(ref, x, seed=step)
        y_fast, gx_fast = _run(fast, x, seed=step)
        torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-9, atol=1e-10)
    params_ref, params_fast = dict(ref.named_parameters()), dict(fast.named_parameters())
    for name, param in params_ref.items():
        torch.testing.assert_close(params_fast[name].grad, param.grad, rtol=1e-9, atol=1e-10, msg=name)
    for (name, buf_ref), buf_fast in zip(ref.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(buf_fast, buf_ref, rtol=1e-10, atol=1e-12, msg=name)
    ref.eval()
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", ["dbb", "ns", "repvgg"])
def test_fast_path_on_a_whole_network(family):
    options = {"num_classes": 5, "stem": "cifar", "width_mult": 0.125}
    ref = nsrep.create_model("resnet18", family=family, connectivity="ns", **options).double()
    fast = copy.deepcopy(ref)
    set_implementation(ref, "reference")
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for seed in range(2):
        y_ref, _ = _run(ref, x, seed)
        y_fast, _ = _run(fast, x, seed)
        torch.testing.assert_close(y_fast, y_ref, rtol=1e-9, atol=1e-10)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_unknown_implementation():
    with pytest.raises(ValueError, match="unknown implementation 'quick'; valid: fast, fast-padded, reference"):
        set_implementation(nn.Identity(), "quick")


def test_native_merge_runs_small_kernels_at_their_size(monkeypatch):
    from nsrep.nn.fused import fused_pair_outputs

    unit = RepConv2d(8, 8, 3, family="acnet")
    calls = []
    original = torch.nn.functional.conv2d

    def spy(x, weight, *args, **kwargs):
        calls.append(tuple(weight.shape[-2:]))
        return original(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    fused_pair_outputs(unit.branches, unit.geometry, torch.randn(2, 8, 5, 5), training=True)
    assert sorted(calls) == [(1, 3), (3, 1), (3, 3)]
    calls.clear()
    fused_pair_outputs(unit.branches, unit.geometry, torch.randn(2, 8, 5, 5), training=True, padded=True)
    assert calls == [(3, 3)]


def test_eval_fold_cache_follows_parameter_and_statistic_updates():
    unit = RepConv2d(8, 8, 3, family="ns", connectivity="ns", in_streams=2).double()
    ref = reference_copy(unit)
    x = torch.randn(2, 3, 8, 6, 6, dtype=torch.float64)

    def check():
        unit.eval()
        ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(unit(x), ref(x), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(unit(x), ref(x), rtol=1e-10, atol=1e-12)  # served from the cache

    check()
    assert unit._fold_cache is not None
    for module in (unit, ref):  # one identical SGD step on each
        module.train()
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        torch.manual_seed(1)
        module(x).square().mean().backward()
        opt.step()
    check()
    with torch.no_grad():  # an in-place change of a statistic invalidates the cache too
        for module in (unit, ref):
            module.branches[2].bn1.running_mean.add_(0.5)
    check()


def test_eval_without_running_stats_falls_back_to_reference():
    unit = RepConv2d(4, 4, 3, family="acnet", connectivity="ns", in_streams=2).eval()
    for branch in unit.branches:
        branch.bn = nn.BatchNorm2d(4, track_running_stats=False)
    ref = reference_copy(unit)
    x = torch.randn(2, 3, 4, 5, 5)
    torch.testing.assert_close(unit(x), ref(x))


def test_stochastic_training_under_torch_compile():
    unit = RepConv2d(4, 4, 3, family="dbb", connectivity="ns", in_streams=2, pair_drop=0.1).double()
    ref = reference_copy(unit)
    compiled = torch.compile(unit, backend="aot_eager")
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    torch.manual_seed(3)
    y = compiled(x)
    torch.manual_seed(3)
    torch.testing.assert_close(y, ref(x), rtol=1e-10, atol=1e-10)
    y.sum().backward()


def test_fast_path_with_affine_free_batch_statistics_bns():
    """BNs without affine parameters or running statistics (batch statistics only) merge like the others."""
    unit = RepConv2d(4, 4, 3, family="acnet", connectivity="ns", in_streams=2).double()
    for branch in unit.branches:
        branch.bn = nn.BatchNorm2d(4, affine=False, track_running_stats=False).double()
    ref = reference_copy(unit)
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(_run(unit, x, 0)[0], _run(ref, x, 0)[0], rtol=1e-10, atol=1e-10)
