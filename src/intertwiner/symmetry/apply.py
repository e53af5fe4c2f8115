"""Sample group elements for every site of a SymmetrySpec and apply them to a copy of a model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from intertwiner.errors import InvalidElementError, InvalidOptionError, ShapeError, UnknownSiteError
from intertwiner.groups import (
    ActionKind,
    DenseElement,
    GroupElement,
    MonomialElement,
    is_reversal,
    reversal_perm,
)
from intertwiner.symmetry._forward import clear_caches
from intertwiner.symmetry.spec import (
    ParamAxis,
    Site,
    SymmetrySpec,
    _apply_view,
    apply_view_inplace,
    permutation_part,
)


def random_elements(
    spec: SymmetrySpec,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, GroupElement]:
    """One random element of each site's group: ``{site name: element}`` (same seed, same result)."""
    return {s.name: s.group.sample(s.width, generator=generator, dtype=dtype) for s in spec.sites}


def _matrix_for(site: Site, kind: str, g: GroupElement) -> GroupElement:
    try:
        kind = ActionKind(kind)
    except ValueError:  # pragma: no cover (specs are built from ActionKind)
        raise InvalidOptionError(f"unknown action kind {kind!r}") from None
    if kind is ActionKind.P:
        return permutation_part(g)
    if kind is ActionKind.FLIP:
        raise InvalidOptionError("a flip acts on a kernel axis: use _flip_for")  # pragma: no cover
    m = site.group.phi(g) if kind in (ActionKind.PHI, ActionKind.PHI_INV_T) else g
    return m.inverse().transpose() if kind.inverse else m


def _flip_for(a: ParamAxis, g: GroupElement) -> GroupElement:
    """The kernel axis' element of a ``FLIP`` action: reversed when ``g`` is J, else the
    identity (of the kernel's length ``a.n_total``)."""
    ones = torch.ones(a.n_total, dtype=torch.float64)
    perm = reversal_perm(a.n_total) if is_reversal(g) else torch.arange(a.n_total)
    return MonomialElement(perm, ones)


def _tensor(model: nn.Module, a: ParamAxis) -> torch.Tensor:
    return model.get_buffer(a.name) if a.buffer else model.get_parameter(a.name)


#: ``id(tensor) -> (tensor, original, swapped)``: what ``restore`` needs to undo ``transform_site``.
Saved = dict[int, tuple[torch.Tensor, torch.Tensor, bool]]


def transform_site(
    model: nn.Module,
    site: Site,
    element: GroupElement,
    saved: Saved | None = None,
    *,
    swap: bool = False,
) -> None:
    """Apply one site's ``element`` to ``model``'s parameters and buffers *in place*.

    ``saved`` (optional) collects each tensor's original before the first write to it, so that a
    caller can undo the change exactly with ``restore(saved)``. With ``swap`` (and ``saved``) the
    originals are not copied: each tensor gets new storage (``t.data = ...``) and keeps its
    original untouched for ``restore`` to put back, which saves a copy, a write-back and a
    restoring copy per tensor (GPT-2's 50257 x 768 embedding: 0.3 s of 0.75 s per check). Only
    for callers that know no two parameters or buffers of ``model`` share storage (a write
    through one would no longer reach the other): ``shares_no_storage``.
    """
    g64 = element.to(torch.float64)
    cache: dict[object, GroupElement] = {}

    def own(t: torch.Tensor) -> None:
        """Record ``t``'s original before its first write (swap: give ``t`` a private copy)."""
        if saved is None or id(t) in saved:
            return
        if swap:
            saved[id(t)] = (t, t.data, True)
            t.data = t.data.clone()
        else:
            saved[id(t)] = (t, t.detach().clone(), False)

    def get(name: str) -> torch.Tensor:
        t = model.get_parameter(name) if name in params else model.get_buffer(name)
        own(t)
        return t

    params = dict(model.named_parameters(remove_duplicate=False)) if site.folds else {}
    with torch.no_grad():
        for fold in site.folds:
            w = get(fold.scale)
            factor = fold.slope * w + fold.offset
            for name, axis in fold.into:
                t = get(name)
                shape = [1] * t.dim()
                shape[axis] = -1
                t.mul_(factor.reshape(shape).to(t.dtype))
            w.fill_((1.0 - fold.offset) / fold.slope)
        for a in site.actions:
            if ActionKind(a.kind).scalar:  # a one-number parameter: times a power of c (A = c P)
                t = _tensor(model, a)
                own(t)
                t.mul_(site.group.scalar_factor(a.kind, g64))
                continue
            key = (a.kind, a.n_total) if a.kind == ActionKind.FLIP else a.kind
            if key not in cache:
                flip = a.kind == ActionKind.FLIP
                cache[key] = _flip_for(a, g64) if flip else _matrix_for(site, a.kind, g64)
            t = _tensor(model, a)
            whole = a.channels is None and a.within is None and t.is_contiguous()
            if swap and saved is not None and whole:
                # the whole axis moves: the result is new storage anyway, nothing to copy back
                # (contiguous only: a new layout could change the kernels' summation order)
                if id(t) not in saved:
                    saved[id(t)] = (t, t.data, True)
                t.data = _apply_view(t.data, a.axis, a, cache[key], None)
                continue
            own(t)
            if a.within is not None:
                t = t.narrow(*a.within)  # a view: the update lands in the parameter
            apply_view_inplace(t, a.axis, a, cache[key], a.channels)
    clear_caches(model)  # a bias cached from the old parameters must not outlive them


def restore(saved: Saved) -> None:
    """Undo ``transform_site`` calls that recorded into ``saved`` (bit-exact)."""
    with torch.no_grad():
        for t, original, swapped in saved.values():
            if swapped:
                t.data = original
            else:
                t.copy_(original)
    saved.clear()


def shares_no_storage(model: nn.Module) -> bool:
    """Whether no two distinct parameters or buffers of ``model`` share storage (tied weights
    that are one Parameter object count once), so that ``transform_site(..., swap=True)`` is
    exact."""
    seen: set[int] = set()
    ids: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in ids:
            continue
        ids.add(id(t))
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            return False
        seen.add(ptr)
    return True


def apply(
    model: nn.Module,
    spec: SymmetrySpec,
    elements: dict[str, GroupElement],
    *,
    validate: bool = True,
) -> nn.Module:
    """A deep copy of ``model`` with each site's element applied (sites missing from ``elements``
    keep the identity). ``model`` is untouched.

    ``validate``: check each element lies in its site's group (set False to apply elements of a
    larger group on purpose, e.g. to show that they break the function).
    """
    names = set(spec.names)
    unknown = [k for k in elements if k not in names]
    if unknown:
        raise UnknownSiteError(f"elements for unknown sites {unknown}; sites: {spec.names}")
    for site in spec.sites:
        g = elements.get(site.name)
        if g is None:
            continue
        if g.n != site.width:
            raise ShapeError(
                f"site {site.name!r} has width {site.width}, got an element of size {g.n}"
            )
        if isinstance(g, DenseElement) and not bool(
            torch.linalg.svdvals(g.matrix(torch.float64)).min() > 1e-12
        ):
            raise InvalidElementError(
                f"the element for site {site.name!r} is singular (not invertible), so the "
                "transformed model could not compute the same function; pass an invertible matrix"
            )
        if validate and not site.group.contains(g, atol=1e-6):
            raise InvalidElementError(
                f"the element for site {site.name!r} is not in its group {site.group.name} "
                f"({site.group.family.description}); pass validate=False to apply it anyway"
            )
    new = copy.deepcopy(model)
    for site in spec.sites:
        g = elements.get(site.name)
        if g is not None:
            transform_site(new, site, g)
    return new
