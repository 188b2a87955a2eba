"""Stream-set helpers and guided ops: the streams always sum to what the deployed network computes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsrep.nn import activations, guided, streams


def test_spread_preserves_aggregate():
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    y = streams.spread(x, 3)
    assert y.shape == (6, 3, 4, 5, 5)
    torch.testing.assert_close(y.sum(0), x.sum(0))
    torch.testing.assert_close(y[0], x[0] / 3)


@pytest.mark.parametrize("sa,sb", [(3, 3), (4, 1), (1, 4), (2, 4), (2, 3)])
def test_add_streams_preserves_aggregate(sa, sb):
    a = torch.randn(sa, 2, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(sb, 2, 4, 3, 3, dtype=torch.float64)
    out = streams.add_streams(a, b)
    assert out.shape[0] == math.lcm(sa, sb)
    torch.testing.assert_close(out.sum(0), a.sum(0) + b.sum(0))


def test_residual_add_errors():
    with pytest.raises(ValueError, match="different feature shapes"):
        streams.add_streams(torch.zeros(2, 1, 4, 3, 3), torch.zeros(2, 1, 8, 3, 3))
    with pytest.raises(ValueError, match="lcm=35 streams, past max_streams=16"):
        streams.add_streams(torch.zeros(5, 1, 1, 1, 1), torch.zeros(7, 1, 1, 1, 1), max_streams=16)
    add = streams.StreamAdd(4, 1)
    assert add.out_streams == 4
    with pytest.raises(ValueError, match="built for 4 \\+ 1 streams got 3 \\+ 1"):
        add(torch.zeros(3, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="past max_streams"):
        streams.StreamAdd(5, 7, max_streams=16)


ACTIVATIONS = [
    (guided.GuidedReLU(), F.relu),
    (guided.GuidedReLU6(), F.relu6),
    (guided.GuidedLeakyReLU(0.1), lambda a: F.leaky_relu(a, 0.1)),
    (guided.GuidedSiLU(), F.silu),
    (guided.GuidedGELU(), F.gelu),
    (guided.GuidedGELU("tanh"), lambda a: F.gelu(a, approximate="tanh")),
    (guided.GuidedHardswish(), F.hardswish),
]


@pytest.mark.parametrize(
    "act,reference", ACTIVATIONS, ids=lambda a: type(a).__name__ if isinstance(a, nn.Module) else ""
)
@pytest.mark.parametrize("num_streams", [1, 2, 5])
def test_guided_activation_sums_to_plain_activation_with_its_gradient(act, reference, num_streams):
    x = (4 * torch.randn(num_streams, 3, 4, 6, 6, dtype=torch.float64)).requires_grad_()
    y = act(x)
    assert y.shape == x.shape
    a = x.detach().sum(0).requires_grad_()
    torch.testing.assert_close(y.sum(0), reference(a), rtol=1e-12, atol=1e-12)
    # gradient wrt each stream equals the plain activation's gradient at the aggregate
    w = torch.randn_like(a)
    (y.sum(0) * w).sum().backward()
    (reference(a) * w).sum().backward()
    for s in range(num_streams):
        torch.testing.assert_close(x.grad[s], a.grad, rtol=1e-10, atol=1e-10)
    assert type(act.fold()).__name__ in {"ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "Hardswish"}


def test_guided_relu_is_paper_eq9():
    x = torch.tensor([[1.0, -2.0, 3.0]]).view(1, 1, 1, 1, 3).repeat(2, 1, 1, 1, 1)
    x[1] = torch.tensor([-3.0, 1.0, -1.0]).view(1, 1, 1, 3)
    # aggregate: [-2, -1, 2] -> mask [0, 0, 1], applied to each stream
    y = guided.GuidedReLU()(x)
    torch.testing.assert_close(y[0].flatten(), torch.tensor([0.0, 0.0, 3.0]))
    torch.testing.assert_close(y[1].flatten(), torch.tensor([0.0, 0.0, -1.0]))


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_guided_max_pool_takes_argmax_of_aggregate(kernel, stride, padding):
    x = torch.randn(3, 2, 4, 8, 8, dtype=torch.float64)
    pool = guided.GuidedMaxPool2d(kernel, stride, padding)
    y = pool(x)
    torch.testing.assert_close(y.sum(0), F.max_pool2d(x.sum(0), kernel, stride, padding))
    assert isinstance(pool.fold(), nn.MaxPool2d)
    torch.testing.assert_close(pool.fold()(x.sum(0)), y.sum(0))


def test_guided_activation_by_name():
    assert isinstance(activations.guided_activation("silu"), guided.GuidedSiLU)
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*relu, relu6"):
        activations.guided_activation("swish")
