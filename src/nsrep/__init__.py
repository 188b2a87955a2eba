"""nsrep: structural re-parameterization with Neural Substitution (branch-level connectivity).

Train networks whose convolutions have several parallel branches connected at the branch level, then fold
every branch into one plain convolution for inference.
"""

from nsrep.convert import convert, fold_into
from nsrep.models import create_model, list_models, model_options
from nsrep.models.heads import create_head
from nsrep.nn.activations import guided_activation
from nsrep.nn.connectivity import CONNECTIVITIES
from nsrep.nn.conv import RepConv2d, UnitConfig
from nsrep.nn.families import FAMILIES
from nsrep.nn.foldable import Foldable
from nsrep.nn.guided import GuidedMaxPool2d, GuidedReLU
from nsrep.nn.linear import RepLinear
from nsrep.reparam import reparameterize, verify_equivalence

__version__ = "0.1.0"

__all__ = [
    "CONNECTIVITIES",
    "FAMILIES",
    "Foldable",
    "GuidedMaxPool2d",
    "GuidedReLU",
    "RepConv2d",
    "RepLinear",
    "UnitConfig",
    "convert",
    "create_head",
    "create_model",
    "fold_into",
    "guided_activation",
    "list_models",
    "model_options",
    "reparameterize",
    "verify_equivalence",
]
