"""``canonicalize``: the representative of a model's orbit under its traced group; ``fingerprint``.

Each site's element is chosen by ``groups.canonical_element`` from the site's *key*: the rows it
moves (incoming weights, BatchNorm parameters and statistics, outgoing columns) that no other
unfinished site also moves. Canonicalising one site changes rows other sites read, so sites are
taken one at a time in a fixed order that depends only on the spec: the first site (in spec order)
all of whose rows are ready, else the first with some ready rows. A row is ready when every other
site that moves that tensor on another axis (or on the same channels) is already canonical. Then
for two models ``m`` and ``g . m`` each step sees keys that differ by the site's own element only,
so both end at the same weights (by induction over the order).

Attention: the heads permutation and the per-head maps (qk, vo) move the same rows, so each heads
site is taken together with its per-head sites: heads are ordered by invariants of their per-head
maps (projections of ``W_q^T W_k`` and ``W_o W_v``; rows of no per-head site, e.g. grouped-query
keys, projected as they are), then each per-head map is canonicalised on its own.

Where a key does not determine the element (see ``groups._canonical``), or a site never gets a
ready row (a cycle through sites that could not be canonicalised), the site is reported on
``Canonical.sites`` with the reason and the rest still proceeds; ``strict=True`` raises instead.
The result always computes the model's function (every step is a group element; checked on the
example input when there is one).
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intertwiner.errors import InvalidOptionError, ShapeError, UnverifiedSymmetryError
from intertwiner.groups import (
    ActionKind,
    GroupElement,
    KeyTerm,
    MonomialElement,
    canonical_element,
    orbit_invariants,
    stable_order,
)
from intertwiner.symmetry._forward import run_flat, to_float64
from intertwiner.symmetry.apply import transform_site
from intertwiner.symmetry.spec import ParamAxis, Site, SymmetrySpec, axis_rows
from intertwiner.symmetry.trace import trace

#: Invariants per per-head site used to order attention heads.
_N_INVARIANTS = 4


@dataclass
class SiteCanonical:
    """How one site was canonicalised: ``status`` is ``"canonical"``, ``"ambiguous"`` (its key did
    not determine the element: ``note`` says why) or ``"not reached"`` (no ready key rows)."""

    name: str
    status: str
    note: str = ""
    key: list[str] = field(default_factory=list)


@dataclass
class Canonical:
    """Result of ``canonicalize``. Unpacks as ``(model, elements)``.

    ``model``: the canonical representative (a new module, the input's dtypes). ``elements``:
    the element applied at each site, in the order of ``order`` (a heads site before its per-head
    sites). ``error``: relative output change on the example input (float64; None without one).
    """

    model: nn.Module
    elements: dict[str, GroupElement]
    spec: SymmetrySpec
    sites: list[SiteCanonical]
    order: list[str]
    error: float | None = None

    def __iter__(self):
        yield self.model
        yield self.elements

    @property
    def not_canonical(self) -> list[str]:
        """Sites whose element the weights did not determine (see ``sites`` for the reasons)."""
        return [s.name for s in self.sites if s.status != "canonical"]

    @property
    def complete(self) -> bool:
        """True when every site was canonicalised: the model is the orbit's representative."""
        return not self.not_canonical

    def table(self) -> str:
        rows = [(s.name, s.status, s.note) for s in self.sites]
        w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("site", "status"))]
        out = [f"{'site'.ljust(w[0])}  {'status'.ljust(w[1])}  note"]
        out += [f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c}".rstrip() for a, b, c in rows]
        return "\n".join(out)


# -- regions: which rows of which tensor an action moves ------------------------------------------
@dataclass
class _Region:
    site: str
    tensor: int
    axis: int
    mask: torch.Tensor  # (size of the axis,) bool: the raw positions moved


def _mask(a: ParamAxis, size: int, channels: list[int] | None = None) -> torch.Tensor:
    m = torch.zeros(a.outer, a.n_total, a.inner, dtype=torch.bool)
    ch = channels if channels is not None else a.channels
    if ch is None:
        m[:] = True
    else:
        m[:, list(ch), :] = True
    if m.numel() != size:  # pragma: no cover (the spec's views always fit their axis)
        raise InvalidOptionError(f"{a.describe()}: view does not fit an axis of size {size}")
    return m.reshape(-1)


def _tensor(model: nn.Module, a: ParamAxis) -> torch.Tensor:
    return model.get_buffer(a.name) if a.buffer else model.get_parameter(a.name)


def _fitting_tensor(model: nn.Module, a: ParamAxis, site: Site) -> torch.Tensor:
    """The tensor of action ``a``; a spec traced from another model is refused, named."""
    try:
        t = _tensor(model, a)
    except AttributeError:
        t = None
    size = a.outer * a.n_total * a.inner
    if t is not None and a.scalar and t.numel() == 1:
        return t
    if t is None or t.dim() <= a.axis or t.shape[a.axis] != size:
        raise ShapeError(
            f"site {site.name!r} acts on {a.describe()}, which {type(model).__name__} does not "
            "have (or not with that size): the spec was traced from another model; trace this one"
        )
    return t


class _Board:
    """The regions of every action and which sites are finished: answers "is this row ready"."""

    def __init__(self, model: nn.Module, spec: SymmetrySpec):
        self.regions: dict[tuple[str, int], _Region] = {}
        self.by_tensor: dict[int, list[_Region]] = {}
        for s in spec.sites:
            for k, a in enumerate(s.actions):
                t = _fitting_tensor(model, a, s)
                # a one-number parameter (c P's scalar actions, 0-d tensors too): the whole tensor
                size = t.shape[a.axis] if t.dim() else 1
                mask = torch.ones(1, dtype=torch.bool) if a.scalar else _mask(a, size)
                r = _Region(s.name, id(t), a.axis, mask)
                self.regions[(s.name, k)] = r
                self.by_tensor.setdefault(r.tensor, []).append(r)
        self.done: set[str] = set()

    def ready(self, site: Site, k: int, group: set[str]) -> bool:
        """Action ``k`` of ``site`` reads no row that an unfinished site outside ``group`` (the
        sites processed together) moves, nor one a site of ``group`` moves on another axis."""
        r = self.regions[(site.name, k)]
        for o in self.by_tensor[r.tensor]:
            if o is r or o.site in self.done:
                continue
            if o.axis != r.axis or (o.site not in group and bool((o.mask & r.mask).any())):
                return False
        return True


# -- attention heads with their per-head sites ----------------------------------------------------
@dataclass
class _Unit:
    """Sites canonicalised in one step: a single site, or a heads site with its per-head sites."""

    sites: list[Site]
    heads: Site | None = None
    subs: list[list[Site]] = field(default_factory=list)  # per head position, in spec order

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.sites}


def _slot_masks(board: _Board, heads: Site) -> list[tuple[int, int, list[torch.Tensor]]]:
    """Per heads action: (tensor, axis, mask of each head position)."""
    out = []
    for k, a in enumerate(heads.actions):
        r = board.regions[(heads.name, k)]
        chans = list(a.channels) if a.channels is not None else list(range(a.n_total))
        out.append((r.tensor, r.axis, [_mask(a, r.mask.numel(), [c]) for c in chans]))
    return out


def _heads_unit(board: _Board, spec: SymmetrySpec, heads: Site, used: set[str]) -> _Unit | None:
    """``heads`` with the sites whose every action lies in one head's rows (None if they do not
    form the same number of per-head sites at every head)."""
    slots = _slot_masks(board, heads)
    tensors = {t for t, _, _ in slots}
    subs: list[list[Site]] = [[] for _ in range(heads.width)]
    for s in spec.sites:
        if s is heads or s.name in used or not s.actions:
            continue
        regions = [board.regions[(s.name, k)] for k in range(len(s.actions))]
        if any(r.tensor not in tensors for r in regions):
            continue
        pos = set()
        for r in regions:
            found = [
                j
                for t, ax, masks in slots
                if t == r.tensor and ax == r.axis
                for j, m in enumerate(masks)
                if not bool((r.mask & ~m).any())
            ]
            pos.add(found[0] if found else -1)
        if len(pos) == 1 and -1 not in pos:
            subs[pos.pop()].append(s)
    if not subs[0] or len({len(x) for x in subs}) != 1:
        return None
    return _Unit([heads, *[s for x in subs for s in x]], heads, subs)


def _units(board: _Board, spec: SymmetrySpec) -> list[_Unit]:
    """Every site in one unit, in spec order (a heads unit at its heads site's place)."""
    blocks: dict[str, _Unit] = {}
    used: set[str] = set()
    for s in spec.sites:
        if s.kind == "attention_heads" and s.group.family.monomial and s.name not in used:
            unit = _heads_unit(board, spec, s, used)
            if unit is not None:
                blocks[s.name] = unit
                used |= unit.names
    units = []
    for s in spec.sites:
        if s.name in blocks:
            units.append(blocks[s.name])
        elif s.name not in used:
            units.append(_Unit([s]))
    return units


# -- the canonicalisation -------------------------------------------------------------------------
class _Canonicaliser:
    def __init__(self, work: nn.Module, spec: SymmetrySpec, tol: float):
        self.work, self.spec, self.tol = work, spec, tol
        self.board = _Board(work, spec)
        self.elements: dict[str, GroupElement] = {}
        self.order: list[str] = []
        self.report: dict[str, SiteCanonical] = {}

    def _ready(self, unit: _Unit) -> tuple[int, int]:
        """(ready actions, all actions) over the unit's sites."""
        got = total = 0
        for s in unit.sites:
            for k in range(len(s.actions)):
                total += 1
                got += self.board.ready(s, k, unit.names)
        return got, total

    def _terms(self, site: Site, only_ready: bool, group: set[str]) -> tuple[list[KeyTerm], list]:
        terms, used = [], []
        for k, a in enumerate(site.actions):
            if not ActionKind(a.kind).on_site_axis:
                # a kernel flip (reversal sites) follows the element, a one-number parameter
                # (c P sites) the common factor: no key rows
                continue
            if only_ready and not self.board.ready(site, k, group):
                continue
            rows = axis_rows(_tensor(self.work, a).detach(), a).double()
            terms.append(KeyTerm(a.kind, rows))
            used.append(a)
        return terms, used

    def _finish(self, site: Site, g: GroupElement, issues: list[str], key: list) -> None:
        transform_site(self.work, site, g)
        self.elements[site.name] = g
        self.order.append(site.name)
        names = list(dict.fromkeys(a.name for a in key))
        if issues:
            self.report[site.name] = SiteCanonical(site.name, "ambiguous", "; ".join(issues), names)
        else:
            self.report[site.name] = SiteCanonical(site.name, "canonical", "", names)
            self.board.done.add(site.name)

    def _solve(self, site: Site) -> tuple[GroupElement, list[str], list]:
        terms, key = self._terms(site, True, {site.name})
        g, issues = canonical_element(
            site.group, terms, complete=len(key) == _on_site(site), tol=self.tol
        )
        return g, issues, key

    def site(self, site: Site) -> None:
        self._finish(site, *self._solve(site))

    def heads(self, unit: _Unit) -> None:
        hs = unit.heads
        features = []
        for k in range(len(unit.subs[0])):
            per_head = []
            for h in range(hs.width):
                sub = unit.subs[h][k]
                per_head.append(orbit_invariants(sub.group, self._terms(sub, False, set())[0], 4))
            if any(v is None for v in per_head):
                return self._give_up(unit, f"per-head site {unit.subs[0][k].name} has no "
                                     "invariants to order the heads by")  # fmt: skip
            features.append(torch.stack(per_head))
        covered = {(a.name, a.axis) for x in unit.subs for s in x for a in s.actions}
        rest = [
            KeyTerm(a.kind, axis_rows(_tensor(self.work, a).detach(), a).double())
            for a in hs.actions
            if (a.name, a.axis) not in covered
        ]
        if rest:
            # Rows no per-head map moves (grouped-query keys): ordered as a permutation key.
            g_rest, _ = canonical_element(hs.group, rest, complete=True, tol=self.tol)
            rank = torch.empty(hs.width, dtype=torch.float64)
            rank[g_rest.perm] = torch.arange(hs.width, dtype=torch.float64)
            features.append(rank.unsqueeze(1))
        perm, ties = stable_order(torch.cat(features, 1), self.tol)
        g = MonomialElement(perm, torch.ones(hs.width, dtype=torch.float64))
        issues = [f"heads {t} have equal invariants: their order is undefined" for t in ties]
        self._finish(hs, g, issues, hs.actions)
        for x in unit.subs:
            for sub in x:
                self.site(sub)

    def _give_up(self, unit: _Unit, why: str) -> None:
        for s in unit.sites:
            self.report[s.name] = SiteCanonical(s.name, "not reached", why)

    def run(self) -> None:
        pending = _units(self.board, self.spec)
        while pending:
            states = [(u, *self._ready(u)) for u in pending]
            pick = next((u for u, got, tot in states if got == tot), None)
            if pick is not None:
                pending.remove(pick)
                self.heads(pick) if pick.heads is not None else self.site(pick.sites[0])
                continue
            # No unit has all its rows ready: the first whose ready rows determine its element
            # (e.g. a unit whose outgoing columns are ready), else the first with any.
            partial = [u for u, got, _ in states if got and u.heads is None]
            if not partial:
                break
            solved = None
            for u in partial:
                g, issues, key = self._solve(u.sites[0])
                if not issues:
                    solved = (u, g, issues, key)
                    break
            if solved is None:
                u = partial[0]
                solved = (u, *self._solve(u.sites[0]))
            pending.remove(solved[0])
            self._finish(solved[0].sites[0], *solved[1:])
        for u in pending:
            blockers = sorted(
                {s.name for s in self.spec.sites if s.name not in self.board.done} - u.names
            )
            self._give_up(u, f"every key row is also moved by unfinished sites {blockers[:4]}")


def _prefold(work: nn.Module, spec: SymmetrySpec) -> None:
    """Apply every site's folds (an RMSNorm scale into the next layers) once: a no-op on the
    function that ``apply`` also performs, so orbits produced by ``apply`` share it."""
    for s in spec.sites:
        if s.folds:
            transform_site(work, Site(s.name, s.kind, s.width, s.group, folds=s.folds), _eye(s))


def _eye(site: Site) -> GroupElement:
    return site.group.identity(site.width)


def _example(model: nn.Module, example_input: Any) -> Any:
    if example_input is not None:
        return example_input
    cfg = getattr(model, "intertwiner_config", None)
    if cfg and "in_channels" in cfg and "input_size" in cfg:
        gen = torch.Generator().manual_seed(0)
        s = int(cfg["input_size"])
        return torch.randn(4, int(cfg["in_channels"]), s, s, generator=gen)
    return None


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def canonicalize(
    model: nn.Module,
    spec: SymmetrySpec | None = None,
    example_input: Any = None,
    *,
    strict: bool = False,
    tol: float = 1e-9,
) -> Canonical:
    """The representative of ``model``'s orbit under its traced group (module docstring).

    ``spec``: a traced spec of ``model`` (else it is traced on ``example_input``, or a random
    batch shaped from a zoo model's config). Work is done in float64; the canonical model keeps the
    input's dtypes. ``tol``: relative size under which two unit keys count as equal and a singular
    value gap as zero. ``strict=True`` raises ``UnverifiedSymmetryError`` when a site could not be
    canonicalised (``Canonical.sites`` says why) instead of returning a partial result.
    """
    x = _example(model, example_input)
    if spec is None:
        if x is None:
            raise InvalidOptionError(
                f"canonicalize needs spec= or example_input= (one batch) to trace "
                f"{type(model).__name__}"
            )
        spec = trace(model, x)
    work = copy.deepcopy(model).double().eval()
    _prefold(work, spec)
    with torch.no_grad():
        run = _Canonicaliser(work, spec, tol)
        run.run()
    sites = [run.report[s.name] for s in spec.sites]
    bad = [s for s in sites if s.status != "canonical"]
    if strict and bad:
        raise UnverifiedSymmetryError(
            f"{type(model).__name__}: sites not canonicalised: "
            + "; ".join(f"{s.name} ({s.status}: {s.note})" for s in bad[:5])
            + ". Pass strict=False to get the partial result with these sites listed."
        )
    out = copy.deepcopy(model)
    with torch.no_grad():
        for (_, t), (_, w) in zip(_tensors(out), _tensors(work), strict=True):
            t.copy_(w)
    error = _function_error(model, work, x, spec)
    return Canonical(out, run.elements, spec, sites, run.order, error)


def _function_error(model: nn.Module, work: nn.Module, x: Any, spec: SymmetrySpec) -> float | None:
    """Relative output change (float64) of the canonical model; raises if beyond round-off."""
    if x is None:
        return None
    inputs = to_float64(x)
    ref = run_flat(copy.deepcopy(model).double(), inputs, "canonicalize")
    got = run_flat(work, inputs, "canonicalize")
    err = float((ref - got).abs().max()) / (float(ref.abs().max()) or 1.0)
    limit = 1e3 * (spec.verified_tolerance or 1e-9)
    if not err <= limit:
        raise UnverifiedSymmetryError(
            f"the canonical {type(model).__name__} changed the outputs by {err:.2e} (relative; "
            f"limit {limit:.1e}): a traced site is not an exact symmetry of this model. Trace it "
            "with a more representative example_input and check the spec with symmetry.check."
        )
    return err


#: Projections of the canonical weights that the fingerprint quantises and hashes.
_SKETCH = 16
_CHUNK = 1 << 22


def _sketch(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """``(projections, norm)``: a count sketch of the unit vector of all entries (entry ``i``
    adds ``+-v_i`` to projection ``h(i) mod 16``, sign and bucket from a fixed integer hash of
    ``i``: one pass, O(entries)), and the norm. Each projection is a sum over ~1/16 of the
    entries, of order 1/4, so round-off averages out."""
    acc = torch.zeros(_SKETCH, dtype=torch.float64)
    sq, offset = 0.0, 0
    for t in tensors:
        v = t.detach().double().cpu().flatten()
        sq += float((v * v).sum())
        for start in range(0, v.numel(), _CHUNK):
            part = v[start : start + _CHUNK]
            i = torch.arange(offset + start, offset + start + part.numel(), dtype=torch.int64)
            h = (i * 0x9E3779B1 + 0x7F4A7C15) & 0x7FFFFFFF
            sign = ((h >> 8) & 1).to(torch.float64) * 2.0 - 1.0
            acc += torch.bincount(h % _SKETCH, weights=part * sign, minlength=_SKETCH)
        offset += v.numel()
    norm = sq**0.5
    return acc / (norm or 1.0), norm


def fingerprint(
    model: nn.Module,
    spec: SymmetrySpec | None = None,
    example_input: Any = None,
    *,
    decimals: int | None = None,
    canonical: Canonical | None = None,
) -> str:
    """A hex hash of ``model``'s canonical weights (parameters and floating buffers): equal for
    models in one orbit, different for different trainings.

    What is hashed: the names and shapes of the tensors, the norm of all canonical entries to
    ``decimals`` significant digits and 16 fixed projections of their unit vector (a count
    sketch, each of order 1/4), rounded to ``decimals`` places (default: 8 for float64 models, 3
    otherwise). Projections average round-off over every entry, so copies of one orbit that differ
    by the model's own round-off hash alike unless a projection lies within round-off of a rounding
    boundary (about ``16 * 2 * noise * 10^decimals``: below 1e-5 for float64 models, below 1% for
    float32 copies with the default). Sites that could not be canonicalised
    (``canonicalize(...).not_canonical``) make orbit copies hash differently; a warning says so.
    ``canonical``: a ``canonicalize`` result to reuse.
    """
    if canonical is None:
        canonical = canonicalize(model, spec, example_input)
    if not canonical.complete:
        warnings.warn(
            f"fingerprint: sites {canonical.not_canonical[:4]} are not canonical, so models of "
            "one orbit may get different fingerprints (equal ones still mean equal weights)",
            stacklevel=2,
        )
    named = [(n, t) for n, t in _tensors(canonical.model) if torch.is_floating_point(t)]
    if decimals is None:
        decimals = 8 if all(t.dtype == torch.float64 for _, t in named) else 3
    if not 0 <= int(decimals) <= 15:
        raise InvalidOptionError(f"decimals must be in 0..15, got {decimals}")
    proj, norm = _sketch([t for _, t in named])
    h = hashlib.sha256()
    h.update(";".join(f"{n}:{tuple(t.shape)}" for n, t in named).encode())
    h.update(f"|{norm:.{decimals}e}|".encode())
    h.update(torch.round(proj * 10.0**decimals).to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:32]


def _on_site(site: Site) -> int:
    """The number of ``site``'s actions whose rows move with its units (key terms)."""
    return sum(ActionKind(a.kind).on_site_axis for a in site.actions)
