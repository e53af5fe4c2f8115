"""Per-module rules of ``trace``: what Linear, Conv, BatchNorm, LayerNorm, activations, pooling,
padding and attention do to spaces and which parameter axes they make a site act on."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from intertwiner.errors import IntertwinerError, UnsupportedModuleError
from intertwiner.groups import (
    MONOMIAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    IntertwinerGroup,
    for_activation,
    intersect,
)
from intertwiner.symmetry._spaces import SUPPORTED, Info, ParamRef, Spaces
from intertwiner.symmetry.spec import ActivationAxis

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


class Rules(Spaces):
    """Spaces plus the rule for each supported module kind."""

    def linear(self, m: nn.Linear, name: str, x: Info | None, mode: str = "A") -> Info:
        self.once(name, m)
        bias = f"{name}.bias" if m.bias is not None else None
        return self.linear_named(
            x, f"{name}.weight", bias, m.out_features, m.in_features, mode, where=name
        )

    def linear_named(
        self,
        x: Info | None,
        weight: str,
        bias: str | None,
        out_features: int,
        in_features: int,
        mode: str = "A",
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

    def conv(self, m: nn.Module, name: str, x: Info | None, ndim: int, mode: str) -> Info:
        self.once(name, m)
        bias = f"{name}.bias" if m.bias is not None else None
        return self.conv_named(
            x, f"{name}.weight", bias, m.out_channels, m.groups, ndim, mode, where=name
        )

    def conv_named(
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
    ) -> Info:
        """A convolution: input channels (weight axis 1; 0 when ``transposed``) read ``x``'s
        space, output channels and the bias write a fresh one."""
        if groups != 1:
            raise UnsupportedModuleError(
                f"convolution {where!r} has groups={groups}; grouped/depthwise "
                f"convolutions are not supported. Supported: {SUPPORTED}"
            )
        k = len(self.shape_of(weight)) - 2
        if x is not None:
            self.need_channels(x, ndim, where, batched=k + 2)
            self.act(x, weight, 0 if transposed else 1, "in")
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

    def batchnorm(self, m: nn.Module, name: str, x: Info, ndim: int) -> Info:
        self.once(name, m)
        names = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
        names |= {"running_mean": f"{name}.running_mean", "running_var": f"{name}.running_var"}
        return self.batchnorm_named(
            x, names, ndim, affine=m.affine, stats=m.running_mean is not None, where=name
        )

    def batchnorm_named(
        self, x: Info, names: dict[str, str], ndim: int, *, affine: bool, stats: bool, where: str
    ) -> Info:
        """Per-channel affine normalisation; ``names`` maps weight/bias/running_mean/running_var
        to parameter and buffer names."""
        name = where
        self.need_channels(x, ndim, name)
        out_parts = []
        for part in self.parts(x):
            sid, mode, ch = part
            one = x.moved(parts=(part,))
            if sid == 0:
                out_parts.append(part)
                continue
            self.restrict(sid, MONOMIAL, "BatchNorm is a per-channel affine map: monomial only")
            if mode == "P":
                if affine:  # the scale moves onto gamma/beta: exact in train and eval mode
                    self.act(one, names["weight"], 0, "A")
                    self.act(one, names["bias"], 0, "A")
                    mode = "A"
                if stats:
                    self.act(one, names["running_mean"], 0, "P", buffer=True)
                    self.act(one, names["running_var"], 0, "P", buffer=True)
                out_parts.append((sid, mode, ch))
                continue
            if not affine or not stats:
                self.restrict_matrix(
                    part,
                    PERMUTATION,
                    "BatchNorm without affine parameters or running statistics after a "
                    "nonlinearity: only permutations pass through",
                )
            full = "A" if mode == "A" else "phi(A)"
            if affine:
                self.act(one, names["weight"], 0, "P")
                self.act(one, names["bias"], 0, full)
            if stats:
                self.act(one, names["running_mean"], 0, full, buffer=True)
                self.act(one, names["running_var"], 0, "P", buffer=True)
            out_parts.append(part)
        return x.moved(parts=tuple(out_parts))

    def layernorm(self, m: nn.LayerNorm, name: str, x: Info | None) -> Info | None:
        self.once(name, m)
        weight = f"{name}.weight" if m.weight is not None else None
        bias = f"{name}.bias" if getattr(m, "bias", None) is not None else None
        return self.layernorm_named(x, weight, bias, len(m.normalized_shape), where=name)

    def layernorm_named(
        self, x: Info | None, weight: str | None, bias: str | None, n_dims: int, *, where: str
    ) -> Info | None:
        """LayerNorm over the last ``n_dims`` dims with optional weight and bias."""
        name = where
        if x is None:
            return None
        if n_dims != 1 or x.dim != -1 or x.outer != 1 or x.inner != 1:
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
                self.restrict(sid, PERMUTATION, f"{name} reads a pre-BatchNorm tensor")
            for s2, _, ch2 in self.expand(sid, "A", ch):
                s = self.sites[s2]
                s.family = intersect(s.family, group.family)
                self.set_phi(s2, group.phi_kind, f"{name}: activations with different phi")
                ax = ActivationAxis(x.dim, x.n, x.outer, x.inner, ch2)
                s.activations.append((self.tick(), name, ax, group))
                out.append((s2, "phi", ch2))
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
        pd = t.dim() + x.dim
        if pd < 0 or t.shape[pd] == 1:
            for part in self.parts(x):
                self.restrict_matrix(
                    part, PERMUTATION, f"{reason}: the same value is added to every feature"
                )
            return
        if t.shape[pd] != x.n * x.outer * x.inner:  # pragma: no cover (broadcast would fail)
            raise UnsupportedModuleError(f"{reason}: parameter {p.name} does not line up")
        if p.name in self.called:
            raise UnsupportedModuleError(f"parameter {p.name!r} is used more than once")
        self.called.add(p.name)
        self.act(x, p.name, pd, "out", buffer=p.name not in self.params)

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
        parts.append((sid, "A", padded))
        return x.moved(parts=tuple(parts), n=n)

    def embedding(self, m: nn.Embedding, name: str) -> Info:
        """A lookup table writes a fresh space: row i of the table is the feature vector of index
        i, so the element acts on the table's columns (``weight[:, j]``, axis 1)."""
        self.once(name, m)
        out = self.writer(name, m.embedding_dim)
        self.act(out, f"{name}.weight", 1, "out")
        return out

    def attention(
        self, name: str, x: Info | None, e: int, heads: int, packed: str | None, sep: str | None
    ) -> Info:
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
        self.sites[hs].family = PERMUTATION
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

    def mha(self, m: nn.MultiheadAttention, name: str, x: Info | None) -> Info:
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

    def zoo_attention(self, m: nn.Module, name: str, x: Info | None) -> Info:
        self.once(name, m)
        return self.attention(name, x, m.q.out_features, m.heads, packed=None, sep=name)

    def encoder_layer(self, m: nn.TransformerEncoderLayer, name: str, x: Info | None):
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
