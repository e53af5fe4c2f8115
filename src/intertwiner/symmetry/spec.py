"""The result of tracing: a SymmetrySpec, its Sites, and the parameter axes each Site acts on.

A *site* is one group element's worth of symmetry: a hidden activation (``h = sigma(W x + b)``), a
residual stream (every layer that reads or writes it shares the element), or an attention
sub-symmetry (heads, per-head query/key or value/output maps). The element ``A`` of a site acts on
parameter axes in one of these ways (``ParamAxis.kind``)::

    "A"           t <- A t           rows (and bias) of a producing Linear/Conv, BN gamma/beta, ...
    "P"           t <- P t           only the permutation part of a monomial A = D P (conv rows
                                     before a BatchNorm that absorbs the scale, running statistics)
    "A^-T"        t <- A^-T t        input axis of a consumer of a pre-activation tensor (W <- W A^-1)
    "phi(A)^-T"   t <- phi(A)^-T t   input axis of a consumer of an activation output (W <- W phi(A)^-1)
    "c(A)", "c(phi(A))", "c(A)/c(phi(A))"
                  t <- c^k t         a one-number parameter, for A = c P (``ScaledPermutation``): a
                                     number added to every feature, or multiplying a power of ReLU

An axis of size ``outer * n_total * inner`` is viewed as ``(outer, n_total, inner)`` (``inner`` is
the block of H*W positions per channel after a Flatten; ``outer`` counts positions merged in front);
the element acts on the ``channels`` subset of the ``n_total`` logical channels (all when None), in
that order.

Site names and kinds (``Site.kind``):

- ``"activation"``: a hidden activation; named after its module (``named_modules()`` name; a
  functional activation has its fx node name, a module instance called twice gets ``name#2``).
- ``"stream"``: a residual stream (a residual addition tied several spaces together). Named after
  the first activation module whose output is the stream (post-activation ResNets: ``stem.act``
  also covers ``layer1.*.act2``; ``spec.site("layer1.1.act2")`` finds it), else
  ``stream:<first writer>`` (pre-LN transformers: ``stream:patch_embed``). A zero-padding shortcut
  adds a site ``<shortcut>.pad`` for the padded channels.
- ``"linear"``: a space between two linear maps with no activation: ``linear:<writer>`` (GL).
- ``"attention_heads"`` (``<attn>.heads``, permutations of heads), ``"attention_qk"``
  (``<attn>.qk<h>``, GL(head_dim)) and ``"attention_vo"`` (``<attn>.vo<h>``, GL(head_dim)).
  Cross-covariance attention (XCiT) has ``"attention_channels"`` sites instead (``<attn>.qo<h>``,
  ``<attn>.kv<h>``: positive monomial maps of a head's channels) and a one-number ``vo<h>``.
  Ops shared by all heads on each head-dim entry (MViTv2's pooling and norms, relative-position
  tables) make one permutation of the entries for every head instead: ``<attn>.qk`` and
  ``<attn>.vo``, or ``<attn>.qkv`` (kind ``"attention_qk"``) when residual pooling ties v to q.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from intertwiner._types import ExampleInput
from intertwiner.errors import InvalidInputError, UnknownSiteError
from intertwiner.groups import ActionKind, GroupElement, IntertwinerGroup, MonomialElement
from intertwiner.symmetry._coverage import Coverage, coverage
from intertwiner.symmetry._export import SCHEMA, permutation_spec

KINDS = ("A", "P", "A^-T", "phi(A)^-T", "flip", "c(A)", "c(phi(A))", "c(A)/c(phi(A))")
SITE_KINDS = ("activation", "stream", "linear", "attention_heads", "attention_qk", "attention_vo",
              "attention_channels")  # fmt: skip


@dataclass(frozen=True)
class ParamAxis:
    """One axis of one parameter or buffer that a site's element acts on (see module docstring)."""

    name: str
    axis: int
    kind: str
    n_total: int
    outer: int = 1
    inner: int = 1
    channels: tuple[int, ...] | None = None
    buffer: bool = False
    #: The graph node (one call of a module or op) that asked for this action; two uses of one
    #: shared tensor differ here. Not part of equality.
    use: str = field(default="", compare=False)
    #: ``(axis, start, length)``: act only on that slice along another axis (a grouped
    #: convolution's input channels of group j live in its rows of group j). None: everywhere.
    within: tuple[int, int, int] | None = None

    @property
    def width(self) -> int:
        return self.n_total if self.channels is None else len(self.channels)

    @property
    def scalar(self) -> bool:
        """A one-number parameter moved by a power of the common factor c of ``A = c P`` (kinds
        ``c(A)``, ``c(phi(A))``, ``c(A)/c(phi(A))``), not along an axis of the site's units:
        consumers that read one row per unit skip it (it holds no unit's information)."""
        return ActionKind(self.kind).scalar

    def describe(self) -> str:
        block = ""
        if self.outer != 1 or self.inner != 1:
            block = f" as ({self.outer}, {self.n_total}, {self.inner})"
        sub = "" if self.channels is None else f" channels {_ranges(self.channels)}"
        if self.within is not None:
            ax, start, length = self.within
            sub += f" within axis {ax} [{start}:{start + length}]"
        return f"{self.name}[axis {self.axis}{block}{sub}] <- {self.kind}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "axis": self.axis,
            "kind": self.kind,
            "n_total": self.n_total,
            "outer": self.outer,
            "inner": self.inner,
            "channels": None if self.channels is None else list(self.channels),
            "buffer": self.buffer,
            "within": None if self.within is None else list(self.within),
        }


@dataclass(frozen=True)
class ActivationAxis:
    """Where a site's element moves an activation output: feature dim (counted from the end),
    the ``(outer, n_total, inner)`` view of that dim and the channel subset (None = all).
    ``kind``: moved by ``"phi(A)"``, or by the permutation part ``"P"`` only (a gate)."""

    dim: int
    n_total: int
    outer: int = 1
    inner: int = 1
    channels: tuple[int, ...] | None = None
    kind: str = "phi(A)"


@dataclass(frozen=True)
class Fold:
    """A per-feature scale ``w`` (an RMSNorm weight) folded into the layers that read it before the
    site's element acts: ``W <- W diag(w)`` along ``axis`` of each ``into`` parameter, then
    ``w <- 1``. Functionally a no-op; it lets the stream admit orthogonal maps, which a diagonal
    ``w`` between the normalisation and the next layer would otherwise block."""

    scale: str
    into: tuple[tuple[str, int], ...]
    #: The folded factor is ``slope * w + offset`` (Gemma's RMSNorm scales by ``1 + w``); after
    #: folding ``w`` is set so that the factor is 1.
    slope: float = 1.0
    offset: float = 0.0

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "into": [list(i) for i in self.into],
            "slope": self.slope,
            "offset": self.offset,
        }


@dataclass
class Site:
    """One hidden symmetry site: its name, width, group and everything its element touches.

    ``activations`` are module names (a functional activation has its fx node name) whose outputs
    the element moves by ``group.phi(g)``; ``activation_axes[name]`` says along which axis and which
    channels (a zero-padding shortcut makes a site cover only part of an activation's channels).
    """

    name: str
    kind: str
    width: int
    group: IntertwinerGroup
    restrictions: list[str] = field(default_factory=list)
    actions: list[ParamAxis] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    activation_axes: dict[str, ActivationAxis] = field(default_factory=dict)
    writers: list[str] = field(default_factory=list)
    #: Scales folded into the next layers before the element acts (see ``Fold``).
    folds: list[Fold] = field(default_factory=list)

    def acts_on(self) -> str:
        """Short summary: the parameters (not buffers) the element touches."""
        names = []
        for a in self.actions:
            if a.name not in names:
                names.append(a.name)
        return ", ".join(names)

    def move(self, activation: str, h: torch.Tensor, element: GroupElement) -> torch.Tensor:
        """``h`` (output of ``activation``) as the transformed model computes it: phi(g) applied
        along the activation's feature axis on the channels this site covers."""
        ax = self.activation_axes[activation]
        moved = permutation_part(element) if ax.kind == "P" else self.group.phi(element)
        return _apply_view(h, h.dim() + ax.dim, ax, moved, ax.channels)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "width": self.width,
            "group": self.group.to_dict(),
            "restrictions": list(self.restrictions),
            "activations": list(self.activations),
            "writers": list(self.writers),
            "actions": [a.to_dict() for a in self.actions],
            "folds": [f.to_dict() for f in self.folds],
        }


def _apply_view(
    t: torch.Tensor,
    dim: int,
    view: ParamAxis | ActivationAxis,
    element: GroupElement,
    channels: tuple[int, ...] | None,
) -> torch.Tensor:
    """Apply ``element`` along ``dim`` of ``t`` viewed as ``(outer, n_total, inner)``."""
    shape = list(t.shape)
    v, cdim = _split_axis(t, dim, view, t.reshape)
    elem = element.to(dtype=t.dtype, device=t.device)
    if channels is None:
        out = elem.apply(v, cdim)
    else:
        idx = torch.as_tensor(channels, dtype=torch.long, device=t.device)
        out = v.clone()
        out.index_copy_(cdim, idx, elem.apply(v.index_select(cdim, idx), cdim))
    return out.reshape(shape)


def _split_axis(t: torch.Tensor, dim: int, view: ParamAxis | ActivationAxis, how) -> tuple:
    """``t`` with ``dim`` split into ``(outer, n_total, inner)`` and the dim of ``n_total``; an
    outer or inner of 1 is left out: a gather along a dim followed by size-1 dims took 4.5 times
    as long as the same gather on the 2-d tensor (GPT-2's 50257 x 768 embedding: 12.6 s vs 2.8 s)."""
    shape = list(t.shape)
    pre = [view.outer] if view.outer != 1 else []
    post = [view.inner] if view.inner != 1 else []
    return how(*shape[:dim], *pre, view.n_total, *post, *shape[dim + 1 :]), dim + len(pre)


def apply_view_inplace(
    t: torch.Tensor,
    dim: int,
    view: ParamAxis,
    element: GroupElement,
    channels: tuple[int, ...] | None,
) -> None:
    """``t.copy_(_apply_view(t, ...))`` without copying the channels the element does not touch:
    a per-head map on a 2304-row projection then costs its 64 rows, not the whole tensor."""
    if channels is None or not t.is_contiguous():
        t.copy_(_apply_view(t, dim, view, element, channels))
        return
    v, cdim = _split_axis(t, dim, view, t.view)
    elem = element.to(dtype=t.dtype, device=t.device)
    start = channels[0]
    if channels == tuple(range(start, start + len(channels))):  # a contiguous block: no gather
        block = v.narrow(cdim, start, len(channels))
        block.copy_(elem.apply(block, cdim))
        return
    idx = torch.as_tensor(channels, dtype=torch.long, device=t.device)
    v.index_copy_(cdim, idx, elem.apply(v.index_select(cdim, idx), cdim))


def axis_rows(t: torch.Tensor, a: ParamAxis) -> torch.Tensor:
    """``(a.width, -1)``: one row per channel of the site on parameter ``t`` (the slice the element
    moves together: channel ``i`` of the ``(outer, n_total, inner)`` view, every other axis)."""
    if a.within is not None:  # a grouped convolution's group: only its rows
        t = t.narrow(*a.within)
    shape = list(t.shape)
    v = t.reshape(*shape[: a.axis], a.outer, a.n_total, a.inner, *shape[a.axis + 1 :])
    v = v.movedim(a.axis + 1, 0)
    if a.channels is not None:
        v = v.index_select(0, torch.as_tensor(a.channels, dtype=torch.long, device=t.device))
    return v.reshape(v.shape[0], -1)


def permutation_part(element: GroupElement) -> MonomialElement:
    """P of a monomial element A = D P."""
    if not isinstance(element, MonomialElement):
        raise InvalidInputError(
            "this site has actions of kind 'P' (permutation part), which needs a monomial element "
            f"(MonomialElement), got {type(element).__name__}"
        )
    return MonomialElement(element.perm, torch.ones_like(element.scale))


def _ranges(channels: tuple[int, ...]) -> str:
    """Compact text for an index list: ``0:4,12:16``."""
    parts, start = [], None
    for i, c in enumerate(channels):
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            parts.append((start, prev))
            start = prev = c
        if i == len(channels) - 1:
            parts.append((start, prev))
    return ",".join(f"{a}:{b + 1}" for a, b in parts)


@dataclass
class SymmetrySpec:
    """All hidden sites of a model, in forward order, plus the frozen (non-symmetric) spaces."""

    sites: list[Site]
    frozen: list[tuple[str, str]] = field(default_factory=list)
    model_name: str = ""
    #: Sites the rules proposed but ``trace`` refused to return, with the reason: a sampled element
    #: changed the function (numerical verification), or a parameter is shared between two uses
    #: that one element cannot satisfy.
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: Parameters each frozen space (by its label on ``frozen``) would have moved: ``coverage``
    #: says why a tensor stays unmoved from these.
    frozen_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Largest relative output change seen when verifying the returned sites together (None when
    #: the spec was not verified).
    verified_error: float | None = None
    #: The tolerance the sites were verified to (``rtol``, raised to the round-off of any lower
    #: precision the model casts to inside its forward, e.g. float32 in LLaMA's RMSNorm, and
    #: scaled by ``verified_roundoff`` where that was measured: ``symmetry/_verify.py``).
    verified_tolerance: float | None = None
    #: The model's measured round-off: the largest relative output change when every parameter
    #: and buffer gets relative noise of a few ulps (None when no check needed it: every check
    #: passed at ``rtol``). Divided by the noise size it is the round-off amplification.
    verified_roundoff: float | None = None

    def site(self, name: str) -> Site:
        """The site called ``name``; an activation module name also finds the one site whose
        element moves all of that activation's channels (e.g. ``layer1.1.act2`` -> ``stem.act``)."""
        for s in self.sites:
            if s.name == name:
                return s
        covering = [s for s in self.sites if name in s.activations]
        full = [s for s in covering if s.activation_axes[name].channels is None]
        if len(full) == 1:
            return full[0]
        if covering:
            raise UnknownSiteError(
                f"activation {name!r} is moved by several sites, each on part of its channels: "
                f"{[s.name for s in covering]}; use spec.sites_for({name!r})"
            )
        raise UnknownSiteError(f"no site {name!r}; sites: {[s.name for s in self.sites]}")

    def sites_for(self, activation: str) -> list[Site]:
        """Every site whose element moves (some channels of) ``activation``'s output."""
        return [s for s in self.sites if activation in s.activations]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    def table(self, errors: dict[str, float] | None = None, error_label: str = "error") -> str:
        """Plain-text table: name, kind, width, group, restrictions and what the element acts on."""
        headers = ["site", "kind", "width", "group", "family", "acts on"]
        if errors is not None:
            headers.append(error_label)
        rows = []
        for s in self.sites:
            row = [
                s.name,
                s.kind,
                str(s.width),
                s.group.name,
                s.group.family.description,
                _truncate(s.acts_on(), 60),
            ]
            if errors is not None:
                err = errors.get(s.name)
                row.append("-" if err is None else f"{err:.1e}")
            rows.append(row)
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        notes = [(s.name, r) for s in self.sites for r in s.restrictions]
        if notes:
            out.append("")
            out.append("restrictions:")
            out += [f"  {n}: {r}" for n, r in notes]
        if self.dropped:
            out.append("")
            out.append("dropped (not returned):")
            out += [f"  {n}: {r}" for n, r in self.dropped]
        if self.verified_roundoff is not None:  # say why the tolerance is not the default
            out.append("")
            out.append(
                f"verified to {self.verified_tolerance:.1e} (relative): the model's round-off "
                f"({self.verified_roundoff:.1e} under ulp-sized parameter noise) scales the "
                "tolerance"
            )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        """Plain JSON description of every site, its group and the parameter axes it acts on
        (schema ``intertwiner.symmetry-spec/1``, documented in ``symmetry/_export.py``)."""
        return {
            "schema": SCHEMA,
            "model": self.model_name,
            "sites": [s.to_dict() for s in self.sites],
            "frozen": [{"space": n, "reason": r} for n, r in self.frozen],
            "dropped": [{"site": n, "reason": r} for n, r in self.dropped],
            "verified_error": self.verified_error,
            "verified_tolerance": self.verified_tolerance,
            "verified_roundoff": self.verified_roundoff,
        }

    def coverage(self, model: nn.Module, example_input: ExampleInput | None = None) -> Coverage:
        """Shares of ``model``'s parameter tensors and scalars that some site moves, in all and
        in the interior: without the outermost output side (the head's bias, recorded on
        ``frozen`` as "the model output"; the input side leaves no tensor unmoved) and, given
        ``example_input``, without parameters the forward does not use. Per module: what no site
        moves and the reason trace recorded for it. ``model``: the model the spec was traced
        from. See ``symmetry/_coverage.py``."""
        return coverage(self, model, example_input)

    def to_permutation_spec(self, model: nn.Module | None = None) -> dict:
        """The spec in Git Re-Basin's format: ``{"perm_to_axes": {perm: [[param, axis], ...]},
        "axes_to_perm": {param: [perm or None per axis]}, "skipped": {site: reason}}``, one
        permutation per site that acts on whole axes (others are listed under ``skipped`` and
        stay the identity). Pass ``model`` to list every state-dict tensor in ``axes_to_perm``.
        See ``symmetry/_export.py``."""
        return permutation_spec(self, model)


def _truncate(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
