"""The rules' primitives on spaces (one API each): what a linear map, a convolution, BatchNorm,
LayerNorm, an activation, max pooling, an added parameter and zero channel padding do to the
spaces they read and write, and which parameter axes they make a site act on. The ATen-op rules
(``_rules_*``) read the graph and call these."""

from __future__ import annotations

from typing import Any

from intertwiner._types import SiteName
from intertwiner.errors import UnsupportedModuleError
from intertwiner.groups import (
    MONOMIAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    SCALED_PERMUTATION,
    ActionKind,
    IntertwinerGroup,
    Mode,
    intersect,
)
from intertwiner.symmetry._spaces import SUPPORTED, Info, ParamRef, Spaces
from intertwiner.symmetry.spec import ActivationAxis


class Rules(Spaces):
    """Spaces plus the primitive of each rule."""

    def linear(
        self,
        x: Info | None,
        weight: str,
        bias: str | None,
        out_features: int,
        in_features: int,
        mode: Mode = Mode.A,
        *,
        where: str,
        out_axis: int = 0,
        read_only: bool = False,
    ) -> Info | None:
        """``y = x W^T + b`` (``out_axis=0``) or ``y = x W + b`` (``out_axis=1``, GPT-2's Conv1D /
        addmm): the input axis of W reads ``x``'s space, its output axis and the bias write a fresh
        one (``read_only``: the caller owns the output, e.g. an attention projection)."""
        if x is not None:
            if x.dim != -1 or x.n * x.outer * x.inner != in_features:
                raise UnsupportedModuleError(
                    f"Linear {where!r} reads a tensor whose feature axis is not its last dim; "
                    f"supported: {SUPPORTED}"
                )
            self.act(x, weight, 1 - out_axis, "in")
        if read_only:
            return None
        out = self.writer(where, out_features, mode)
        self.act(out, weight, out_axis, "out")
        if bias is not None:
            self.act(out, bias, 0, "out")
        return out

    def conv(
        self,
        x: Info | None,
        weight: str,
        bias: str | None,
        out_channels: int,
        groups: int,
        ndim: int,
        mode: str,
        *,
        where: str,
        transposed: bool = False,
        read_only: bool = False,
    ) -> Info | None:
        """A convolution: input channels (weight axis 1; 0 when ``transposed``) read ``x``'s
        space, output channels and the bias write a fresh one (``read_only``: the caller owns the
        output, e.g. an attention projection)."""
        if groups != 1:
            raise UnsupportedModuleError(
                f"convolution {where!r} has groups={groups}; grouped/depthwise "
                f"convolutions are not supported. Supported: {SUPPORTED}"
            )
        k = len(self.shape_of(weight)) - 2
        if x is not None:
            self.need_channels(x, ndim, where, batched=k + 2)
            self.act(x, weight, 0 if transposed else 1, "in")
        if read_only:
            return None
        out = self.writer(where, out_channels, mode)
        out = out.moved(dim=1 - ndim)
        self.act(out, weight, 1 if transposed else 0, "out")
        if bias is not None:
            self.act(out, bias, 0, "out")
        return out

    def need_channels(self, x: Info, ndim: int, name: str, batched: int | None = None) -> None:
        """Features must be the channel dim 1 of a batched input (``batched`` = expected ndim:
        a 2-d input to a 1d pool/conv is unbatched and would act across the features)."""
        if batched is not None and ndim != batched:
            raise UnsupportedModuleError(
                f"{name!r} gets a {ndim}-d input but is a {batched - 2}d operation: an unbatched "
                f"input would make it act across the feature axis. Supported: {SUPPORTED}"
            )
        if x.dim + ndim != 1 or x.outer != 1 or x.inner != 1:
            raise UnsupportedModuleError(
                f"{name!r} needs the feature axis at dim 1 (channels), got dim {x.dim} of a "
                f"{ndim}-d tensor; supported: {SUPPORTED}"
            )

    def batchnorm(
        self, x: Info, names: dict[str, str], ndim: int, *, affine: bool, stats: bool, where: str
    ) -> Info:
        """Per-channel affine normalisation; ``names`` maps weight/bias/running_mean/running_var
        to parameter and buffer names."""
        name = where
        self.need_channels(x, ndim, name)
        if affine:  # on a space frozen before: the reason it froze explains gamma and beta
            for osid, omode, och in x.parts:
                if any(s == 0 for s, _, _ in self.expand(osid, omode, och)):
                    for p in (names["weight"], names["bias"]):
                        self._frozen_action(osid, p, 0, x, False)
        out_parts = []
        for part in self.parts(x):
            sid, mode, ch = part
            one = x.moved(parts=(part,))
            if sid == 0:
                out_parts.append(part)
                continue
            self.restrict(sid, MONOMIAL, "BatchNorm is a per-channel affine map: monomial only")
            if mode == Mode.P:
                if affine:  # the scale moves onto gamma/beta: exact in train and eval mode
                    self.act(one, names["weight"], 0, ActionKind.A)
                    self.act(one, names["bias"], 0, ActionKind.A)
                    mode = Mode.A
                if stats:
                    self.act(one, names["running_mean"], 0, ActionKind.P, buffer=True)
                    self.act(one, names["running_var"], 0, ActionKind.P, buffer=True)
                out_parts.append((sid, mode, ch))
                continue
            if not affine or not stats:
                self.restrict_matrix(
                    part,
                    PERMUTATION,
                    "BatchNorm without affine parameters or running statistics after a "
                    "nonlinearity: only permutations pass through",
                )
            full = ActionKind.writing(mode)
            if affine:
                self.act(one, names["weight"], 0, ActionKind.P)
                self.act(one, names["bias"], 0, full)
            if stats:
                self.act(one, names["running_mean"], 0, full, buffer=True)
                self.act(one, names["running_var"], 0, ActionKind.P, buffer=True)
            out_parts.append(part)
        return x.moved(parts=tuple(out_parts))

    def layernorm(
        self, x: Info | None, weight: str | None, bias: str | None, n_dims: int, *, where: str
    ) -> Info | None:
        """LayerNorm over the last ``n_dims`` dims with optional weight and bias."""
        name = where
        if x is None:
            return None
        # The feature axis may be a block of the last dim ((outer, n, inner): Swin's patch merging
        # normalises 4C = (2, 2, C)): a permutation of n in every block permutes the whole dim.
        if n_dims != 1 or x.dim != -1:
            raise UnsupportedModuleError(
                f"LayerNorm {name!r} must normalise exactly the feature axis (the last dim); "
                f"supported: {SUPPORTED}"
            )
        for part in self.parts(x):
            self.restrict_matrix(
                part,
                PERMUTATION,
                "LayerNorm centres and normalises over features: only permutations commute",
            )
        if weight is not None:
            self.act(x, weight, 0, "out")
        if bias is not None:
            self.act(x, bias, 0, "out")
        return x

    def activation(self, name: str, group: IntertwinerGroup, x: Info | None) -> Info | None:
        if x is None:
            return None
        # A module instance applied at several places (``self.relu`` reused) gets ``name#2``, ...
        # for its later calls: each call is its own site, and hooks can only see the last one.
        self.act_calls[name] = self.act_calls.get(name, 0) + 1
        name = str(SiteName(name, self.act_calls[name]))
        for sid, ax in self.also_moved.get(self.current_use, ()):
            self.sites[sid].activations.append((self.tick(), name, ax, group))
        out = []
        for part in self.parts(x):
            sid, mode, ch = part
            if sid == 0:
                out.append(part)
                continue
            if mode == Mode.PHI:
                self.fixed_point(sid, f"{name} is applied to another activation's output")
            elif mode == Mode.P:
                self.restrict(sid, PERMUTATION, f"{name} reads a pre-BatchNorm tensor")
            for s2, _, ch2 in self.expand(sid, Mode.A, ch):
                s = self.sites[s2]
                s.family = intersect(s.family, group.family)
                self.set_phi(s2, group.phi_kind, f"{name}: activations with different phi")
                ax = ActivationAxis(x.dim, x.n, x.outer, x.inner, ch2)
                s.activations.append((self.tick(), name, ax, group))
                out.append((s2, Mode.PHI, ch2))
        return x.moved(parts=tuple(out))

    def maxpool(self, x: Info, ndim: int, name: str, batched: int) -> Info:
        self.need_channels(x, ndim, name, batched)
        for part in self.parts(x):
            self.restrict_matrix(
                part,
                POSITIVE_MONOMIAL,
                f"max pooling ({name}): positive scalings only (max does not commute with a sign "
                "flip)",
            )
        return x

    def add_param(self, x: Info, p: ParamRef, reason: str) -> None:
        t = self.params.get(p.name, self.buffers.get(p.name))
        if t is None:  # a plain tensor attribute: apply cannot move it
            self.unify(
                x,
                None,
                f"{reason}: {p.name!r} is a plain tensor attribute (neither parameter nor buffer), "
                "which apply cannot transform; register it with register_buffer to keep a symmetry",
            )
            return
        pd = p.axis_for(t.dim(), x.dim)
        if t.numel() == 1 and self.scalar_moves(x, p.name, ActionKind.scalar_added, reason):
            return
        if pd < 0 or t.shape[pd] == 1:
            for part in self.parts(x):
                self.restrict_matrix(
                    part, PERMUTATION, f"{reason}: the same value is added to every feature"
                )
            return
        if t.shape[pd] != x.n * x.outer * x.inner:  # pragma: no cover (broadcast would fail)
            raise UnsupportedModuleError(f"{reason}: parameter {p.name} does not line up")
        if p.name in self.called:
            first = self.added_to.get(p.name)
            # CaiT's cls token joins the patch tokens (cat) and is also the residual stream of
            # its class-attention blocks: one parameter added to two tensors is moved once, so
            # both tensors must be moved by the same element (and in the same mode).
            if first is not None and first[1] == pd and self._plain_part(first[0]) is not None:
                if self._plain_part(first[0]) == self._plain_part(x):
                    self.unify(first[0], x, f"{reason}: {p.name!r} is added here too")
                    return
            raise UnsupportedModuleError(f"parameter {p.name!r} is used more than once")
        self.called.add(p.name)
        self.added_to[p.name] = (x, pd)
        self.act(x, p.name, pd, "out", buffer=p.name not in self.params)

    def scalar_moves(self, x: Info, name: str, kind_of, reason: str) -> bool:
        """A one-number parameter ``name`` met by every feature of ``x`` (added, or multiplying
        it): when one whole site moves ``x`` and the number is not used elsewhere, restrict the
        site to ``c P`` (one common factor c > 0 times a permutation) and let the number take a
        power of c (``kind_of(mode)``: an ``ActionKind.SCALAR_*``, None where the mode's matrix has
        no factor to take). False (nothing recorded) otherwise: the caller keeps its fallback."""
        t = self.params.get(name, self.buffers.get(name))
        parts = self.parts(x)
        if name in self.scalar_sites:  # used twice: one factor cannot serve both uses
            self.restrict(self.scalar_sites[name], PERMUTATION, f"{reason}: {name} is used twice")
            return False
        if t is None or t.numel() != 1 or name in self.called or len(parts) != 1:
            return False
        sid, mode, ch = parts[0]
        if sid == 0 or ch is not None:
            return False
        kind = kind_of(mode)
        if kind is None and mode != Mode.P:
            return False
        self.called.add(name)
        self.scalar_sites[name] = sid
        if kind is None:  # moved by P only: the number stays and the site keeps its group
            return True
        self.restrict_matrix(
            parts[0],
            SCALED_PERMUTATION,
            f"{reason}: one number for every feature moves only with a common factor c > 0 of the "
            "features (c P)",
        )
        self.act_raw(sid, name, 0, kind, 1, buffer=name not in self.params)
        return True

    def _plain_part(self, x: Info) -> tuple | None:
        """``(mode, n, outer, inner, dim)`` of a tensor one whole site moves, else None."""
        parts = self.parts(x)
        if len(parts) != 1 or parts[0][2] is not None or parts[0][0] == 0:
            return None
        return parts[0][1], x.n, x.outer, x.inner, x.dim

    def pad(self, x: Info, pad: tuple, mode: str, value: Any, ndim: int, where: str) -> Info:
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
        parts.append((sid, Mode.A, padded))
        return x.moved(parts=tuple(parts), n=n)
