"""The layer factory: block code asks it for units, activations, pools and adds, and never looks at the
family or the connectivity itself. One model definition per architecture builds every variant this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from nsrep.nn.activations import guided_activation, plain_activation
from nsrep.nn.conv import UnitConfig, make_deploy_conv
from nsrep.nn.drop_path import DropPath
from nsrep.nn.geometry import ConvGeometry
from nsrep.nn.guided import GuidedMaxPool2d
from nsrep.nn.qa import conv_unit_class
from nsrep.nn.streams import Add, StreamAdd, StreamEntry, StreamSum

__all__ = ["LayerFactory"]


@dataclass(frozen=True)
class LayerFactory:
    """Builds the layers of one network variant: training form (units on stream sets) or ``deploy`` form."""

    unit: UnitConfig = field(default_factory=UnitConfig)
    deploy: bool = False

    def plain(self) -> LayerFactory:
        """The same factory with plain one-branch block units (for a stem kept plain)."""
        return replace(self, unit=replace(self.unit, family="plain", connectivity="block", num_branches=None))

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        *,
        streams: int,
    ) -> nn.Module:
        """A unit with ``streams`` input streams (training form) or its deployed ``nn.Conv2d``."""
        if self.deploy:
            geometry = ConvGeometry.make(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
            return make_deploy_conv(geometry)
        return conv_unit_class(self.unit.family)(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            unit=self.unit,
            in_streams=streams,
        )

    def act(self, name: str = "relu") -> nn.Module:
        return plain_activation(name) if self.deploy else guided_activation(name)

    def max_pool(self, kernel_size: int, stride: int, padding: int = 0) -> nn.Module:
        if self.deploy:
            return nn.MaxPool2d(kernel_size, stride, padding)
        return GuidedMaxPool2d(kernel_size, stride, padding)

    def add(self, a_streams: int, b_streams: int) -> nn.Module:
        """Residual add of a main path with ``a_streams`` and a shortcut with ``b_streams`` streams."""
        return Add() if self.deploy else StreamAdd(a_streams, b_streams, self.unit.max_streams)

    def drop_path(self, rate: float) -> nn.Module:
        """Stochastic depth on a residual branch's stream set (one mask per sample, shared by every stream);
        the identity when deployed or at rate 0."""
        return nn.Identity() if self.deploy or rate == 0.0 else DropPath(rate, batch_dim=1)

    def entry(self) -> nn.Module:
        """Image batch -> one-stream set (identity when deployed)."""
        return nn.Identity() if self.deploy else StreamEntry()

    def merge(self) -> nn.Module:
        """Sum the streams before the head (identity when deployed)."""
        return nn.Identity() if self.deploy else StreamSum()
