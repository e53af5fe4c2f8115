"""Assembling the SymmetrySpec from the rules' bookkeeping: one Site per root space, actions,
activations and folds expanded through merges and channel splits, names, groups and reasons."""

from __future__ import annotations

import dataclasses
import operator

import torch

from intertwiner.groups import (
    IntertwinerGroup,
    family,
    intersect,
    is_subgroup,
)
from intertwiner.symmetry._rules import (
    Rules,
)
from intertwiner.symmetry.spec import ActivationAxis, Fold, ParamAxis, Site, SymmetrySpec

_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}
_CAT = {torch.cat, torch.concat, torch.concatenate, torch.stack}
_SCALE = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unflatten"}
_PASS_METHODS = {"contiguous", "clone", "float", "double", "to", "detach", "half", "bfloat16"}


def build_spec(an: Rules, model_name: str) -> SymmetrySpec:
    leaves: dict[int, dict[str, list]] = {}

    def slot(r: int) -> dict[str, list]:
        return leaves.setdefault(r, {"actions": [], "activations": [], "writers": [], "folds": []})

    for s in an.sites[1:]:
        for a in s.actions:
            for r, mode, ch in an.expand(s.id, "A", a.channels):
                slot(r)["actions"].append(
                    (a if mode != "P" else dataclasses.replace(a, kind="P"), ch)
                )
        for order, name, ax, group in s.activations:
            for r, mode, ch in an.expand(s.id, "A", ax.channels):
                ax_r = ax if mode != "P" else dataclasses.replace(ax, kind="P")
                slot(r)["activations"].append((order, name, ax_r, group, ch))
        for order, name in s.writers:
            for r, _, _ in an.expand(s.id, "A", None):
                slot(r)["writers"].append((order, name))
        for fold in s.folds:
            roots = an.expand(s.id, "A", None)
            slot(roots[0][0])["folds"].append((fold, len(roots) == 1))
    sites: list[Site] = []
    frozen: list[tuple[str, str]] = []
    used: set[str] = set()
    for r in sorted(leaves):
        data = leaves[r]
        if r == 0:
            continue
        s = an.sites[r]
        acts = sorted(data["activations"], key=lambda t: t[0])
        writers = [w for _, w in sorted(data["writers"])]
        act_names = []
        for _, name, _, _, _ in acts:
            if name not in act_names:
                act_names.append(name)
        if s.kind is not None:
            kind = s.kind
        elif s.residual:
            kind = "stream"
        elif acts:
            kind = "activation"
        else:
            kind = "linear"
        if s.explicit_name:
            name = s.explicit_name
        elif act_names:
            name = act_names[0]
        else:
            name = f"{kind}:{writers[0] if writers else r}"
        base_name = name
        k = 2
        while name in used:
            name = f"{base_name}#{k}"
            k += 1
        used.add(name)
        phi = s.phi or "identity"
        if acts:
            base = acts[0][3]
            same = base.family == s.family and base.phi_kind == phi
            gname = base.name if same else f"{base.name}|{s.family.name}"
        else:
            gname = "G_Identity" if s.family.name == "general_linear" else ""
        group = IntertwinerGroup(s.family, phi, gname)
        # A reason is worth showing only if the activations' own group does not already imply it.
        act_family = family("general_linear")
        for a in acts:
            act_family = intersect(act_family, a[3].family)
        reasons = [r for r, fam in s.restrictions if not fam or not is_subgroup(act_family, fam)]
        actions = []
        for a, ch in data["actions"]:
            if ch is not None and ch == tuple(range(a.n_total)):
                ch = None
            actions.append(dataclasses.replace(a, channels=ch))
        folds = []
        for (scale, axis, into, _, slope, offset), whole in data["folds"]:
            if whole and not is_subgroup(s.family, "monomial"):
                # the larger group needs the scale folded away
                folds.append(Fold(scale, into, slope, offset))
            else:  # a monomial element commutes with the scale once its P permutes it
                actions.append(ParamAxis(scale, axis, "P", s.width))
        axes = {}
        for _, aname, ax, _, ch in acts:
            if ch is not None and ch == tuple(range(ax.n_total)):
                ch = None
            axes[aname] = ActivationAxis(ax.dim, ax.n_total, ax.outer, ax.inner, ch, ax.kind)
        sites.append(
            Site(
                name=name,
                kind=kind,
                width=s.width,
                group=group,
                restrictions=reasons,
                actions=actions,
                activations=act_names,
                activation_axes=axes,
                writers=writers,
                folds=folds,
            )
        )
    for s in an.sites[1:]:
        if s.frozen_reason and (s.actions or s.activations):
            label = (s.activations[0][1] if s.activations else None) or (
                s.writers[0][1] if s.writers else f"space {s.id}"
            )
            frozen.append((label, s.frozen_reason))
    return SymmetrySpec(sites=sites, frozen=frozen, model_name=model_name)
