"""Which group a metric quotients out, and which families it is invariant to.

A representation h = sigma(z) of a layer with intertwiner group G changes by phi(A), not A, when
the weights change by A in G. So an ``IntertwinerGroup`` is mapped to the family of phi(G): for
ReLU, tanh, GELU (phi = identity) that is G's own family; for abs and even powers the signs are
squared away (monomial -> positive_monomial, signed_permutation -> permutation).
"""

from __future__ import annotations

from intertwiner.errors import InvalidInputError
from intertwiner.groups import Family, GroupLike, IntertwinerGroup, family


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


def subgroups(name: str | Family) -> tuple[str, ...]:
    """Every family contained in ``name`` (itself included), in a fixed order."""
    return tuple(f.name for f in family(name).subgroups())


def declare(invariant_to: tuple[str, ...]):
    """Decorator: attach ``.invariant_to`` (family names) to a metric function."""

    def wrap(fn):
        fn.invariant_to = tuple(invariant_to)
        return fn

    return wrap
