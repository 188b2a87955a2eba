"""Branch modules: the parallel paths of a unit, each a chain of linear layers that can fold itself.

A branch maps a 4-D batch ``(N, C_in, H, W)`` to ``(N, C_out, H', W')``; the unit calls it on the free view
``(S*B, C, H, W)`` of its stream set. ``fold()`` returns the branch's eval-mode affine map as a kernel in the
unit's k×k space (unit padding, stride and dilation) plus a bias, which is all a unit needs to add branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from nsrep.nn import kernels
from nsrep.nn.geometry import ConvGeometry
from nsrep.nn.moments import InputMoments

__all__ = [
    "BNAndPad",
    "Branch",
    "ConvBN",
    "ConvBNAvgBN",
    "ConvBNConvBN",
    "IdentityBN",
    "NoNorm",
]


class NoNorm(nn.Module):
    """Stands in for a branch's removed final BN: identity, folding as scale 1, shift 0.

    It carries BatchNorm's eval attributes (statistics 0 and 1, eps 0, no affine) so that ``Branch.affine`` reads
    it unchanged; its eps, momentum and tracking differ from every real BN's, so the fused fast path (one BN
    over all branches) is never taken for a unit holding one: such units run the per-branch path.
    """

    eps = 0.0
    momentum = None
    track_running_stats = False
    weight = None
    bias = None

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x


class Branch(nn.Module):
    """One parallel path of a unit. Subclasses implement ``forward`` and ``affine`` (what the branch folds to).

    Branches that end in a BN may also give their *linear algebra* for the unit's fast path: setting
    ``final_bn`` declares that ``pre_bn_affine`` is implemented, the map before that BN as one k×k kernel in
    the unit's geometry. A branch with ``final_bn = None`` runs its own layers.
    """

    geometry: ConvGeometry
    final_bn: nn.BatchNorm2d | None = None  # the BN the branch ends with; set only with pre_bn_affine
    FINAL_NORM: str | None = None  # where that BN sits: the attribute holding it (None: no final BN)
    needs_moments: bool = False  # pre_bn_affine uses the unit input's batch moments in training

    def affine(self) -> tuple[Tensor, Tensor]:
        """Eval-mode affine map of the branch as ``(kernel (C_out, C_in/g, kh, kw), bias (C_out,))``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement affine()")

    def pre_bn_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor | None]:
        """The map before ``final_bn`` as ``(k×k kernel, bias or None)``.

        ``moments`` are the unit input's batch moments (training: inner BNs normalise with the batch
        statistics they imply and update their running statistics); ``None`` means eval statistics.
        """
        raise NotImplementedError(f"{type(self).__name__} sets final_bn but does not implement pre_bn_affine()")

    def drop_final_norm(self) -> None:
        """Replace the final BN with :class:`NoNorm` (a QA family normalises the unit's sum instead)."""
        if self.FINAL_NORM is None:
            raise ValueError(f"{type(self).__name__} has no final BN to drop")
        setattr(self, self.FINAL_NORM, NoNorm(getattr(self, self.FINAL_NORM).num_features))

    def native_conv(self) -> tuple[Tensor, tuple[int, int], tuple[int, int]] | None:
        """``(kernel, padding, crop)`` of the branch's own smaller conv, when it has one (a 1×1 or 1×k branch):
        running it at its own size costs fewer multiply-adds than its zero-padded k×k kernel."""
        return None


class BNAndPad(nn.BatchNorm2d):
    """BatchNorm whose output is padded with the BN shift instead of zeros (DBB's "BN-and-pad").

    Padding with the value BN gives a zero input makes a following k×k conv see exactly what the folded conv
    sees at the borders. In train mode the shift comes from the batch statistics (the authors' code pads with
    running statistics even then; we keep the branch one affine map of its input; docs/architecture.md, Folding).
    """

    def __init__(self, num_features: int, pad: tuple[int, int], **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.track_running_stats:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
        elif self.running_mean is None or self.running_var is None:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = self.running_mean, self.running_var
        scale, shift = kernels.bn_affine(mean, var, self.weight, self.bias, self.eps)
        y = x * scale.reshape(1, -1, 1, 1)
        ph, pw = self.pad
        if ph or pw:
            y = F.pad(y, [pw, pw, ph, ph])
        return y + shift.reshape(1, -1, 1, 1)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class ConvBN(Branch):
    """A (kh×kw) conv followed by BN: the k×k, 1×1, 1×k and k×1 branches of every family."""

    def __init__(self, geometry: ConvGeometry, kernel_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.geometry = geometry
        kernel_size = geometry.kernel_size if kernel_size is None else _pair(kernel_size)
        ph, pw = geometry.branch_padding(kernel_size)
        # A negative padding means the smaller kernel must skip input rows/cols the unit's padding never reaches.
        self.crop = (max(-ph, 0), max(-pw, 0))
        self.conv = nn.Conv2d(
            geometry.in_channels,
            geometry.out_channels,
            kernel_size,
            stride=geometry.stride,
            padding=(max(ph, 0), max(pw, 0)),
            dilation=geometry.dilation,
            groups=geometry.groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(geometry.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        ch, cw = self.crop
        if ch or cw:
            x = x[..., ch : x.shape[-2] - ch, cw : x.shape[-1] - cw]
        return self.bn(self.conv(x))

    FINAL_NORM = "bn"

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def pre_bn_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor | None]:
        # zero-padding to k×k under the unit's padding equals the smaller kernel under its own padding/crop
        return kernels.pad_kernel_to(self.conv.weight, self.geometry.kernel_size), None

    def native_conv(self) -> tuple[Tensor, tuple[int, int], tuple[int, int]] | None:
        if tuple(self.conv.weight.shape[-2:]) == self.geometry.kernel_size:
            return None
        return self.conv.weight, tuple(self.conv.padding), self.crop

    def affine(self) -> tuple[Tensor, Tensor]:
        kernel, bias = kernels.fuse_bn(self.conv.weight, self.bn, type(self).__name__)
        return kernels.pad_kernel_to(kernel, self.geometry.kernel_size), bias


class IdentityBN(Branch):
    """BN on the unit's input (RepVGG / MobileOne skip branch); legal only where the unit keeps the shape."""

    def __init__(self, geometry: ConvGeometry) -> None:
        super().__init__()
        if not geometry.identity_is_legal:
            raise ValueError(f"an identity branch needs in==out channels, stride 1 and same padding: {geometry}")
        self.geometry = geometry
        self.bn = nn.BatchNorm2d(geometry.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)

    FINAL_NORM = "bn"

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def pre_bn_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor | None]:
        g = self.geometry
        return kernels.identity_kernel(g.out_channels, g.groups, g.kernel_size, like=self.bn.weight), None

    def affine(self) -> tuple[Tensor, Tensor]:
        g = self.geometry
        scale, shift = kernels.bn_eval_affine(self.bn, type(self).__name__)
        eye = kernels.identity_kernel(g.out_channels, g.groups, g.kernel_size, like=scale)
        return eye * scale.reshape(-1, 1, 1, 1), shift


class _OneByOneThen(Branch):
    """Shared front of the sequential branches: 1×1 conv (groups kept) -> BN-and-pad with the unit padding."""

    def __init__(self, geometry: ConvGeometry, hidden: int, identity_init: bool) -> None:
        super().__init__()
        if hidden % geometry.groups:
            raise ValueError(f"hidden width {hidden} must be divisible by groups={geometry.groups}")
        self.geometry = geometry
        self.hidden = hidden
        self.conv1 = nn.Conv2d(geometry.in_channels, hidden, 1, groups=geometry.groups, bias=False)
        # DBB's identity-based 1×1: the kernel is ``weight + I`` with weight starting at zero, so the branch
        # starts as a plain k×k conv of its input and learns a correction.
        self.identity_init = identity_init and hidden == geometry.in_channels
        if self.identity_init:
            nn.init.zeros_(self.conv1.weight)
            self.conv1.nsrep_keep_init = True
            eye = kernels.identity_kernel(hidden, geometry.groups, (1, 1), like=self.conv1.weight)
            self.register_buffer("eye", eye, persistent=False)
        self.bn1 = BNAndPad(hidden, pad=geometry.padding)

    def kernel1(self) -> Tensor:
        return self.conv1.weight + self.eye if self.identity_init else self.conv1.weight

    def front(self, x: Tensor) -> Tensor:
        return self.bn1(F.conv2d(x, self.kernel1(), groups=self.geometry.groups))

    def folded_front(self) -> tuple[Tensor, Tensor]:
        return kernels.fuse_bn(self.kernel1(), self.bn1, type(self).__name__)

    needs_moments = True

    FINAL_NORM = "bn2"

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def front_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor]:
        """The 1×1 conv and its BN as ``(kernel, bias)``; in training the BN's batch statistics are
        computed from the input's moments (exactly those of the 1×1 output) and its running stats updated."""
        if moments is None:
            return self.folded_front()
        g = self.geometry.groups
        k1 = self.kernel1()
        w = k1.reshape(g, self.hidden // g, -1)  # (g, h, c)
        mean_x = moments.mean.reshape(g, -1)
        cov = moments.second - mean_x.unsqueeze(2) * mean_x.unsqueeze(1)
        mean_h = torch.einsum("ghc,gc->gh", w, mean_x).reshape(-1)
        var_h = torch.einsum("ghc,gcd,ghd->gh", w, cov, w).reshape(-1).clamp_min(0)
        if self.bn1.track_running_stats and self.bn1.running_mean is not None:
            self.bn1._update_running_stats(mean_h.detach(), var_h.detach(), moments.count)
        scale, shift = kernels.bn_affine(mean_h, var_h, self.bn1.weight, self.bn1.bias, self.bn1.eps)
        return k1 * scale.reshape(-1, 1, 1, 1), shift


class ConvBNConvBN(_OneByOneThen):
    """1×1 conv -> BN-and-pad -> k×k conv -> BN (DBB's 1×1-k×k branch; the NS block's 2× and 4× branches)."""

    def __init__(self, geometry: ConvGeometry, hidden: int, identity_init: bool = False) -> None:
        super().__init__(geometry, hidden, identity_init)
        self.conv2 = nn.Conv2d(
            hidden,
            geometry.out_channels,
            geometry.kernel_size,
            stride=geometry.stride,
            dilation=geometry.dilation,
            groups=geometry.groups,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(geometry.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.front(x)))

    def affine(self) -> tuple[Tensor, Tensor]:
        k1, b1 = self.folded_front()
        k2, b2 = kernels.fuse_bn(self.conv2.weight, self.bn2, type(self).__name__)
        return kernels.compose_1x1_kxk(k1, b1, k2, b2, self.geometry.groups)

    def pre_bn_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor | None]:
        # one C_in -> C_out k×k conv instead of the wide hidden map: same forward, same gradients
        k1, b1 = self.front_affine(moments)
        zero = torch.zeros((), dtype=k1.dtype, device=k1.device)
        return kernels.compose_1x1_kxk(k1, b1, self.conv2.weight, zero, self.geometry.groups)


class ConvBNAvgBN(_OneByOneThen):
    """1×1 conv -> BN-and-pad -> k×k average pool -> BN (DBB's pooling branch; the NS block's strided 1×1)."""

    def __init__(self, geometry: ConvGeometry) -> None:
        super().__init__(geometry, hidden=geometry.out_channels, identity_init=False)
        self.bn2 = nn.BatchNorm2d(geometry.out_channels)

    def _avg_kernel(self, like: Tensor) -> Tensor:
        g = self.geometry
        if g.kernel_size[0] != g.kernel_size[1]:
            raise ValueError(f"the average-pool branch needs a square kernel, got {g.kernel_size}")
        return kernels.avg_pool_kernel(g.out_channels, g.groups, g.kernel_size[0], like=like)

    def forward(self, x: Tensor) -> Tensor:
        g = self.geometry
        y = self.front(x)
        if g.dilation == (1, 1):
            y = F.avg_pool2d(y, g.kernel_size, stride=g.stride)
        else:  # a dilated average is not a PyTorch pool, but it is a fixed depthwise conv
            kernel = y.new_full((g.out_channels, 1, *g.kernel_size), 1.0 / (g.kernel_size[0] * g.kernel_size[1]))
            y = F.conv2d(y, kernel, stride=g.stride, dilation=g.dilation, groups=g.out_channels)
        return self.bn2(y)

    def affine(self) -> tuple[Tensor, Tensor]:
        k1, b1 = self.folded_front()
        scale, shift = kernels.bn_eval_affine(self.bn2, type(self).__name__)
        avg = self._avg_kernel(k1) * scale.reshape(-1, 1, 1, 1)
        return kernels.compose_1x1_kxk(k1, b1, avg, shift, self.geometry.groups)

    def pre_bn_affine(self, moments: InputMoments | None) -> tuple[Tensor, Tensor | None]:
        k1, b1 = self.front_affine(moments)
        zero = torch.zeros((), dtype=k1.dtype, device=k1.device)
        return kernels.compose_1x1_kxk(k1, b1, self._avg_kernel(k1), zero, self.geometry.groups)
