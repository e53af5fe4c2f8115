"""How much of each site's group ``align`` searches: an ``Extent``, not a group family.

``align(group="full")`` means "each site's own intertwiner group" while ``groups.family("full")``
is GL(n): the two words live in different rooms, so alignment's choice has its own type. The old
strings are accepted at the edge (``Extent.parse``) and converted once; inside, only members are
compared, and the families they lead to are asked through their attributes.
"""

from __future__ import annotations

import enum

from intertwiner.errors import InvalidOptionError
from intertwiner.groups import (
    PERMUTATION,
    SIGNED_PERMUTATION,
    Family,
    GroupElement,
    family,
    intersect,
)
from intertwiner.symmetry import Site


class Extent(str, enum.Enum):
    """The part of each site's intertwiner group that alignment searches."""

    #: each site's own intertwiner group (``group="full"``)
    SITE_GROUP = "full"
    #: its permutations only: the Git Re-Basin baseline (``group="permutation"``)
    PERMUTATION = "permutation"
    #: nothing: every element is the identity (``group="none"``)
    IDENTITY = "none"
    #: internal: the discrete part (permutations, signs) searched between scale representatives
    DISCRETE = "discrete"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Extent | str) -> Extent:
        """The extent a user named (a member or one of ``GROUPS``); anything else is refused."""
        try:
            extent = cls(value)
        except ValueError:
            extent = None
        if extent is None or extent is cls.DISCRETE:
            raise InvalidOptionError(f"group must be one of {GROUPS}, got {value!r}")
        return extent

    def family_at(self, site: Site) -> Family:
        """The family searched at ``site``."""
        fam = family(site.group.family)
        if self is Extent.PERMUTATION:
            # the permutations the site allows: all of them, or fewer (the reversal family)
            return intersect(fam, PERMUTATION)
        if self is Extent.DISCRETE and fam.free_scales:
            # The canonical forms fixed the continuous scales: only the discrete part is searched.
            return SIGNED_PERMUTATION if fam.flips_signs else PERMUTATION
        return fam

    def identity(self, site: Site) -> GroupElement:
        return self.family_at(site).identity(site.width)

    def label(self, site: Site) -> str:
        """The group named in a site report: the site's group, ``"P"`` or ``"1"``."""
        if self is Extent.SITE_GROUP:
            return site.group.name
        return "P" if self is Extent.PERMUTATION else "1"


#: The extents ``align(group=...)`` accepts, by their edge names.
GROUPS = tuple(e.value for e in (Extent.SITE_GROUP, Extent.PERMUTATION, Extent.IDENTITY))
