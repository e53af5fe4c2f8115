"""The interpreter of ``trace``: runs the rules over a ``torch.export`` ATen graph.

``torch.export.export(model, inputs, strict=False)`` runs the model's Python once and records ATen
ops (``linear``, ``addmm``, ``conv2d``, ``batch_norm``, ``layer_norm``, ``embedding``, views,
elementwise ops...). Parameters appear under their ``state_dict`` names and each node carries the
module it came from (``nn_module_stack``), so sites keep ``named_modules()`` names.

``AtenRunner`` runs the graph on the example input and, node by node, calls the one rule
registered for the node's op (``_registry``; the rules live in ``_rules_*`` by topic). Before the
table come the patterns that span several nodes: attention blocks (``_attention``), RMSNorm's
``mean(x^2)`` and regions of elementwise ops that form one activation (``_regions``).

An op without a rule (or one a rule cannot handle) does not stop the trace: the spaces of its
hidden inputs are frozen (recorded on ``spec.frozen`` with the op and module) and its output is
treated as a fixed tensor. That is sound, because a frozen space is never transformed; every site
that remains is then verified numerically like any other. With ``refuse=True``
(``trace(frontend="fx")``) such an op raises ``UnsupportedModuleError`` instead.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from intertwiner.errors import UnsupportedModuleError
from intertwiner.groups import IntertwinerGroup

# The rule modules register their rules on import.
from intertwiner.symmetry import (  # noqa: F401
    _rules_attention,
    _rules_linear,
    _rules_recurrent,
    _rules_shape,
)
from intertwiner.symmetry._attention import find_attention
from intertwiner.symmetry._regions import IDENTITY, Regions, find_regions, op_name
from intertwiner.symmetry._registry import RULES, Frozen
from intertwiner.symmetry._rules import Rules
from intertwiner.symmetry._rules_elementwise import region
from intertwiner.symmetry._rules_norms import RowStat, Square, squares_for_row_stats
from intertwiner.symmetry._spaces import SUPPORTED, Info, ParamRef


class AtenRunner(fx.Interpreter):
    """Interprets an exported graph and applies the symmetry rules to every node."""

    def __init__(self, gm: fx.GraphModule, an: Rules, model: nn.Module, *, refuse: bool = False):
        super().__init__(gm)
        self.an = an
        self.model = model
        self.refuse_unknown = refuse
        self.error: str | None = None  # the refusal, without fx's "While executing" context
        self.infos: dict[fx.Node, Any] = {}
        self.blocks = {b.sdpa: b for b in find_attention(gm.graph)}
        self.owned = {node for b in self.blocks.values() for node in b.owned}
        self.squares = squares_for_row_stats(gm.graph)
        an.cast_to = _lowest_cast(gm.graph)
        self.regions: Regions = find_regions(gm.graph, exclude=self.squares)
        #: Groups of elementwise regions already classified, by the region's signature.
        self.groups: dict[tuple, IntertwinerGroup] = {}
        #: Infos decided by a rule of an earlier node for a later one (a channel shuffle's end).
        self.pending: dict[fx.Node, Any] = {}
        #: Second products ``h @ c`` whose contracted state axis an earlier ``x @ w`` paired with
        #: ``w``'s (``_rules_linear._state_pair``): ``c`` keeps its site there.
        self.state_pairs: set[fx.Node] = set()

    # -- bookkeeping ----------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.an.current_use = n.name
        try:
            self.infos[n] = self.rule(n, value)
        except (Frozen, UnsupportedModuleError) as e:
            if self.refuse_unknown and self.nested(n):
                self.error = f"{self.reason(n, str(e))}; supported: {SUPPORTED}"
                raise UnsupportedModuleError(self.error) from None
            self.give_up(n, str(e))
            self.infos[n] = None
        return value

    def info(self, a: Any) -> Any:
        return self.infos.get(a) if isinstance(a, fx.Node) else None

    def val(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, fx.Node) else a

    def op(self, n: fx.Node) -> str:
        return op_name(n)

    def first(self, n: fx.Node) -> Info:
        """The hidden tensor a one-input rule reads: the node's first argument."""
        x = self.info(n.args[0]) if n.args else None
        if not isinstance(x, Info):
            raise Frozen("a hidden tensor in a position this rule does not read")
        return x

    def ndim(self, n: fx.Node) -> int | None:
        x0 = self.val(n.args[0]) if n.args else None
        return x0.dim() if isinstance(x0, torch.Tensor) else None

    def where(self, n: fx.Node) -> str:
        return f"{self.module_path(n) or '<model>'} ({n.name})"

    def module_path(self, n: fx.Node) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def module_type(self, n: fx.Node) -> str:
        stack = n.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        t = list(stack.values())[-1][1]
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        return name.rsplit(".", 1)[-1]

    def nested(self, n: fx.Node) -> list[Info]:
        return nested_infos(self.infos, n)

    def give_up(self, n: fx.Node, why: str) -> None:
        """Freeze every hidden space ``n`` reads: the op is not understood (sound: a frozen space
        is never transformed, so the op sees its original inputs)."""
        reason = self.reason(n, why)
        for info in self.nested(n):
            self.an.unify(info, None, reason)

    def reason(self, n: fx.Node, why: str) -> str:
        line, kind = _source_line(n), self.module_type(n)
        kind = f" of a {kind}" if kind else ""
        return f"{op_name(n)} in {self.where(n)}{kind}{f' at {line}' if line else ''}: {why}"

    def pname(self, a: Any) -> str | None:
        """The parameter/buffer name behind an argument (None when absent)."""
        if a is None:
            return None
        info = self.info(a)
        if isinstance(info, ParamRef) and info.plain:
            return info.name
        raise Frozen("a weight that is computed, not a parameter (parametrized: weight_norm, ...)")

    # -- dispatch -------------------------------------------------------------------------------
    def rule(self, n: fx.Node, value: Any) -> Any:
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
        if n in self.pending:
            return self.pending.pop(n)
        if n.target is operator.getitem:
            base = self.info(n.args[0])
            return base[n.args[1]] if isinstance(base, tuple) else None
        if op_name(n) == "clone" and _mutated(n):  # ``b = bias.clone(); b[:k].zero_()``
            if self.nested(n):
                raise Frozen("a copy written in place afterwards: the rules do not follow it")
            return None  # no longer the parameter: a fixed tensor
        if n in self.blocks:  # an attention block's output (SDPA, or a written-out ``p @ v``)
            _rules_attention.attention(self, self.blocks[n])
            return None
        if n in self.squares:
            x = self.info(n.args[0])
            return Square(x) if isinstance(x, Info) else None
        if n in self.regions.region_of:
            return region(self, n)
        found = RULES.get(op_name(n))
        args = [self.info(a) for a in n.args]
        tracked = self.nested(n) + [a for a in args if isinstance(a, (Square, RowStat))]
        if found is not None and (tracked or found.always):
            out = found.fn(self, n, value)
            if isinstance(out, Info) and isinstance(value, (tuple, list)):
                return (out, *([None] * (len(value) - 1)))  # (values, indices), (out, mask), ...
            return out
        if not tracked:
            return self.param_view(n, value, args)
        raise Frozen("an op the symmetry tracer has no rule for")

    def param_view(self, n: fx.Node, value: Any, args: list) -> ParamRef | None:
        """Views and casts of a parameter keep it a parameter if its last dim is untouched; the
        transpose of a 2-d weight is remembered as such (``x @ W.T``)."""
        name = op_name(n)
        if not args or not isinstance(args[0], ParamRef) or not isinstance(value, torch.Tensor):
            return None
        broadcast = self.broadcast_view(name, value, args[0])
        if broadcast is not None:
            return broadcast
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

    def broadcast_view(self, name: str, value: torch.Tensor, p: ParamRef) -> ParamRef | None:
        """A 1-d parameter (or an affine function of one) reshaped to ``(1, C, 1, 1)`` and the
        like: a per-channel scale or bias of an NCHW tensor (timm's layer scale, MetaFormer's
        ``Scale``). Remembered with the dim its one axis lands on (``ParamRef.at``)."""
        views = IDENTITY | {"view", "reshape", "_unsafe_view", "unsqueeze", "expand"}
        t = self.an.params.get(p.name, self.an.buffers.get(p.name))
        if name not in views or p.transposed or t is None or t.dim() != 1 or t.numel() < 2:
            return None
        sizes = [d for d, z in enumerate(value.shape) if z != 1]
        if value.numel() != t.numel() or len(sizes) != 1:
            return None  # expanded over other dims too, or not one axis
        at = sizes[0] - value.dim()
        return dataclasses.replace(p, at=None if at == -1 else at)


_ALIASES = {"slice", "select", "view", "narrow", "unsqueeze", "squeeze", "transpose", "permute",
            "expand", "as_strided", "diagonal", "t", "alias"}  # fmt: skip


def _mutated(n: fx.Node) -> bool:
    """Is ``n`` (or a view of it) written in place by a later op (``zero_``, ``mul_``, ...)?
    ``op_name`` drops the trailing ``_``, so the overload packet's own name is read."""
    stack = [n]
    while stack:
        for u in stack.pop().users:
            packet = getattr(getattr(u.target, "overloadpacket", None), "__name__", "")
            if packet.endswith("_") and not packet.startswith("_"):
                return True
            if op_name(u) in _ALIASES:
                stack.append(u)
    return False


def nested_infos(infos: dict[fx.Node, Any], n: fx.Node) -> list[Info]:
    """Every tracked Info among ``n``'s arguments, looking inside lists, tuples, dicts and the
    tuple infos of multi-output nodes."""
    found: list[Info] = []

    def walk(a: Any) -> None:
        if isinstance(a, fx.Node):
            i = infos.get(a)
            for j in i if isinstance(i, tuple) else (i,):
                if isinstance(j, Info):
                    found.append(j)
        elif isinstance(a, (list, tuple)):
            for b in a:
                walk(b)
        elif isinstance(a, dict):
            for b in a.values():
                walk(b)

    walk(n.args)
    walk(n.kwargs)
    return found


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
