"""The one re-parameterization protocol: a training-form module that folds into its plain deploy module."""

from __future__ import annotations

from torch import nn

__all__ = ["Foldable"]


class Foldable(nn.Module):
    """Base of every module that :func:`nsrep.reparameterize` swaps: ``fold()`` returns a new plain module.

    Units fold to ``nn.Conv2d``/``nn.Linear``, guided ops to their plain op, stream plumbing to identities.
    ``fold`` never changes ``self`` (one verb, one direction: callers may fold a live training model).
    """

    def fold(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not implement fold()")
