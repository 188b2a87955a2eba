"""A backbone as torchvision's detectors take it: an ordered dict of feature maps and ``out_channels``.

``FasterRCNN``/``MaskRCNN`` call ``backbone(images)`` and expect an ``OrderedDict[str, Tensor]`` (or one tensor)
and read ``backbone.out_channels``. A converted network (``nsrep.convert`` of a timm ``features_only`` model,
of a torchvision trunk) or an nsrep feature backbone returns a list of maps instead; :class:`DetectionBackbone`
adapts it without changing what it computes, so ``verify_equivalence`` and ``reparameterize`` work on the whole
detector. torchvision itself is not needed here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["DetectionBackbone"]


def _as_maps(out) -> OrderedDict[str, Tensor]:
    if isinstance(out, Tensor):
        return OrderedDict([("0", out)])
    if isinstance(out, Mapping):
        return OrderedDict((str(k), v) for k, v in out.items())
    if isinstance(out, Sequence):
        return OrderedDict((str(i), v) for i, v in enumerate(out))
    raise TypeError(f"a detection backbone returns a tensor, a list or a dict of maps, got {type(out).__name__}")


class DetectionBackbone(nn.Module):
    """``body``'s feature maps as ``OrderedDict`` ``{"0": ..., "1": ...}`` (dict keys kept), with ``out_channels``.

    ``out_channels``: the channels of every map (torchvision's detectors need one number); when omitted it is
    read from one eval-mode run on ``example_input`` and must then be the same for every map (``ValueError``
    otherwise: put a ``torchvision.ops.FeaturePyramidNetwork`` after the body).
    """

    def __init__(self, body: nn.Module, out_channels: int | None = None, example_input: Tensor | None = None) -> None:
        super().__init__()
        self.body = body
        if out_channels is None:
            if example_input is None:
                raise ValueError("DetectionBackbone needs out_channels or an example_input to read it from")
            was = body.training
            with torch.no_grad():
                channels = sorted({m.shape[1] for m in _as_maps(body.eval()(example_input)).values()})
            body.train(was)
            if len(channels) != 1:
                raise ValueError(
                    f"the maps have {channels} channels; a detector head needs one count (add a feature pyramid)"
                )
            out_channels = channels[0]
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return _as_maps(self.body(x))
