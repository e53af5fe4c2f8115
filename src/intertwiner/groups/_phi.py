"""phi as types: how an element A of an activation's group moves the activation's outputs.

For an activation sigma with intertwiner group G, ``sigma(A x) = phi(A) sigma(x)`` for A in G.
Three kinds occur: ``IdentityPhi`` (phi(A) = A), ``AbsPhi`` (entrywise |A|) and ``PowerPhi(d)``
(entrywise A^d, d != 0, 1). Callers ask a phi what they need (``forgets_signs``, ``apply``,
``fixed_points``, ``preimage``, ``exponents``) and never compare its name.

Names live at the edges only: ``as_phi`` reads the stored forms (``"identity"``, ``"abs"``,
``("power", d)`` or the JSON list ``["power", d]``) and ``to_json`` writes them back. For
compatibility a phi also equals (and hashes like) its stored form, so older specs, JSON and code
that compared strings read the same values.
"""

from __future__ import annotations

from typing import Any

import torch

from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement
from intertwiner.groups._families import (
    GENERAL_LINEAR,
    MONOMIAL,
    ORTHOGONAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    SCALED_PERMUTATION,
    SIGNED_PERMUTATION,
    Family,
    family,
)

#: The names phi kinds are stored under (``PowerPhi`` is stored as ``("power", d)``).
PHI_NAMES = ("identity", "abs", "power")


class Phi:
    """A homomorphism phi on a monomial (or, for the identity, any) matrix group."""

    #: Stored name: ``"identity"``, ``"abs"`` or ``"power"``.
    name: str = ""
    #: phi(A) loses the signs of A's scales (abs, even and non-integer powers): a signed family
    #: maps onto its unsigned subgroup (``Family.image``).
    forgets_signs: bool = False
    #: phi(A) = A for every A.
    is_identity: bool = False

    def apply_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """phi on the diagonal scales of a monomial element (and entrywise on a dense matrix)."""
        raise NotImplementedError

    def apply(self, element: GroupElement) -> GroupElement:
        """The element phi(A), structured like A."""
        if self.is_identity:
            return element
        if isinstance(element, MonomialElement):
            return MonomialElement(element.perm, self.apply_scale(element.scale))
        return DenseElement(self.apply_scale(element.matrix()))

    @property
    def label(self) -> str:
        """Printed form: ``A``, ``abs(A)``, ``A.^d``."""
        raise NotImplementedError

    def exponents(self) -> tuple[float, int]:
        """``(p, q)``: phi scales a row moved by scale ``s = sign * exp(u)`` by
        ``sign^q * exp(p u)``."""
        raise NotImplementedError

    def fixed_points(self) -> Family:
        """The largest family of A with phi(A) = A: what a residual stream needs where an
        activation output is added to a pre-activation tensor."""
        raise NotImplementedError

    def preimage(self, target: str | Family) -> Family:
        """The largest family of (monomial) A with phi(A) in ``target``: the restriction on a site
        whose activation outputs (moved by phi(A)) must be moved by a matrix of ``target``."""
        target = family(target)
        if self.is_identity:
            return target
        if target.monomial and not target.any_permutation:
            # the reversal family: phi(J) = J for every phi (scales 1); signs that phi forgets
            # would give a "signed reversal", which no family is: the target itself is the
            # largest family contained in the preimage
            return target
        if not target.monomial:
            # orthogonal: |phi(s)| = 1 needs |s| = 1; GL: every monomial phi(A) qualifies
            return SIGNED_PERMUTATION if target <= ORTHOGONAL else MONOMIAL
        signs = not self.forgets_signs  # phi keeps the sign of s
        if target.scales == "one":  # phi(s) = 1: |s| = 1, and s = 1 when phi keeps signs
            return PERMUTATION if signs else SIGNED_PERMUTATION
        if target.scales == "sign":
            return SIGNED_PERMUTATION
        if target.scales == "common":
            # phi(s_i) one positive number c': |s_i| all equal (and s_i > 0 when phi keeps signs);
            # where phi forgets signs, c P and the signed permutations both qualify and neither
            # holds the other: c P, the one that keeps the scale
            return SCALED_PERMUTATION
        if target.scales == "positive":  # phi(s) > 0: s > 0 when phi keeps signs
            return POSITIVE_MONOMIAL if signs else MONOMIAL
        return MONOMIAL

    def check_family(self, fam: Family) -> None:
        """Raise where phi is undefined on ``fam`` (identity: everywhere defined)."""

    def to_json(self) -> str | list:
        """The stored form: ``"identity"``, ``"abs"`` or ``["power", d]``."""
        return self.name

    def legacy(self) -> str | tuple[str, float]:
        """The old in-memory form: ``"identity"``, ``"abs"`` or ``("power", d)``."""
        return self.name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Phi):
            return self.legacy() == other.legacy()
        if isinstance(other, list):
            other = tuple(other)
        return self.legacy() == other

    def __hash__(self) -> int:
        return hash(self.legacy())

    def __reduce__(self):
        # pickles and deep copies come back through as_phi: the identity and abs stay singletons
        return as_phi, (self.legacy(),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        # printed as the stored form ("abs", ('power', 2)), as phi kinds always printed
        return str(self.legacy())


class IdentityPhi(Phi):
    name = "identity"
    is_identity = True

    def apply_scale(self, scale):
        return scale

    @property
    def label(self):
        return "A"

    def exponents(self):
        return 1.0, 1

    def fixed_points(self):
        return GENERAL_LINEAR


class _MonomialPhi(Phi):
    """phi defined entrywise, hence on monomial families only."""

    def check_family(self, fam: Family) -> None:
        if not fam.monomial:
            raise UnsupportedGroupError(
                f"phi = {self.label} is only defined for monomial families, not {fam.name}"
            )


class AbsPhi(_MonomialPhi):
    name = "abs"
    forgets_signs = True

    def apply_scale(self, scale):
        return scale.abs()

    @property
    def label(self):
        return "abs(A)"

    def exponents(self):
        return 1.0, 0

    def fixed_points(self):
        return POSITIVE_MONOMIAL


class PowerPhi(_MonomialPhi):
    """phi(A) = A.^d entrywise (d != 0, 1; integers stored as int)."""

    name = "power"

    def __init__(self, d: float):
        d = float(d)
        if d == 0.0:
            raise UnsupportedGroupError("phi = A^0 is not invertible; a power phi needs d != 0")
        if d == 1.0:
            raise UnsupportedGroupError("phi = A^1 is the identity: use as_phi, which maps it")
        self.d: float | int = int(d) if d.is_integer() else d

    @property
    def integer(self) -> bool:
        return float(self.d).is_integer()

    @property
    def odd(self) -> bool:
        return self.integer and int(self.d) % 2 == 1

    @property
    def forgets_signs(self) -> bool:  # type: ignore[override]
        return not self.odd

    def apply_scale(self, scale):
        return scale**self.d

    @property
    def label(self):
        return f"A.^{self.d}"

    def exponents(self):
        return float(self.d), 1 if self.odd else 0

    def fixed_points(self):
        # s^d = s: s = 1, or s = -1 too when d is odd
        return SIGNED_PERMUTATION if self.odd else PERMUTATION

    def check_family(self, fam: Family) -> None:
        super().check_family(fam)
        if not self.integer and fam.scales not in ("positive", "common"):
            raise UnsupportedGroupError(
                f"a non-integer power phi (d = {self.d}) needs positive scales: family "
                f"positive_monomial, not {fam.name}"
            )

    def to_json(self):
        return [self.name, self.d]

    def legacy(self):
        return (self.name, self.d)

    def __repr__(self) -> str:
        return f"PowerPhi({self.d})"


IDENTITY_PHI = IdentityPhi()
ABS_PHI = AbsPhi()

#: What functions taking "a phi" accept: a ``Phi``, a stored form, or None (the identity).
PhiLike = Phi | str | tuple[str, float] | list | None


def as_phi(spec: Any) -> Phi:
    """A ``Phi`` from a stored form: None or ``"identity"``, ``"abs"``, ``("power", d)`` or the
    JSON list ``["power", d]`` (power 1 is the identity); a ``Phi`` passes through."""
    if isinstance(spec, Phi):
        return spec
    if spec is None or (isinstance(spec, str) and spec == IDENTITY_PHI.name):
        return IDENTITY_PHI
    if isinstance(spec, str) and spec == ABS_PHI.name:
        return ABS_PHI
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] == PowerPhi.name:
        d = float(spec[1])
        return IDENTITY_PHI if d == 1.0 else PowerPhi(d)
    raise UnsupportedGroupError(f"unknown phi kind {spec!r}; use 'identity', 'abs' or ('power', d)")
