"""align(model_a, model_b): bring B as close as possible to A with one group element per site.

The elements are those of ``trace(B)``: every site's intertwiner group (``group="full"``), its
permutation subgroup (``group="permutation"``, the Git Re-Basin baseline) or nothing
(``group="none"``). B transformed by them computes exactly B's function.

Weight matching (``method="weights"``) minimises the squared Euclidean distance between the
parameters (buffers such as BatchNorm running statistics are moved but not counted)

    D(g) = sum over parameters || theta_A - (g . theta_B) ||^2

by coordinate descent over sites in a seeded random order: each step solves, exactly for the
monomial families, the site's element with every other site held fixed (``groups.fit_element``:
Hungarian assignment on per-pair costs with the family's best scale per pair; for positive scalings
of ReLU that scale balances the incoming rows, which it multiplies, against the outgoing columns,
which it divides; orthogonal Procrustes / least squares for dense sites), until a sweep lowers D
by less than ``tol`` relative to its value. Each step is accepted only if it does not increase D,
so D never increases. An attention-heads site is solved jointly with its per-head maps: the cost
of pairing head i of A with head j of B is the residual after the best per-head maps (qk, vo),
and the permutation of heads is the assignment on those residuals.

Continuous scales (``group="full"`` at sites such as ReLU's, whose positive scalings leave the
function unchanged) are by default not searched at all: both models are first moved to a
representative of their scaling orbits (``scales="balanced"``: the least-norm point, see
``alignment._scales``), only the discrete part (permutations, signs) is searched between the
representatives, and the element found is mapped back to A's frame (``c_A^-1 P c_B``). Scales
chosen to minimise D (``scales="distance"``, the earlier rule) shrink or inflate units to fit
A's weights, which the midpoint of the merge pays for (README, "Alignment and merging").

Activation matching (``method="activations"``) streams, in one pass over ``data``, the cross and
second moments of both models' features at every site (``Site.activations``: a residual stream
pools all its activation outputs; memory O(width^2) per site, never N x C) and solves per site
``min_g E || h_A - phi(g) h_B ||^2`` in the features themselves for the permutation and signs,
with continuous scales set per pair so that ``phi(s) h_B,j`` has the energy of ``h_A,i`` (the
least-squares scale collapses to 0 for uncorrelated pairs). Features say little about the scale
of a unit that rarely fires, so the continuous scales (ReLU's positive scaling) are then refined
by weight matching with the permutations held fixed: activations choose *which* unit, weights
*how much* (a scaled copy is recovered either way). Sites without captured activations (e.g. a
pre-LN transformer's stream, attention maps, a functional activation that no module hook can see)
are then aligned by weight matching with the others fixed.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intertwiner import _products as products
from intertwiner import _validate
from intertwiner._types import DataLike, ExampleInput
from intertwiner.alignment._scales import representatives
from intertwiner.alignment._views import axis_rows, feature_rows, tensor_of
from intertwiner.errors import InvalidOptionError, NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.groups import (
    PERMUTATION,
    SIGNED_PERMUTATION,
    DenseElement,
    FitTerm,
    GroupElement,
    MonomialElement,
    best_assignment,
    family,
    fit_dense_batch,
    fit_element,
    pair_costs,
)
from intertwiner.symmetry import Site, SymmetrySpec, apply, trace
from intertwiner.symmetry.apply import restore, transform_site

METHODS = ("weights", "activations")
GROUPS = ("full", "permutation", "none")
SCALES = ("balanced", "unit_norm", "distance")


@dataclass
class SiteReport:
    """How far B moved toward A at one site: relative weight distance over the parameters the
    site's element touches, before and after alignment."""

    name: str
    kind: str
    group: str
    width: int
    before: float
    after: float


@dataclass(repr=False)
class Alignment:
    """Result of ``align``. Unpacks as ``model, elements = align(...)``.

    ``model``: B transformed by ``elements`` (B itself is untouched). ``history``: total squared
    weight distance D before alignment and after each sweep (weight matching; non-increasing),
    between the scale representatives of A and B when ``scales`` chose them.
    """

    model: nn.Module
    elements: dict[str, GroupElement]
    spec: SymmetrySpec
    method: str
    group: str
    history: list[float] = field(default_factory=list)
    sites: list[SiteReport] = field(default_factory=list)
    seconds: float = 0.0
    sweeps: int = 0

    def __iter__(self):
        yield self.model
        yield self.elements

    def __repr__(self) -> str:
        # The model, spec and elements would print thousands of characters: summarise them.
        moved = ""
        if self.history:
            moved = f", distance^2 {self.history[0]:.4g} -> {self.history[-1]:.4g}"
        return (
            f"Alignment(method={self.method!r}, group={self.group!r}, sites={len(self.sites)}, "
            f"sweeps={self.sweeps}{moved}, seconds={self.seconds:.2f}; .model, .elements, "
            ".table())"
        )

    def table(self) -> str:
        """Per site: relative weight distance to A before and after alignment."""
        head = ["site", "kind", "group", "width", "before", "after"]
        rows = [
            [s.name, s.kind, s.group, str(s.width), f"{s.before:.4f}", f"{s.after:.4f}"]
            for s in self.sites
        ]
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(line.rstrip() for line in out)


# -- helpers -----------------------------------------------------------------------------------
def weight_distance(model_a: nn.Module, model_b: nn.Module, *, relative: bool = True) -> float:
    """``||theta_A - theta_B|| / ||theta_A||`` over all parameters (``relative=False``: the squared
    distance D itself). Buffers are not counted."""
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    _check_same(pa, pb)
    d = sum(_sq_diff(pa[k], pb[k]) for k in pa)
    if not relative:
        return d
    n = sum(_sq_diff(pa[k], None) for k in pa)
    return (d / n) ** 0.5 if n > 0 else 0.0


#: Elements per chunk of a float64 reduction: a 124M-parameter model is never copied whole.
_CHUNK = 1 << 22


def _sq_diff(x: torch.Tensor, y: torch.Tensor | None) -> float:
    """``sum((x - y)^2)`` (``y=None``: ``sum(x^2)``) chunk by chunk, the chunk sums added in
    float64. Two float32 tensors are subtracted and squared in float32 (relative error ~1e-7:
    a ``LARGE`` model's search runs in float32 anyway), anything else in float64."""
    xf = x.detach().reshape(-1)
    yf = None if y is None else y.detach().reshape(-1)
    single = xf.dtype == torch.float32 and (yf is None or yf.dtype == torch.float32)
    dt = torch.float32 if single else torch.float64
    total = 0.0
    for start in range(0, xf.numel(), _CHUNK):
        d = xf[start : start + _CHUNK].to(dt)
        if yf is not None:
            d = d - yf[start : start + _CHUNK].to(dt)
        total += float(torch.dot(d, d))
    return total


def _check_same(pa: dict, pb: dict) -> None:
    if pa.keys() != pb.keys():
        raise ShapeError(
            "models A and B have different parameters; alignment needs two models of one "
            f"architecture (only in A: {sorted(set(pa) - set(pb))[:5]}, only in B: "
            f"{sorted(set(pb) - set(pa))[:5]})"
        )
    bad = [k for k in pa if pa[k].shape != pb[k].shape]
    if bad:
        raise ShapeError(
            f"models A and B differ in shape at {bad[:5]}; alignment needs equal architectures"
        )


def _site_family(site: Site, group: str):
    if group == "permutation":
        return PERMUTATION
    fam = family(site.group.family)
    if group == "discrete" and fam.free_scales:
        # The canonical forms fixed the continuous scales: only the discrete part is searched.
        return SIGNED_PERMUTATION if fam.flips_signs else PERMUTATION
    return site.group.family


def _identity(site: Site, group: str) -> GroupElement:
    return family(_site_family(site, group)).identity(site.width)


def _param_names(sites: list[Site]) -> list[str]:
    names: list[str] = []
    for s in sites:
        for a in s.actions:
            if not a.buffer and a.name not in names:
                names.append(a.name)
    return names


def _partial_distance(a: nn.Module, b: nn.Module, names: list[str]) -> float:
    return sum(_sq_diff(a.get_parameter(n), b.get_parameter(n)) for n in names)


def _terms(
    site: Site,
    a: nn.Module,
    b: nn.Module,
    dense: bool,
    shift: dict[int, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float64,
) -> list[FitTerm]:
    """Weight statistics of one site: A's rows vs B's rows on every parameter axis it acts on.
    ``shift[k]``: channels to read from B for action k instead of the action's own. The products
    are formed in ``dtype`` (float32 for large models: half the time and memory) and returned in
    float64."""
    terms = []
    for k, ax in enumerate(site.actions):
        if ax.buffer:
            continue
        x = axis_rows(tensor_of(a, ax).detach(), ax).to(dtype).cpu()
        ch = None if shift is None else shift.get(k)
        y = axis_rows(tensor_of(b, ax).detach(), ax, ch).to(dtype).cpu()
        gram = products.gram(y) if dense else (y * y).sum(1)
        cross = products.matmul(x, y.T)
        terms.append(FitTerm(ax.kind, cross.double(), gram.double(), (x * x).sum(1).double()))
    return terms


def _fit(site: Site, group: str, terms: list[FitTerm], scale: str = "least_squares"):
    fam = family(_site_family(site, group))
    return fit_element(fam, site.group.phi_kind, terms, scale=scale)


# -- attention heads: a permutation of blocks solved with the per-head maps -------------------
@dataclass
class _HeadsBlock:
    heads: Site
    #: subs[h] = the per-head sites at head position h, in spec order (qk, vo, ...)
    subs: list[list[Site]]
    inner: dict[tuple[str, int], int]  # (param, axis) -> channels per head in the sub-site view
    uncovered: list[int]  # indices of heads actions no per-head site touches


def _heads_blocks(spec: SymmetrySpec) -> tuple[list[_HeadsBlock], set[str]]:
    """Attention-heads sites with their per-head sites (found structurally: a site whose every
    action lies inside one head's block of a heads action)."""
    blocks, used = [], set()
    for hs in spec.sites:
        if hs.kind != "attention_heads" or not family(hs.group.family).monomial:
            continue
        # A packed q|k|v projection gives the heads site several actions on one tensor axis,
        # one per slot (channel blocks); a per-head action belongs to the slot holding its block.
        views: dict[tuple[str, int], list] = {}
        for a in hs.actions:
            views.setdefault((a.name, a.axis), []).append(a)
        subs: list[list[Site]] = [[] for _ in range(hs.width)]
        inner: dict[tuple[str, int], int] = {}
        covered: set[tuple[str, int]] = set()
        for s in spec.sites:
            if s is hs or s.name in used:
                continue
            pos = set()
            ok = bool(s.actions)
            for a in s.actions:
                h = _slot_of(a, views.get((a.name, a.axis), []))
                if h is None:
                    ok = False
                    break
                slots = list(h.channels) if h.channels is not None else list(range(h.n_total))
                pos |= {slots.index(c // h.inner) for c in a.channels}
                inner[(a.name, a.axis)] = h.inner
            if not ok or len(pos) != 1:
                continue
            p = pos.pop()
            subs[p].append(s)
            covered.update((a.name, a.axis) for a in s.actions)
        if not any(subs) or len({len(x) for x in subs}) != 1:
            continue
        for x in subs:
            used.update(s.name for s in x)
        uncovered = [k for k, a in enumerate(hs.actions) if (a.name, a.axis) not in covered]
        blocks.append(_HeadsBlock(hs, subs, inner, uncovered))
    return blocks, used


def _slot_of(a, candidates: list):
    """The heads action (of ``candidates``, on ``a``'s tensor axis) whose head blocks hold every
    channel of the per-head action ``a``; None if there is none."""
    if a.channels is None or a.inner != 1:
        return None
    for h in candidates:
        slots = set(h.channels) if h.channels is not None else set(range(h.n_total))
        fits = a.outer == h.outer and a.n_total == h.n_total * h.inner
        if fits and {c // h.inner for c in a.channels} <= slots:
            return h
    return None


def _shifted(sub: Site, block: _HeadsBlock, i: int, j: int) -> dict[int, tuple[int, ...]]:
    out = {}
    for k, a in enumerate(sub.actions):
        step = block.inner[(a.name, a.axis)]
        out[k] = tuple(c + (j - i) * step for c in a.channels)
    return out


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

    def __init__(self, a: nn.Module, b: nn.Module, spec: SymmetrySpec, group: str):
        self.a = a
        large = sum(p.numel() for p in b.parameters()) > LARGE
        low = next((p.dtype for p in b.parameters()), torch.float32) != torch.float64
        self.dtype = torch.float32 if large and low else torch.float64
        self.b = copy.deepcopy(b).to(self.dtype).eval()
        self.spec, self.group = spec, group
        self.elements = {s.name: _identity(s, group) for s in spec.sites}

    def terms(self, site: Site, dense: bool, shift=None) -> list[FitTerm]:
        return _terms(site, self.a, self.b, dense, shift, self.dtype)

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
        fam = family(_site_family(site, self.group))
        terms = self.terms(site, dense=not fam.monomial)
        if not terms:
            return False
        if scales_only:
            # The permutation stays; each unit gets its best scale (the diagonal pair costs).
            _, scales = pair_costs(fam, site.group.phi_kind, terms)
            delta = MonomialElement(torch.arange(site.width), torch.diagonal(scales).clone())
        else:
            delta, _ = _fit(site, self.group, terms)

        def compose():
            self.elements[site.name] = delta @ self.elements[site.name]

        return self._guarded([site], {site.name: delta}, compose)

    def _batched_slots(self, block: _HeadsBlock) -> bool:
        """Whether every per-head slot is dense and laid out alike in every head (the same
        parameters, kinds and channels shifted by whole heads): then the costs of all head pairs
        come from one product per action and one batched fit (``_head_costs``)."""
        n = block.heads.width
        for k, sub0 in enumerate(block.subs[0]):
            if family(_site_family(sub0, self.group)).monomial:
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
                fam = family(_site_family(sub0, self.group))
                # Closed-form candidates rank the n^2 pairs; the polish runs on the n chosen.
                terms = self._slot_terms(block, k, pairs=True)
                cost += fit_dense_batch(fam, terms, refine=False)[1]
            return cost
        for i in range(n):
            for j in range(n):
                for sub in block.subs[i]:
                    dense = not family(_site_family(sub, self.group)).monomial
                    terms = self.terms(sub, dense, _shifted(sub, block, i, j))
                    cost[i, j] += _fit(sub, self.group, terms)[1]
        return cost

    def _head_fits(self, block: _HeadsBlock) -> dict[str, GroupElement]:
        """The best per-head map of every per-head site, A's head h against B's head h."""
        out: dict[str, GroupElement] = {}
        if self._batched_slots(block):
            for k, sub0 in enumerate(block.subs[0]):
                fam = family(_site_family(sub0, self.group))
                mats, _ = fit_dense_batch(fam, self._slot_terms(block, k, pairs=False))
                for h, subs in enumerate(block.subs):
                    out[subs[k].name] = DenseElement(mats[h].contiguous())
            return out
        for subs in block.subs:
            for sub in subs:
                dense = not family(_site_family(sub, self.group)).monomial
                out[sub.name] = _fit(sub, self.group, self.terms(sub, dense))[0]
        return out

    def step_heads(self, block: _HeadsBlock) -> bool:
        hs, n = block.heads, block.heads.width
        cost = self._head_costs(block)
        if block.uncovered:
            acts = [hs.actions[k] for k in block.uncovered]
            tmp = Site(hs.name, hs.kind, hs.width, hs.group, actions=acts)
            pc, _ = pair_costs(PERMUTATION, "identity", self.terms(tmp, False))
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


def _in_frame(
    c_a: GroupElement | None, found: GroupElement, c_b: GroupElement | None
) -> GroupElement:
    """``c_a^-1 @ found @ c_b`` (a missing canonical element is the identity)."""
    out = found if c_b is None else found @ c_b.to(torch.float64)
    return out if c_a is None else c_a.to(torch.float64).inverse() @ out


def _example_input(model: nn.Module, data: Any, example_input: Any) -> Any:
    if example_input is not None:
        return example_input
    if data is not None:
        from intertwiner.features import iter_batches

        for x in iter_batches(data, batch_size=8):
            return x[:8]
    from intertwiner.models import example_input as guess

    x = guess(model)  # a zoo model's input, or (N, in_features) before a first Linear
    if x is not None:
        return x
    raise InvalidOptionError(
        f"align cannot tell the input of {type(model).__name__}: pass example_input= (one batch "
        "the model takes) or data= (a Dataset, DataLoader or tensor of inputs)"
    )


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


def _activation_sites(
    prob: _Problem,
    model_a: nn.Module,
    model_b: nn.Module,
    sites: list[Site],
    data: DataLike,
    *,
    batch_size: int,
    max_samples: int | None,
    progress: bool,
) -> list[Site]:
    """Fit every site with captured activations from one streamed pass; returns those sites."""
    from intertwiner.features import Capturer, LayerNotFoundError, limited_batches

    def capturable(name: str) -> bool:
        """A module, the k-th call of one (``relu#2``) or a functional call torch.fx can find."""
        try:
            Capturer(model_a, [name]), Capturer(model_b, [name])
        except LayerNotFoundError:
            return False
        return bool(name)

    plan: dict[str, list[str]] = {}
    for s in sites:
        acts = [n for n in s.activations if capturable(n)]
        if acts:
            plan[s.name] = acts
    if not plan:
        return []
    by_name = {s.name: s for s in sites}
    dense = {n: not family(_site_family(by_name[n], prob.group)).monomial for n in plan}
    layers = sorted({a for acts in plan.values() for a in acts})
    stats: dict[tuple[str, str], list[torch.Tensor]] = {}
    seen = 0
    with Capturer(model_a, layers) as cap_a, Capturer(model_b, layers) as cap_b:
        for x in limited_batches(data, batch_size, max_samples, progress, desc="activations"):
            fa, fb = cap_a.run(x), cap_b.run(x)
            seen += x.shape[0]
            for sname, acts in plan.items():
                site = by_name[sname]
                for act in acts:
                    ax = site.activation_axes[act]
                    xa = feature_rows(fa[act], ax).double()
                    xb = feature_rows(fb[act], ax).double()
                    gram = products.cov(xb) if dense[sname] else (xb * xb).sum(0)
                    new = [products.matmul(xa.T, xb), gram, (xa * xa).sum(0)]
                    key = (sname, act)
                    if key in stats:
                        for t, d in zip(stats[key], new, strict=True):
                            t += d
                    else:
                        stats[key] = new
    if seen == 0:
        raise TooFewSamplesError("no data: the data source yielded no batches")
    done = []
    for sname, acts in plan.items():
        site = by_name[sname]
        terms = [FitTerm(site.activation_axes[act].kind, *stats[(sname, act)]) for act in acts]
        if not all(torch.isfinite(t.cross).all() for t in terms):
            raise NonFiniteError(f"non-finite features at site {sname!r}")
        delta, _ = _fit(site, prob.group, terms, scale="norm")
        transform_site(prob.b, site, delta)
        prob.elements[sname] = delta @ prob.elements[sname]
        done.append(site)
    return done


def _search(
    prob: _Problem,
    model_a: nn.Module,
    model_b: nn.Module,
    spec: SymmetrySpec,
    data: DataLike,
    method: str,
    group: str,
    **options: Any,
) -> tuple[list[float], int]:
    """Fill ``prob.elements``: activation matching first where asked, then weight matching over
    the remaining sites (and the scales activations cannot see). Returns (history, sweeps)."""
    blocks, in_blocks = _heads_blocks(spec)
    heads = {b.heads.name for b in blocks}
    free = [s for s in spec.sites if s.name not in heads and s.name not in in_blocks]
    scale_sites: list[Site] = []
    if method == "activations":
        done = _activation_sites(
            prob, model_a, model_b, free, data, batch_size=options["batch_size"],
            max_samples=options["max_samples"], progress=options["progress"],
        )  # fmt: skip
        fixed = {s.name for s in done}
        free = [s for s in free if s.name not in fixed]
        # Continuous scales come from the weights (see the module docstring); between scale
        # representatives only signs are left, which features that move by the permutation
        # alone (a gated unit) cannot see either.
        scale_sites = [
            s
            for s in done
            if _site_family(s, group).free_scales
            or (group == "discrete" and family(s.group.family).free_scales
                and _site_family(s, group).flips_signs)
        ]  # fmt: skip
    return _weight_matching(
        prob, free, blocks, max_sweeps=options["max_sweeps"], tol=options["tol"],
        seed=options["seed"], progress=options["progress"], scale_sites=scale_sites,
    )  # fmt: skip


def _site_reports(
    spec: SymmetrySpec, model_a: nn.Module, model_b: nn.Module, aligned: nn.Module, group: str
) -> list[SiteReport]:
    """Per site: the relative distance of the parameters it touches, before and after."""
    reports = []
    for s in spec.sites:
        names = _param_names([s])
        norm = sum(_sq_diff(model_a.get_parameter(n), None) for n in names)
        norm = max(norm, 1e-300)
        reports.append(
            SiteReport(
                s.name,
                s.kind,
                s.group.name if group == "full" else ("P" if group == "permutation" else "1"),
                s.width,
                (_partial_distance(model_a, model_b, names) / norm) ** 0.5,
                (_partial_distance(model_a, aligned, names) / norm) ** 0.5,
            )
        )
    return reports


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike | None = None,
    method: str = "weights",
    group: str = "full",
    spec: SymmetrySpec | None = None,
    example_input: ExampleInput | None = None,
    max_sweeps: int = 100,
    tol: float = 1e-9,
    seed: int = 0,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
    scales: str = "balanced",
) -> Alignment:
    """B transformed by one element per site of ``trace(B)``, chosen to bring B close to A.

    ``method``: ``"weights"`` (coordinate descent on the parameter distance; no data needed) or
    ``"activations"`` (one streamed pass over ``data``; see the module docstring for both
    objectives). ``group``: ``"full"`` (each site's intertwiner group), ``"permutation"`` (its
    permutations only: Git Re-Basin) or ``"none"`` (identity everywhere). ``spec``: a traced spec
    of B to reuse; otherwise B is traced on ``example_input`` (default: a batch of ``data``, or a
    random input shaped from the zoo config). ``seed`` orders the sites of each sweep.
    ``scales`` (``group="full"``, sites with continuous scales such as ReLU's): ``"balanced"``
    (default) moves both models to the least-norm point of their scaling orbits (each unit's
    incoming and outgoing energies balanced), ``"unit_norm"`` to ``symmetry.canonicalize``'s
    representative (incoming norms 1); then only the discrete part (permutations, signs) is
    searched between the representatives and the result is mapped back to A's frame.
    ``"distance"`` optimises the scales for the weight distance itself (the earlier rule, which
    makes worse merges; see the README and ``alignment._scales``). With a representative, the
    ``history`` is the distance between the representatives.
    Returns an ``Alignment`` (unpacks as ``(aligned_b, elements)``); ``model_b`` is untouched.
    """
    if method not in METHODS:
        raise InvalidOptionError(f"method must be one of {METHODS}, got {method!r}")
    max_sweeps = _validate.positive_int(max_sweeps, "max_sweeps")
    if group not in GROUPS:
        raise InvalidOptionError(f"group must be one of {GROUPS}, got {group!r}")
    if method == "activations" and data is None and group != "none":
        raise InvalidOptionError(
            "method='activations' needs data= (a DataLoader, Dataset or tensor)"
        )
    if scales not in SCALES:
        raise InvalidOptionError(f"scales must be one of {SCALES}, got {scales!r}")
    _check_same(dict(model_a.named_parameters()), dict(model_b.named_parameters()))
    start = time.perf_counter()
    if spec is None:
        spec = trace(model_b, _example_input(model_b, data, example_input))
    canonical = (
        group == "full"
        and scales != "distance"
        and any(family(s.group.family).free_scales for s in spec.sites)
    )
    if canonical:
        # Scales are fixed by the orbit representatives, not searched (see the README for why).
        src_a, src_b, to_a, to_b = representatives(model_a, model_b, spec, scales)
        search_group = "discrete"
    else:
        src_a, src_b, search_group = model_a, model_b, group
    prob = _Problem(src_a, src_b, spec, search_group)
    history: list[float] = [weight_distance(prob.a, prob.b, relative=False)]
    sweeps = 0
    if group != "none":
        history, sweeps = _search(
            prob, src_a, src_b, spec, data, method, search_group, max_sweeps=max_sweeps,
            tol=tol, seed=seed, batch_size=batch_size, max_samples=max_samples, progress=progress,
        )  # fmt: skip
    elements = prob.elements
    prob.b = None  # the working copy goes before the aligned copy is made (peak memory)
    if canonical:
        # B' = c_A^-1 . P . c_B . B: the element found between the canonical forms, in A's frame.
        elements = {
            s.name: _in_frame(to_a.get(s.name), elements[s.name], to_b.get(s.name))
            for s in spec.sites
        }
    aligned = apply(model_b, spec, elements, validate=False)
    reports = _site_reports(spec, model_a, model_b, aligned, group)
    return Alignment(
        model=aligned,
        elements=elements,
        spec=spec,
        method=method,
        group=group,
        history=history,
        sites=reports,
        seconds=time.perf_counter() - start,
        sweeps=sweeps,
    )
