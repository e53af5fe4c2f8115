"""Traced specs in formats other tools read: Git Re-Basin's permutation spec and plain JSON.

Permutation spec (Git Re-Basin, Ainsworth et al. 2023; also the format of the ``rebasin`` ports)::

    {"perm_to_axes": {perm name: [[parameter, axis], ...]},
     "axes_to_perm": {parameter: [perm name or None per axis]},
     "skipped": {site name: reason}}

One permutation per site (its permutation subgroup: every family contains the permutations, and a
permutation moves rows of kinds ``A``, ``P``, ``A^-T`` and ``phi(A)^-T`` alike). The format gives
one permutation to a whole tensor axis, so a site that acts on part of an axis (channel subsets
of zero-padding shortcuts, attention heads' blocks, per-head maps, Flatten blocks, grouped
convolutions) cannot be written in it: such sites are left out and listed under ``skipped`` with
the reason. Leaving a site out is sound (its element stays the identity), so every permutation
the spec describes still leaves the function unchanged.

JSON description (``SymmetrySpec.to_dict``, schema ``SCHEMA``)::

    {"schema": "intertwiner.symmetry-spec/1", "model": str,
     "sites": [{"name", "kind", "width",
                "group": {"name", "family", "phi"},       # family: see groups.FAMILIES
                "restrictions": [str], "activations": [module name], "writers": [module name],
                "actions": [{"name": parameter or buffer, "axis": int,
                             "kind": "A" | "P" | "A^-T" | "phi(A)^-T" | "c(A)" | "c(phi(A))"
                                     | "c(A)/c(phi(A))",
                             "n_total", "outer", "inner": view of the axis as (outer, n_total, inner),
                             "channels": [int] or null (all n_total channels),
                             "buffer": bool, "within": [axis, start, length] or null}],
                "folds": [{"scale", "into": [[parameter, axis]], "slope", "offset"}]}],
     "frozen": [{"space", "reason"}], "dropped": [{"site", "reason"}],
     "verified_error": float or null, "verified_tolerance": float or null,
     "verified_roundoff": float or null}   # round-off that scaled the tolerance (_verify.py)

The element ``A`` of a site acts on an action's axis viewed as ``(outer, n_total, inner)``: on
the ``channels`` (in that order) of the middle dimension, by ``kind`` (``spec.py``'s docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from intertwiner.symmetry.spec import Site, SymmetrySpec

SCHEMA = "intertwiner.symmetry-spec/1"


def _unrepresentable(site: Site) -> str | None:
    """Why ``site`` cannot be one permutation of whole axes (None when it can)."""
    if not site.group.family.any_permutation:
        # Git Re-Basin searches every permutation; this site allows a few (I or J) only
        return f"its group allows {site.group.family.description} only, not every permutation"
    for a in site.actions:
        if a.scalar:  # a permutation leaves a one-number parameter unchanged
            continue
        if a.channels is not None:
            return f"{a.describe()}: acts on part of the axis"
        if a.outer != 1 or a.inner != 1:
            return f"{a.describe()}: acts on blocks of the axis"
        if a.within is not None:
            return f"{a.describe()}: acts within a slice (grouped convolution)"
    return None


def permutation_spec(spec: SymmetrySpec, model: nn.Module | None = None) -> dict:
    """Git Re-Basin's ``PermutationSpec`` of ``spec`` (module docstring). With ``model``, every
    parameter and buffer of its state dict gets an ``axes_to_perm`` entry with one slot per axis
    (tied names included); without it only the tensors the sites move, up to the last axis a site
    moves (Git Re-Basin's code reads missing trailing axes as None). Buffers a site moves
    (BatchNorm running statistics) are listed like parameters: the function needs them moved."""
    perm_to_axes: dict[str, list[list]] = {}
    skipped: dict[str, str] = {}
    claimed: dict[tuple[str, int], str] = {}
    for site in spec.sites:
        why = _unrepresentable(site)
        axes = list(dict.fromkeys((a.name, a.axis) for a in site.actions if not a.scalar))
        taken = [claimed[x] for x in axes if x in claimed]
        if why is None and taken:
            why = f"shares an axis with site {taken[0]}"
        if why is not None:
            skipped[site.name] = why
            continue
        for x in axes:
            claimed[x] = site.name
        perm_to_axes[site.name] = [list(x) for x in axes]
    axes_to_perm: dict[str, list[str | None]] = {}
    if model is not None:
        for name, (ndim, same) in _aliases(model).items():
            axes_to_perm[name] = [
                next((claimed[(n, ax)] for n in same if (n, ax) in claimed), None)
                for ax in range(ndim)
            ]
    else:
        for (name, axis), site in claimed.items():
            slots = axes_to_perm.setdefault(name, [])
            slots += [None] * (axis + 1 - len(slots))
            slots[axis] = site
    return {"perm_to_axes": perm_to_axes, "axes_to_perm": axes_to_perm, "skipped": skipped}


def _aliases(model: nn.Module) -> dict[str, tuple[int, list[str]]]:
    """State-dict name -> (ndim, every name of the same tensor): tied weights share slots."""
    named = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    by_id: dict[int, list[str]] = {}
    for n, t in named:
        by_id.setdefault(id(t), []).append(n)
    return {n: (t.dim(), by_id[id(t)]) for n, t in named}
