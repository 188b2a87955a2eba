"""The core layers, one concept per module; everything above (models, convert, train, tools) builds on these.

- ``geometry``: the conv a unit replaces; ``moments``: batch moments of a unit's input.
- ``kernels``: all fold math (BatchNorm, padding, identity, average pooling, 1×1-then-k×k composition).
- ``branches``: the parallel paths and what each folds to; ``families``: which branches a unit family has.
- ``connectivity``: how branch outputs pair with input streams (block, naive, ns) and partitions.
- ``fused``: the fast path that runs every conv branch of a unit in one call.
- ``unit``: ``UnitConfig`` and ``RepUnit``, the base of ``conv.RepConv2d`` and ``linear.RepLinear``;
  ``qa``: the quantization-aware conv unit.
- ``streams``: entering, adding and summing stream sets; ``guided``: guided activations and max pooling;
  ``activations``: the one activation table.
- ``foldable``: the ``Foldable`` contract; ``bn_init``: where the branches' BN scales start.
"""
