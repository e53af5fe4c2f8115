"""Intertwiner groups of activations: families, structured elements, phi, the table, discovery.

For an elementwise activation sigma, G_sigma is the group of invertible A with
``sigma(A x) = phi(A) sigma(x)`` for all x. ReLU: permutations times positive scalings; tanh: signed
permutations; GELU: permutations; identity: GL(n).
"""

from intertwiner.groups._activations import (
    PAPER_ROWS,
    RBF,
    TABLE_ROWS,
    Abs,
    Elementwise,
    Power,
    activation_module,
    activation_name,
    for_activation,
)
from intertwiner.groups._canonical import KeyTerm, canonical_element, orbit_invariants, stable_order
from intertwiner.groups._discovery import DiscoveryEvidence, discover
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement
from intertwiner.groups._families import (
    ALIASES,
    FAMILIES,
    GENERAL_LINEAR,
    LARGER,
    MONOMIAL,
    ORTHOGONAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    SIGNED_PERMUTATION,
    Family,
    GeneralLinear,
    Monomial,
    Orthogonal,
    Permutation,
    PositiveMonomial,
    SignedPermutation,
    UnknownFamilyError,
    best_assignment,
    family,
    intersect,
    is_subgroup,
)
from intertwiner.groups._fitting import (
    FitTerm,
    exponents,
    fit_dense_batch,
    fit_element,
    pair_costs,
)
from intertwiner.groups._group import GroupLike, IntertwinerGroup, fixed_point_family, phi_preimage
from intertwiner.groups._homogeneity import homogeneity_defect, homogeneity_profile
from intertwiner.groups._kinds import ActionKind, Mode
from intertwiner.groups._lie import exp_element, exp_tensor, lie_shape
from intertwiner.groups._verify import verify

__all__ = [
    "ActionKind",
    "Mode",
    "ALIASES",
    "Abs",
    "DenseElement",
    "DiscoveryEvidence",
    "Elementwise",
    "FAMILIES",
    "GENERAL_LINEAR",
    "MONOMIAL",
    "ORTHOGONAL",
    "PERMUTATION",
    "POSITIVE_MONOMIAL",
    "SIGNED_PERMUTATION",
    "Family",
    "FitTerm",
    "GeneralLinear",
    "GroupElement",
    "GroupLike",
    "IntertwinerGroup",
    "KeyTerm",
    "LARGER",
    "Monomial",
    "MonomialElement",
    "Orthogonal",
    "PAPER_ROWS",
    "Permutation",
    "PositiveMonomial",
    "Power",
    "RBF",
    "SignedPermutation",
    "TABLE_ROWS",
    "UnknownFamilyError",
    "activation_module",
    "fixed_point_family",
    "phi_preimage",
    "activation_name",
    "best_assignment",
    "canonical_element",
    "discover",
    "exp_element",
    "exp_tensor",
    "exponents",
    "family",
    "fit_dense_batch",
    "fit_element",
    "for_activation",
    "homogeneity_defect",
    "homogeneity_profile",
    "intersect",
    "pair_costs",
    "is_subgroup",
    "lie_shape",
    "orbit_invariants",
    "stable_order",
    "verify",
]
