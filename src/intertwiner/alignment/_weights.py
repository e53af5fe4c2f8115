"""Weight matching: coordinate descent over sites on the squared parameter distance D (see
``_align``'s docstring), each step solved exactly per site (or per attention-heads block) and kept
only if D does not increase."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from intertwiner import _products as products
from intertwiner.alignment._extent import Extent
from intertwiner.alignment._heads import _HeadsBlock, _shifted
from intertwiner.alignment._report import _param_names, _partial_distance, weight_distance
from intertwiner.alignment._views import axis_rows, tensor_of
from intertwiner.groups import (
    PERMUTATION,
    FitTerm,
    GroupElement,
    MonomialElement,
    best_assignment,
    fit_element,
    pair_costs,
)
from intertwiner.symmetry import Site, SymmetrySpec
from intertwiner.symmetry.apply import restore, transform_site


def _terms(
    site: Site,
    a: nn.Module,
    b: nn.Module,
    dense: bool,
    shift: dict[int, tuple[int, ...]] | None = None,
) -> list[FitTerm]:
    """Weight statistics of one site: A's rows vs B's rows on every parameter axis it acts on.
    ``shift[k]``: channels to read from B for action k instead of the action's own."""
    terms = []
    for k, ax in enumerate(site.actions):
        if ax.buffer:
            continue
        x = axis_rows(tensor_of(a, ax).detach(), ax).double().cpu()
        ch = None if shift is None else shift.get(k)
        y = axis_rows(tensor_of(b, ax).detach(), ax, ch).double().cpu()
        gram = products.gram(y) if dense else (y * y).sum(1)
        terms.append(FitTerm(ax.kind, products.matmul(x, y.T), gram, (x * x).sum(1)))
    return terms


def _fit(site: Site, extent: Extent, terms: list[FitTerm], scale: str = "least_squares"):
    return fit_element(extent.family_at(site), site.group.phi_kind, terms, scale=scale)


# -- coordinate descent ----------------------------------------------------------------------
class _Problem:
    """Coordinate descent state: A, the working copy of B (float64) and the elements so far."""

    def __init__(self, a: nn.Module, b: nn.Module, spec: SymmetrySpec, extent: Extent):
        self.a = copy.deepcopy(a).double().eval()
        self.b = copy.deepcopy(b).double().eval()
        self.spec, self.extent = spec, extent
        self.elements = {s.name: extent.identity(s) for s in spec.sites}

    def _guarded(self, sites: list[Site], deltas: dict[str, GroupElement], compose) -> bool:
        names = _param_names(sites)
        before = _partial_distance(self.a, self.b, names)
        saved: dict = {}
        for s in sites:
            if s.name in deltas:
                transform_site(self.b, s, deltas[s.name], saved)
        after = _partial_distance(self.a, self.b, names)
        if after > before * (1 + 1e-12) + 1e-300:
            restore(saved)
            return False
        compose()
        return True

    def step_site(self, site: Site, scales_only: bool = False) -> bool:
        fam = self.extent.family_at(site)
        terms = _terms(site, self.a, self.b, dense=not fam.monomial)
        if not terms:
            return False
        if scales_only:
            # The permutation stays; each unit gets its best scale (the diagonal pair costs).
            _, scales = pair_costs(fam, site.group.phi_kind, terms)
            delta = MonomialElement(torch.arange(site.width), torch.diagonal(scales).clone())
        else:
            delta, _ = _fit(site, self.extent, terms)

        def compose():
            self.elements[site.name] = delta @ self.elements[site.name]

        return self._guarded([site], {site.name: delta}, compose)

    def step_heads(self, block: _HeadsBlock) -> bool:
        hs, n = block.heads, block.heads.width
        cost = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                for sub in block.subs[i]:
                    dense = not self.extent.family_at(sub).monomial
                    terms = _terms(sub, self.a, self.b, dense, _shifted(sub, block, i, j))
                    cost[i, j] += _fit(sub, self.extent, terms)[1]
        if block.uncovered:
            acts = [hs.actions[k] for k in block.uncovered]
            tmp = Site(hs.name, hs.kind, hs.width, hs.group, actions=acts)
            pc, _ = pair_costs(PERMUTATION, "identity", _terms(tmp, self.a, self.b, False))
            cost += pc
        perm = best_assignment(-cost)  # the cheapest pairing
        dperm = MonomialElement(perm, torch.ones(n, dtype=torch.float64))
        names = _param_names([hs, *[s for x in block.subs for s in x]])
        before = _partial_distance(self.a, self.b, names)
        saved: dict = {}
        transform_site(self.b, hs, dperm, saved)
        sub_deltas = {}
        for h in range(n):
            for sub in block.subs[h]:
                dense = not self.extent.family_at(sub).monomial
                d, _ = _fit(sub, self.extent, _terms(sub, self.a, self.b, dense))
                transform_site(self.b, sub, d, saved)
                sub_deltas[sub.name] = d
        after = _partial_distance(self.a, self.b, names)
        if after > before * (1 + 1e-12) + 1e-300:
            restore(saved)
            return False
        old = dict(self.elements)
        self.elements[hs.name] = dperm @ old[hs.name]
        for h in range(n):
            src = int(perm[h])
            for k, sub in enumerate(block.subs[h]):
                self.elements[sub.name] = sub_deltas[sub.name] @ old[block.subs[src][k].name]
        return True


@dataclass
class _ScalesOnly:
    """A site whose permutation is settled (by activations): only its scales are descended."""

    site: Site


def _weight_matching(
    prob: _Problem,
    sites: list[Site],
    blocks: list[_HeadsBlock],
    *,
    max_sweeps: int,
    tol: float,
    seed: int,
    progress: bool,
    scale_sites: list[Site] = (),
) -> tuple[list[float], int]:
    units: list[Any] = [*sites, *blocks, *[_ScalesOnly(s) for s in scale_sites]]
    gen = torch.Generator().manual_seed(int(seed))
    history = [weight_distance(prob.a, prob.b, relative=False)]
    sweeps = 0
    if not units:
        return history, sweeps
    from tqdm.auto import tqdm

    bar = tqdm(total=max_sweeps, disable=not progress, desc="align", unit="sweep")
    try:
        for _ in range(max_sweeps):
            order = torch.randperm(len(units), generator=gen).tolist()
            for k in order:
                u = units[k]
                if isinstance(u, _HeadsBlock):
                    prob.step_heads(u)
                elif isinstance(u, _ScalesOnly):
                    prob.step_site(u.site, scales_only=True)
                else:
                    prob.step_site(u)
            sweeps += 1
            history.append(weight_distance(prob.a, prob.b, relative=False))
            bar.update(1)
            bar.set_postfix(distance=f"{history[-1]:.4g}")
            if history[-2] - history[-1] <= tol * history[-2]:
                break
    finally:
        bar.close()
    return history, sweeps
