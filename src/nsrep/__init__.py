"""nsrep: structural re-parameterization with Neural Substitution (branch-level connectivity).

Train networks whose convolutions have several parallel branches connected at the branch level, then fold
every branch into one plain convolution for inference.
"""

from nsrep.connectivity import CONNECTIVITIES
from nsrep.convert import convert, fold_into
from nsrep.families import FAMILIES
from nsrep.foldable import Foldable
from nsrep.guided import GuidedMaxPool2d, GuidedReLU, guided_activation
from nsrep.heads import create_head
from nsrep.linear import RepLinear
from nsrep.models import create_model, list_models, model_options
from nsrep.reparam import reparameterize, verify_equivalence
from nsrep.units import RepConv2d, UnitConfig

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
