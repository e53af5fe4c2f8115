"""The torch.fx front end of ``trace``: the rules, run over a symbolically traced graph.

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

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from intertwiner.errors import IntertwinerError, NotElementwiseError, UnsupportedModuleError
from intertwiner.groups import ORTHOGONAL, PERMUTATION, for_activation
from intertwiner.symmetry._activation_calls import activation_group
from intertwiner.symmetry._rules import (
    _AVGPOOL,
    _AVGPOOL_F,
    _BN,
    _CONV,
    _DROPOUT,
    _MAXPOOL,
    _MAXPOOL_F,
    Rules,
)
from intertwiner.symmetry._shapes import ShapeRules, nested_infos
from intertwiner.symmetry._spaces import SUPPORTED, Info, ParamRef
from intertwiner.symmetry.spec import SymmetrySpec

_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_METADATA = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}
_CAT = {torch.cat, torch.concat, torch.concatenate, torch.stack}
_SCALE = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unflatten"}
_PASS_METHODS = {"contiguous", "clone", "float", "double", "to", "detach", "half", "bfloat16"}


def _batched_ndim(op: Any) -> int:
    """Input ndim of a batched call of a 1d/2d/3d pooling module or functional."""
    name = op.__name__ if callable(op) and not isinstance(op, nn.Module) else type(op).__name__
    for d in (1, 2, 3):
        if name.lower().endswith(f"{d}d"):
            return d + 2
    raise UnsupportedModuleError(f"cannot tell the dimensionality of {name}")  # pragma: no cover


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


def tracked_of(args: list) -> list[Info]:
    return [a for a in args if isinstance(a, Info)]


class _Runner(ShapeRules, fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, an: Rules, zoo_attention: type | None):
        super().__init__(gm)
        self.an = an
        self.infos: dict[fx.Node, Any] = {}
        self.zoo_attention = zoo_attention
        self.error: str | None = None

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.an.current_use = n.name
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
            return ParamRef(n.target)
        if n.op == "output":
            for info in nested_infos(self.infos, n):
                an.unify(info, None, "the model output")
            return None
        if n.op == "call_function" and n.target is operator.getitem:
            base = self.info(n.args[0])
            if isinstance(base, tuple):
                return base[n.args[1]]
        args = [self.info(a) for a in n.args]
        kwargs = {k: self.info(v) for k, v in n.kwargs.items()}
        tracked = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Info)]
        vals = [self.env[a] if isinstance(a, fx.Node) else a for a in n.args]
        if n.op == "call_function" and n.target in _CAT:
            return self.concatenate(n, value, stack=n.target is torch.stack)
        if not tracked and args and isinstance(args[0], ParamRef):
            return self.param_view(n, args[0], value)
        nested = self.nested_infos(n)
        if len(nested) != len(tracked):
            raise self.unsupported(
                f"{n.op} {getattr(n.target, '__name__', n.target)} in {self.where(n)!r} takes a "
                "hidden tensor inside a list or tuple"
            )
        if n.op == "call_module":
            return self.module_rule(n, value, args, tracked)
        if not tracked:
            return None
        x = args[0] if args and isinstance(args[0], Info) else tracked[0]
        ndim = vals[0].dim() if vals and isinstance(vals[0], torch.Tensor) else None
        if n.op == "call_function":
            return self.function_rule(n, value, args, vals, x, ndim)
        if n.op == "call_method":
            return self.method_rule(n, value, args, vals, x, ndim)
        raise UnsupportedModuleError(f"unsupported fx node {n.op} {n.target}")  # pragma: no cover

    def param_view(self, n: fx.Node, p: ParamRef, value: Any) -> ParamRef | None:
        """A parameter seen through an op that keeps its trailing (feature) dim and only
        broadcasts, slices or copies the others (``cls.expand(B, -1, -1)``, ``pos[:, :T]``) is
        still that parameter for the rules; anything else is an untracked tensor."""
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        keeps = name in {"expand", "expand_as", "repeat", "getitem"} | _PASS_METHODS
        t = self.an.params.get(p.name, self.an.buffers.get(p.name))
        if t is None or not keeps or not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        if t.dim() == 0 or value.shape[-1] != t.shape[-1] or value.dim() < t.dim():
            return None
        if name == "getitem":
            idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
            if Ellipsis in idx or None in idx or len(idx) >= t.dim():
                return None  # the last index may touch the feature dim
        return p

    def nested_infos(self, n: fx.Node) -> list:
        """Every tracked Info among ``n``'s arguments (inside lists, tuples, dicts too)."""
        return nested_infos(self.infos, n)

    def val(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, fx.Node) else a

    def refuse(self, what: str) -> UnsupportedModuleError:
        return self.unsupported(what)

    def unsupported(self, what: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(
            f"{what} touches a hidden feature axis and is not supported by the symmetry tracer. "
            f"Supported: {SUPPORTED}"
        )

    # -- modules ----------------------------------------------------------------------------
    def self_attention(self, n: fx.Node, m: nn.MultiheadAttention, name: str) -> Any:
        """``nn.MultiheadAttention`` called with one tensor as query, key and value."""
        nodes = [
            n.args[i] if len(n.args) > i else n.kwargs.get(key)
            for i, key in enumerate(("query", "key", "value"))
        ]
        infos = [self.info(a) for a in nodes]
        if not (nodes[0] is nodes[1] is nodes[2]) and any(isinstance(t, Info) for t in infos):
            raise UnsupportedModuleError(
                f"nn.MultiheadAttention {name!r}: cross-attention (different query, key and "
                f"value tensors) is not supported; supported: {SUPPORTED}"
            )
        return self.an.mha(m, name, infos[0])

    def module_rule(self, n: fx.Node, value: Any, args: list, tracked: list) -> Any:
        an = self.an
        name = str(n.target)
        m = self.fetch_attr(name)
        x = args[0] if args else None
        x = x if isinstance(x, Info) else None
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
        if isinstance(m, nn.Embedding) and not tracked:
            out = an.embedding(m, name)
            if m.max_norm is not None:
                for part in an.parts(out):
                    an.restrict_matrix(
                        part, ORTHOGONAL, f"{name!r}: max_norm renormalises rows (norms kept)"
                    )
            return out
        if isinstance(m, _CONV):
            return an.conv(m, name, x, ndim, "P" if bn_users() else "A")
        if self.zoo_attention is not None and isinstance(m, self.zoo_attention):
            return an.zoo_attention(m, name, x)
        if isinstance(m, nn.MultiheadAttention):
            return (self.self_attention(n, m, name), None)
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
            return an.maxpool(x, ndim, name, _batched_ndim(m))
        if isinstance(m, _AVGPOOL):
            an.need_channels(x, ndim, name, _batched_ndim(m))
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
        if t is getattr and n.args[1] in _METADATA:
            return None  # h.shape, h.dtype, ...: no features
        if t is getattr:
            raise self.unsupported(f"the tensor attribute .{n.args[1]} in {where!r}")
        if t in _ADD:
            return self.binary(n, args, vals, where)
        if t in _SCALE:
            tensors = sum(isinstance(v, torch.Tensor) and v.dim() > 0 for v in vals)
            if len(tracked_of(args)) != 1 or tensors != 1:
                raise self.unsupported(f"{t.__name__} involving two tensors in {where!r}")
            if t in (operator.truediv, torch.div) and not isinstance(args[0], Info):
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
            return an.maxpool(x, ndim, where, _batched_ndim(t))
        if t in _AVGPOOL_F:
            an.need_channels(x, ndim, where, _batched_ndim(t))
            return x
        group = activation_group(t, n.args[1:], n.kwargs, where, method=False)
        if group is None:
            raise self.unsupported(f"function {getattr(t, '__name__', t)} in {where!r}")
        return an.activation(n.name, group, x)

    def method_rule(self, n, value, args, vals, x, ndim) -> Any:
        t, where = n.target, self.where(n)
        if not isinstance(args[0], Info):
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
        group = activation_group(t, n.args[1:], n.kwargs, where, method=True)
        if group is None:
            raise self.unsupported(f"tensor method .{t}() in {where!r}")
        return self.an.activation(n.name, group, x)

    # -- shape rules --------------------------------------------------------------------------
    def binary(self, n, args, vals, where) -> Any:
        other = n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
        a, b = args[0], self.info(other)
        va = vals[0]
        vb = self.val(other)
        reason = f"residual addition in {where!r}"
        if isinstance(a, Info) and isinstance(b, Info):
            self.an.unify(a, b, reason)
            return a
        x, other, vo = (a, b, vb) if isinstance(a, Info) else (b, a, va)
        if isinstance(other, ParamRef):
            self.an.add_param(x, other, f"adding parameter {other.name} in {where!r}")
            return x
        if other is None and isinstance(vo, torch.Tensor) and vo.dim() > 0:
            self.an.unify(x, None, f"{where!r}: added to a tensor computed from the input")
            return x
        # A number (or 0-d tensor): the same value on every feature commutes with permutations.
        for part in self.an.parts(x):
            self.an.restrict_matrix(
                part, PERMUTATION, f"{where!r}: a constant is added to every feature"
            )
        return x

    def reduce(self, x: Info, ndim: int, n: fx.Node, value: torch.Tensor) -> Info:
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

    def getitem(self, x: Info, val: torch.Tensor, idx: Any, value: Any, where: str) -> Info:
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


def fx_rules(work: nn.Module, graph: fx.Graph, inputs: tuple, zoo: type | None) -> Rules:
    """Run the fx rules over ``graph``; the first unsupported op raises."""
    gm = fx.GraphModule(work, graph)
    an = Rules(work)
    runner = _Runner(gm, an, zoo)
    try:
        with torch.no_grad():
            runner.run(*inputs)
    except UnsupportedModuleError:
        if runner.error is None:
            raise
        raise UnsupportedModuleError(runner.error) from None
    return an
