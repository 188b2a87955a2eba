"""Families: which branches a unit has, as a function of the conv it replaces (docs/architecture.md).

Each family is a function ``(geometry, num_branches) -> list[Branch]``. Every family handles stride,
padding, dilation and groups; 1×1 units get the family's pointwise form (documented per family below).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nsrep.nn.branches import Branch, ConvBN, ConvBNAvgBN, ConvBNConvBN, IdentityBN
from nsrep.nn.geometry import ConvGeometry
from nsrep.validation import check_choice

__all__ = [
    "ALL_FAMILIES",
    "DEFAULT_NUM_BRANCHES",
    "FAMILIES",
    "QA_FAMILIES",
    "build_branches",
    "norm_placement",
    "resolve_num_branches",
    "strip_final_norms",
]

FamilyBuilder = Callable[[ConvGeometry, int], list[Branch]]

# K for the families that take it: MobileOne's over-parameterized k×k count, ConvK's parallel k×k count, and
# the parallel 1×1 branches of the NS block's 1×1 units (4, so 1×1 and k×k units emit the same streams).
DEFAULT_NUM_BRANCHES = {"mobileone": 4, "convK": 4, "ns": 4}


def _plain(g: ConvGeometry, k: int) -> list[Branch]:
    return [ConvBN(g)]


def _acnet(g: ConvGeometry, k: int) -> list[Branch]:
    """k×k + 1×k + k×1 (ACNet). A 1×1 unit has no asymmetric kernels: it stays one 1×1 conv+BN."""
    kh, kw = g.kernel_size
    branches: list[Branch] = [ConvBN(g)]
    if kh > 1:
        branches.append(ConvBN(g, (1, kw)))
    if kw > 1:
        branches.append(ConvBN(g, (kh, 1)))
    return branches


def _dbb(g: ConvGeometry, k: int) -> list[Branch]:
    """k×k; 1×1; 1×1->avg k×k; 1×1->k×k (identity-initialised 1×1, hidden = C_in, 2·C_in if depthwise).

    A 1×1 unit keeps the two branches that stay distinct: 1×1 and 1×1->1×1.
    """
    depthwise = g.groups == g.in_channels and g.groups == g.out_channels and g.groups > 1
    hidden = 2 * g.in_channels if depthwise else g.in_channels
    if g.is_pointwise:
        return [ConvBN(g), ConvBNConvBN(g, hidden, identity_init=True)]
    return [ConvBN(g), ConvBN(g, (1, 1)), ConvBNAvgBN(g), ConvBNConvBN(g, hidden, identity_init=True)]


def _repvgg(g: ConvGeometry, k: int) -> list[Branch]:
    """k×k + 1×1 + identity-BN (identity only where in==out, stride 1). A 1×1 unit: 1×1 + identity."""
    branches: list[Branch] = [ConvBN(g)]
    if not g.is_pointwise:
        branches.append(ConvBN(g, (1, 1)))
    if g.identity_is_legal:
        branches.append(IdentityBN(g))
    return branches


def _mobileone(g: ConvGeometry, k: int) -> list[Branch]:
    """K over-parameterized k×k conv+BN, one 1×1 "scale" conv+BN (k×k units only), identity-BN where legal."""
    branches: list[Branch] = [ConvBN(g) for _ in range(k)]
    if not g.is_pointwise:
        branches.append(ConvBN(g, (1, 1)))
    if g.identity_is_legal:
        branches.append(IdentityBN(g))
    return branches


def _convk(g: ConvGeometry, k: int) -> list[Branch]:
    """K parallel k×k conv+BN (the paper's Table 7, "Conv×K")."""
    return [ConvBN(g) for _ in range(k)]


def _ns(g: ConvGeometry, k: int) -> list[Branch]:
    """The paper's own block: k×k; 1×1 (1×1->avg when strided); 1×1->k×k at 2× and 4× hidden width.

    1×1 units get K parallel 1×1 conv+BN.
    """
    if g.is_pointwise:
        return [ConvBN(g) for _ in range(k)]
    strided = g.stride != (1, 1)
    return [
        ConvBN(g),
        ConvBNAvgBN(g) if strided else ConvBN(g, (1, 1)),
        ConvBNConvBN(g, 2 * g.in_channels),
        ConvBNConvBN(g, 4 * g.in_channels),
    ]


FAMILY_BUILDERS: dict[str, FamilyBuilder] = {
    "plain": _plain,
    "acnet": _acnet,
    "dbb": _dbb,
    "repvgg": _repvgg,
    "mobileone": _mobileone,
    "convK": _convk,
    "ns": _ns,
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_BUILDERS)
# Quantization-aware variants (nsrep.nn.qa, units built by QARepConv2d): a family's branches with only the first
# branch's final BN kept, plus one BN after the sum. QA family -> the family whose branches it keeps.
QA_FAMILIES = {"qarepvgg": "repvgg", "qadbb": "dbb"}
ALL_FAMILIES: tuple[str, ...] = FAMILIES + tuple(QA_FAMILIES)


def norm_placement(family: str) -> str:
    """Where a family's normalisation sits: ``"branches"`` (each branch ends with its BN) or ``"sum"`` (a QA
    family: only the first branch keeps its final BN and one BN follows the sum; nsrep.nn.qa.QARepConv2d)."""
    check_choice("family", family, ALL_FAMILIES)
    return "sum" if family in QA_FAMILIES else "branches"


def strip_final_norms(branches: Sequence[Branch]) -> list[Branch]:
    """The branches with every final BN but the first branch's (the k×k conv) replaced by NoNorm."""
    for branch in branches[1:]:
        branch.drop_final_norm()
    return list(branches)


def _qa_branches(family: str, g: ConvGeometry, k: int) -> list[Branch]:
    return strip_final_norms(FAMILY_BUILDERS[QA_FAMILIES[family]](g, k))


def resolve_num_branches(family: str, num_branches: int | None) -> int:
    """The K a family uses: the user's value where the family takes one, its default otherwise."""
    check_choice("family", family, ALL_FAMILIES)
    if num_branches is None:
        return DEFAULT_NUM_BRANCHES.get(family, 1)
    if family not in DEFAULT_NUM_BRANCHES:
        raise ValueError(
            f"num_branches={num_branches} does not apply to family {family!r}; "
            f"it applies to: {', '.join(DEFAULT_NUM_BRANCHES)}"
        )
    if num_branches < 1:
        raise ValueError(f"num_branches must be >= 1, got {num_branches}")
    return num_branches


def build_branches(family: str, geometry: ConvGeometry, num_branches: int | None = None) -> list[Branch]:
    """The branches of a ``family`` unit for ``geometry`` (K from ``num_branches`` or the family default)."""
    k = resolve_num_branches(family, num_branches)
    if family in QA_FAMILIES:
        return _qa_branches(family, geometry, k)
    return FAMILY_BUILDERS[family](geometry, k)
