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
    ActionKind,
    DenseElement,
    FitTerm,
    GroupElement,
    MonomialElement,
    best_assignment,
    fit_dense_batch,
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
    dtype: torch.dtype = torch.float64,
    summed: bool = False,
) -> list[FitTerm]:
    """Weight statistics of one site: A's rows vs B's rows on every parameter axis it acts on.
    ``shift[k]``: channels to read from B for action k instead of the action's own. The products
    are formed in ``dtype`` (float32 for large models: half the time and memory) and returned in
    float64. ``summed`` (a permutation search, where every kind acts on a row as the permutation
    itself): one term of kind ``"P"`` with the statistics summed over the axes (the same J;
    GPT-2's 3,072 units: one (width, width) matrix to convert and assign from instead of three,
    one of them the bias's outer product)."""
    terms = []
    for k, ax in enumerate(site.actions):
        if ax.buffer or not ActionKind(ax.kind).on_site_axis:
            # buffers follow; a kernel flip (reversal sites) follows the element; a one-number
            # parameter (c P sites) has no row per unit to match
            continue
        x = axis_rows(tensor_of(a, ax).detach(), ax).to(dtype).cpu()
        ch = None if shift is None else shift.get(k)
        y = axis_rows(tensor_of(b, ax).detach(), ax, ch).to(dtype).cpu()
        gram = products.gram(y) if dense else (y * y).sum(1)
        cross = products.matmul(x, y.T)
        if summed and terms:  # one term: every kind moves rows alike under a permutation
            t = terms[0]
            t.cross += cross
            t.gram, t.sq_a = t.gram + gram, t.sq_a + (x * x).sum(1)
        else:
            terms.append(FitTerm("P" if summed else ax.kind, cross, gram, (x * x).sum(1)))
    # (in float64 once, after the sums: one conversion of the (width, width) cross moments)
    return [FitTerm(t.kind, t.cross.double(), t.gram.double(), t.sq_a.double()) for t in terms]


def _fit(site: Site, extent: Extent, terms: list[FitTerm], scale: str = "least_squares"):
    return fit_element(extent.family_at(site), site.group.phi_kind, terms, scale=scale)


# -- coordinate descent ----------------------------------------------------------------------
#: Above this many parameters B's working copy keeps B's precision (float32) instead of float64,
#: and the search's products run in it: a float64 copy would double B's memory (GPT-2 small:
#: 124M parameters). The aligned model is applied to B afresh either way, so it stays exact.
LARGE = 20_000_000
#: Steps touching more bytes than this undo a rejected step with the inverse element instead of
#: a saved copy (no copy of the whole model for a residual stream's site).
_SAVE_BYTES = 64 << 20


class _Problem:
    """Coordinate descent state: A (read, never copied), the working copy of B (float64 unless
    ``LARGE``) and the elements so far."""

    def __init__(self, a: nn.Module, b: nn.Module, spec: SymmetrySpec, extent: Extent):
        self.a = a
        large = sum(p.numel() for p in b.parameters()) > LARGE
        low = next((p.dtype for p in b.parameters()), torch.float32) != torch.float64
        self.dtype = torch.float32 if large and low else torch.float64
        self.b = copy.deepcopy(b).to(self.dtype).eval()
        self.spec, self.extent = spec, extent
        self.elements = {s.name: extent.identity(s) for s in spec.sites}

    def terms(self, site: Site, dense: bool, shift=None, summed: bool = False) -> list[FitTerm]:
        return _terms(site, self.a, self.b, dense, shift, self.dtype, summed)

    def _guarded(self, sites: list[Site], deltas: dict[str, GroupElement], compose) -> bool:
        names = _param_names(sites)
        before = _partial_distance(self.a, self.b, names)
        touched = {id(t): t for s in sites for a in s.actions for t in [tensor_of(self.b, a)]}
        small = sum(t.numel() * t.element_size() for t in touched.values()) <= _SAVE_BYTES
        done = [s for s in sites if s.name in deltas]
        # Folds (a norm's scale moved into weights) have no inverse to undo them with: save.
        saved: dict | None = {} if small or any(s.folds for s in done) else None
        for s in done:
            transform_site(self.b, s, deltas[s.name], saved)
        after = _partial_distance(self.a, self.b, names)
        if after > before * (1 + 1e-12) + 1e-300:
            if saved is not None:
                restore(saved)
            else:  # undo in reverse order (exact up to rounding: B's aligned copy is fresh)
                for s in reversed(done):
                    transform_site(self.b, s, deltas[s.name].inverse())
            return False
        compose()
        return True

    def step_site(self, site: Site, scales_only: bool = False) -> bool:
        fam = self.extent.family_at(site)
        # every scale 1 (permutations, the reversal): all axes' statistics add into one term
        terms = self.terms(site, dense=not fam.monomial, summed=fam <= PERMUTATION)
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

    def _batched_slots(self, block: _HeadsBlock) -> bool:
        """Whether every per-head slot is dense and laid out alike in every head (the same
        parameters, kinds and channels shifted by whole heads): then the costs of all head pairs
        come from one product per action and one batched fit (``_head_costs``)."""
        n = block.heads.width
        for k, sub0 in enumerate(block.subs[0]):
            if self.extent.family_at(sub0).monomial:
                return False
            for i in range(n):
                sub = block.subs[i][k]
                same = [(a.name, a.axis, a.kind, a.within) for a in sub.actions] == [
                    (a.name, a.axis, a.kind, a.within) for a in sub0.actions
                ]
                if not same or sub.width != sub0.width or any(a.buffer for a in sub.actions):
                    return False
                back = _shifted(sub, block, i, 0)
                if any(back[q] != tuple(a.channels) for q, a in enumerate(sub0.actions)):
                    return False
        return True

    def _slot_terms(self, block: _HeadsBlock, k: int, pairs: bool) -> list[FitTerm]:
        """Statistics of per-head slot ``k`` for all heads at once: A's head i against B's head j
        (``pairs``: cross (n, n, w, w), B moments (1, n, w, w), |x|^2 (n, 1, w)) or against B's
        head i (cross (n, w, w), moments (n, w, w), |x|^2 (n, w))."""
        n, sub0 = block.heads.width, block.subs[0][k]
        terms = []
        for q, ax in enumerate(sub0.actions):
            xa = [axis_rows(tensor_of(self.a, block.subs[i][k].actions[q]).detach(),
                            block.subs[i][k].actions[q]) for i in range(n)]  # fmt: skip
            yb = [axis_rows(tensor_of(self.b, ax).detach(), ax, _shifted(sub0, block, 0, j)[q])
                  for j in range(n)]  # fmt: skip
            x = torch.stack(xa).double()  # (n, w, R): small (one layer's heads)
            y = torch.stack(yb).double()
            w = x.shape[1]
            gram = torch.bmm(y, y.transpose(1, 2))
            sq = (x * x).sum(-1)
            if pairs:
                flat = products.matmul(x.reshape(n * w, -1), y.reshape(n * w, -1).T)
                cross = flat.reshape(n, w, n, w).permute(0, 2, 1, 3)
                terms.append(FitTerm(ax.kind, cross, gram[None], sq[:, None]))
            else:
                terms.append(FitTerm(ax.kind, torch.bmm(x, y.transpose(1, 2)), gram, sq))
        return terms

    def _head_costs(self, block: _HeadsBlock) -> torch.Tensor:
        """(n, n): the cost of pairing A's head i with B's head j, the residual after the best
        per-head maps of that pair (the sum over per-head slots)."""
        n = block.heads.width
        cost = torch.zeros(n, n, dtype=torch.float64)
        if self._batched_slots(block):
            for k, sub0 in enumerate(block.subs[0]):
                fam = self.extent.family_at(sub0)
                # Closed-form candidates rank the n^2 pairs; the polish runs on the n chosen.
                terms = self._slot_terms(block, k, pairs=True)
                cost += fit_dense_batch(fam, terms, refine=False)[1]
            return cost
        for i in range(n):
            for j in range(n):
                for sub in block.subs[i]:
                    dense = not self.extent.family_at(sub).monomial
                    terms = self.terms(sub, dense, _shifted(sub, block, i, j))
                    cost[i, j] += _fit(sub, self.extent, terms)[1]
        return cost

    def _head_fits(self, block: _HeadsBlock) -> dict[str, GroupElement]:
        """The best per-head map of every per-head site, A's head h against B's head h."""
        out: dict[str, GroupElement] = {}
        if self._batched_slots(block):
            for k, sub0 in enumerate(block.subs[0]):
                fam = self.extent.family_at(sub0)
                mats, _ = fit_dense_batch(fam, self._slot_terms(block, k, pairs=False))
                for h, subs in enumerate(block.subs):
                    out[subs[k].name] = DenseElement(mats[h].contiguous())
            return out
        for subs in block.subs:
            for sub in subs:
                dense = not self.extent.family_at(sub).monomial
                out[sub.name] = _fit(sub, self.extent, self.terms(sub, dense))[0]
        return out

    def step_heads(self, block: _HeadsBlock) -> bool:
        hs, n = block.heads, block.heads.width
        cost = self._head_costs(block)
        if block.uncovered:
            acts = [hs.actions[k] for k in block.uncovered]
            tmp = Site(hs.name, hs.kind, hs.width, hs.group, actions=acts)
            pc, _ = pair_costs(PERMUTATION, "identity", self.terms(tmp, False, summed=True))
            cost += pc
        perm = best_assignment(-cost)  # the cheapest pairing
        dperm = MonomialElement(perm, torch.ones(n, dtype=torch.float64))
        names = _param_names([hs, *[s for x in block.subs for s in x]])
        before = _partial_distance(self.a, self.b, names)
        saved: dict = {}
        transform_site(self.b, hs, dperm, saved)
        sub_deltas = self._head_fits(block)
        for h in range(n):
            for sub in block.subs[h]:
                transform_site(self.b, sub, sub_deltas[sub.name], saved)
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
