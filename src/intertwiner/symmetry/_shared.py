"""Parameters used in more than one place (tied embeddings, a Parameter assigned to two modules).

The rules record one action per use. Two uses of one tensor axis are consistent only when they ask
the same site for the same matrix: then one action is kept. Otherwise no single element satisfies
both, and every site involved is dropped with the reason.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from intertwiner.errors import UnverifiedSymmetryError
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
