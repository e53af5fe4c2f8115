"""Parameters used in more than one place (tied embeddings, a Parameter assigned to two modules,
a module called on several branches).

The rules record one action per use. Uses that ask for the same matrix of the same tensor axis
from different sites (CoaT applies one MLP to three branches: each branch's hidden units are a
site) are first tied into one site (``tie_shared_uses``): one element then serves every use. Two
uses of one tensor axis are consistent only when they ask the same site for the same matrix: then
one action is kept. Otherwise no single element satisfies both, and every site involved is
dropped with the reason.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from intertwiner.errors import UnverifiedSymmetryError
from intertwiner.symmetry._build import collect_actions
from intertwiner.symmetry._spaces import Spaces
from intertwiner.symmetry.spec import ParamAxis, Site, SymmetrySpec

# Kinds that name the same matrix when the site's group lies in the orthogonal group (A^-T = A).
_ORTHOGONAL_TWINS = {frozenset({"A", "A^-T"}), frozenset({"phi(A)", "phi(A)^-T"})}


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Every parameter/buffer name (aliases of tied tensors included) -> the first name of its
    tensor, in ``named_parameters()`` / ``named_buffers()`` order."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    for name, t in named:
        out[name] = first.setdefault(id(t), name)
    return out


def _key(a: ParamAxis, canon: dict[str, str]) -> tuple:
    return (canon.get(a.name, a.name), a.axis)


def tie_shared_uses(an: Spaces, model: nn.Module) -> None:
    """Tie root sites that a shared tensor links: when every use of the tensor acts on the same
    axes, and on each axis asks for the same matrix (same kind, layout and channels), one element
    on all the uses' sites keeps each use's function, so those sites become one (its group the
    intersection of theirs). A tie stands only if, after it, every shared tensor that touches the
    tied sites is consistent the same way (a module applied to its own output ties its bias's
    spaces but its weight reads the input in one call and the tied space in the other: no tie).
    Everything else is left for ``drop_shared_parameters``; verification still checks the site."""
    canon = canonical_names(model)
    # tensor -> use -> axis -> [(root, view)]
    uses: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(dict))
    for root, actions in collect_actions(an).items():
        for a, ch in actions:
            view = (a.kind, a.outer, a.n_total, a.inner, ch)
            uses[canon.get(a.name, a.name)][a.use].setdefault(a.axis, []).append((root, view))
    shared = [list(by_use.values()) for by_use in uses.values() if len(by_use) > 1]
    unions = [u for calls in shared for u in _tie_pairs(an, calls)]
    while unions:
        parent = _union_find(unions)
        bad = {
            parent(r) for calls in shared if not _consistent(calls, parent) for r in _roots(calls)
        }
        kept = [(x, y) for x, y in unions if parent(x) not in bad]
        if len(kept) == len(unions):
            break
        unions = kept
    for x, y in unions:
        residual = an.sites[an.find(x)].residual or an.sites[an.find(y)].residual
        an.merge(x, y)
        an.sites[an.find(x)].residual = residual  # a tie is not a residual stream


def _tie_pairs(an: Spaces, calls: list[dict[int, list]]) -> list[tuple[int, int]]:
    """The root pairs to tie for one shared tensor's uses, or none when they differ."""
    if not _same_axes_once(calls):
        return []
    pairs = []
    for axis in calls[0]:
        found = [c[axis][0] for c in calls]
        roots = sorted({r for r, _ in found})
        if len({v for _, v in found}) != 1 or 0 in roots:
            return []
        if len({an.sites[r].width for r in roots}) != 1:
            return []
        pairs += [(roots[0], r) for r in roots[1:]]
    return pairs


def _union_find(pairs: list[tuple[int, int]]):
    up: dict[int, int] = {}

    def find(r: int) -> int:
        while up.get(r, r) != r:
            r = up[r]
        return r

    for x, y in pairs:
        rx, ry = find(x), find(y)
        if rx != ry:
            up[max(rx, ry)] = min(rx, ry)
    return find


def _same_axes_once(calls: list[dict[int, list]]) -> bool:
    """Every use acts on the same axes of the tensor, each axis with one action."""
    return len({frozenset(c) for c in calls}) == 1 and all(
        len(v) == 1 for c in calls for v in c.values()
    )


def _roots(calls: list[dict[int, list]]) -> set[int]:
    return {r for c in calls for v in c.values() for r, _ in v}


def _consistent(calls: list[dict[int, list]], find) -> bool:
    """Every use acts on the same axes, each axis once, with one view and one (tied) root."""
    if not _same_axes_once(calls):
        return False
    return all(len({(find(c[axis][0][0]), c[axis][0][1]) for c in calls}) == 1 for axis in calls[0])


def drop_shared_parameters(model: nn.Module, spec: SymmetrySpec, *, strict: bool = False) -> None:
    """Merge duplicate actions on shared tensors where they agree; drop the sites where they
    cannot (listed on ``spec.dropped``; ``strict`` raises ``UnverifiedSymmetryError``)."""
    canon = canonical_names(model)
    uses: dict[tuple, list[tuple[Site, ParamAxis]]] = defaultdict(list)
    for site in spec.sites:
        for a in site.actions:
            uses[_key(a, canon)].append((site, a))
    bad: dict[str, str] = {}
    redundant: set[int] = set()
    for (pname, axis), group in uses.items():
        # every name of the tensor: torch.export may report all uses under one alias
        names = sorted({a.name for _, a in group} | {n for n, c in canon.items() if c == pname})
        calls = sorted({(a.name, a.use) for _, a in group})
        if len(calls) < 2:
            continue  # one use (several sites may act on one use's axis: heads, channel blocks)
        first = [(s, a) for s, a in group if (a.name, a.use) == calls[0]]
        sites = {s.name: s for s, _ in group}
        if len(sites) == 1 and len(first) == 1 and _agree(first[0][0], [a for _, a in group]):
            redundant.update(id(a) for _, a in group if a is not first[0][1])
            continue
        for name in sites:
            bad[name] = (
                f"parameter {pname!r} (axis {axis}) is shared by {', '.join(names)} (a module "
                "called more than once, or one Parameter in several modules): one element cannot "
                "satisfy every use; untie the parameters to get this symmetry"
            )
    if bad and strict:
        lines = "\n".join(f"  {n}: {r}" for n, r in bad.items())
        raise UnverifiedSymmetryError(f"{spec.model_name}: shared parameters:\n{lines}")
    for site in spec.sites:
        site.actions = [a for a in site.actions if id(a) not in redundant]
    spec.dropped += list(bad.items())
    spec.sites = [s for s in spec.sites if s.name not in bad]


def _agree(site: Site, actions: list[ParamAxis]) -> bool:
    """Do these actions of one site on one tensor axis ask for the same matrix?"""
    views = {(a.outer, a.n_total, a.inner, a.channels) for a in actions}
    if len(views) != 1:
        return False
    kinds = {a.kind for a in actions}
    if len(kinds) == 1:
        return True  # every use asks for the same matrix: applying it once serves all
    return kinds in _ORTHOGONAL_TWINS and site.group.family.preserves_inner_products
