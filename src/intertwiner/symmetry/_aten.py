"""The torch.export front end of ``trace``: rules for the ATen graphs of models that ``torch.fx``
symbolic tracing cannot follow (Hugging Face ``transformers`` models, ``**kwargs`` forwards, data-
dependent Python).

``torch.export.export(model, inputs, strict=False)`` runs the model's Python once and records ATen
ops (``linear``, ``addmm``, ``conv2d``, ``batch_norm``, ``layer_norm``, ``embedding``, views,
elementwise ops...). Parameters appear under their ``state_dict`` names and each node carries the
module it came from (``nn_module_stack``), so sites keep ``named_modules()`` names.

Unlike the fx front end, an op this front end does not know does not stop the trace: the spaces of
its hidden inputs are frozen (recorded on ``spec.frozen`` with the op and module) and its output is
treated as a fixed tensor. That is sound, because a frozen space is never transformed; every site
that remains is then verified numerically like any other.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from intertwiner.errors import IntertwinerError, UnsupportedGroupError, UnsupportedModuleError
from intertwiner.groups import (
    GENERAL_LINEAR,
    MONOMIAL,
    ORTHOGONAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    IntertwinerGroup,
    discover,
)
from intertwiner.groups import verify as verify_group
from intertwiner.symmetry._activation_calls import activation_group
from intertwiner.symmetry._attention import AttentionBlock, find_attention
from intertwiner.symmetry._regions import (
    IDENTITY,
    Regions,
    ancestors_within,
    find_regions,
    op_name,
)
from intertwiner.symmetry._rules import Rules
from intertwiner.symmetry._shapes import ShapeRules, nested_infos
from intertwiner.symmetry._spaces import Info, ParamRef

_RESHAPE = {"view", "reshape", "_unsafe_view", "view_as", "flatten", "unflatten"}
_NO_FEATURES = {"_assert_tensor_metadata", "sym_size", "sym_numel", "size", "dim", "sym_stride"}
_MAXPOOL = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices"}
_MAXPOOL |= {"max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d"}
_AVGPOOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d"}
_AVGPOOL |= {"adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d"}
_CONV |= {"conv_transpose3d"}
_BN = {"batch_norm", "_native_batch_norm_legit_no_training"}
# Spatial resampling acts on each channel alike: it commutes with every matrix on the channels.
_RESAMPLE = {"upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d"}
_RESAMPLE |= {"upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d"}
_RESAMPLE |= {"_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "pixel_shuffle_spatial"}
_PAD = {"pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad1d"}
_PAD |= {"replication_pad2d", "reflection_pad3d", "replication_pad3d"}
_TUPLE_OUT = {"max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d"}
_TUPLE_OUT |= {"adaptive_max_pool2d", "native_dropout", "_native_batch_norm_legit_no_training"}


class _Square:
    """``x * x`` (or ``x ** 2``) of a hidden tensor, kept only to feed a row statistic."""

    def __init__(self, x: Info):
        self.x = x


class _RowStat:
    """A per-row statistic of a hidden tensor over its feature axis (RMSNorm's ``mean(x^2)``
    and elementwise functions of it): unchanged when ``x`` is moved by an orthogonal matrix."""

    def __init__(self, x: Info, family: str):
        self.x, self.family = x, family


class _Frozen(Exception):
    """Raised by a rule that cannot handle a node: its hidden inputs are frozen instead."""


class AtenRunner(ShapeRules, fx.Interpreter):
    """Interprets an exported graph and applies the symmetry rules to every node."""

    def __init__(self, gm: fx.GraphModule, an: Rules, model: nn.Module):
        super().__init__(gm)
        self.an = an
        self.model = model
        self.infos: dict[fx.Node, Any] = {}
        self.blocks = {b.sdpa: b for b in find_attention(gm.graph)}
        self.owned = {node for b in self.blocks.values() for node in b.owned}
        self.squares = _squares_for_row_stats(gm.graph)
        an.cast_to = _lowest_cast(gm.graph)
        self.regions: Regions = find_regions(gm.graph, exclude=self.squares)
        self._groups: dict[tuple, IntertwinerGroup] = {}

    # -- bookkeeping ----------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.an.current_use = n.name
        try:
            self.infos[n] = self.rule(n, value)
        except (_Frozen, UnsupportedModuleError) as e:
            self.give_up(n, str(e))
            self.infos[n] = None
        return value

    def info(self, a: Any) -> Any:
        return self.infos.get(a) if isinstance(a, fx.Node) else None

    def val(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, fx.Node) else a

    def where(self, n: fx.Node) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        return f"{path or '<model>'} ({n.name})"

    def nested(self, n: fx.Node) -> list[Info]:
        return nested_infos(self.infos, n)

    def give_up(self, n: fx.Node, why: str) -> None:
        """Freeze every hidden space ``n`` reads: the op is not understood (sound: a frozen space
        is never transformed, so the op sees its original inputs)."""
        line = _source_line(n)
        reason = f"{op_name(n)} in {self.where(n)}{f' at {line}' if line else ''}: {why}"
        for info in self.nested(n):
            self.an.unify(info, None, reason)

    def frozen(self, what: str) -> _Frozen:
        return _Frozen(what)

    def refuse(self, what: str) -> _Frozen:
        return _Frozen(what)

    # -- dispatch -------------------------------------------------------------------------------
    def rule(self, n: fx.Node, value: Any) -> Any:  # noqa: C901 (a dispatch table)
        if n.op == "placeholder":
            return None
        if n.op == "get_attr":
            return ParamRef(str(n.target))
        if n.op == "output":
            for info in self.nested(n):
                self.an.unify(info, None, "the model output")
            return None
        if n.op != "call_function":
            return None
        if n.target is operator.getitem:
            base = self.info(n.args[0])
            return base[n.args[1]] if isinstance(base, tuple) else None
        name = op_name(n)
        if n in self.squares:
            x = self.info(n.args[0])
            return _Square(x) if isinstance(x, Info) else None
        if n in self.regions.region_of:
            return self.region(n, name)
        args = [self.info(a) for a in n.args]
        tracked = self.nested(n) + [a for a in args if isinstance(a, (_Square, _RowStat))]
        if name in _NO_FEATURES:
            return None
        if name == "embedding":
            return self.embedding(n)
        if name in ("linear", "addmm", "mm", "matmul"):
            return self.linear(n, name, value)
        if name in _CONV:
            return self.conv(n, name)
        if name == "scaled_dot_product_attention":
            if n not in self.blocks:
                raise self.frozen("an attention block whose projections or head layout differ")
            self.attention(self.blocks[n])
            return None
        if not tracked:
            return self.param_passthrough(n, name, value, args)
        x = args[0] if args and isinstance(args[0], Info) else None
        x0 = self.val(n.args[0]) if n.args else None
        ndim = x0.dim() if isinstance(x0, torch.Tensor) else None
        out = self.structural(n, name, value, args, x, ndim)
        if name in _TUPLE_OUT and out is not None:
            return (out, *([None] * (len(value) - 1)))
        return out

    def structural(self, n, name, value, args, x, ndim) -> Any:  # noqa: C901 (a dispatch table)
        an, where = self.an, self.where(n)
        if name in ("cat", "concat", "stack"):
            return self.concatenate(n, value, stack=name == "stack")
        if name in ("add", "sub", "rsub"):
            return self.binary(n, where)
        if name in ("mul", "div"):
            return self.product(n, where)
        if name == "mean" and isinstance(self.info(n.args[0]), _Square):
            return self.row_stat(n, ndim)
        if x is None:
            raise self.frozen("a hidden tensor in a position this rule does not read")
        if name in _BN:
            return self.batchnorm(n, x, ndim)
        if name == "layer_norm":
            shape, w, b = (list(n.args) + [None, None, None])[1:4]
            return an.layernorm_named(x, self.pname(w), self.pname(b), len(shape), where=where)
        if name in _MAXPOOL:
            return an.maxpool(x, ndim, where, _pool_ndim(name, ndim))
        if name in _AVGPOOL:
            an.need_channels(x, ndim, where, _pool_ndim(name, ndim))
            return x
        if name in _RESAMPLE:
            an.need_channels(x, ndim, where)
            return x
        if name in _PAD:
            return self.pad(n, x, ndim, where)
        if name == "group_norm":
            return self.group_norm(n, x, ndim, where)
        if name in IDENTITY or name == "native_dropout" or name in ("expand", "expand_as"):
            return self.same_features(x, value, ndim)
        if name in _RESHAPE:
            return self.reshape(x, x0_shape(self, n), value.shape, where)
        if name in ("transpose", "swapaxes"):
            return self.transpose(x, ndim, n.args[1], n.args[2])
        if name == "t":
            return self.transpose(x, ndim, 0, 1)
        if name == "permute":
            return self.permute(x, ndim, n.args[1])
        if name == "unsqueeze":
            pos, d = x.dim + ndim, n.args[1] % (ndim + 1)
            return x.moved(dim=x.dim - 1 if d > pos else x.dim)
        if name == "squeeze":
            return self.reshape(x, x0_shape(self, n), value.shape, where)
        if name in ("slice", "select", "narrow"):
            return self.slice(n, name, x, ndim, value)
        if name in ("mean", "sum", "amax", "amin"):
            return self.reduce(n, x, ndim, value)
        if name in ("split", "split_with_sizes", "chunk", "unbind"):
            return self.split(n, x, ndim, value)
        raise self.frozen("an op the symmetry tracer has no rule for")

    # -- parameters ----------------------------------------------------------------------------
    def pname(self, a: Any) -> str | None:
        """The parameter/buffer name behind an argument (None when absent)."""
        if a is None:
            return None
        info = self.info(a)
        if isinstance(info, ParamRef) and info.plain:
            return info.name
        raise self.frozen("a weight that is computed, not a parameter (weight_norm, ...)")

    def param_passthrough(self, n, name, value, args) -> Any:
        """Views and casts of a parameter keep it a parameter if its last dim is untouched; the
        transpose of a 2-d weight is remembered as such (``x @ W.T``)."""
        if not args or not isinstance(args[0], ParamRef) or not isinstance(value, torch.Tensor):
            return None
        if not args[0].plain:
            return args[0] if name in IDENTITY else None
        if name in ("t", "transpose", "permute", "numpy_T") and value.dim() == 2:
            return ParamRef(args[0].name, transposed=True)
        keeps = name in IDENTITY | {"expand", "expand_as", "unsqueeze", "slice", "select"}
        t = self.an.params.get(args[0].name, self.an.buffers.get(args[0].name))
        if not keeps or t is None or t.dim() == 0 or value.dim() == 0:
            return None
        if value.shape[-1] != t.shape[-1] or value.dim() < t.dim():
            return None
        if name in ("slice", "select") and n.args[1] % t.dim() == t.dim() - 1:
            return None
        return args[0]

    # -- module-like rules ----------------------------------------------------------------------
    def embedding(self, n: fx.Node) -> Info:
        weight = self.pname(n.args[0])
        out = self.an.writer(_module_path(n) or n.name, self.an.shape_of(weight)[1])
        self.an.act(out, weight, 1, "out")
        return out

    def linear(self, n: fx.Node, name: str, value: Any) -> Info | None:
        if name == "linear":
            x_node, w_node = n.args[0], n.args[1]
            b_node = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
            out_axis = 0
        elif name == "addmm":
            b_node, x_node, w_node = n.args[0], n.args[1], n.args[2]
            out_axis = 1
        else:
            x_node, w_node, b_node, out_axis = n.args[0], n.args[1], None, 1
        w_info = self.info(w_node)
        if isinstance(w_info, ParamRef) and w_info.transposed:  # x @ W.T: W's rows are outputs
            w_node, out_axis = None, 1 - out_axis
        if w_node is None:
            weight, bias = w_info.name, self.pname(b_node)
        elif not isinstance(w_info, ParamRef):
            raise self.frozen(
                "a product whose weight is computed, not a parameter (weight_norm or another "
                "parametrization, attention scores, ...)"
            )
        else:
            weight, bias = self.pname(w_node), self.pname(b_node)
        shape = self.an.shape_of(weight)
        if len(shape) != 2:
            raise self.frozen(f"a product with a {len(shape)}-d parameter")
        x = self.info(x_node)
        mode = "P" if self.bn_users(n) else "A"
        return self.an.linear_named(
            x if isinstance(x, Info) else None,
            weight,
            bias,
            shape[out_axis],
            shape[1 - out_axis],
            mode,
            where=_module_path(n) or n.name,
            out_axis=out_axis,
            read_only=n in self.owned,
        )

    def conv(self, n: fx.Node, name: str) -> Info:
        args = list(n.args)
        x, weight = self.info(args[0]), self.pname(args[1])
        bias = self.pname(args[2]) if len(args) > 2 else None
        if name == "convolution":
            transposed, groups = bool(args[6]), int(args[8])
        else:
            transposed = name.startswith("conv_transpose")
            groups = int(args[6]) if len(args) > 6 else 1  # conv{k}d and conv_transpose{k}d
        shape = self.an.shape_of(weight)
        out_ch = shape[1] * groups if transposed else shape[0]
        ndim = self.val(args[0]).dim()
        if groups > 1 and not transposed and groups == out_ch and shape[1] == 1:
            return self.depthwise(n, x, weight, bias, ndim)
        if groups > 1 and not transposed:
            return self.grouped_conv(n, x, weight, bias, groups, ndim)
        return self.an.conv_named(
            x if isinstance(x, Info) else None,
            weight,
            bias,
            out_ch,
            groups,
            ndim,
            "P" if self.bn_users(n) else "A",
            where=_module_path(n) or n.name,
            transposed=transposed,
        )

    def attention(self, b: AttentionBlock) -> None:
        """The sites of one attention block (see ``_attention``)."""
        an, rep = self.an, b.heads // b.kv_heads
        hd, hdv = b.head_dim, b.head_dim_v

        def on(sid: int, p, kind: str, channels: tuple[int, ...] | None, unit: int = 1) -> None:
            n_total = p.total // unit
            an.act_raw(sid, p.weight, p.out_axis, kind, n_total, inner=unit, channels=channels)
            if p.bias is not None:
                an.act_raw(sid, p.bias, 0, kind, n_total, inner=unit, channels=channels)

        def into_out(sid: int, kind: str, channels: tuple[int, ...], unit: int = 1) -> None:
            o = b.out
            an.act_raw(sid, o.weight, 1 - o.out_axis, kind, o.total // unit, inner=unit,
                       channels=channels)  # fmt: skip

        if b.heads_permutable and all(
            (p.offset + j * p.block) % unit == 0
            for p, unit in ((b.q, rep * hd), (b.k, hd), (b.v, hdv))
            for j in range(b.kv_heads)
        ):
            heads = an.new_site(b.kv_heads, name=f"{b.name}.heads", kind="attention_heads")
            an.sites[heads].family = PERMUTATION
            for p, unit in ((b.q, rep * hd), (b.k, hd), (b.v, hdv)):
                groups = tuple((p.offset + j * p.block) // unit for j in range(b.kv_heads))
                on(heads, p, "A", groups, unit)
            into_out(heads, "A^-T", tuple(range(b.kv_heads)), rep * hdv)
        for j in range(b.kv_heads):
            vo = an.new_site(hdv, name=f"{b.name}.vo{j}", kind="attention_vo")
            on(vo, b.v, "A", _block(b.v.offset + j * b.v.block, hdv))
            for h in range(j * rep, (j + 1) * rep):
                into_out(vo, "A^-T", _block(h * hdv, hdv))
            if b.rotary:
                continue  # rotary embeddings rotate q and k per position: no GL(head_dim) on them
            qk = an.new_site(hd, name=f"{b.name}.qk{j}", kind="attention_qk")
            for h in range(rep):
                on(qk, b.q, "A", _block(b.q.offset + j * b.q.block + h * hd, hd))
            on(qk, b.k, "A^-T", _block(b.k.offset + j * b.k.block, hd))

    def pad(self, n: fx.Node, x: Info, ndim: int, where: str) -> Info:
        """Padding of positions (not channels): zeros, reflections and copies commute with every
        channel matrix; a nonzero constant on every feature with permutations only."""
        pad = list(n.args[1])
        pos = x.dim + ndim
        padded = {ndim - 1 - i // 2 for i, p in enumerate(pad) if p}
        if pos in padded:
            raise self.frozen("padding the feature axis")
        name = op_name(n)
        mode = n.args[2] if name == "pad" and len(n.args) > 2 else n.kwargs.get("mode", "constant")
        value = n.args[-1] if name == "constant_pad_nd" and len(n.args) > 2 else None
        if name == "pad":
            value = n.args[3] if len(n.args) > 3 else n.kwargs.get("value")
        if name.startswith(("reflection", "replication")) or mode != "constant" or not value:
            return x
        for part in self.an.parts(x):
            self.an.restrict_matrix(part, PERMUTATION, f"{where}: padded with {value}")
        return x

    def group_norm(self, n: fx.Node, x: Info, ndim: int, where: str) -> Info:
        """GroupNorm normalises each group of C/G channels on its own: the space splits into G
        blocks, each of which only permutations commute with (its weight and bias permuted
        along)."""
        groups = int(n.args[1])
        w = self.pname(n.args[2]) if len(n.args) > 2 else None
        b = self.pname(n.args[3]) if len(n.args) > 3 else None
        self.an.need_channels(x, ndim, where)
        blocks = self.an.split_blocks(x, groups, f"GroupNorm {where} ({groups} groups)")
        for part in self.an.parts(blocks):
            self.an.restrict_matrix(part, PERMUTATION, f"GroupNorm {where}: centres and scales")
        for pname in (w, b):
            if pname is not None:
                self.an.act(blocks, pname, 0, "out")
        return blocks

    def depthwise(self, n: fx.Node, x: Any, weight: str, bias: str | None, ndim: int) -> Any:
        """A depthwise convolution filters each channel on its own: like a per-channel affine map
        it passes a monomial element through (filters permuted, the bias moved like the input)."""
        if not isinstance(x, Info):
            return None
        where = _module_path(n) or n.name
        self.an.need_channels(x, ndim, where)
        for part in self.an.parts(x):
            self.an.restrict_matrix(part, MONOMIAL, f"depthwise convolution {where!r}")
        self.an.act(x, weight, 0, "P")
        if bias is not None:
            self.an.act(x, bias, 0, "out")
        return x

    def grouped_conv(
        self, n: fx.Node, x: Any, weight: str, bias: str | None, groups: int, ndim: int
    ) -> Info:
        """A grouped convolution: group j's outputs read only group j's inputs, so the input and
        the output spaces split into ``groups`` blocks, each with an element of its own (any
        element within a block; none across blocks)."""
        an, where = self.an, _module_path(n) or n.name
        out_ch, per_group_in = an.shape_of(weight)[0], an.shape_of(weight)[1]
        per_group_out = out_ch // groups
        if isinstance(x, Info):
            an.need_channels(x, ndim, where)
            blocks = an.split_blocks(x, groups, f"grouped convolution {where!r}")
            for j, (sid, mode, _) in enumerate(blocks.parts):
                if sid == 0:
                    continue
                kind = {"A": "A^-T", "P": "P", "phi": "phi(A)^-T"}[mode]
                an.act_raw(
                    sid, weight, 1, kind, per_group_in, within=(0, j * per_group_out, per_group_out)
                )
        mode = "P" if self.bn_users(n) else "A"
        out = an.writer(where, out_ch, mode).moved(dim=1 - ndim)
        an.act(out, weight, 0, "out")
        if bias is not None:
            an.act(out, bias, 0, "out")
        return an.split_blocks(out, groups, f"grouped convolution {where!r} (outputs)")

    def bn_users(self, n: fx.Node) -> bool:
        users = list(n.users)
        return bool(users) and all(
            u.op == "call_function" and op_name(u) in _BN and u.args[1] is not None for u in users
        )

    def batchnorm(self, n: fx.Node, x: Info, ndim: int) -> Info:
        w, b, rm, rv = (list(n.args) + [None] * 5)[1:5]
        names = {
            "weight": self.pname(w),
            "bias": self.pname(b),
            "running_mean": self.pname(rm),
            "running_var": self.pname(rv),
        }
        if op_name(n) == "batch_norm" and bool(n.args[5]):
            raise self.frozen("BatchNorm in training mode (batch statistics)")
        return self.an.batchnorm_named(
            x,
            names,
            ndim,
            affine=w is not None and b is not None,
            stats=rm is not None,
            where=_module_path(n) or n.name,
        )

    # -- elementwise regions --------------------------------------------------------------------
    def region(self, n: fx.Node, name: str) -> Info | None:
        if self.regions.interior(n):
            return None
        reg = self.regions.region_of[n]
        x = self.info(reg.root)
        if isinstance(x, _RowStat):
            return x  # a function of a row statistic is one too
        if isinstance(x, ParamRef):
            return _affine_of_param(x, reg.function(n))
        if not isinstance(x, Info):
            return None
        within = ancestors_within(n, set(reg.nodes))
        nodes = [m for m in reg.nodes if m in within]
        if all(op_name(m) in IDENTITY for m in nodes):
            return x
        try:
            group = self.region_group(reg, n, nodes)
        except _Frozen as e:  # the region's root is what the unknown function reads
            self.an.unify(x, None, f"{op_name(n)} in {self.where(n)}: {e}")
            return None
        if group.family is GENERAL_LINEAR and group.phi_kind == "identity":
            return x  # a linear function (a scalar multiple): commutes with every matrix
        ops = [m for m in nodes if op_name(m) not in IDENTITY] or nodes
        return self.an.activation(self.activation_name(ops[-1], ops), group, x)

    def region_group(self, reg, n: fx.Node, nodes: list[fx.Node]) -> IntertwinerGroup:
        key = reg.signature(n)
        if key in self._groups:
            return self._groups[key]
        ops = [m for m in nodes if op_name(m) not in IDENTITY]
        group = None
        if len(ops) == 1 and ops[0].args and ops[0].args[0] is not None:
            fn = getattr(torch.nn.functional, op_name(ops[0]), None) or getattr(
                torch, op_name(ops[0]), None
            )
            if fn is not None and op_name(ops[0]) not in ("add", "sub", "mul", "div", "pow"):
                try:
                    group = activation_group(
                        fn, ops[0].args[1:], ops[0].kwargs, self.where(n), method=False
                    )
                except IntertwinerError:
                    group = None
        if group is None:
            label = _module_type(n) or op_name(n)
            fn = _named(reg.function(n), label)
            try:
                found = discover(fn)
                group = IntertwinerGroup(found.family, found.phi_kind, f"G_{label}", found.evidence)
            except UnsupportedGroupError:
                # Elementwise, with a group no family describes (2x + 1: {A : A 1 = 1}); every
                # elementwise function commutes with permutations, a subgroup of it.
                group = IntertwinerGroup(PERMUTATION, "identity", f"G_{label}|permutation")
                if verify_group(group, fn) > 1e-9:  # pragma: no cover (elementwise => holds)
                    raise self.frozen(f"an elementwise function {label} without a group") from None
            except IntertwinerError as e:
                why = f"an elementwise function without an intertwiner group ({e})"
                raise self.frozen(why) from e
        self._groups[key] = group
        return group

    def activation_name(self, n: fx.Node, nodes: list[fx.Node]) -> str:
        """The activation module's name when every op of the region ran inside one parameter-free
        module (``h.0.mlp.act``); else the graph node's name."""
        paths = {_module_path(m) for m in nodes}
        if len(paths) == 1:
            path = paths.pop()
            if path:
                try:
                    mod = self.model.get_submodule(path)
                except AttributeError:
                    return n.name
                if not any(True for _ in mod.parameters()):
                    return path
        return n.name

    # -- shapes -------------------------------------------------------------------------------
    def same_features(self, x: Info, value: Any, ndim: int | None) -> Info:
        out = value[0] if isinstance(value, (tuple, list)) else value
        if (
            ndim is not None
            and isinstance(out, torch.Tensor)
            and out.shape[x.dim] != (x.n * x.outer * x.inner)
        ):
            raise self.frozen("an op that changes the size of the feature axis")
        return x

    def slice(self, n: fx.Node, name: str, x: Info, ndim: int, value: Any) -> Info:
        pos = x.dim + ndim
        d = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % ndim
        if d != pos:
            return x if name != "select" else x.moved(dim=x.dim + 1 if d > pos else x.dim)
        if name != "select" and value.shape[d] == self.val(n.args[0]).shape[d]:
            return x  # a full slice
        raise self.frozen("slicing the feature axis")

    def reduce(self, n: fx.Node, x: Info, ndim: int, value: Any) -> Info:
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if dims is None:
            raise self.frozen("a reduction over all dims")
        dims = [d % ndim for d in ((dims,) if isinstance(dims, int) else dims)]
        pos = x.dim + ndim
        if pos in dims:
            raise self.frozen("a reduction over the feature axis")
        if op_name(n) in ("amax", "amin"):
            for part in self.an.parts(x):
                self.an.restrict_matrix(part, POSITIVE_MONOMIAL, f"max over positions in {n}")
        keep = value.dim() == ndim
        new = pos if keep else pos - sum(1 for d in dims if d < pos)
        return x.moved(dim=new - value.dim())

    def split(self, n: fx.Node, x: Info, ndim: int, value: Any) -> tuple:
        dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
        if op_name(n) == "unbind":
            dim = n.args[1] if len(n.args) > 1 else 0
        d, pos = dim % ndim, x.dim + ndim
        if d == pos:
            if op_name(n) == "unbind":
                raise self.frozen("unbinding the feature axis")
            sizes = [int(v.shape[d]) for v in value]
            blocks = self.an.split_blocks(x, sizes, f"split of the feature axis in {self.where(n)}")
            return tuple(
                x.moved(parts=(part,), n=z)
                for part, z in zip(
                    [(sid, mode, None) for sid, mode, _ in blocks.parts], sizes, strict=True
                )
            )
        out = []
        for v in value:
            drop = op_name(n) == "unbind"
            out.append(x.moved(dim=x.dim + 1 if drop and d > pos else x.dim) if v.dim() else None)
        return tuple(out)

    # -- binary ops ----------------------------------------------------------------------------
    def operands(self, n: fx.Node) -> tuple[Any, Any, Any, Any]:
        """Infos and values of a binary op's two operands (``other`` may be a keyword)."""
        a_node = n.args[0]
        b_node = n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
        return self.info(a_node), self.info(b_node), self.val(a_node), self.val(b_node)

    def binary(self, n: fx.Node, where: str) -> Info:
        a, b, va, vb = self.operands(n)
        if isinstance(a, Info) and isinstance(b, Info):
            self.an.unify(a, b, f"residual addition in {where}")
            return a
        x, other, vo = (a, b, vb) if isinstance(a, Info) else (b, a, va)
        if isinstance(other, ParamRef) and other.plain:
            self.an.add_param(x, other, f"adding parameter {other.name} in {where}")
            return x
        if isinstance(other, ParamRef):
            raise self.frozen("adding a transposed parameter or a function of one")
        if isinstance(vo, torch.Tensor) and vo.dim() > 0 and vo.numel() > 1:
            self.an.unify(x, None, f"{where}: added to a tensor computed from the input")
            return x
        for part in self.an.parts(x):
            self.an.restrict_matrix(
                part, PERMUTATION, f"{where}: a constant is added to every feature"
            )
        return x

    def product(self, n: fx.Node, where: str) -> Info:
        a, b, va, vb = self.operands(n)
        if isinstance(a, Info) and isinstance(b, Info):
            if op_name(n) == "div":
                raise self.frozen("dividing by a hidden tensor")
            return self.gate(a, b, where)
        if isinstance(a, _RowStat) or isinstance(b, _RowStat):
            return self.normalise(a, b, where)
        x, other, vo = (a, b, vb) if isinstance(a, Info) else (b, a, va)
        if op_name(n) == "div" and not isinstance(a, Info):
            raise self.frozen("dividing by a hidden tensor")
        if not isinstance(vo, torch.Tensor) or vo.numel() == 1:
            return x  # a number: commutes with every matrix
        if isinstance(other, ParamRef) and not other.transposed:
            return self.scale_by_param(x, other, vo, where, n)
        raise self.frozen("a product with a tensor computed from the input")

    def gate(self, a: Info, b: Info, where: str) -> Info:
        """A product of two hidden tensors: the one whose site has the smaller group is the gate
        (moved by its permutation only), the other the value (any monomial)."""
        fam = {id(i): self.an.sites[self.an.find(self.an.parts(i)[0][0])].family for i in (a, b)}
        gate, value = (a, b) if fam[id(a)] is PERMUTATION else (b, a)
        return self.an.gate(gate, value, f"gated product in {where}")

    def row_stat(self, n: fx.Node, ndim: int) -> _RowStat:
        """``mean(x^2, dim=-1, keepdim=True)``: invariant under orthogonal maps of ``x``."""
        x = self.info(n.args[0]).x
        dims = n.args[1] if len(n.args) > 1 else None
        dims = [d % ndim for d in ((dims,) if isinstance(dims, int) else (dims or []))]
        keep = (n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)) is True
        if dims != [x.dim + ndim] or not keep or x.outer != 1 or x.inner != 1:
            raise self.frozen("a statistic over the feature axis other than mean(x^2, -1, keepdim)")
        return _RowStat(x, ORTHOGONAL)

    def normalise(self, a: Any, b: Any, where: str) -> Info:
        """``x * f(mean(x^2))`` (RMSNorm): ``x`` keeps its space, restricted to the matrices under
        which the statistic is invariant; the statistic must come from ``x``'s own space."""
        x, stat = (a, b) if isinstance(b, _RowStat) else (b, a)
        if not isinstance(x, Info) or self.an.parts(x) != self.an.parts(stat.x):
            raise self.frozen("normalising a tensor by the statistic of another one")
        for part in self.an.parts(x):
            self.an.restrict_matrix(part, stat.family, f"{where}: RMS normalisation over features")
        return x

    def scale_by_param(
        self, x: Info, p: ParamRef, vo: torch.Tensor, where: str, n: fx.Node | None = None
    ) -> Info:
        """``h * w`` with a per-feature parameter ``w`` (layer scale, an RMSNorm weight): only
        monomial matrices commute with a diagonal map, and ``w`` takes their permutation part.
        When only Linear layers read the product, ``w`` may instead be folded into them (see
        ``spec.Fold``): the decision waits until the site's group is known (``trace._build``)."""
        t = self.an.params.get(p.name, self.an.buffers.get(p.name))
        pd = t.dim() + x.dim
        full = x.n * x.outer * x.inner
        if pd < 0 or t.shape[pd] != full or t.numel() != full or x.outer != 1 or x.inner != 1:
            raise self.frozen(f"a product with parameter {p.name} that is not one per feature")
        into = _foldable_readers(n, self) if n is not None and t.dim() == 1 else None
        parts = self.an.parts(x)
        if into and len(parts) == 1 and parts[0][2] is None and parts[0][0] != 0:
            reason = f"{where}: scaled by {p.name} per feature"
            fold = (p.name, pd, into, reason, *p.affine)
            self.an.sites[parts[0][0]].folds.append(fold)
            return x
        for part in self.an.parts(x):
            self.an.restrict_matrix(part, MONOMIAL, f"{where}: scaled by {p.name} per feature")
        self.an.act(x, p.name, pd, "P", buffer=p.name not in self.an.params)
        return x


def _affine_of_param(p: ParamRef, fn) -> ParamRef | None:
    """``fn(param)`` as a ParamRef when ``fn`` is affine (``1 + w``), else None (untracked)."""
    if p.transposed:
        return None
    probe = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    try:
        out = fn(probe)
    except Exception:  # noqa: BLE001 (an op that needs the parameter's own shape)
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return None
    slope = float(out[3] - out[1]) / 2.0
    offset = float(out[1])
    if slope == 0.0 or not torch.allclose(out, slope * probe + offset, rtol=0, atol=1e-12):
        return None
    a, b = p.affine
    return ParamRef(p.name, affine=(slope * a, slope * b + offset))


def _source_line(n: fx.Node) -> str:
    """``file.py:123`` of the user code that made ``n`` (the innermost frame outside torch)."""
    trace = n.meta.get("stack_trace") or ""
    found = ""
    for line in trace.splitlines():
        line = line.strip()
        if line.startswith("File ") and "/torch/" not in line:
            try:
                path = line.split('"')[1]
                lineno = line.split("line ")[1].split(",")[0]
            except IndexError:
                continue
            found = f"{path.rsplit('/', 1)[-1]}:{lineno}"
    return found


def _foldable_readers(n: fx.Node, runner: AtenRunner) -> tuple[tuple[str, int], ...] | None:
    """The (weight, input axis) of every Linear / Conv1D that reads ``n`` (through casts and
    views that keep the last dim), or None if anything else reads it or a weight is shared."""
    out: list[tuple[str, int]] = []
    stack = [n]
    while stack:
        cur = stack.pop()
        for u in cur.users:
            name = op_name(u)
            if name in IDENTITY or (
                name in ("view", "reshape", "_unsafe_view")
                and u.meta.get("val") is not None
                and u.meta["val"].shape[-1] == cur.meta["val"].shape[-1]
            ):
                stack.append(u)
                continue
            w = u.args[1] if name == "linear" else u.args[2] if name == "addmm" else None
            x = u.args[0] if name == "linear" else u.args[1] if name == "addmm" else None
            info = runner.info(w) if isinstance(w, fx.Node) else None
            if x is not cur or not isinstance(info, ParamRef) or not info.plain:
                return None
            out.append((info.name, 1 if name == "linear" else 0))
    ids = [id(runner.an.params[w]) for w, _ in out if w in runner.an.params]
    shared = sum(1 for pname, t in runner.an.params.items() if id(t) in ids) != len(ids)
    return tuple(out) if out and not shared else None


def _block(start: int, size: int) -> tuple[int, ...]:
    return tuple(range(start, start + size))


def _lowest_cast(graph: fx.Graph) -> torch.dtype | None:
    """The least precise floating dtype the graph casts to explicitly (LLaMA's RMSNorm computes
    in float32 whatever the model's dtype), or None."""
    casts = []
    for n in graph.nodes:
        src = n.args[0].meta.get("val") if n.args and isinstance(n.args[0], fx.Node) else None
        if not isinstance(src, torch.Tensor) or not src.is_floating_point():
            continue  # casting a mask or indices loses nothing
        if n.op == "call_function" and op_name(n) in ("to", "_to_copy"):
            for a in (*n.args[1:], *n.kwargs.values()):
                lossy = isinstance(a, torch.dtype) and a.is_floating_point
                if lossy and torch.finfo(a).eps > torch.finfo(src.dtype).eps:
                    casts.append(a)
    return max(casts, key=lambda d: torch.finfo(d).eps) if casts else None


def _squares_for_row_stats(graph: fx.Graph) -> set[fx.Node]:
    """``pow(x, 2)`` / ``mul(x, x)`` nodes read only by a ``mean`` (RMSNorm's statistic): they must
    not be taken for an activation ``x^2``."""
    out = set()
    for n in graph.nodes:
        if n.op != "call_function" or op_name(n) not in ("pow", "mul", "square"):
            continue
        a = n.args
        square = (
            (op_name(n) == "pow" and len(a) > 1 and a[1] == 2)
            or (op_name(n) == "mul" and len(a) > 1 and a[0] is a[1])
            or op_name(n) == "square"
        )
        if square and n.users and all(op_name(u) == "mean" for u in n.users):
            out.add(n)
    return out


def x0_shape(runner: AtenRunner, n: fx.Node) -> torch.Size:
    return runner.val(n.args[0]).shape


def _pool_ndim(name: str, ndim: int) -> int:
    for k in (1, 2, 3):
        if f"{k}d" in name:
            return k + 2
    return ndim


def _module_path(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _module_type(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    t = list(stack.values())[-1][1]
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return name.rsplit(".", 1)[-1]


def _named(fn, name: str):
    fn.__name__ = name
    return fn
