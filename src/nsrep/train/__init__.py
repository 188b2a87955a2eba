"""Training: data sets read from local disk, batched augmentation, recipes and the training loop.

``nsrep.train.train(TrainConfig(...), run_dir)`` is what ``nsrep train`` runs.
"""

from nsrep.data.datasets import ImageData, load_data
from nsrep.train.config import TrainConfig, list_recipes, load_recipe
from nsrep.train.trainer import EvalResult, TrainResult, evaluate, train

__all__ = [
    "EvalResult",
    "ImageData",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "list_recipes",
    "load_data",
    "load_recipe",
    "train",
]
