"""Which group a metric quotients out, and which families it is invariant to.

A representation h = sigma(z) of a layer with intertwiner group G changes by phi(A), not A, when
the weights change by A in G. So an ``IntertwinerGroup`` is mapped to the family of phi(G): for
ReLU, tanh, GELU (phi = identity) that is G's own family; for abs and even powers the signs are
squared away (monomial -> positive_monomial, signed_permutation -> permutation).
"""

from __future__ import annotations

from intertwiner.errors import InvalidInputError
from intertwiner.groups import (
    FAMILIES,
    SCALED_PERMUTATION,
    Family,
    GroupLike,
    IntertwinerGroup,
    family,
)


def family_name(group: GroupLike) -> str:
    """Family name of the action on representations: a name, a ``Family`` or an IntertwinerGroup."""
    if isinstance(group, IntertwinerGroup):
        return group.phi_family.name
    if isinstance(group, Family):
        return group.name
    if isinstance(group, str):
        return family(group).name  # an unknown name: the error lists every name and alias
    raise InvalidInputError(
        f"group must be a family name, Family or IntertwinerGroup, got {group!r}; e.g. "
        "'positive_monomial' or intertwiner.groups.for_activation('relu')"
    )


def invariances(name: str | Family) -> tuple[str, ...]:
    """The families a measure declared invariant to ``name`` is invariant to, smallest first.

    ``name``'s subgroups and ``c P`` (``scaled_permutation``), also where ``c P`` is not a
    subgroup of ``name`` (O(n), ±P): every measure here is invariant to permutations and scale
    free (one factor c on all features), so its group holds ``c P`` (the group is then c·O(n) or
    c·±P, which no family names). The last entry is the largest family: ``name`` itself, or
    ``c P`` for a measure declared invariant to permutations only (RSA, soft matching)."""
    names = {f.name for f in family(name).subgroups()} | {SCALED_PERMUTATION.name}
    return tuple(f for f in FAMILIES if f in names)


def declare(invariant_to: tuple[str, ...]):
    """Decorator: attach ``.invariant_to`` (family names) to a metric function."""

    def wrap(fn):
        fn.invariant_to = tuple(invariant_to)
        return fn

    return wrap
