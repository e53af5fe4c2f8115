"""Elementwise regions of an ATen graph: activations that export writes out op by op.

``torch.export`` decomposes many activations (GPT-2's tanh-GELU, ``x * sigmoid(x)``, quick-GELU)
into chains of ``mul``, ``add``, ``pow``, ``tanh``... A *region* is a set of elementwise nodes whose
only tensor input, followed back through the region, is one node (the *root*); every other
argument is a number. Each node of a region that is read outside the region is an *output*: a
function of the root applied entrywise, whose intertwiner group ``trace`` classifies as one
activation (the table for a single known op, ``groups.discover`` for a composite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

#: Elementwise ATen ops (overload packet names) a region may hold.
ELEMENTWISE = {
    "add", "sub", "rsub", "mul", "div", "pow", "neg", "square",
    "tanh", "sigmoid", "exp", "expm1", "log", "log1p", "erf", "erfc", "sqrt", "rsqrt", "reciprocal",
    "sin", "cos", "abs", "sign",
    "relu", "gelu", "silu", "mish", "hardtanh", "leaky_relu", "elu", "selu", "celu", "softplus",
    "hardswish", "hardsigmoid", "clamp", "clamp_min", "clamp_max", "threshold", "relu6",
    "log_sigmoid", "softshrink", "hardshrink",
}  # fmt: skip
#: Ops that are the identity on values (casts, copies, eval-mode dropout).
IDENTITY = {"to", "_to_copy", "clone", "alias", "contiguous", "detach", "dropout", "type_as"}
IDENTITY |= {"lift_fresh_copy", "feature_dropout", "alpha_dropout"}


def op_name(node: fx.Node) -> str:
    """The overload packet name of an ATen call (``aten.add.Tensor`` -> ``"add"``)."""
    t = node.target
    packet = getattr(t, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(t, "__name__", str(t))
    return name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name


def _is_number(a: Any) -> bool:
    return isinstance(a, (int, float, bool, type(None), str, torch.dtype, torch.device))


def _tensor_args(node: fx.Node) -> list[fx.Node] | None:
    """The node's tensor arguments, or None if some argument is neither a node nor a number."""
    out: list[fx.Node] = []
    for a in (*node.args, *node.kwargs.values()):
        if isinstance(a, fx.Node):
            val = a.meta.get("val")
            if isinstance(val, torch.Tensor) or val is None:
                out.append(a)
        elif isinstance(a, (list, tuple)):
            if not all(_is_number(b) for b in a):
                return None
        elif not _is_number(a):
            return None
    return out


@dataclass
class Region:
    root: fx.Node
    nodes: list[fx.Node] = field(default_factory=list)

    def function(self, output: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
        """``output`` as a function of the root, replayed op by op (casts and dropout skipped, so
        that it runs in the dtype it is called with)."""
        needed = ancestors_within(output, set(self.nodes))
        order = [n for n in self.nodes if n in needed]

        def fn(z: torch.Tensor) -> torch.Tensor:
            env: dict[fx.Node, Any] = {self.root: z}

            def get(a: Any) -> Any:
                return env[a] if isinstance(a, fx.Node) else a

            for n in order:
                name = op_name(n)
                if name in IDENTITY:
                    env[n] = get(n.args[0])
                    continue
                args = [get(a) for a in n.args]
                kwargs = {k: get(v) for k, v in n.kwargs.items()}
                env[n] = n.target(*args, **kwargs)
            return env[output]

        return fn

    def signature(self, output: fx.Node) -> tuple:
        """A key equal for regions that compute the same function (for caching discovery)."""
        needed = ancestors_within(output, set(self.nodes))
        index = {self.root: -1}
        sig = []
        for i, n in enumerate(x for x in self.nodes if x in needed):
            index[n] = i

            def enc(a: Any) -> Any:
                if isinstance(a, fx.Node):
                    return ("node", index[a])
                if isinstance(a, (list, tuple)):
                    return tuple(enc(b) for b in a)
                return repr(a)

            sig.append((str(n.target), enc(n.args), enc(tuple(sorted(n.kwargs.items())))))
        return tuple(sig)


def ancestors_within(node: fx.Node, members: set[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen or n not in members:
            continue
        seen.add(n)
        stack.extend(a for a in n.all_input_nodes if a in members)
    return seen


@dataclass
class Regions:
    """Per node: the region it belongs to and whether it is read outside that region."""

    region_of: dict[fx.Node, Region]
    outputs: set[fx.Node]

    def interior(self, node: fx.Node) -> bool:
        return node in self.region_of and node not in self.outputs


def find_regions(graph: fx.Graph, exclude: set[fx.Node] = frozenset()) -> Regions:
    """Group the graph's elementwise nodes into regions by root (nodes in ``exclude`` never join)."""
    root_of: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n.op != "call_function" or n in exclude:
            continue
        name = op_name(n)
        if name not in ELEMENTWISE and name not in IDENTITY:
            continue
        tensors = _tensor_args(n)
        if not tensors:
            continue
        roots = {root_of.get(a, a) for a in tensors}
        if len(roots) == 1:
            root_of[n] = roots.pop()
    regions: dict[fx.Node, Region] = {}
    region_of: dict[fx.Node, Region] = {}
    for n in graph.nodes:  # graph order is topological
        if n in root_of:
            r = regions.setdefault(root_of[n], Region(root_of[n]))
            r.nodes.append(n)
            region_of[n] = r
    outputs = {
        n
        for n, r in region_of.items()
        if any(region_of.get(u) is not r for u in n.users) or not n.users
    }
    return Regions(region_of, outputs)
