"""Image data read from local disk (never downloaded), the decode-once cache, and batched augmentation.

``load_data(source)`` opens CIFAR-10/100 python folders, ImageNet-style folders, scikit-learn's digits and the
synthetic set (:mod:`nsrep.data.datasets`); :mod:`nsrep.data.augment` builds the on-device batch transforms.
"""

from nsrep.data.datasets import ImageData, load_data

__all__ = ["ImageData", "load_data"]
