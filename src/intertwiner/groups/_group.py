"""IntertwinerGroup: a matrix group family coupled with the homomorphism phi.

For an activation sigma with intertwiner group G, every A in G satisfies
``sigma(A x) = phi(A) sigma(x)``. phi is a ``Phi`` (``groups._phi``):
``IdentityPhi`` (phi(A) = A), ``AbsPhi`` (entrywise absolute value) and ``PowerPhi(d)`` (entrywise
d-th power).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups._elements import GroupElement, MonomialElement
from intertwiner.groups._families import GENERAL_LINEAR, Family, family
from intertwiner.groups._kinds import ActionKind
from intertwiner.groups._phi import IDENTITY_PHI, Phi, as_phi

#: The old in-memory phi forms, still accepted wherever a phi is (``as_phi`` reads them).
PhiKind = str | tuple[str, float]


def normalize_phi(phi: Any) -> Phi:
    """Canonical phi: a ``Phi`` (equal to its stored form ``"identity"``, ``"abs"`` or
    ``("power", d)``); power 1 is the identity."""
    return as_phi(phi)


def phi_label(phi: Any) -> str:
    return as_phi(phi).label


@dataclass(frozen=True, eq=False)
class IntertwinerGroup:
    """A group family together with phi; ``name`` is e.g. ``"G_ReLU"``."""

    family: Family
    #: A ``Phi`` (a stored form given here is read by ``as_phi``).
    phi_kind: Phi = IDENTITY_PHI
    name: str = ""
    #: For groups made by ``discover``: the numerical evidence used to classify the function.
    evidence: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", family(self.family))
        phi = as_phi(self.phi_kind)
        object.__setattr__(self, "phi_kind", phi)
        phi.check_family(self.family)
        if not self.name:
            object.__setattr__(self, "name", f"G[{self.family.name}, {phi.label}]")

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
        return self.phi_kind.apply(element)

    def scalar_factor(self, kind: Any, element: GroupElement) -> float:
        """The number a scalar action ``kind`` (``ActionKind.SCALAR_*``) multiplies a one-number
        parameter by under ``element``: a power of its common factor c (``A = c P``). For a
        monomial element whose scales differ (outside ``c P``, applied on purpose to show that it
        changes the function) c is their geometric mean; a dense element has no such factor."""
        kind = ActionKind(kind)
        if not kind.scalar:
            raise UnsupportedGroupError(f"action kind {kind.value!r} does not move a number")
        if not isinstance(element, MonomialElement):
            raise UnsupportedGroupError(
                f"a scalar action ({kind.value}) needs a monomial element c P with one factor "
                f"c > 0; got a dense {element.n} x {element.n} matrix"
            )

        def common(m: MonomialElement) -> float:
            return float(torch.exp(torch.log(m.scale.double().abs()).mean()))

        c = common(element)
        if kind is ActionKind.SCALAR_A:
            return c
        c_phi = common(self.phi(element))
        return c_phi if kind is ActionKind.SCALAR_PHI else c / c_phi

    @property
    def phi_family(self) -> Family:
        """The family of ``phi(A)``: how the activation *outputs* move (what a metric on
        representations or a stitch after the activation must quotient out)."""
        return self.family.image(self.phi_kind)

    @property
    def phi_label(self) -> str:
        return self.phi_kind.label

    @property
    def linear(self) -> bool:
        """The group of a linear function (a scalar multiple): every invertible matrix, with
        phi the identity, so the function commutes with every map of its input."""
        return self.family is GENERAL_LINEAR and self.phi_kind.is_identity

    def same_as(self, other: IntertwinerGroup) -> bool:
        """Same family and same phi (names may differ)."""
        return self.family == other.family and self.phi_kind == other.phi_kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntertwinerGroup) and self.same_as(other)

    def __hash__(self) -> int:
        return hash((self.family.name, self.phi_kind))

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family.name, "phi": self.phi_kind.to_json()}


#: What functions taking "a group" accept: a family name or alias, a ``Family``, or an
#: ``IntertwinerGroup`` (whose phi-image family acts on representations).
GroupLike = str | Family | IntertwinerGroup


def fixed_point_family(phi: Any) -> str:
    """Name of the largest family of A with phi(A) = A (``phi``: a ``Phi`` or stored form; None
    means identity). Objects: ``as_phi(phi).fixed_points()``."""
    return as_phi(phi).fixed_points().name


def phi_preimage(phi: Any, target: str | Family) -> str:
    """Name of the largest family of monomial A with phi(A) in ``target``. Objects:
    ``as_phi(phi).preimage(target)``."""
    return as_phi(phi).preimage(target).name
