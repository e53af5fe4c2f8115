"""Trace a model with torch.fx into a SymmetrySpec.

How it works: the model is symbolically traced (torch.fx) and run once on the example input. Every
tensor that carries a hidden feature axis gets a *space*: which site's element moves it, in which
*mode* (``"A"`` before an activation, ``"P"`` for the permutation part only, ``"phi"`` after an
activation) and along which axis. Linear/Conv layers read a space (input axis: ``W <- W M^-1``) and
write a fresh one (rows and bias: ``<- A``); activations turn mode ``A`` into ``phi``; residual
additions unify two spaces (one element for the whole stream); BatchNorm, LayerNorm and max pooling
pass a space through but restrict its group. The model input and the model output are *fixed*: a
space that reaches them is frozen (no symmetry).

Restrictions (each recorded with its reason on the site):

- max pooling: the matrix moving the pooled tensor must have positive scales (``phi(A)`` for a
  pooled activation output: no restriction for RBF or x^2, ``D > 0`` for ReLU/tanh/x^3, ...);
  average pooling commutes with any channel map.
- BatchNorm (per-channel affine): monomial maps only. Conv rows before an affine BatchNorm get only
  the permutation P; gamma and beta get A (the scale moves onto them); running statistics get P.
  This is exact in eval *and* train mode. A BatchNorm after an activation (input moved by
  ``M = D P``) instead gets gamma, running_var <- P and beta, running_mean <- M (eval mode exact).
- LayerNorm: permutations only (gamma, beta permuted).
- A residual addition of an activation output (moved by ``phi(A)``) and a pre-activation tensor
  (moved by ``A``), as in post-activation ResNets, needs ``phi(A) = A``: the fixed points of phi
  (ReLU/GELU/...: no restriction; RBF: permutations; x^2: permutations; x^3: signed permutations).
- Zero channel padding (ResNet-20's option-A shortcut: stride subsample and zero channels before
  and after): the padded stream's element is block diagonal: on the carried channels it *is* the
  previous stream's element (that site acts on those channels too), and the padded channels form
  a new site (``<shortcut>.pad``) of the same family. For GL/orthogonal families the off-diagonal
  coupling is left out (a stated restriction).
- Multi-head attention (``nn.MultiheadAttention``, the zoo ViT's ``Attention``): a permutation of
  heads (site ``<attn>.heads``), and per head h a GL(head_dim) site ``<attn>.qk<h>`` (q <- G q,
  k <- G^-T k; in row-vector form Q <- Q M, K <- K M^-T with M = G^T) and ``<attn>.vo<h>``
  (v <- G v, W_out <- W_out G^-1).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from intertwiner.errors import (
    IntertwinerError,
    NotElementwiseError,
    UnsupportedModuleError,
)
from intertwiner.groups import (
    RBF,
    Abs,
    Elementwise,
    IntertwinerGroup,
    Power,
    family,
    for_activation,
    intersect,
    is_subgroup,
)
from intertwiner.symmetry.spec import ActivationAxis, ParamAxis, Site, SymmetrySpec

SUPPORTED = (
    "nn.Linear, nn.Conv1d/2d/3d (groups=1), nn.BatchNorm1d/2d/3d, nn.LayerNorm (last dim), "
    "elementwise activations (modules, F./torch. functionals, tensor methods), "
    "nn.MaxPool*/AdaptiveMaxPool*, nn.AvgPool*/AdaptiveAvgPool*, nn.Flatten/Unflatten, "
    "nn.Dropout*, nn.Identity, nn.MultiheadAttention (self-attention, packed in_proj), "
    "nn.TransformerEncoderLayer/TransformerEncoder, the zoo ViT Attention, residual +/-, "
    "adding a parameter (position embeddings), scalar * and /, reshape/flatten/view/transpose/"
    "permute/getitem slicing and mean/sum over non-feature dims, F.pad (zero channels)"
)

Part = tuple[int, str, tuple[int, ...] | None]  # (site id, mode, channels in the tensor's frame)


@dataclass(frozen=True)
class _Info:
    """A tensor's feature axis: ``dim`` (negative) viewed as (outer, n, inner); parts cover n."""

    parts: tuple[Part, ...]
    n: int
    dim: int
    outer: int = 1
    inner: int = 1

    def moved(self, **kw) -> _Info:
        d = {"parts": self.parts, "n": self.n, "dim": self.dim, "outer": self.outer}
        d["inner"] = self.inner
        d.update(kw)
        return _Info(**d)


@dataclass(frozen=True)
class _Param:
    name: str


class _SiteState:
    def __init__(self, sid: int, width: int, name: str | None = None, kind: str | None = None):
        self.id = sid
        self.width = width
        self.family = family("general_linear")
        self.phi: Any = None
        self.needs_fixed = False
        self.restrictions: list[str] = []
        self.actions: list[ParamAxis] = []
        self.activations: list[tuple[int, str, ActivationAxis, IntertwinerGroup]] = []
        self.writers: list[tuple[int, str]] = []
        self.merged_into: int | None = None
        self.split: list[tuple[int, tuple[int, ...]]] | None = None
        self.residual = False
        self.explicit_name = name
        self.kind = kind
        self.frozen_reason: str | None = None


def _compose(ch: tuple[int, ...] | None, sub: tuple[int, ...]) -> tuple[int, ...]:
    return sub if ch is None else tuple(ch[k] for k in sub)


def _fixed_point_family(phi: Any) -> str:
    """The largest family of A with phi(A) = A."""
    if phi in (None, "identity"):
        return "general_linear"
    if phi == "abs":
        return "positive_monomial"
    d = phi[1]
    return "signed_permutation" if int(d) % 2 else "permutation"


def _phi_preimage(phi: Any, target: str) -> str:
    """The largest family of monomial A with phi(A) in ``target``."""
    if phi in (None, "identity"):
        return target
    # Conditions on the scales s of A; phi acts on scales by |s| or s^d.
    want = {
        "permutation": "one",
        "signed_permutation": "abs_one",
        "orthogonal": "abs_one",
        "positive_monomial": "positive",
    }.get(target)
    if want is None:  # monomial, general_linear: every monomial phi(A) qualifies
        return "monomial"
    if want == "abs_one":
        return "signed_permutation"
    even = phi == "abs" or int(phi[1]) % 2 == 0
    if want == "one":
        return "signed_permutation" if even else "permutation"
    return "monomial" if even else "positive_monomial"  # positive scales


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAXPOOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_AVGPOOL = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_MAXPOOL_F = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d}
_MAXPOOL_F |= {F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_AVGPOOL_F = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d}
_AVGPOOL_F |= {F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_SCALE = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unflatten"}
_PASS_METHODS = {"contiguous", "clone", "float", "double", "to", "detach", "half", "bfloat16"}


def _zoo_attention() -> type | None:
    try:
        from intertwiner.models.vit import Attention
    except Exception:  # noqa: BLE001 (the zoo is optional for tracing)
        return None
    return Attention


class _Tracer(fx.Tracer):
    def __init__(self, extra_leaves: tuple[type, ...]):
        super().__init__()
        self.extra_leaves = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, qualname)


class _Analysis:
    """The space bookkeeping (union-find of sites with splits) and the per-operation rules."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sites: list[_SiteState] = [_SiteState(0, 0)]  # id 0: the fixed space
        self.order = 0
        self.params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        self.zoo_sites = set(getattr(model, "intertwiner_sites", []) or [])
        self.called: set[str] = set()
        self.act_calls: dict[str, int] = {}
        self.frozen: list[tuple[str, str]] = []

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
        r = self.find(sid)
        split = self.sites[r].split
        if split is None:
            return [(r, mode, ch)]
        out: list[Part] = []
        for child, sub in split:
            out += self.expand(child, mode, _compose(ch, sub))
        return out

    def parts(self, info: _Info) -> list[Part]:
        out: list[Part] = []
        for sid, mode, ch in info.parts:
            out += self.expand(sid, mode, ch)
        return out

    def tick(self) -> int:
        self.order += 1
        return self.order

    def restrict(self, sid: int, fam: str, reason: str) -> None:
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
                s.restrictions.append((reason, family(fam).name))

    def restrict_matrix(self, part: Part, target: str, reason: str) -> None:
        """Restrict so that the matrix moving this part (in its mode) lies in ``target``."""
        sid, mode, _ = part
        if mode == "P":
            return  # a permutation lies in every family
        phi = self.sites[self.find(sid)].phi if mode == "phi" else None
        self.restrict(sid, _phi_preimage(phi, target), reason)

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
            self.restrict(r, _fixed_point_family(s.phi), reason)

    def set_phi(self, sid: int, phi: Any, reason: str) -> None:
        s = self.sites[sid]
        if s.phi is None:
            s.phi = phi
        elif s.phi != phi:
            self.restrict(sid, _fixed_point_family(s.phi), reason)
            self.restrict(sid, _fixed_point_family(phi), reason)
            s.phi = "identity"
        if s.needs_fixed:
            self.restrict(sid, _fixed_point_family(s.phi), "residual stream: phi(A) = A needed")

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
                self.restrict(s1, "permutation", why)
                self.restrict(s2, "permutation", why)
            else:
                why = (
                    f"{reason}: an activation output is added to a pre-activation tensor, "
                    "so phi(A) = A is needed"
                )
                self.fixed_point(s1, why)
                self.fixed_point(s2, why)
        self.merge(s1, s2)

    def unify(self, a: _Info | None, b: _Info | None, reason: str) -> None:
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
        children = []
        for _, _, ch in other:
            c = self.new_site(len(ch))
            cs = self.sites[c]
            cs.family, cs.phi, cs.needs_fixed = s.family, s.phi, s.needs_fixed
            cs.restrictions = list(s.restrictions)
            cs.residual = True
            if not s.family.monomial:
                cs.restrictions.append(
                    ("zero-padded shortcut: block diagonal on carried vs padded channels", "")
                )
            children.append((c, ch))
        s.split = children
        for (c, ch), q in zip(children, other, strict=True):
            self.unify_parts((c, mode, ch), q, reason)

    # -- actions ----------------------------------------------------------------------------
    def act(self, info: _Info, pname: str, axis: int, role: str, *, buffer: bool = False) -> None:
        """Record that ``info``'s elements act on ``pname[axis]`` as writer (out) or reader (in)."""
        for sid, mode, ch in self.parts(info):
            if sid == 0:
                continue
            if role == "out":
                kind = {"A": "A", "P": "P", "phi": "phi(A)"}[mode]
            elif role == "in":
                kind = {"A": "A^-T", "P": "P", "phi": "phi(A)^-T"}[mode]
            else:
                kind = role  # explicit kind
            self.sites[sid].actions.append(
                ParamAxis(pname, axis, kind, info.n, info.outer, info.inner, ch, buffer)
            )

    def act_raw(self, sid: int, pname: str, axis: int, kind: str, n_total: int, **kw) -> None:
        self.sites[sid].actions.append(ParamAxis(pname, axis, kind, n_total, **kw))

    def writer(self, name: str, width: int, mode: str = "A") -> _Info:
        sid = self.new_site(width)
        self.sites[sid].writers.append((self.tick(), name))
        return _Info(((sid, mode, None),), width, -1)

    def once(self, name: str, module: nn.Module) -> None:
        if any(True for _ in module.parameters(recurse=True)) or any(
            True for _ in module.buffers(recurse=True)
        ):
            if name in self.called:
                raise UnsupportedModuleError(
                    f"module {name!r} ({type(module).__name__}) is called more than once; shared "
                    "weights would need one element to satisfy two places at once. Supported: "
                    f"{SUPPORTED}"
                )
            self.called.add(name)

    # -- rules ------------------------------------------------------------------------------
    def linear(self, m: nn.Linear, name: str, x: _Info | None, mode: str = "A") -> _Info:
        self.once(name, m)
        if x is not None:
            if x.dim != -1 or x.n * x.outer * x.inner != m.in_features:
                raise UnsupportedModuleError(
                    f"Linear {name!r} reads a tensor whose feature axis is not its last dim; "
                    f"supported: {SUPPORTED}"
                )
            self.act(x, f"{name}.weight", 1, "in")
        out = self.writer(name, m.out_features, mode)
        self.act(out, f"{name}.weight", 0, "out")
        if m.bias is not None:
            self.act(out, f"{name}.bias", 0, "out")
        return out

    def conv(self, m: nn.Module, name: str, x: _Info | None, ndim: int, mode: str) -> _Info:
        self.once(name, m)
        if m.groups != 1:
            raise UnsupportedModuleError(
                f"{type(m).__name__} {name!r} has groups={m.groups}; grouped/depthwise "
                f"convolutions are not supported. Supported: {SUPPORTED}"
            )
        if x is not None:
            self.need_channels(x, ndim, name)
            self.act(x, f"{name}.weight", 1, "in")
        out = self.writer(name, m.out_channels, mode)
        out = out.moved(dim=1 - ndim)
        self.act(out, f"{name}.weight", 0, "out")
        if m.bias is not None:
            self.act(out, f"{name}.bias", 0, "out")
        return out

    def need_channels(self, x: _Info, ndim: int, name: str) -> None:
        if x.dim + ndim != 1 or x.outer != 1 or x.inner != 1:
            raise UnsupportedModuleError(
                f"{name!r} needs the feature axis at dim 1 (channels), got dim {x.dim} of a "
                f"{ndim}-d tensor; supported: {SUPPORTED}"
            )

    def batchnorm(self, m: nn.Module, name: str, x: _Info, ndim: int) -> _Info:
        self.once(name, m)
        self.need_channels(x, ndim, name)
        out_parts = []
        stats = m.running_mean is not None
        for part in self.parts(x):
            sid, mode, ch = part
            one = x.moved(parts=(part,))
            if sid == 0:
                out_parts.append(part)
                continue
            self.restrict(sid, "monomial", "BatchNorm is a per-channel affine map: monomial only")
            if mode == "P":
                if m.affine:  # the scale moves onto gamma/beta: exact in train and eval mode
                    self.act(one, f"{name}.weight", 0, "A")
                    self.act(one, f"{name}.bias", 0, "A")
                    mode = "A"
                if stats:
                    self.act(one, f"{name}.running_mean", 0, "P", buffer=True)
                    self.act(one, f"{name}.running_var", 0, "P", buffer=True)
                out_parts.append((sid, mode, ch))
                continue
            if not m.affine or not stats:
                self.restrict_matrix(
                    part,
                    "permutation",
                    "BatchNorm without affine parameters or running statistics after a "
                    "nonlinearity: only permutations pass through",
                )
            full = "A" if mode == "A" else "phi(A)"
            if m.affine:
                self.act(one, f"{name}.weight", 0, "P")
                self.act(one, f"{name}.bias", 0, full)
            if stats:
                self.act(one, f"{name}.running_mean", 0, full, buffer=True)
                self.act(one, f"{name}.running_var", 0, "P", buffer=True)
            out_parts.append(part)
        return x.moved(parts=tuple(out_parts))

    def layernorm(self, m: nn.LayerNorm, name: str, x: _Info | None) -> _Info | None:
        self.once(name, m)
        if x is None:
            return None
        if len(m.normalized_shape) != 1 or x.dim != -1 or x.outer != 1 or x.inner != 1:
            raise UnsupportedModuleError(
                f"LayerNorm {name!r} must normalise exactly the feature axis (the last dim); "
                f"supported: {SUPPORTED}"
            )
        for part in self.parts(x):
            self.restrict_matrix(
                part,
                "permutation",
                "LayerNorm centres and normalises over features: only permutations commute",
            )
        if m.weight is not None:
            self.act(x, f"{name}.weight", 0, "out")
        if getattr(m, "bias", None) is not None:
            self.act(x, f"{name}.bias", 0, "out")
        return x

    def activation(self, name: str, group: IntertwinerGroup, x: _Info | None) -> _Info | None:
        if x is None:
            return None
        # A module instance applied at several places (``self.relu`` reused) gets ``name#2``, ...
        # for its later calls: each call is its own site, and hooks can only see the last one.
        self.act_calls[name] = self.act_calls.get(name, 0) + 1
        if self.act_calls[name] > 1:
            name = f"{name}#{self.act_calls[name]}"
        out = []
        for part in self.parts(x):
            sid, mode, ch = part
            if sid == 0:
                out.append(part)
                continue
            if mode == "phi":
                self.fixed_point(sid, f"{name} is applied to another activation's output")
            elif mode == "P":
                self.restrict(sid, "permutation", f"{name} reads a pre-BatchNorm tensor")
            for s2, _, ch2 in self.expand(sid, "A", ch):
                s = self.sites[s2]
                s.family = intersect(s.family, group.family)
                self.set_phi(s2, group.phi_kind, f"{name}: activations with different phi")
                ax = ActivationAxis(x.dim, x.n, x.outer, x.inner, ch2)
                s.activations.append((self.tick(), name, ax, group))
                out.append((s2, "phi", ch2))
        return x.moved(parts=tuple(out))

    def maxpool(self, x: _Info, ndim: int, name: str) -> _Info:
        self.need_channels(x, ndim, name)
        for part in self.parts(x):
            self.restrict_matrix(
                part,
                "positive_monomial",
                f"max pooling ({name}): positive scalings only (max does not commute with a sign "
                "flip)",
            )
        return x

    def add_param(self, x: _Info, p: _Param, reason: str) -> None:
        t = self.params.get(p.name, self.buffers.get(p.name))
        pd = t.dim() + x.dim
        if pd < 0 or t.shape[pd] == 1:
            for part in self.parts(x):
                self.restrict_matrix(
                    part, "permutation", f"{reason}: the same value is added to every feature"
                )
            return
        if t.shape[pd] != x.n * x.outer * x.inner:  # pragma: no cover (broadcast would fail)
            raise UnsupportedModuleError(f"{reason}: parameter {p.name} does not line up")
        if p.name in self.called:
            raise UnsupportedModuleError(f"parameter {p.name!r} is used more than once")
        self.called.add(p.name)
        self.act(x, p.name, pd, "out", buffer=p.name not in self.params)

    def pad(self, x: _Info, pad: tuple, mode: str, value: Any, ndim: int, where: str) -> _Info:
        pos = x.dim + ndim
        j = ndim - 1 - pos
        before, after = (pad[2 * j], pad[2 * j + 1]) if 2 * j + 1 < len(pad) else (0, 0)
        if before == 0 and after == 0:
            return x
        if mode != "constant" or value not in (None, 0, 0.0) or before < 0 or after < 0:
            raise UnsupportedModuleError(
                f"{where}: padding of the feature axis is supported only with zeros "
                f"(mode='constant', value=0); supported: {SUPPORTED}"
            )
        if x.outer != 1 or x.inner != 1:
            raise UnsupportedModuleError(f"{where}: padding a flattened feature axis")
        n = x.n + before + after
        parts = [(s, m, tuple(c + before for c in (ch or range(x.n)))) for s, m, ch in x.parts]
        padded = tuple(range(before)) + tuple(range(before + x.n, n))
        sid = self.new_site(len(padded), name=f"{where}.pad")
        parts.append((sid, "A", padded))
        return x.moved(parts=tuple(parts), n=n)

    def attention(
        self, name: str, x: _Info | None, e: int, heads: int, packed: str | None, sep: str | None
    ) -> _Info:
        """Shared by nn.MultiheadAttention (``packed`` = its name: in_proj_weight rows q|k|v) and
        the zoo Attention (``sep`` = its name: separate q, k, v, out Linears)."""
        hd = e // heads
        if packed is not None:
            rows = {key: (f"{packed}.in_proj_weight", i * e) for i, key in enumerate("qkv")}
            bias = {key: (f"{packed}.in_proj_bias", i * e) for i, key in enumerate("qkv")}
            out_w, out_b = f"{packed}.out_proj.weight", f"{packed}.out_proj.bias"
        else:
            rows = {key: (f"{sep}.{key}.weight", 0) for key in "qkv"}
            bias = {key: (f"{sep}.{key}.bias", 0) for key in "qkv"}
            out_w, out_b = f"{sep}.out.weight", f"{sep}.out.bias"
        bias = {k: v for k, v in bias.items() if v[0] in self.params}
        if x is not None:
            if x.dim != -1 or x.n * x.outer * x.inner != e:
                raise UnsupportedModuleError(f"attention {name!r}: features must be the last dim")
            for pname in dict.fromkeys(p for p, _ in rows.values()):
                self.act(x, pname, 1, "in")
        # Heads: one permutation of whole heads in q, k, v (rows) and in out (columns).
        hs = self.new_site(heads, name=f"{name}.heads", kind="attention_heads")
        self.sites[hs].family = family("permutation")
        outer = 3 if packed is not None else 1
        for table in (rows, bias):
            for pname in dict.fromkeys(p for p, _ in table.values()):
                self.act_raw(hs, pname, 0, "A", heads, outer=outer, inner=hd)
        self.act_raw(hs, out_w, 1, "A^-T", heads, inner=hd)
        # Per head: q <- G q, k <- G^-T k (scores unchanged); v <- G v, out <- out G^-1.
        for h in range(heads):
            rng = range(h * hd, (h + 1) * hd)
            for pair, first, second in (("qk", "q", "k"), ("vo", "v", None)):
                sid = self.new_site(hd, name=f"{name}.{pair}{h}", kind=f"attention_{pair}")
                for key, kind in ((first, "A"), (second, "A^-T")):
                    if key is None:
                        continue
                    for table in (rows, bias):
                        if key not in table:
                            continue
                        pname, off = table[key]
                        n_total = self.params[pname].shape[0]
                        ch = tuple(off + c for c in rng)
                        self.act_raw(sid, pname, 0, kind, n_total, channels=ch)
                if pair == "vo":
                    self.act_raw(sid, out_w, 1, "A^-T", e, channels=tuple(rng))
        out = self.writer(name, e)
        self.act(out, out_w, 0, "out")
        if out_b in self.params:
            self.act(out, out_b, 0, "out")
        return out

    def mha(self, m: nn.MultiheadAttention, name: str, x: _Info | None) -> _Info:
        self.once(name, m)
        if (
            not m._qkv_same_embed_dim
            or m.bias_k is not None
            or m.add_zero_attn
            or m.in_proj_weight is None
        ):
            raise UnsupportedModuleError(
                f"nn.MultiheadAttention {name!r}: only the packed in_proj form without bias_k/"
                f"bias_v/add_zero_attn is supported; supported: {SUPPORTED}"
            )
        return self.attention(name, x, m.embed_dim, m.num_heads, packed=name, sep=None)

    def zoo_attention(self, m: nn.Module, name: str, x: _Info | None) -> _Info:
        self.once(name, m)
        return self.attention(name, x, m.q.out_features, m.heads, packed=None, sep=name)

    def encoder_layer(self, m: nn.TransformerEncoderLayer, name: str, x: _Info | None):
        act = m.activation
        act_name = f"{name}.activation"
        try:
            group = for_activation(act)
        except IntertwinerError as e:
            raise UnsupportedModuleError(f"{act_name}: {e}") from e

        def sa(t):
            return self.mha(m.self_attn, f"{name}.self_attn", t)

        def ff(t):
            h = self.linear(m.linear1, f"{name}.linear1", t)
            h = self.activation(act_name, group, h)
            return self.linear(m.linear2, f"{name}.linear2", h)

        def add(a, b, where):
            self.unify(a, b, f"residual addition in {where}")
            return b if a is None else a

        if m.norm_first:
            x = add(x, sa(self.layernorm(m.norm1, f"{name}.norm1", x)), name)
            x = add(x, ff(self.layernorm(m.norm2, f"{name}.norm2", x)), name)
        else:
            x = self.layernorm(m.norm1, f"{name}.norm1", add(x, sa(x), name))
            x = self.layernorm(m.norm2, f"{name}.norm2", add(x, ff(x), name))
        return x


def tracked_of(args: list) -> list[_Info]:
    return [a for a in args if isinstance(a, _Info)]


class _Runner(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, an: _Analysis, zoo_attention: type | None):
        super().__init__(gm)
        self.an = an
        self.infos: dict[fx.Node, Any] = {}
        self.zoo_attention = zoo_attention
        self.error: str | None = None

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        try:
            self.infos[n] = self.rule(n, value)
        except UnsupportedModuleError as e:
            self.error = str(e)  # fx appends its own context to the message; keep ours clean
            raise
        return value

    def info(self, a: Any) -> Any:
        return self.infos.get(a) if isinstance(a, fx.Node) else None

    def where(self, n: fx.Node) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        return list(stack.keys())[-1] if stack else n.name

    def rule(self, n: fx.Node, value: Any) -> Any:  # noqa: C901 (a dispatch table)
        an = self.an
        if n.op == "placeholder":
            return None
        if n.op == "get_attr":
            return _Param(n.target)
        if n.op == "output":

            def walk(a):
                if isinstance(a, fx.Node):
                    i = self.infos.get(a)
                    if isinstance(i, tuple):
                        for j in i:
                            if isinstance(j, _Info):
                                an.unify(j, None, "the model output")
                    elif isinstance(i, _Info):
                        an.unify(i, None, "the model output")
                elif isinstance(a, (tuple, list)):
                    for b in a:
                        walk(b)
                elif isinstance(a, dict):
                    for b in a.values():
                        walk(b)

            walk(n.args)
            return None
        if n.op == "call_function" and n.target is operator.getitem:
            base = self.info(n.args[0])
            if isinstance(base, tuple):
                return base[n.args[1]]
        args = [self.info(a) for a in n.args]
        kwargs = {k: self.info(v) for k, v in n.kwargs.items()}
        tracked = [a for a in list(args) + list(kwargs.values()) if isinstance(a, _Info)]
        vals = [self.env[a] if isinstance(a, fx.Node) else a for a in n.args]
        if n.op == "call_module":
            return self.module_rule(n, value, args, tracked)
        if not tracked:
            return None
        x = args[0] if args and isinstance(args[0], _Info) else tracked[0]
        ndim = vals[0].dim() if vals and isinstance(vals[0], torch.Tensor) else None
        if n.op == "call_function":
            return self.function_rule(n, value, args, vals, x, ndim)
        if n.op == "call_method":
            return self.method_rule(n, value, args, vals, x, ndim)
        raise UnsupportedModuleError(f"unsupported fx node {n.op} {n.target}")  # pragma: no cover

    def unsupported(self, what: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(
            f"{what} touches a hidden feature axis and is not supported by the symmetry tracer. "
            f"Supported: {SUPPORTED}"
        )

    # -- modules ----------------------------------------------------------------------------
    def module_rule(self, n: fx.Node, value: Any, args: list, tracked: list) -> Any:
        an = self.an
        name = str(n.target)
        m = self.fetch_attr(name)
        x = args[0] if args else None
        x = x if isinstance(x, _Info) else None
        ndim = self.env[n.args[0]].dim() if n.args and isinstance(n.args[0], fx.Node) else None

        def bn_users() -> bool:
            users = list(n.users)
            return bool(users) and all(
                u.op == "call_module"
                and isinstance(self.fetch_attr(str(u.target)), _BN)
                and self.fetch_attr(str(u.target)).affine
                for u in users
            )

        if isinstance(m, nn.Linear):
            return an.linear(m, name, x, "P" if bn_users() else "A")
        if isinstance(m, _CONV):
            return an.conv(m, name, x, ndim, "P" if bn_users() else "A")
        if self.zoo_attention is not None and isinstance(m, self.zoo_attention):
            return an.zoo_attention(m, name, x)
        if isinstance(m, nn.MultiheadAttention):
            q = args[0] if len(args) > 0 else self.info(n.kwargs.get("query"))
            k = args[1] if len(args) > 1 else self.info(n.kwargs.get("key"))
            v = args[2] if len(args) > 2 else self.info(n.kwargs.get("value"))
            same = n.args[:3] if len(n.args) >= 3 else None
            if same is not None and not (same[0] is same[1] is same[2]):
                if any(isinstance(t, _Info) for t in (q, k, v)):
                    raise UnsupportedModuleError(
                        f"nn.MultiheadAttention {name!r}: cross-attention is not supported; "
                        f"supported: {SUPPORTED}"
                    )
            return (an.mha(m, name, q), None)
        if isinstance(m, nn.TransformerEncoderLayer):
            return an.encoder_layer(m, name, x)
        if isinstance(m, nn.TransformerEncoder):
            for i, layer in enumerate(m.layers):
                x = an.encoder_layer(layer, f"{name}.layers.{i}", x)
            if m.norm is not None:
                x = an.layernorm(m.norm, f"{name}.norm", x) if x is not None else None
            return x
        if x is None and not tracked:
            return None
        if x is None:
            raise self.unsupported(f"module {name!r} ({type(m).__name__}) on a non-first input")
        if isinstance(m, nn.Identity) and name not in an.zoo_sites:
            return x
        if isinstance(m, _DROPOUT):
            return x  # identity in eval mode
        if isinstance(m, _BN):
            return an.batchnorm(m, name, x, ndim)
        if isinstance(m, nn.LayerNorm):
            return an.layernorm(m, name, x)
        if isinstance(m, _MAXPOOL):
            if getattr(m, "return_indices", False):
                raise self.unsupported(f"{name!r} with return_indices")
            return an.maxpool(x, ndim, name)
        if isinstance(m, _AVGPOOL):
            an.need_channels(x, ndim, name)
            return x
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(x, self.env[n.args[0]].shape, value.shape, name)
        try:
            group = for_activation(m)
        except NotElementwiseError as e:
            raise self.unsupported(f"module {name!r} ({type(m).__name__}): {e}") from None
        except IntertwinerError:
            raise self.unsupported(f"module {name!r} ({type(m).__name__})") from None
        return an.activation(name, group, x)

    # -- functions --------------------------------------------------------------------------
    def function_rule(self, n, value, args, vals, x, ndim) -> Any:
        an, t = self.an, n.target
        where = self.where(n)
        if t in _ADD:
            return self.binary(n, args, vals, where)
        if t in _SCALE:
            tensors = sum(isinstance(v, torch.Tensor) and v.dim() > 0 for v in vals)
            if len(tracked_of(args)) != 1 or tensors != 1:
                raise self.unsupported(f"{t.__name__} involving two tensors in {where!r}")
            if t in (operator.truediv, torch.div) and not isinstance(args[0], _Info):
                raise self.unsupported(f"dividing by a hidden tensor in {where!r}")
            return x
        if t in (operator.neg, torch.neg, F.dropout):
            return x
        if t is operator.getitem:
            if isinstance(args[0], tuple):
                return args[0][n.args[1]]
            return self.getitem(x, vals[0], n.args[1], value, where)
        if t in (torch.flatten, torch.reshape):
            return self.reshape(x, vals[0].shape, value.shape, where)
        if t is torch.transpose:
            return self.transpose(x, ndim, n.args[1], n.args[2])
        if t is torch.permute:
            return self.permute(x, ndim, n.args[1])
        if t in (torch.mean, torch.sum):
            return self.reduce(x, ndim, n, value)
        if t is F.pad:
            pad = n.args[1] if len(n.args) > 1 else n.kwargs["pad"]
            mode = n.args[2] if len(n.args) > 2 else n.kwargs.get("mode", "constant")
            val = n.args[3] if len(n.args) > 3 else n.kwargs.get("value")
            return an.pad(x, tuple(pad), mode, val, ndim, where)
        if t in _MAXPOOL_F:
            return an.maxpool(x, ndim, where)
        if t in _AVGPOOL_F:
            an.need_channels(x, ndim, where)
            return x
        try:
            group = for_activation(t)
        except IntertwinerError:
            raise self.unsupported(f"function {getattr(t, '__name__', t)} in {where!r}") from None
        return an.activation(n.name, group, x)

    def method_rule(self, n, value, args, vals, x, ndim) -> Any:
        t, where = n.target, self.where(n)
        if not isinstance(args[0], _Info):
            raise self.unsupported(f"method {t} with a hidden tensor as argument in {where!r}")
        if t in ("size", "dim"):
            return None
        if t in _RESHAPE_METHODS:
            return self.reshape(x, vals[0].shape, value.shape, where)
        if t == "transpose":
            return self.transpose(x, ndim, n.args[1], n.args[2])
        if t == "permute":
            dims = n.args[1:] if not isinstance(n.args[1], (tuple, list)) else n.args[1]
            return self.permute(x, ndim, dims)
        if t in ("mean", "sum"):
            return self.reduce(x, ndim, n, value)
        if t in _PASS_METHODS or t == "neg":
            return x
        if t in ("add", "sub", "__add__", "__radd__", "__sub__"):
            return self.binary(n, args, vals, where)
        if t in ("mul", "div") and not isinstance(vals[1], torch.Tensor):
            return x
        try:
            group = for_activation(t)
        except IntertwinerError:
            raise self.unsupported(f"tensor method .{t}() in {where!r}") from None
        return self.an.activation(n.name, group, x)

    # -- shape rules --------------------------------------------------------------------------
    def binary(self, n, args, vals, where) -> Any:
        a, b = args[0], args[1] if len(args) > 1 else n.kwargs.get("other")
        va = vals[0]
        vb = vals[1] if len(vals) > 1 else None
        if isinstance(b, fx.Node):  # kwargs are raw nodes
            b = self.info(b)
        reason = f"residual addition in {where!r}"
        if isinstance(a, _Info) and isinstance(b, _Info):
            out_nd = max(va.dim(), vb.dim())
            del out_nd
            self.an.unify(a, b, reason)
            return a
        x, other, vo = (a, b, vb) if isinstance(a, _Info) else (b, a, va)
        if isinstance(other, _Param):
            self.an.add_param(x, other, f"adding parameter {other.name} in {where!r}")
            return x
        if other is None and isinstance(vo, torch.Tensor) and vo.dim() > 0:
            self.an.unify(x, None, f"{where!r}: added to a tensor computed from the input")
            return x
        # A number (or 0-d tensor): the same value on every feature commutes with permutations.
        for part in self.an.parts(x):
            self.an.restrict_matrix(
                part, "permutation", f"{where!r}: a constant is added to every feature"
            )
        return x

    def reshape(self, x: _Info, s_in, s_out, where: str) -> _Info:
        s_in, s_out = list(s_in), list(s_out)
        pos = x.dim + len(s_in)
        after = 1
        for v in s_in[pos + 1 :]:
            after *= v
        st = x.inner * after
        span = x.n * st
        cands = []
        for d in range(len(s_out)):
            p = 1
            for v in s_out[d + 1 :]:
                p *= v
            big = p * s_out[d]
            if st % p == 0 and big % span == 0:
                cands.append((s_out[d] == 1, d, p, big))
        if not cands:
            raise self.unsupported(
                f"a reshape in {where!r} that splits the feature axis (e.g. into heads)"
            )
        _, d, p, big = min(cands)
        return x.moved(dim=d - len(s_out), inner=st // p, outer=big // span)

    def transpose(self, x: _Info, ndim: int, a: int, b: int) -> _Info:
        pos = x.dim + ndim
        a, b = a % ndim, b % ndim
        new = b if pos == a else a if pos == b else pos
        return x.moved(dim=new - ndim)

    def permute(self, x: _Info, ndim: int, dims) -> _Info:
        pos = x.dim + ndim
        dims = [d % ndim for d in dims]
        return x.moved(dim=dims.index(pos) - ndim)

    def reduce(self, x: _Info, ndim: int, n: fx.Node, value: torch.Tensor) -> _Info:
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if dim is None:
            raise self.unsupported(f"a reduction over all dims in {self.where(n)!r}")
        dims = [d % ndim for d in ((dim,) if isinstance(dim, int) else dim)]
        pos = x.dim + ndim
        if pos in dims:
            raise self.unsupported(f"a reduction over the feature axis in {self.where(n)!r}")
        keep = value.dim() == ndim
        new = pos if keep else pos - sum(1 for d in dims if d < pos)
        return x.moved(dim=new - value.dim())

    def getitem(self, x: _Info, val: torch.Tensor, idx: Any, value: Any, where: str) -> _Info:
        if not isinstance(idx, tuple):
            idx = (idx,)
        ndim = val.dim()
        pos = x.dim + ndim
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (ndim - n_real)
            else:
                expanded.append(i)
        in_d, out_d, new_pos = 0, 0, None
        for i in expanded:
            if i is None:
                out_d += 1
                continue
            if in_d == pos:
                if not (isinstance(i, slice) and i == slice(None)):
                    raise self.unsupported(f"indexing the feature axis in {where!r}")
                new_pos = out_d
            if isinstance(i, slice):
                out_d += 1
            elif not isinstance(i, int):
                raise self.unsupported(f"advanced indexing in {where!r}")
            in_d += 1
        if new_pos is None:  # feature dim lies past the explicit indices
            new_pos = out_d + (pos - in_d)
        return x.moved(dim=new_pos - value.dim())


class _Root1(nn.Module):
    """Holds a model whose own type is a leaf (e.g. a bare nn.TransformerEncoderLayer) so that
    fx records one call_module node for it; names are un-prefixed after tracing."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root

    def forward(self, x):
        return self.root(x)


class _Root3(_Root1):
    def forward(self, q, k, v):
        return self.root(q, k, v)


def _strip(name: str) -> str:
    if name == "root":
        return ""
    return name[5:] if name.startswith("root.") else name


def _unwrap(spec: SymmetrySpec) -> SymmetrySpec:
    for s in spec.sites:
        s.name = _strip(s.name)
        s.actions = [dataclasses.replace(a, name=_strip(a.name)) for a in s.actions]
        s.activation_axes = {_strip(k): v for k, v in s.activation_axes.items()}
        s.activations = [_strip(a) for a in s.activations]
        s.writers = [_strip(w) for w in s.writers]
    spec.frozen = [(_strip(a), b) for a, b in spec.frozen]
    return spec


def trace(model: nn.Module, example_input: Any) -> SymmetrySpec:
    """The hidden symmetry sites of ``model`` (see the module docstring for the rules).

    ``example_input``: one batch the model accepts (a tensor, or a tuple of positional inputs). The
    model is traced and run on a deep copy in eval mode, so ``model`` is never modified.
    """
    work = copy.deepcopy(model).eval()
    zoo = _zoo_attention()
    tracer = _Tracer(((zoo,) if zoo is not None else ()) + (RBF, Power, Abs, Elementwise))
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    wrapped = tracer.is_leaf_module(work, "")
    if wrapped:
        if len(inputs) not in (1, 3):
            raise UnsupportedModuleError(
                f"a bare {type(model).__name__} must take 1 (or 3: query, key, value) inputs"
            )
        work = (_Root1 if len(inputs) == 1 else _Root3)(work)
    try:
        graph = tracer.trace(work)
    except Exception as e:  # noqa: BLE001 (fx raises many types; report one)
        raise UnsupportedModuleError(
            f"torch.fx could not trace {type(model).__name__}: {e}. The tracer needs an "
            f"fx-traceable forward (no Python control flow on tensor values). Supported: "
            f"{SUPPORTED}"
        ) from e
    gm = fx.GraphModule(work, graph)
    an = _Analysis(work)
    runner = _Runner(gm, an, zoo)
    try:
        with torch.no_grad():
            runner.run(*inputs)
    except UnsupportedModuleError:
        if runner.error is None:
            raise
        raise UnsupportedModuleError(runner.error) from None
    spec = _build(an, type(model).__name__)
    return _unwrap(spec) if wrapped else spec


def _build(an: _Analysis, model_name: str) -> SymmetrySpec:
    leaves: dict[int, dict[str, list]] = {}

    def slot(r: int) -> dict[str, list]:
        return leaves.setdefault(r, {"actions": [], "activations": [], "writers": []})

    for s in an.sites[1:]:
        for a in s.actions:
            for r, _, ch in an.expand(s.id, "A", a.channels):
                slot(r)["actions"].append((a, ch))
        for order, name, ax, group in s.activations:
            for r, _, ch in an.expand(s.id, "A", ax.channels):
                slot(r)["activations"].append((order, name, ax, group, ch))
        for order, name in s.writers:
            for r, _, _ in an.expand(s.id, "A", None):
                slot(r)["writers"].append((order, name))
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
            actions.append(
                ParamAxis(a.name, a.axis, a.kind, a.n_total, a.outer, a.inner, ch, a.buffer)
            )
        axes = {}
        for _, aname, ax, _, ch in acts:
            if ch is not None and ch == tuple(range(ax.n_total)):
                ch = None
            axes[aname] = ActivationAxis(ax.dim, ax.n_total, ax.outer, ax.inner, ch)
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
            )
        )
    for s in an.sites[1:]:
        if s.frozen_reason and (s.actions or s.activations):
            label = (s.activations[0][1] if s.activations else None) or (
                s.writers[0][1] if s.writers else f"space {s.id}"
            )
            frozen.append((label, s.frozen_reason))
    return SymmetrySpec(sites=sites, frozen=frozen, model_name=model_name)
