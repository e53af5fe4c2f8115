"""Attention blocks in ATen graphs: ``scaled_dot_product_attention`` with its projections.

For each SDPA node the q, k and v arguments are followed back through head-shaping ops (views,
transposes, a split of a packed projection, GQA's repeat, rotary embeddings) to the Linear /
Conv1D that produced them, and the output forward to the projection that reads it. When the
layout is the standard one (channel ``c`` of a projection is dim ``c % head_dim`` of head
``c // head_dim``), the block's symmetries are (Hk = key/value heads, rep = query heads per kv head):

- ``<attn>.heads``: a permutation of the Hk kv-head groups (query heads move with their group);
- ``<attn>.vo<j>``: GL(head_dim_v) per kv head j: ``v_j <- G v_j``, ``W_o[:, head h] <- W_o G^-1``
  for every query head h of group j;
- ``<attn>.qk<j>``: GL(head_dim) per kv head j when no rotary embedding sits between the
  projections and the product: ``q_h <- G q_h`` for the group's query heads, ``k_j <- G^-T k_j``.

The projections' outputs are then not hidden spaces of their own (their input axes still read the
stream). A block that does not match leaves the graph to the ordinary rules.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from intertwiner.symmetry._regions import op_name

_SHAPING = {"view", "reshape", "_unsafe_view", "transpose", "permute", "contiguous", "clone"}
_SHAPING |= {"expand", "unsqueeze", "to", "_to_copy", "alias", "detach", "dropout", "flatten"}
_ROTARY = {"mul", "add", "sub", "neg", "cat", "slice", "select", "stack", "unflatten"}
_PROJECTIONS = {"linear", "addmm"}
_SPLITS = {"split", "split_with_sizes", "chunk", "unbind"}


@dataclass
class Projection:
    """Where one of q, k, v (or the output) lives in a projection's weight."""

    node: fx.Node
    weight: str
    bias: str | None
    out_axis: int  # weight axis of the projection's outputs (0: linear, 1: Conv1D addmm)
    offset: int  # first output channel of this slot (packed q|k|v)
    width: int  # output channels of this slot
    total: int  # all output channels of the projection
    #: Channels from one kv-head group's start to the next; None until known: ``rep * head_dim``
    #: (q) or ``head_dim`` (k, v) for the usual layout, ``3 * head_dim`` for a q|k|v packed per
    #: head (GPT-NeoX / Pythia: a view to (heads, 3 * head_dim), then a split of the last dim).
    block: int | None = None


@dataclass
class AttentionBlock:
    sdpa: fx.Node
    name: str
    q: Projection
    k: Projection
    v: Projection
    out: Projection  # ``offset``/``width`` describe its *input* channels
    heads: int
    kv_heads: int
    head_dim: int
    head_dim_v: int
    rotary: bool
    owned: set[fx.Node] = field(default_factory=set)
    #: False when the additive mask differs between heads (T5's relative position bias, ALiBi):
    #: permuting heads would then need the bias permuted too.
    heads_permutable: bool = True


def _val(n: fx.Node):
    return n.meta.get("val")


def _param_name(a, names: dict[fx.Node, str]) -> str | None:
    return names.get(a) if isinstance(a, fx.Node) else None


def _projection(node: fx.Node, names: dict[fx.Node, str]) -> Projection | None:
    name = op_name(node)
    if name == "linear":
        w = _param_name(node.args[1], names)
        b = _param_name(node.args[2], names) if len(node.args) > 2 else None
        axis = 0
    elif name == "addmm":
        w, b, axis = _param_name(node.args[2], names), _param_name(node.args[0], names), 1
    else:
        return None
    if w is None:
        return None
    total = int(_val(node.args[1] if name == "linear" else node.args[2]).shape[axis])
    return Projection(node, w, b, axis, 0, total, total)


def _back(start: fx.Node, names: dict[fx.Node, str]) -> tuple[Projection, set, bool] | None:
    """The projection feeding ``start`` (an SDPA argument), the nodes on the way, and whether a
    rotary-style elementwise op was on the way."""
    seen: set[fx.Node] = set()
    found: list[Projection] = []
    rotary = False
    stack: list[tuple[fx.Node, tuple[int, int, int | None] | None]] = [(start, None)]
    while stack:
        n, slot = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op != "call_function":
            continue
        name = op_name(n)
        if name in _PROJECTIONS:
            p = _projection(n, names)
            if p is None:
                return None
            if slot is not None:
                p.offset, p.width, p.block = slot
                if p.block is not None:  # per-head packing: the slot recurs in every head block
                    p.width = (p.total // p.block) * p.width
            found.append(p)
            continue
        if n.target is operator.getitem and op_name(n.args[0]) in _SPLITS:
            split = n.args[0]
            sizes = [int(t.shape[_split_dim(split)]) for t in _val(split)]
            i = int(n.args[1])
            seen.add(split)
            stack.append((split.args[0], (sum(sizes[:i]), sizes[i], None)))
            continue
        if name in _SHAPING:
            stack.append((n.args[0], _through_view(n, slot)))
        elif name in _ROTARY:
            rotary = True
            for a in n.all_input_nodes:
                if isinstance(_val(a), torch.Tensor):
                    stack.append((a, slot))
        # anything else (cos/sin tables, masks, positions) cannot lead to a projection
    if len({id(p.node) for p in found}) != 1 or len({(p.offset, p.width) for p in found}) != 1:
        return None
    return found[0], seen, rotary


def _through_view(n: fx.Node, slot):
    """A slot taken from the last dim of a tensor viewed as (..., heads, X) out of (..., heads * X)
    recurs in every head's block of X channels (GPT-NeoX packs q|k|v per head)."""
    if slot is None or slot[2] is not None or op_name(n) not in ("view", "reshape", "_unsafe_view"):
        return slot
    src, out = _val(n.args[0]), _val(n)
    if src is None or out is None or src.dim() < 1 or out.dim() < 2:
        return slot
    width = int(src.shape[-1])
    for k in range(out.dim() - 2, -1, -1):  # out = (..., heads, *X) with prod(heads, *X) = width
        block = 1
        for v in out.shape[k + 1 :]:
            block *= int(v)
        if block * int(out.shape[k]) == width:
            return (slot[0], slot[1], block) if block != width else slot
        if block * int(out.shape[k]) > width:
            break
    return slot


def _split_dim(split: fx.Node) -> int:
    if op_name(split) == "unbind":
        return int(split.args[1]) if len(split.args) > 1 else 0
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    return int(dim) % _val(split.args[0]).dim()


def _forward(start: fx.Node, names: dict[fx.Node, str]) -> tuple[Projection, set] | None:
    seen = {start}
    n = start
    while True:
        users = list(n.users)
        if len(users) != 1:
            return None
        n = users[0]
        seen.add(n)
        if op_name(n) in _PROJECTIONS:
            p = _projection(n, names)
            x = n.args[0] if op_name(n) == "linear" else n.args[1]
            if p is None or x not in seen:
                return None
            return p, seen
        if op_name(n) not in _SHAPING:
            return None


def find_attention(graph: fx.Graph) -> list[AttentionBlock]:
    """Every SDPA block of ``graph`` whose projections and head layout this module understands."""
    names = {n: str(n.target) for n in graph.nodes if n.op == "get_attr"}
    blocks = []
    for n in graph.nodes:
        if n.op != "call_function" or op_name(n) != "scaled_dot_product_attention":
            continue
        block = _match(n, names)
        if block is not None:
            blocks.append(block)
    return blocks


def _match(sdpa: fx.Node, names: dict[fx.Node, str]) -> AttentionBlock | None:
    q_node, k_node, v_node = sdpa.args[:3]
    found = [_back(a, names) for a in (q_node, k_node, v_node)]
    out = _forward(sdpa, names)
    if any(f is None for f in found) or out is None:
        return None
    (q, q_seen, q_rot), (k, k_seen, k_rot), (v, v_seen, _) = found
    o, o_seen = out
    qv, kv, vv = (_val(a) for a in (q_node, k_node, v_node))
    if qv.dim() != 4 or kv.dim() != 4 or vv.dim() != 4:
        return None
    heads, head_dim, head_dim_v = int(qv.shape[1]), int(qv.shape[3]), int(vv.shape[3])
    kv_heads = k.width // head_dim if k.width % head_dim == 0 else 0
    if not kv_heads or heads % kv_heads or q.width != heads * head_dim:
        return None
    if v.width != kv_heads * head_dim_v or o.total != heads * head_dim_v:
        return None
    packed = len({id(p.node) for p in (q, k, v)}) == 1
    if packed and not (kv_heads == heads and head_dim == head_dim_v):
        return None  # a packed q|k|v with unequal blocks: not handled
    rep = heads // kv_heads
    per_head = [p.block is not None for p in (q, k, v)]
    if any(per_head) and (
        not all(per_head)
        or rep != 1
        or len({p.block for p in (q, k, v)}) != 1
        or q.total // q.block != heads
    ):
        return None  # per-head packing of only some of q, k, v, with grouped queries, or blocks
        # that are not one per head (CodeGen's model-parallel packing)
    for p, block in ((q, rep * head_dim), (k, head_dim), (v, head_dim_v)):
        p.block = block if p.block is None else p.block
    stack = sdpa.meta.get("nn_module_stack") or {}
    name = list(stack.values())[-1][0] if stack else sdpa.name
    owned = {q.node, k.node, v.node}
    rotary = q_rot or k_rot
    mask = sdpa.args[3] if len(sdpa.args) > 3 else sdpa.kwargs.get("attn_mask")
    mask_val = _val(mask) if isinstance(mask, fx.Node) else None
    per_head = isinstance(mask_val, torch.Tensor) and mask_val.dim() == 4 and mask_val.shape[1] > 1
    return AttentionBlock(
        sdpa, name, q, k, v, o, heads, kv_heads, head_dim, head_dim_v, rotary, owned, not per_head
    )
