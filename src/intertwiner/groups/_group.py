"""IntertwinerGroup: a matrix group family coupled with the homomorphism phi.

For an activation sigma with intertwiner group G, every A in G satisfies
``sigma(A x) = phi(A) sigma(x)``. phi kinds: ``"identity"`` (phi(A) = A), ``"abs"`` (entrywise
absolute value) and ``("power", d)`` (entrywise d-th power).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement
from intertwiner.groups._families import GENERAL_LINEAR, Family, family

PhiKind = str | tuple[str, float]


def normalize_phi(phi: Any) -> PhiKind:
    """Canonical phi kind: ``"identity"``, ``"abs"`` or ``("power", d)``; power 1 is identity."""
    if phi in ("identity", "abs"):
        return phi
    if isinstance(phi, (tuple, list)) and len(phi) == 2 and phi[0] == "power":
        d = float(phi[1])
        if d == 1.0:
            return "identity"
        if d == 0.0:
            raise UnsupportedGroupError("phi = A^0 is not invertible; a power phi needs d != 0")
        return ("power", int(d) if d.is_integer() else d)
    raise UnsupportedGroupError(f"unknown phi kind {phi!r}; use 'identity', 'abs' or ('power', d)")


def phi_label(phi: PhiKind) -> str:
    if phi == "identity":
        return "A"
    if phi == "abs":
        return "abs(A)"
    return f"A.^{phi[1]}"


@dataclass(frozen=True, eq=False)
class IntertwinerGroup:
    """A group family together with phi; ``name`` is e.g. ``"G_ReLU"``."""

    family: Family
    phi_kind: PhiKind = "identity"
    name: str = ""
    #: For groups made by ``discover``: the numerical evidence used to classify the function.
    evidence: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", family(self.family))
        phi = normalize_phi(self.phi_kind)
        object.__setattr__(self, "phi_kind", phi)
        if isinstance(phi, tuple) and not self.family.monomial:
            raise UnsupportedGroupError(
                f"phi = {phi_label(phi)} is only defined for monomial families, not "
                f"{self.family.name}"
            )
        if (
            isinstance(phi, tuple)
            and not float(phi[1]).is_integer()
            and self.family.scales != "positive"
        ):
            raise UnsupportedGroupError(
                f"a non-integer power phi (d = {phi[1]}) needs positive scales: family "
                f"positive_monomial, not {self.family.name}"
            )
        if not self.name:
            object.__setattr__(self, "name", f"G[{self.family.name}, {phi_label(phi)}]")

    # -- delegation to the family ------------------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> GroupElement:
        return self.family.sample(n, generator=generator, dtype=dtype)

    def identity(self, n: int, dtype: torch.dtype = torch.float64) -> GroupElement:
        return self.family.identity(n, dtype=dtype)

    def contains(self, matrix: torch.Tensor | GroupElement, atol: float = 1e-8) -> bool:
        return self.family.contains(matrix, atol=atol)

    def project(self, matrix: torch.Tensor) -> GroupElement:
        return self.family.project(matrix)

    # -- phi --------------------------------------------------------------------------------
    def phi(self, element: GroupElement) -> GroupElement:
        """The matrix phi(A) that acts on the activation side: sigma(A x) = phi(A) sigma(x)."""
        kind = self.phi_kind
        if kind == "identity":
            return element
        if isinstance(element, MonomialElement):
            if kind == "abs":
                return MonomialElement(element.perm, element.scale.abs())
            return MonomialElement(element.perm, element.scale ** kind[1])
        m = element.matrix()
        if kind == "abs":
            return DenseElement(m.abs())
        return DenseElement(m ** kind[1])

    @property
    def phi_family(self) -> Family:
        """The family of ``phi(A)``: how the activation *outputs* move (what a metric on
        representations or a stitch after the activation must quotient out)."""
        return self.family.image(self.phi_kind)

    @property
    def phi_label(self) -> str:
        return phi_label(self.phi_kind)

    @property
    def linear(self) -> bool:
        """The group of a linear function (a scalar multiple): every invertible matrix, with
        phi the identity, so the function commutes with every map of its input."""
        return self.family is GENERAL_LINEAR and self.phi_kind == "identity"

    def same_as(self, other: IntertwinerGroup) -> bool:
        """Same family and same phi (names may differ)."""
        return self.family == other.family and self.phi_kind == other.phi_kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntertwinerGroup) and self.same_as(other)

    def __hash__(self) -> int:
        return hash((self.family.name, self.phi_kind))

    def to_dict(self) -> dict:
        phi = self.phi_kind if isinstance(self.phi_kind, str) else list(self.phi_kind)
        return {"name": self.name, "family": self.family.name, "phi": phi}


#: What functions taking "a group" accept: a family name or alias, a ``Family``, or an
#: ``IntertwinerGroup`` (whose phi-image family acts on representations).
GroupLike = str | Family | IntertwinerGroup


def fixed_point_family(phi: Any) -> str:
    """The largest family of A with phi(A) = A (``phi``: a phi kind; None means identity): what a
    residual stream needs where an activation output is added to a pre-activation tensor."""
    if phi in (None, "identity"):
        return "general_linear"
    if phi == "abs":
        return "positive_monomial"
    d = phi[1]
    return "signed_permutation" if int(d) % 2 else "permutation"


def phi_preimage(phi: Any, target: str | Family) -> str:
    """The largest family of monomial A with phi(A) in ``target``: the restriction on a site whose
    activation outputs (moved by phi(A)) must be moved by a matrix of ``target``."""
    target = family(target).name
    if phi in (None, "identity"):
        return target
    # Conditions on the scales s of A; phi acts on scales by |s| or s^d.
    want = {
        "permutation": "one",
        "signed_permutation": "abs_one",
        "orthogonal": "abs_one",
        "positive_monomial": "positive",
    }.get(target)
    if want is None:  # monomial, general_linear: every monomial phi(A) qualifies
        return "monomial"
    if want == "abs_one":
        return "signed_permutation"
    even = phi == "abs" or int(phi[1]) % 2 == 0
    if want == "one":
        return "signed_permutation" if even else "permutation"
    return "monomial" if even else "positive_monomial"  # positive scales
