"""The fast unit implementation computes what the per-branch reference computes: outputs, gradients, BN
running statistics, in train and eval mode, under the same (seeded) stochastic partitions and pair drops."""

import copy

import pytest
import torch
from torch import nn

import nsrep
from nsrep.units import RepConv2d, set_implementation

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


def _pair(unit):
    fast = copy.deepcopy(unit)
    set_implementation(unit, "reference")
    set_implementation(fast, "fast")
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
def test_fast_path_matches_reference(family, geometry, connectivity, stochastic, pair_drop):
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
    ref, fast = _pair(unit)
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
    with pytest.raises(ValueError, match="unknown implementation 'quick'; valid: fast, reference"):
        set_implementation(nn.Identity(), "quick")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v1"])
def test_checkpointing_changes_nothing_but_memory(arch):
    """Same outputs, gradients and BN running statistics (no double update on recompute), same partitions."""
    options = {"num_classes": 5, "stem": "cifar", "width_mult": 0.125}
    plain = nsrep.create_model(arch, family="dbb", connectivity="ns", pair_drop=0.2, **options).double()
    ckpt = nsrep.create_model(arch, family="dbb", connectivity="ns", pair_drop=0.2, memory="checkpoint", **options)
    ckpt = ckpt.double()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for seed in range(2):
        y_plain, gx_plain = _run(plain, x, seed)
        y_ckpt, gx_ckpt = _run(ckpt, x, seed)
        torch.testing.assert_close(y_ckpt, y_plain, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx_ckpt, gx_plain, rtol=1e-10, atol=1e-12)
    for (name, p_plain), p_ckpt in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p_ckpt.grad, p_plain.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, b_plain), b_ckpt in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(b_ckpt, b_plain, rtol=0, atol=0, msg=name)


def test_unknown_memory_mode():
    with pytest.raises(ValueError, match="unknown memory mode 'low'; valid: default, checkpoint"):
        nsrep.create_model("resnet18", memory="low")


def test_model_runs_under_torch_compile():
    options = {"num_classes": 5, "stem": "cifar", "width_mult": 0.125}
    model = nsrep.create_model("resnet18", family="dbb", connectivity="ns", stochastic=0.0, **options)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    deployed = nsrep.reparameterize(compiled)  # unwraps the compiled module
    assert nsrep.verify_equivalence(model, deployed, x).max_rel_error < 1e-4
