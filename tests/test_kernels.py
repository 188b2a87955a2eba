"""The folding algebra against independent oracles: PyTorch's own fusion and the unfused layer chains."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nsrep.nn import kernels


def _random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fuse_conv_bn_matches_pytorch(groups, conv_bias):
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=conv_bias).double().eval()
    bn = _random_bn(12)
    oracle = fuse_conv_bn_eval(conv, bn)
    kernel, bias = kernels.fuse_conv_bn(
        conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv.bias
    )
    torch.testing.assert_close(kernel, oracle.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(bias, oracle.bias, rtol=0, atol=1e-12)


@pytest.mark.parametrize("small,big", [((1, 1), (3, 3)), ((1, 3), (3, 3)), ((3, 1), (5, 5)), ((1, 1), (7, 7))])
@pytest.mark.parametrize("dilation", [1, 2])
def test_padded_kernel_computes_the_small_conv(small, big, dilation):
    x = torch.randn(2, 4, 11, 11, dtype=torch.float64)
    w = torch.randn(6, 4, *small, dtype=torch.float64)
    pad_small = [dilation * (b - s) // 2 for s, b in zip(small, big, strict=True)]
    pad_big = [dilation * (b - 1) // 2 for b in big]
    # the small kernel runs with the padding that centres it: (big padding) - (half the size difference)
    expected = F.conv2d(x, w, padding=[pb - ps for pb, ps in zip(pad_big, pad_small, strict=True)], dilation=dilation)
    got = F.conv2d(x, kernels.pad_kernel_to(w, big), padding=pad_big, dilation=dilation)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_pad_kernel_refuses_uncentrable_sizes():
    with pytest.raises(ValueError, match="cannot centre"):
        kernels.pad_kernel_to(torch.zeros(1, 1, 1, 1), (4, 4))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_identity_kernel_is_identity(groups):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    k = kernels.identity_kernel(8, groups, (3, 3), like=x)
    torch.testing.assert_close(F.conv2d(x, k, padding=1, groups=groups), x, rtol=0, atol=0)


@pytest.mark.parametrize("groups", [1, 4])
def test_avg_pool_kernel_is_average_pool(groups):
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    k = kernels.avg_pool_kernel(8, groups, 3, like=x)
    expected = F.avg_pool2d(x, 3, stride=2)
    torch.testing.assert_close(F.conv2d(x, k, stride=2, groups=groups), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_compose_1x1_kxk_is_exact_with_bias_padding(groups, stride):
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    k1, b1 = torch.randn(12, 8 // groups, 1, 1, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    k2, b2 = torch.randn(4, 12 // groups, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    mid = F.conv2d(x, k1, groups=groups) + b1.view(1, -1, 1, 1)
    # pad the intermediate map with its bias (what zero-padding the input would give after the 1×1)
    mid = F.pad(mid - b1.view(1, -1, 1, 1), [1, 1, 1, 1]) + b1.view(1, -1, 1, 1)
    expected = F.conv2d(mid, k2, stride=stride, groups=groups) + b2.view(1, -1, 1, 1)
    k, b = kernels.compose_1x1_kxk(k1, b1, k2, b2, groups)
    got = F.conv2d(x, k, b, stride=stride, padding=1, groups=groups)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
