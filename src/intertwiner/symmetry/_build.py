"""Assembling the SymmetrySpec from the rules' bookkeeping: one Site per root space, with the
actions, activations, writers and folds recorded anywhere in its union-find tree (through merges
and channel splits), its name, its group and the reasons for its restrictions."""

from __future__ import annotations

import dataclasses

from intertwiner._types import SiteName
from intertwiner.groups import (
    GENERAL_LINEAR,
    MONOMIAL,
    SCALED_PERMUTATION,
    ActionKind,
    IntertwinerGroup,
    as_phi,
    intersect,
)
from intertwiner.symmetry._block_reversal import resolve as resolve_block_reversals
from intertwiner.symmetry._spaces import Spaces, _SiteState
from intertwiner.symmetry.spec import ActivationAxis, Fold, ParamAxis, Site, SymmetrySpec

Leaves = dict[int, dict[str, list]]


def build_spec(an: Spaces, model_name: str) -> SymmetrySpec:
    """The spec of the root sites of ``an`` (site 0, the fixed space, excluded)."""
    leaves = _collect(an)
    left_out, refused = resolve_block_reversals(an, leaves)  # ECA over a grouped conv's blocks
    used: set[str] = set()
    sites = [
        _site(an.sites[r], leaves[r], r, used)
        for r in sorted(leaves)
        if r != 0 and r not in left_out
    ]
    moved = {a.name for s in sites for a in s.actions}
    fixed = [f for f in an.fixed_params if not set(f[2]) <= moved]
    frozen = _frozen(an) + refused + fixed
    params: dict[str, tuple[str, ...]] = {}
    for label, _, names in frozen:
        params[label] = tuple(dict.fromkeys(params.get(label, ()) + names))
    return SymmetrySpec(
        sites=sites,
        frozen=[(label, reason) for label, reason, _ in frozen],
        model_name=model_name,
        frozen_params={label: names for label, names in params.items() if names},
    )


def _collect(an: Spaces) -> Leaves:
    """Everything each root site holds. A path through a gate turns actions into ``"P"``."""
    leaves: Leaves = {}

    def slot(r: int) -> dict[str, list]:
        return leaves.setdefault(r, {"actions": [], "activations": [], "writers": [], "folds": []})

    for s in an.sites[1:]:
        for a in s.actions:
            for r, mode, ch in an.expand(s.id, "A", a.channels):
                slot(r)["actions"].append((_as_p(a) if mode == "P" else a, ch))
        for order, name, ax, group in s.activations:
            for r, mode, ch in an.expand(s.id, "A", ax.channels):
                slot(r)["activations"].append(
                    (order, name, _as_p(ax) if mode == "P" else ax, group, ch)
                )
        for order, name in s.writers:
            for r, _, _ in an.expand(s.id, "A", None):
                slot(r)["writers"].append((order, name))
        for fold in s.folds:
            roots = an.expand(s.id, "A", None)
            slot(roots[0][0])["folds"].append((fold, len(roots) == 1))
    return leaves


def collect_actions(an: Spaces) -> dict[int, list[tuple[ParamAxis, tuple[int, ...] | None]]]:
    """Each root site's parameter actions with their channels (``_collect``'s ``actions``)."""
    return {r: data["actions"] for r, data in _collect(an).items()}


def _as_p(axis):
    # a kernel flip already follows the permutation part (J or I with it): it stays a flip
    return axis if axis.kind == ActionKind.FLIP else dataclasses.replace(axis, kind="P")


def _site(s: _SiteState, data: dict[str, list], r: int, used: set[str]) -> Site:
    acts = sorted(data["activations"], key=lambda t: t[0])
    writers = [w for _, w in sorted(data["writers"])]
    act_names = list(dict.fromkeys(name for _, name, _, _, _ in acts))
    kind = s.kind or ("stream" if s.residual else "activation" if acts else "linear")
    name = _unique(s.explicit_name or (act_names[0] if act_names else None)
                   or f"{kind}:{writers[0] if writers else r}", used)  # fmt: skip
    actions = [
        dataclasses.replace(a, channels=_all_is_none(ch, a.n_total))
        for a, ch in data["actions"]
        # a number moved by a power of the common factor c of A = c P stays put where the
        # site's group has no such factor (c = 1): not an action that moves anything
        if not ActionKind(a.kind).scalar or SCALED_PERMUTATION <= s.family
    ]
    folds = _folds(s, data["folds"], actions)
    axes = {
        aname: ActivationAxis(
            ax.dim, ax.n_total, ax.outer, ax.inner, _all_is_none(ch, ax.n_total), ax.kind
        )
        for _, aname, ax, _, ch in acts
    }
    return Site(
        name=name,
        kind=kind,
        width=s.width,
        group=_group(s, acts),
        restrictions=_reasons(s, acts),
        actions=actions,
        activations=act_names,
        activation_axes=axes,
        writers=writers,
        folds=folds,
    )


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name#2``, ``name#3``... if taken."""
    base, k = name, 2
    while name in used:
        name, k = str(SiteName(base, k)), k + 1
    used.add(name)
    return name


def _all_is_none(ch: tuple[int, ...] | None, n: int) -> tuple[int, ...] | None:
    return None if ch is not None and ch == tuple(range(n)) else ch


def _group(s: _SiteState, acts: list) -> IntertwinerGroup:
    """The site's family and phi, named after its first activation (``G_ReLU``), marked with the
    family when restrictions made it smaller (``G_SiLU|monomial``)."""
    phi = as_phi(s.phi)  # None: no activation set one
    if acts:
        base = acts[0][3]
        same = base.family == s.family and base.phi_kind == phi
        name = base.name if same else f"{base.name}|{s.family.name}"
    else:
        name = "G_Identity" if s.family is GENERAL_LINEAR else ""
    return IntertwinerGroup(s.family, phi, name)


def _reasons(s: _SiteState, acts: list) -> list[str]:
    """Restrictions worth showing: those the activations' own groups do not already imply."""
    act_family = GENERAL_LINEAR
    for a in acts:
        act_family = intersect(act_family, a[3].family)
    return [r for r, fam in s.restrictions if fam is None or not act_family <= fam]


def _folds(s: _SiteState, candidates: list, actions: list[ParamAxis]) -> list[Fold]:
    """Fold a per-feature scale into its readers only where the site's group is larger than
    monomial; a monomial element needs no fold: its permutation part moves the scale."""
    folds = []
    for (scale, axis, into, _, slope, offset), whole in candidates:
        if whole and not s.family <= MONOMIAL:
            folds.append(Fold(scale, into, slope, offset))
        else:
            actions.append(ParamAxis(scale, axis, "P", s.width))
    return folds


def _frozen(an: Spaces) -> list[tuple[str, str, tuple[str, ...]]]:
    """(space label, reason, parameters it would have moved) of every space that was frozen and
    touched something, its own or through the spaces merged into it before it froze."""
    members: dict[int, list[_SiteState]] = {}
    for s in an.sites[1:]:
        r = _frozen_root(an, s)
        if r is not None:
            members.setdefault(r.id, []).append(s)
    out = []
    for rid, tree in members.items():
        root = an.sites[rid]
        acts = [a for t in tree for a in t.activations]
        writers = [w for t in tree for w in t.writers]
        actions = [a for t in tree for a in t.actions]
        if not (actions or acts):
            continue
        own = root.activations or root.writers
        first = (root.activations or root.writers) if own else (acts or writers)
        label = first[0][1] if first else f"space {rid}"
        params = tuple(dict.fromkeys(a.name for a in actions if not a.buffer))
        out.append((label, root.frozen_reason, params))
    return out


def _frozen_root(an: Spaces, s: _SiteState) -> _SiteState | None:
    """The frozen space whose union-find tree holds ``s`` (None: ``s`` is not frozen)."""
    while True:
        if s.frozen_reason:
            return s
        if s.split is not None:  # cut into blocks (a view into heads): frozen when they all are
            roots = [_frozen_root(an, an.sites[c]) for c, _ in s.split]
            return roots[0] if all(r is not None for r in roots) else None
        if s.merged_into is None or s.merged_into == 0:
            return None
        s = an.sites[s.merged_into]
