"""Spaces and sites: the bookkeeping behind ``trace``.

Every tensor with a hidden feature axis carries an ``Info``: which sites move it (``parts``: site
id, mode, channels), along which dim, viewed as ``(outer, n, inner)``. Modes: ``"A"`` (moved by the
site's element, e.g. a pre-activation), ``"P"`` (only by its permutation part: conv rows before a
BatchNorm that absorbs the scale) and ``"phi"`` (by phi(A): an activation output). Sites form a
union-find: residual additions merge them, a zero-padding shortcut splits one into channel blocks,
the model input/output is the fixed site 0 (merging into it freezes a site).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from intertwiner.errors import UnsupportedModuleError
from intertwiner.groups import (
    GENERAL_LINEAR,
    IDENTITY_PHI,
    MONOMIAL,
    PERMUTATION,
    ActionKind,
    Family,
    IntertwinerGroup,
    Mode,
    Phi,
    as_phi,
    family,
    intersect,
)
from intertwiner.symmetry.spec import ActivationAxis, ParamAxis

SUPPORTED = (
    "linear maps (nn.Linear, Conv1D, x @ W.T), convolutions (plain, transposed, grouped, "
    "depthwise), embeddings, BatchNorm (eval), LayerNorm (last dim), GroupNorm, RMSNorm, "
    "elementwise activations (any elementwise function), max/average pooling, resampling, "
    "views/transpose/permute/slicing, channel shuffles, cat/stack/split, mean/sum/softmax over "
    "non-feature dims, padding, dropout, residual +/-, adding or scaling by a parameter, gated "
    "products, attention "
    "(scaled_dot_product_attention or softmax(q k^T) v: nn.MultiheadAttention self-attention, "
    "nn.TransformerEncoderLayer, Hugging Face and zoo attention)"
)

Part = tuple[int, str, tuple[int, ...] | None]  # (site id, mode, channels in the tensor's frame)


@dataclass(frozen=True)
class Info:
    """A tensor's feature axis: ``dim`` (negative) viewed as (outer, n, inner); parts cover n."""

    parts: tuple[Part, ...]
    n: int
    dim: int
    outer: int = 1
    inner: int = 1

    def moved(self, **kw) -> Info:
        d = {"parts": self.parts, "n": self.n, "dim": self.dim, "outer": self.outer}
        d["inner"] = self.inner
        d.update(kw)
        return Info(**d)


@dataclass(frozen=True)
class ParamRef:
    """A parameter (or buffer) by name; ``transposed``: seen through ``.t()`` / ``.T`` (a 2-d
    weight used as ``x @ W.T``), which only a matrix product may read."""

    name: str
    transposed: bool = False
    #: ``(slope, offset)``: the tensor is ``slope * param + offset`` (Gemma's ``1 + weight``).
    affine: tuple[float, float] = (1.0, 0.0)
    #: A 1-d parameter viewed for broadcasting with its one axis at dim ``at`` (negative) of a
    #: shape like ``(1, C, 1, 1)`` (layer scales and biases of NCHW models); None: not such a view.
    at: int | None = None

    @property
    def plain(self) -> bool:
        """The parameter itself, not a transpose, a broadcast view or an affine function of it."""
        return not self.transposed and self.affine == (1.0, 0.0) and self.at is None

    def axis_for(self, t_dim: int, x_dim: int) -> int:
        """The parameter's axis that lines up with a hidden tensor's feature dim ``x_dim``
        (negative) under broadcasting, or -1 when none does (the parameter has ``t_dim`` dims)."""
        if self.at is not None:
            return 0 if self.at == x_dim else -1
        pd = t_dim + x_dim
        return pd if pd >= 0 else -1


class _SiteState:
    def __init__(self, sid: int, width: int, name: str | None = None, kind: str | None = None):
        self.id = sid
        self.width = width
        self.family = GENERAL_LINEAR
        self.phi: Phi | None = None  # set by the first activation writing the site
        self.needs_fixed = False
        # (reason, the family it restricts to; None for a block structure no family describes)
        self.restrictions: list[tuple[str, Family | None]] = []
        self.actions: list[ParamAxis] = []
        self.activations: list[tuple[int, str, ActivationAxis, IntertwinerGroup]] = []
        self.writers: list[tuple[int, str]] = []
        self.merged_into: int | None = None
        self.split: list[tuple[int, tuple[int, ...]]] | None = None
        self.residual = False
        self.explicit_name = name
        self.kind = kind
        self.frozen_reason: str | None = None
        self.gated = False  # merged into a gated product's site; moved by its permutation part
        self.chunked = 0  # how many cuts of a feature axis sent this site into one chunk
        #: (scale parameter, its axis, consumers ((param, axis), ...), reason) that may be folded
        self.folds: list[tuple[str, int, tuple[tuple[str, int], ...], str]] = []


def _compose(ch: tuple[int, ...] | None, sub: tuple[int, ...]) -> tuple[int, ...]:
    return sub if ch is None else tuple(ch[k] for k in sub)


class Spaces:
    """Union-find of sites (with splits for zero-padded channels), restrictions and actions."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sites: list[_SiteState] = [_SiteState(0, 0)]  # id 0: the fixed space
        self.order = 0
        # Aliases of tied tensors included: torch.export may name a tied weight by either name.
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.buffers = dict(model.named_buffers(remove_duplicate=False))
        self.zoo_sites = set(getattr(model, "intertwiner_sites", []) or [])
        self.called: set[str] = set()
        #: The tensor (and its axis) each parameter in ``called`` was first added to.
        self.added_to: dict[str, tuple[Info, int]] = {}
        #: The graph node whose rule is running: recorded on each ParamAxis as its ``use``, so
        #: that two uses of one shared tensor can be told apart.
        self.current_use = ""
        #: The least precise dtype the model casts to inside its forward (None: no casts); the
        #: verification tolerance cannot be below that dtype's round-off.
        self.cast_to = None
        self.act_calls: dict[str, int] = {}
        self.frozen: list[tuple[str, str]] = []
        #: (label, reason, parameters) of parameters no element can move, whatever the sites
        #: (a scalar shared by every feature): recorded so that ``coverage`` says why.
        self.fixed_params: list[tuple[str, str, tuple[str, ...]]] = []
        #: One-number parameters a site moves by its common factor (``Rules.scalar_moves``).
        self.scalar_sites: dict[str, int] = {}
        #: Graph nodes with no hidden feature axis whose value a rule has shown unchanged by
        #: every element (``q @ k^T`` of two spaces tied to one orthogonal map).
        self.invariant: set[Any] = set()
        #: Grouped convolutions by the site their output was cut from, and the reversals across
        #: their blocks that ECA asked for (``_block_reversal``).
        self.grouped: dict[int, Any] = {}
        self.block_reversals: list[Any] = []
        #: Graph nodes (by name) whose activation output a site moves besides the sites of its
        #: input: a head permutation past a merged attention output (``_rules_attention``), as
        #: ``node -> [(site, ActivationAxis)]`` (recorded by ``Rules.activation`` under its name).
        self.also_moved: dict[str, list[tuple[int, ActivationAxis]]] = {}

    # -- sites ------------------------------------------------------------------------------
    def new_site(self, width: int, name: str | None = None, kind: str | None = None) -> int:
        s = _SiteState(len(self.sites), width, name, kind)
        self.sites.append(s)
        return s.id

    def find(self, sid: int) -> int:
        while self.sites[sid].merged_into is not None:
            sid = self.sites[sid].merged_into
        return sid

    def expand(self, sid: int, mode: str, ch: tuple[int, ...] | None) -> list[Part]:
        """The root sites (and channels) behind ``sid``; a gate on the way (``gate``) turns the
        mode into ``"P"``: tensors of a gate move by the permutation part only."""
        r = sid
        while True:
            if self.sites[r].gated:
                mode = "P"
            if self.sites[r].merged_into is None:
                break
            r = self.sites[r].merged_into
        split = self.sites[r].split
        if split is None:
            return [(r, mode, ch)]
        out: list[Part] = []
        for child, sub in split:
            out += self.expand(child, mode, _compose(ch, sub))
        return out

    def parts(self, info: Info) -> list[Part]:
        out: list[Part] = []
        for sid, mode, ch in info.parts:
            out += self.expand(sid, mode, ch)
        return out

    def tick(self) -> int:
        self.order += 1
        return self.order

    def restrict(self, sid: int, fam: str | Family, reason: str) -> None:
        r = self.find(sid)
        s = self.sites[r]
        if r == 0:
            return
        if s.split is not None:
            for child, _ in s.split:
                self.restrict(child, fam, reason)
            return
        new = intersect(s.family, fam)
        if new != s.family:
            s.family = new
            if reason not in [r for r, _ in s.restrictions]:
                s.restrictions.append((reason, family(fam)))

    def restrict_matrix(self, part: Part, target: str, reason: str) -> None:
        """Restrict so that the matrix moving this part (in its mode) lies in ``target``."""
        sid, mode, _ = part
        if mode == Mode.P:
            # the permutation part lies in every family that holds every permutation; a smaller
            # one (the reversal) holds it only when the element is itself in that family
            if not PERMUTATION <= family(target):
                self.restrict(sid, intersect(PERMUTATION, target), reason)
            return
        phi = self.sites[self.find(sid)].phi if mode == Mode.PHI else None
        self.restrict(sid, as_phi(phi).preimage(target), reason)

    def fixed_point(self, sid: int, reason: str) -> None:
        r = self.find(sid)
        s = self.sites[r]
        if r == 0:
            return
        if s.split is not None:
            for child, _ in s.split:
                self.fixed_point(child, reason)
            return
        s.needs_fixed = True
        if s.phi is not None:
            self.restrict(r, s.phi.fixed_points(), reason)

    def set_phi(self, sid: int, phi: Any, reason: str) -> None:
        s = self.sites[sid]
        phi = as_phi(phi)
        if s.phi is None:
            s.phi = phi
        elif s.phi != phi:
            self.restrict(sid, s.phi.fixed_points(), reason)
            self.restrict(sid, phi.fixed_points(), reason)
            s.phi = IDENTITY_PHI
        if s.needs_fixed:
            self.restrict(sid, s.phi.fixed_points(), "residual stream: phi(A) = A needed")

    def freeze(self, sid: int, reason: str) -> None:
        r = self.find(sid)
        if r == 0:
            return
        s = self.sites[r]
        if s.split is not None:
            for child, _ in s.split:
                self.freeze(child, reason)
            return
        s.merged_into = 0
        s.frozen_reason = reason

    def merge(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra == 0 or rb == 0:
            self.freeze(rb if ra == 0 else ra, "tied to the model input or output")
            return
        root, other = (ra, rb) if ra < rb else (rb, ra)
        s, o = self.sites[root], self.sites[other]
        if s.width != o.width:  # pragma: no cover (guarded by callers)
            raise UnsupportedModuleError(f"cannot tie spaces of widths {s.width} and {o.width}")
        s.family = intersect(s.family, o.family)
        s.restrictions += [r for r in o.restrictions if r not in s.restrictions]
        s.needs_fixed = s.needs_fixed or o.needs_fixed
        s.residual = True
        s.explicit_name = s.explicit_name or o.explicit_name
        o.merged_into = root
        if o.phi is not None:
            self.set_phi(root, o.phi, "residual stream joins activations with different phi")
        elif s.needs_fixed and s.phi is not None:
            self.set_phi(root, s.phi, "residual stream: phi(A) = A needed")

    def unify_parts(self, p: Part, q: Part, reason: str) -> None:
        (s1, m1, _), (s2, m2, _) = p, q
        if self.find(s1) == 0 or self.find(s2) == 0:
            self.freeze(s2 if self.find(s1) == 0 else s1, reason)
            return
        if m1 != m2:
            if "P" in (m1, m2):
                why = f"{reason}: a pre-BatchNorm tensor is tied to another one (permutations only)"
                self.restrict(s1, PERMUTATION, why)
                self.restrict(s2, PERMUTATION, why)
            else:
                why = (
                    f"{reason}: an activation output is added to a pre-activation tensor, "
                    "so phi(A) = A is needed"
                )
                self.fixed_point(s1, why)
                self.fixed_point(s2, why)
        self.merge(s1, s2)

    def unify(self, a: Info | None, b: Info | None, reason: str) -> None:
        """Both tensors must be moved by the same matrix (residual addition, model output)."""
        if a is None and b is None:
            return
        if a is None or b is None:
            for sid, _, _ in self.parts(a or b):
                self.freeze(sid, reason)
            return
        if (a.n, a.outer, a.inner) != (b.n, b.outer, b.inner) or a.dim != b.dim:
            raise UnsupportedModuleError(
                f"{reason}: the two tensors have feature axes that do not line up "
                f"(dim {a.dim} size {a.n} vs dim {b.dim} size {b.n}); supported: {SUPPORTED}"
            )
        pa, pb = self.parts(a), self.parts(b)

        def key(parts):
            return sorted(tuple(range(a.n)) if ch is None else ch for _, _, ch in parts)

        if len(pa) == 1 and len(pb) == 1:
            self.unify_parts(pa[0], pb[0], reason)
            return
        if key(pa) == key(pb):
            by = {tuple(range(a.n)) if ch is None else ch: (s, m, ch) for s, m, ch in pb}
            for s, m, ch in pa:
                self.unify_parts((s, m, ch), by[tuple(range(a.n)) if ch is None else ch], reason)
            return
        single, other = (pa, pb) if len(pa) == 1 else (pb, pa) if len(pb) == 1 else (None, None)
        if single is None or single[0][2] is not None:
            raise UnsupportedModuleError(
                f"{reason}: two tensors whose channels are split differently between sites are "
                f"added; supported: {SUPPORTED}"
            )
        sid, mode, _ = single[0]
        if sid == 0:
            for s, _, _ in other:
                self.freeze(s, reason)
            return
        s = self.sites[sid]
        self._splittable(s, reason)
        children = []
        for _, _, ch in other:
            c = self.new_site(len(ch))
            cs = self.sites[c]
            cs.family, cs.phi, cs.needs_fixed = s.family, s.phi, s.needs_fixed
            cs.restrictions = list(s.restrictions)
            cs.residual = True
            if not s.family.monomial:
                cs.restrictions.append(
                    ("zero-padded shortcut: block diagonal on carried vs padded channels", None)
                )
            children.append((c, ch))
        s.split = children
        for (c, ch), q in zip(children, other, strict=True):
            self.unify_parts((c, mode, ch), q, reason)

    def split_blocks(self, x: Info, k: int | list[int], reason: str) -> Info:
        """``x`` with its space cut into consecutive blocks of channels (``k`` equal ones, or the
        given sizes), each its own site (block-diagonal elements): a GroupNorm treats each block
        on its own, a split or chunk of the feature axis sends each block its own way."""
        sizes = [x.n // k] * k if isinstance(k, int) else list(k)
        parts = self.parts(x)
        if (
            len(parts) != 1
            or parts[0][2] is not None
            or sum(sizes) != x.n
            or any(z <= 0 for z in sizes)
            or x.outer != 1
            or x.inner != 1
        ):
            raise UnsupportedModuleError(f"{reason}: channels already split between sites")
        sid, mode, _ = parts[0]
        if sid == 0:
            return x
        s = self.sites[sid]
        self._splittable(s, reason)
        children, start = [], 0
        for size in sizes:
            chans = tuple(range(start, start + size))
            start += size
            c = self.new_site(size)
            cs = self.sites[c]
            cs.family, cs.phi, cs.needs_fixed = s.family, s.phi, s.needs_fixed
            cs.restrictions = list(s.restrictions) + [(reason + ": block diagonal", None)]
            cs.residual = s.residual
            children.append((c, chans))
        s.split = children
        return x.moved(parts=tuple((c, mode, chans) for c, chans in children))

    def _splittable(self, s: _SiteState, reason: str) -> None:
        """Refuse to cut a site whose family holds fewer than every permutation (the reversal of
        an ECA conv): a block-diagonal element cannot reverse the whole space, and its kernel
        flips act on the whole space's element."""
        if not PERMUTATION <= s.family:
            raise UnsupportedModuleError(
                f"{reason}: a space restricted to {s.family.description} cannot be cut into "
                "blocks (the reversal maps the first block onto the last)"
            )

    def fold_blocks(self, sid: int, k: int) -> bool:
        """Make the unsplit root site ``sid`` (width K * C) a site of width C whose element M
        acts as diag(M, ..., M) on its K consecutive blocks: every action on a whole axis is
        then seen as (K, C, inner). False (nothing changed) for a site that has been merged,
        split, activated, folded or acted on a channel subset or slice."""
        s = self.sites[sid]
        if s.merged_into is not None or s.split is not None or s.width % k:
            return False
        if s.activations or s.folds or s.residual or s.gated:
            return False
        if any(self.sites[t].merged_into == sid for t in range(1, len(self.sites))):
            return False
        whole = all(
            a.outer == 1 and a.inner == 1 and a.channels is None and a.within is None
            and a.n_total == s.width
            for a in s.actions
        )  # fmt: skip
        if not whole:
            return False
        s.width //= k
        s.actions = [dataclasses.replace(a, n_total=s.width, outer=k) for a in s.actions]
        return True

    def gate(self, gate: Info, value: Info, reason: str) -> Info:
        """``gate * value`` of two hidden tensors with one shared permutation (LLaMA's
        ``act(gate_proj(x)) * up_proj(x)``, squeeze-excitation's ``h * sigmoid(...)``): the gate's
        site is moved by the permutation part P only and joins the value's site, whose element
        M = D P (any monomial) then moves the product like the value. A value split into channel
        blocks (after a grouped convolution) splits the gate into the same blocks."""
        if gate.n != value.n or gate.dim != value.dim or (gate.outer, gate.inner) != (1, 1):
            raise UnsupportedModuleError(f"{reason}: gate and value features do not line up")
        pg, pv = self.parts(gate), self.parts(value)
        if len(pg) == 1 and pg[0][2] is None and len(pv) > 1:
            blocks = [tuple(range(value.n)) if ch is None else ch for _, _, ch in pv]
            start, sizes = 0, []
            for ch in blocks:
                if ch != tuple(range(start, start + len(ch))):
                    raise UnsupportedModuleError(f"{reason}: value blocks out of channel order")
                start += len(ch)
                sizes.append(len(ch))
            pg = self.parts(self.split_blocks(gate, sizes, reason))
        by_channels = {ch: (sid, mode) for sid, mode, ch in pg}
        if len(by_channels) != len(pg):
            raise UnsupportedModuleError(f"{reason}: gates split over several sites")
        for part in pv:
            if part[2] not in by_channels:
                raise UnsupportedModuleError(f"{reason}: gates split over several sites")
            self._gate_pair(by_channels[part[2]][0], part, reason)
        return value

    def _gate_pair(self, sg: int, pv: Part, reason: str) -> None:
        sv = pv[0]
        if self.find(sg) == self.find(sv) or 0 in (self.find(sg), self.find(sv)):
            raise UnsupportedModuleError(f"{reason}: a product of a space with itself")
        self.restrict_matrix(pv, MONOMIAL, f"{reason}: a per-feature gate commutes with D P only")
        g = self.sites[self.find(sg)]
        if not PERMUTATION <= g.family:
            # the gate moves by the value's permutation part, which must stay in the gate's
            # smaller family (the reversal of an ECA conv): the value's element must then lie in
            # it too (the largest family whose elements are their own permutation part)
            why = f"{reason}: the gate allows {g.family.description} only"
            self.restrict(sv, intersect(g.family, PERMUTATION), why)
        # a kernel flip follows the permutation part already (it is J or I with it)
        g.actions = [
            a if a.kind == ActionKind.FLIP else dataclasses.replace(a, kind="P") for a in g.actions
        ]
        g.activations = [
            (o, name, dataclasses.replace(ax, kind="P"), grp) for o, name, ax, grp in g.activations
        ]
        g.family, g.phi, g.needs_fixed, g.restrictions = GENERAL_LINEAR, None, False, []
        g.gated = True  # actions recorded on a split parent are turned into "P" by ``expand``
        keep = self.sites[self.find(sv)]
        keep.needs_fixed = keep.needs_fixed or g.needs_fixed
        g.merged_into = keep.id  # the value's site stays the root: a gate is never one

    # -- actions ----------------------------------------------------------------------------
    def act(self, info: Info, pname: str, axis: int, role: str, *, buffer: bool = False) -> None:
        """Record that ``info``'s elements act on ``pname[axis]`` as writer (out) or reader (in)."""
        # A buffer used as a weight (BlurPool's fixed filter ``filt`` in a depthwise conv) moves
        # like a parameter but is stored as a buffer.
        buffer = buffer or (pname not in self.params and pname in self.buffers)
        for osid, omode, och in info.parts:
            for sid, mode, ch in self.expand(osid, omode, och):
                if sid == 0:
                    self._frozen_action(osid, pname, axis, info, buffer)
                    continue
                if role == "out":
                    kind = ActionKind.writing(mode)
                elif role == "in":
                    kind = ActionKind.reading(mode)
                else:
                    kind = ActionKind(role)  # explicit kind
                self.sites[sid].actions.append(
                    ParamAxis(pname, axis, kind, info.n, info.outer, info.inner, ch, buffer,
                              self.current_use)
                )  # fmt: skip

    def _frozen_action(self, sid: int, pname: str, axis: int, info: Info, buffer: bool) -> None:
        """A parameter axis met on a space that was frozen before (a depthwise convolution on a
        frozen stream): recorded on the frozen space, so that ``spec.frozen`` names the tensor
        with the reason the space froze (nothing acts on it)."""
        s = self.sites[sid]
        while not s.frozen_reason:
            if s.merged_into in (None, 0):
                return  # the model input (site 0 itself): fixed by definition, no reason to give
            s = self.sites[s.merged_into]
        s.actions.append(
            ParamAxis(pname, axis, ActionKind.P, info.n, buffer=buffer, use=self.current_use)
        )

    def act_raw(self, sid: int, pname: str, axis: int, kind: str, n_total: int, **kw) -> None:
        kw.setdefault("use", self.current_use)
        self.sites[sid].actions.append(ParamAxis(pname, axis, kind, n_total, **kw))

    def shape_of(self, pname: str) -> tuple[int, ...]:
        t = self.params.get(pname, self.buffers.get(pname))
        if t is None:
            raise UnsupportedModuleError(f"{pname!r} is not a parameter or buffer of the model")
        return tuple(t.shape)

    def writer(self, name: str, width: int, mode: Mode = Mode.A) -> Info:
        sid = self.new_site(width)
        self.sites[sid].writers.append((self.tick(), name))
        return Info(((sid, mode, None),), width, -1)

    # -- rules ------------------------------------------------------------------------------
