"""Attention blocks in ATen graphs: ``scaled_dot_product_attention`` (or the same computation
written out: ``softmax(q @ k^T * scale + mask) @ v``) with its projections.

For each block the q, k and v arguments are followed back through head-shaping ops (views,
transposes, a split or ``select`` of a packed projection, GQA's repeat, a scalar scale, rotary
embeddings) to the Linear / Conv1D that produced them, and the output forward to the projection
that reads it. Which projection channel lands at which (head, head dim) is not guessed from the
shapes: the shaping ops are replayed on a tensor that holds each channel's index (``_replay``), so
every layout that views and permutes channels is read exactly (``nn.MultiheadAttention``'s
unflatten/select, timm's ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``, GPT-NeoX's per-head
packing). With Hk key/value heads and rep = query heads per kv head the block's symmetries are:

- ``<attn>.heads``: a permutation of the Hk kv-head groups (query heads move with their group),
  when each group's channels are one aligned block of every projection;
- ``<attn>.vo<j>``: GL(head_dim_v) per kv head j: ``v_j <- G v_j``, ``W_o[:, head h] <- W_o G^-1``
  for every query head h of group j;
- ``<attn>.qk<j>``: GL(head_dim) per kv head j when no rotary embedding sits between the
  projections and the product: ``q_h <- G q_h`` for the group's query heads, ``k_j <- G^-T k_j``.

Ops shared by every head on each head-dim entry (MViTv2's depthwise pooling and LayerNorms,
``_pool_op``; its relative-position einsums, ``_rel_term``; residual pooling ``A v + q``,
``Projection.residual``) replace the per-head maps by one permutation of the entries
(``_rules_attention._shared_sites``). Talking heads (Linear or 1 x 1 conv over the heads) and a
per-channel branch of v added to the output (EfficientFormerV2's ``v_local``,
``Projection.side``) move with the heads.

The projections' outputs are then not hidden spaces of their own (their input axes still read the
stream). A block that does not match leaves the graph to the ordinary rules.

BoTNet's and HaloNet's attention (timm's ``BottleneckAttn``, ``HaloAttn``) are read too: heads
folded into the batch dim of 3-d or 4-d tensors (``(B * H, [blocks,] T, D)``), k^T laid out by a
view, k and v cut into windows by a zero pad and ``unfold`` (pads replayed as ``_PAD_CODE``),
relative position logits from tables shared by every head (``_rel_logits``: then one
``<attn>.qk`` for every head, the tables moving with it) and no output projection (``_merge``:
the heads' output channels are handed to the ordinary rules; ``_downstream``: the chain that a
head permutation follows to the next convolution).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from intertwiner.symmetry._regions import IDENTITY, op_name

_SHAPING = {"view", "reshape", "_unsafe_view", "transpose", "permute", "contiguous", "clone"}
_SHAPING |= {"expand", "unsqueeze", "squeeze", "to", "_to_copy", "alias", "detach", "dropout"}
_SHAPING |= {
    "flatten",
    "unflatten",
    "select",
    "slice",
    "type_as",
    "reshape_as",
    "unfold",  # Tensor.unfold: HaloAttn's overlapping windows of positions (a view)
}  # type_as: its first argument
#: Padding of positions (HaloAttn pads its keys' and values' map by the halo): followed back only
#: with zeros, reflections or copies, and replayed with ``_PAD_CODE`` so that the channel codes
#: prove that no padded entry shares a vector with a real channel (``_heads_of``).
_PADS = {"pad", "constant_pad_nd"}
_PAD_CODE = -1.0
_ROTARY = {"mul", "add", "sub", "neg", "cat", "slice", "select", "stack", "unflatten"}
#: Convolutions (ungrouped, not transposed) project channels too: CoAtNet's and MaxViT's
#: ``Attention2d`` computes q, k, v with a 1 x 1 conv over (B, C, H, W).
_CONVS = {"conv1d", "conv2d", "conv3d", "convolution"}
_PROJECTIONS = {"linear", "addmm"} | _CONVS
_SPLITS = {"split", "split_with_sizes", "chunk", "unbind"}
#: Between ``q @ k^T`` and the softmax: a scale, an additive mask or bias, casts.
_SCORES = {"mul", "div", "add", "sub", "masked_fill"} | IDENTITY
_VIEWS = {"view", "reshape", "_unsafe_view"}
_SCORES |= _VIEWS
#: A BatchNorm (eval) right after a projection (LeViT's ``LinearNorm``): per-channel affine.
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
#: Resampling of a (B, C, H, W) output over space alone, channel by channel (EfficientFormerV2's
#: strided attention upsamples its heads' output before the projection): linear in each channel's
#: map and the same for every channel, so it commutes with any map of the channels.
_SPATIAL = {"upsample_bilinear2d", "upsample_nearest2d"}
#: Elementwise activations between the attention output and its projection (LeViT's
#: ``hardswish``): they commute with permutations of the channels (only).
_OUT_ACTIVATIONS = {"hardswish", "relu", "gelu", "silu", "hardsigmoid", "sigmoid", "tanh"}


@dataclass
class Projection:
    """One of q, k, v (or the output) in a projection's weight."""

    node: fx.Node
    weight: str
    bias: str | None
    out_axis: int  # weight axis of the projection's outputs (0: linear, 1: Conv1D addmm)
    total: int  # all output channels of the projection
    #: Input channels of the projection (the output projection's heads live there; it need not
    #: equal ``total``: EfficientFormer's values are wider than the stream).
    width: int
    #: The dim of the projection's output (and of its input) that holds the channels: -1 for a
    #: Linear, 1 for a convolution.
    channel_dim: int = -1
    #: Per head (of the attention's tensor), the projection channels of its head-dim entries.
    heads: list[tuple[int, ...]] = field(default_factory=list)
    #: Bias channels the model sets to zero before the product (torchvision's Swin V2 zeroes the
    #: key third of a clone of ``qkv.bias``): a site may only act on channels all zeroed or all
    #: kept (a linear map keeps zero at zero).
    zeroed: frozenset[int] = frozenset()
    #: A bias computed as ``cat(q_bias, k_bias, v_bias)`` of 1-d parameters or buffers (EVA's
    #: fused qkv with a zero ``k_bias`` buffer): ``(name, offset, length)`` per piece, ``bias``
    #: then None. The rule moves the parameter pieces and accepts only zero buffers.
    bias_parts: tuple[tuple[str, int, int], ...] = ()
    #: The BatchNorm after the projection (LeViT): weight, bias, running mean and var (names;
    #: None where absent), moved with the projection's channels.
    norm: tuple[str | None, ...] = ()
    #: An output projection that reads the heads through an elementwise activation.
    activated: bool = False
    #: Ops between the projection and q, k or v that act on each head-dim entry alone and are
    #: shared by the heads (MViTv2's depthwise ``pool_q`` and ``norm_q``, ``_pool_op``).
    pools: tuple[fx.Node, ...] = ()
    #: Their tensors indexed by head-dim entry on dim 0 (one permutation of the entries, shared
    #: by all heads, moves them).
    pool_params: tuple[str, ...] = ()
    #: ``out = A v + r`` before the output projection with ``r`` on q's path (MViTv2's residual
    #: pooling): (r, the output's codes there); ``_match`` checks r is q entry for entry.
    residual: tuple | None = None
    #: A per-channel branch from v's projection added to the heads' output before this
    #: projection (EfficientFormerV2's ``v_local``, ``_side_branch``): ``(start node, names of
    #: its per-channel tensors, {head * d + entry: channel of start})``; ``_match`` checks that
    #: the entry's channel is the v channel of that entry, and the rule moves the tensors with v.
    side: tuple | None = None
    #: A LayerNorm over the heads' outputs right before the output projection (EVA-CLIP's
    #: ``scale_attn_inner`` sub-LN): (weight, bias) names, its channels the projection's inputs.
    sub_norm: tuple[str | None, str | None] | None = None


@dataclass(frozen=True)
class RelLogits:
    """One relative-position bias on the scores computed from the queries (``_rel_logits``)."""

    mask: fx.Node
    products: tuple[fx.Node, ...]  # the ``q' @ table^T`` matmuls
    tables: tuple[str, ...]  # their (T, head_dim) parameters, the head dim on axis 1
    #: Proven: the logits of a query row read that row's own leading index (batch and head)
    #: only, in the same pattern for every one: a head permutation moves them with the heads.
    per_head: bool


@dataclass(frozen=True)
class Merge:
    """Where the attention output's heads meet again on one channel dim."""

    node: fx.Node
    dim: int  # negative
    channels: tuple[tuple[int, ...], ...]  # per query head, its Dv channels there
    #: The per-channel chain from ``node`` to the projection that reads it: ``(tensor, axis,
    #: the node that reads it)`` for each BatchNorm vector (axis 0) and the projection's weight
    #: (its input axis); None: no head permutation.
    downstream: tuple[tuple[str, int, str], ...] | None
    #: The names of the chain's nodes (its activations' outputs move with the heads too).
    chain: tuple[str, ...] = ()


@dataclass
class AttentionBlock:
    sdpa: fx.Node  # the SDPA node, or the ``probs @ v`` matmul of a written-out attention
    name: str
    q: Projection
    k: Projection
    v: Projection
    out: Projection | None  # ``heads``: the *input* channels of each query head's output
    heads: int
    kv_heads: int
    head_dim: int
    head_dim_v: int
    rotary: bool
    owned: set[fx.Node] = field(default_factory=set)
    #: False when the additive mask differs between heads (T5's relative position bias, ALiBi):
    #: permuting heads would then need the bias permuted too.
    heads_permutable: bool = True
    #: The additive masks or biases on the scores and the factors that scale them (Swin V2's
    #: ``logit_scale``), each broadcast against (..., H, T, S).
    masks: tuple[fx.Node, ...] = ()
    #: Which of "q", "k", "v" are L2-normalised over each head's entries (Swin V2's cosine
    #: attention): only orthogonal maps commute with that, so their per-head sites are O(d).
    normalized: frozenset[str] = frozenset()
    #: The dim (negative) of q, k, v and the scores that holds the heads: -3, or -4 for NesT's
    #: (B, H, blocks, T, D).
    head_axis: int = -3
    #: An elementwise activation between the output and its projection (LeViT): the values'
    #: maps are then permutations only.
    out_activation: bool = False
    #: Linear maps over the heads (CaiT's talking heads ``proj_l`` on the scores, ``proj_w`` on
    #: the probabilities) as (weight, bias): a head permutation P moves them to ``P W P^-1``,
    #: ``P b``; the maps within a head survive (each head's q_h^T k_h and A_h v_h are kept).
    mixes: tuple[tuple[str, str | None], ...] = ()
    #: Cross-covariance attention (XCiT's XCA, ``_match_channels``): q, k, v are (B, H, D, N),
    #: q and k L2-normalised over the N tokens, and the softmax attends between the D channels
    #: of a head; ``head_dim`` / ``head_dim_v`` then count those channels.
    channels: bool = False
    #: MViTv2's decomposed relative-position tables (``_rel_term``): (R, head_dim) parameters
    #: shared by the heads whose columns meet q's entries; they move with q's entries.
    decomposed_tables: tuple[str, ...] = ()
    #: Relative position logits added to the scores (BoTNet's and HaloNet's ``PosEmbedRel``):
    #: ``q' @ table^T`` with 2-d tables shared by every head, then moves over positions
    #: (``_rel_logits``); the qk map is then one GL(head_dim) for every head, the tables' columns
    #: moving by its inverse transpose.
    rel_logits: tuple[RelLogits, ...] = ()
    #: No output projection (BoTNet, HaloNet): where the heads' outputs meet again on one channel
    #: dim (``_merge``), the chain from there to the next projection (``_downstream``; None: no
    #: head permutation) and ``out`` is None.
    merged: Merge | None = None

    def group(self, h: int) -> int:
        """The kv head that query head ``h`` reads."""
        return h // (self.heads // self.kv_heads)


def _val(n: Any):
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _is_number(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _bias_parts(bias: fx.Node, names: dict[fx.Node, str]) -> tuple | None:
    """``cat([a, b, ...])`` of 1-d parameters or buffers as ``((name, offset, length), ...)``."""
    if op_name(bias) not in ("cat", "concat") or (bias.args[1:] or (0,))[0] not in (0, -1):
        return None
    parts, offset = [], 0
    for a in bias.args[0]:
        v = _val(a)
        if a not in names or not isinstance(v, torch.Tensor) or v.dim() != 1:
            return None
        parts.append((names[a], offset, int(v.shape[0])))
        offset += int(v.shape[0])
    return tuple(parts)


def _projection(node: fx.Node, names: dict[fx.Node, str]) -> Projection | None:
    name = op_name(node)
    bias = node.args[0] if name == "addmm" else node.args[2] if len(node.args) > 2 else None
    zeroed: frozenset[int] = frozenset()
    parts: tuple[tuple[str, int, int], ...] = ()
    if isinstance(bias, fx.Node) and bias not in names:
        found = _zeroed_clone(bias, node, names)
        if found is not None:  # Swin V2: a parameter's clone with whole ranges zeroed
            names = {**names, bias: found[0]}
            zeroed = found[1]
        else:  # EVA: cat(q_bias, zero k_bias buffer, v_bias)
            parts = (_bias_parts(bias, names) if name == "linear" else None) or ()
            if not parts:
                return None  # a computed bias no head map may ignore
    p = _plain_projection(node, names)
    if p is not None:
        p.zeroed, p.bias_parts = zeroed, parts
    return p


def _zeroed_clone(
    bias: fx.Node, reader: fx.Node, names: dict[fx.Node, str]
) -> tuple[str, frozenset[int]] | None:
    """``b = param.clone(); b[i:j].zero_()`` (torchvision's Swin V2 key bias): the parameter's
    name and the zeroed channels, or None when the clone is used any other way."""
    if op_name(bias) != "clone" or bias.args[0] not in names or bias.kwargs.get("memory_format"):
        return None
    size = _val(bias).shape
    if len(size) != 1:
        return None
    zeroed: set[int] = set()
    for user in bias.users:
        if user is reader:
            continue
        bad = user.kwargs or user.args[1:2] not in ((0,), ())
        if op_name(user) != "slice" or len(user.users) != 1 or bad:
            return None
        (zero,) = user.users
        in_place = str(zero.target).startswith("aten.zero_.")  # op_name drops the "_"
        if not in_place or zero.users or reader not in _after(zero):
            return None  # a zeroing after the product would not change what it read
        start, end = (*user.args[2:4], None, None)[:2]
        zeroed |= set(range(int(size[0]))[slice(start, end, (user.args + (1,) * 5)[4])])
    return names[bias.args[0]], frozenset(zeroed)


def _after(n: fx.Node) -> set[fx.Node]:
    """The nodes that come after ``n`` in its graph."""
    out, m = set(), n.next
    while m.op != "root":
        out.add(m)
        m = m.next
    return out


def _plain_projection(node: fx.Node, names: dict[fx.Node, str]) -> Projection | None:
    name = op_name(node)
    if name == "linear":
        w, b = names.get(node.args[1]), names.get(node.args[2]) if len(node.args) > 2 else None
        axis = 0
    elif name == "addmm":
        w, b, axis = names.get(node.args[2]), names.get(node.args[0]), 1
    elif name in _CONVS:
        groups = node.args[8] if name == "convolution" else (node.args + (1,) * 7)[6]
        if name == "convolution" and node.args[6] or groups != 1:
            return None  # transposed or grouped: channels are not a plain projection
        w, b = names.get(node.args[1]), names.get(node.args[2]) if len(node.args) > 2 else None
        if w is None:
            return None
        shape = _val(node.args[1]).shape
        return Projection(node, w, b, 0, int(shape[0]), int(shape[1]), channel_dim=1)
    else:
        return None
    if w is None:
        return None
    shape = _val(node.args[1] if name == "linear" else node.args[2]).shape
    return Projection(node, w, b, axis, int(shape[axis]), int(shape[1 - axis]))


def _scalar_scale(n: fx.Node) -> bool:
    """``x * c`` or ``x / c`` with a number ``c``: moves no channel."""
    return op_name(n) in ("mul", "div") and len(n.args) == 2 and _is_number(n.args[1])


def _back(start: fx.Node, names: dict[fx.Node, str]) -> tuple[Projection, set, bool, list] | None:
    """The projection feeding ``start``, the nodes on the way, whether a rotary-style
    elementwise op was on the way, and the L2 normalisations on the way as ``(div, input, dim)``
    (``F.normalize``: ``x / norm(x, dim).clamp_min(eps)``)."""
    seen: set[fx.Node] = set()
    found: list[Projection] = []
    norms: list[tuple[fx.Node, fx.Node, int]] = []
    batch_norms: set[fx.Node] = set()  # LeViT's BatchNorm after the projection
    pools: list[fx.Node] = []
    rotary = False
    stack = [start]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op != "call_function":
            continue
        name = op_name(n)
        normalized = _l2_normalized(n)
        if normalized is not None:
            norms.append((n, *normalized))
            stack.append(normalized[0])
            continue
        if _pool_op(n, names) is not None:  # MViTv2's pooling of q, k, v: per head-dim entry
            pools.append(n)
            stack.append(n.args[0])
            continue
        if name in _PROJECTIONS:
            p = _projection(n, names)
            if p is None:
                return None
            found.append(p)
            continue
        if n.target is operator.getitem and op_name(n.args[0]) in _SPLITS:
            stack.append(n.args[0])
        elif name in _BATCH_NORMS:
            batch_norms.add(n)
            stack.append(n.args[0])
        elif name in _SPLITS or name in _SHAPING or _scalar_scale(n) or _zero_pad(n):
            stack.append(n.args[0])
        elif name in _ROTARY:
            rotary = True
            stack.extend(a for a in n.all_input_nodes if isinstance(_val(a), torch.Tensor))
        # anything else (cos/sin tables, masks, positions) cannot lead to a projection
    if len({id(p.node) for p in found}) != 1 or len(batch_norms) > 1:
        return None
    if batch_norms:
        (bn,) = batch_norms
        if not _eval_norm(bn, names, found[0].total):
            return None
        found[0].norm = tuple(
            names.get(a) if isinstance(a, fx.Node) else None for a in bn.args[1:5]
        )
    found[0].pools = tuple(pools)
    return found[0], seen, rotary, norms


def _shared_entries(codes: Any, op: fx.Node, heads: list[tuple[int, ...]]) -> bool:
    """Does channel e of the pooling op ``op`` (dim 1 of a convolution's input, the last dim of
    a LayerNorm's) hold entry e of every head and nothing else (read from the channel
    ``codes`` of its input)? Then one permutation of the entries, the same for every head,
    moves its per-channel tensors."""
    if not isinstance(codes, torch.Tensor) or codes.dim() < 2:
        return False
    if op_name(op) == "layer_norm":  # one vector per position: each must be one head's entries
        vectors = codes.reshape(1, -1, codes.shape[-1])
    else:  # (rows, D, *space): a kernel mixes the positions of a row, all of one head
        vectors = codes.movedim(1, -1).flatten(1, -2)
        if not torch.equal(vectors, vectors[:, :1].expand_as(vectors)):
            return False
        vectors = vectors[:, :1]
    own = set(heads)
    rows = {tuple(v) for v in vectors.reshape(-1, vectors.shape[-1]).long().tolist()}
    return vectors.shape[-1] == len(heads[0]) and rows <= own


def _rel_tables(
    rels: tuple[fx.Node, ...], q: Projection, env_seen: tuple[dict, set], order: dict
) -> tuple[str, ...] | None:
    """The tables of MViTv2's relative-position terms (``_rel_term``): each einsum must read
    q's entries on its operand's last dim and q's heads on its dim 1 (replayed from q's
    projection through shaping ops from a tensor on q's path); each table read by that einsum
    alone. None when one does not."""
    env, seen = env_seen
    out = []
    for rel in rels:
        found = _rel_term(rel)
        if found is None:
            return None
        _, x, table, _ = found
        chain, m = set(), x
        while m not in seen and isinstance(m, fx.Node) and op_name(m) in _SHAPING:
            chain.add(m)
            m = m.args[0]
        if m not in seen or len(table.users) != 1:
            return None
        got = (
            _replay(q.node, _channel_codes(q), seen | chain, order).get(x) if chain else env.get(x)
        )
        xv = _val(x)
        if _heads_of(got, xv.shape, q.total, 1) != q.heads:
            return None
        out.append(str(table.target))
    return tuple(out)


def _residual_reads_q(residual: tuple, q: Projection, env: dict) -> bool:
    """``out = A v + q`` (MViTv2's residual pooling): is the tensor added, entry for entry, q's
    channel of that head and entry (``residual``: (the tensor, the output's codes ``h * d + e``
    there), the tensor on q's path)?"""
    other, codes = residual
    got = env.get(other)
    d = len(q.heads[0])
    if not isinstance(got, torch.Tensor) or not isinstance(codes, torch.Tensor):
        return False
    if got.shape != codes.shape or int(codes.max()) >= len(q.heads) * d:
        return False
    table = torch.tensor([c for row in q.heads for c in row], dtype=torch.float64)
    return torch.equal(table[codes.long()], got)


def _depthwise(n: fx.Node) -> bool:
    v, w = _val(n.args[0]), _val(n.args[1])
    groups = (*n.args, *[1] * 7)[6] if op_name(n) != "convolution" else n.args[8]
    if op_name(n) == "convolution" and n.args[6]:
        return False
    ok = isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and v.dim() >= 3
    return ok and groups == int(v.shape[1]) and tuple(w.shape[:2]) == (groups, 1)


def _pool_op(n: fx.Node, names: dict[fx.Node, str]) -> tuple[str, ...] | None:
    """A depthwise convolution (one input channel per output channel, groups = channels) or a
    LayerNorm over the last dim alone, whose tensors are parameters: the names of its tensors
    indexed by channel on dim 0 (MViTv2's ``pool_q`` and ``norm_q``; ``_match`` checks that
    channel e holds entry e of every head). Else None."""
    name, v = op_name(n), _val(n.args[0]) if n.args else None
    if not isinstance(v, torch.Tensor) or n.kwargs:
        return None
    if name == "layer_norm":
        affine = [n.args[k] if len(n.args) > k else None for k in (2, 3)]
        if list(n.args[1]) != [int(v.shape[-1])] or any(
            a is not None and a not in names for a in affine
        ):
            return None
        return tuple(names[a] for a in affine if a is not None)
    if name not in ("conv1d", "conv2d", "conv3d") or v.dim() < 3:
        return None
    w, bias = n.args[1], n.args[2] if len(n.args) > 2 else None
    groups, wv = (*n.args, *[1] * 7)[6], _val(n.args[1])
    if w not in names or (bias is not None and bias not in names) or groups != int(v.shape[1]):
        return None
    if tuple(wv.shape[:2]) != (groups, 1):
        return None  # a channel multiplier: not one output per channel
    return tuple(names[a] for a in (w, bias) if a is not None)


def _zero_pad(n: fx.Node) -> bool:
    """A pad with zeros (or reflections, copies): every linear map of the channels commutes with
    it on the dims it pads, which the replayed codes must show are not the channels'."""
    if op_name(n) not in _PADS or n.kwargs:
        return False
    if op_name(n) == "constant_pad_nd":
        return (n.args + (0,))[2] in (0, 0.0)
    rest = [*n.args[2:], None, None]
    mode, value = rest[0] or "constant", rest[1]
    return mode in ("reflect", "replicate") or (mode == "constant" and value in (None, 0, 0.0))


def _l2_normalized(n: fx.Node) -> tuple[fx.Node, int] | None:
    """``F.normalize(x, dim=d)`` ending at ``n`` (``x / norm(x, 2, [d], keepdim).clamp_min(eps)
    .expand_as(x)``): ``(x, d)`` with ``d`` negative, or None."""
    if op_name(n) != "div" or len(n.args) != 2 or n.kwargs or not isinstance(n.args[1], fx.Node):
        return None
    x, m = n.args
    while op_name(m) in ("expand_as", "expand", "clamp_min", "clamp") and not m.kwargs:
        if op_name(m).startswith("clamp") and not all(
            a is None or _is_number(a) for a in m.args[1:]
        ):
            return None  # a bound read from a tensor: not a norm
        m = m.args[0]
    if op_name(m) != "linalg_vector_norm" or m.args[0] is not x or m.kwargs:
        return None
    args = (*m.args, 2, None, False)[:4]
    dims, x_val = args[2], _val(x)
    if args[1] != 2 or args[3] is not True or not isinstance(x_val, torch.Tensor):
        return None
    if not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return None
    return x, int(dims[0]) % x_val.dim() - x_val.dim()


def _eval_norm(bn: fx.Node, names: dict[fx.Node, str], total: int) -> bool:
    """An eval-mode BatchNorm with parameters and running statistics over ``total`` channels."""
    if op_name(bn) == "batch_norm" and (len(bn.args) < 6 or bn.args[5]):
        return False  # training: batch statistics mix the positions' values
    stats = bn.args[1:5]
    if any(isinstance(a, fx.Node) and a not in names for a in stats):
        return False
    v = _val(bn.args[0])
    return isinstance(v, torch.Tensor) and v.dim() >= 2 and int(v.shape[1]) == total


def _channel_codes(p: Projection) -> torch.Tensor:
    """A tensor shaped like ``p``'s output that holds each entry's channel index (float64)."""
    shape = _val(p.node).shape
    at = [1] * len(shape)
    at[p.channel_dim] = p.total
    return torch.arange(p.total, dtype=torch.float64).view(at).expand(shape).contiguous()


def _replay(start: fx.Node, codes: torch.Tensor, nodes: set[fx.Node], order: dict) -> dict:
    """Run the ops of ``nodes`` that descend from ``start`` on ``codes`` in place of ``start``'s
    value. Casts are skipped (the codes are exact integers in float64), and an elementwise op
    with a tensor from elsewhere (rotary's cos and sin, a scale) passes its own operand on: the
    result says which channel each entry *came from*, which is what the head layout needs."""
    env: dict[fx.Node, Any] = {start: codes}
    for n in sorted(nodes, key=order.__getitem__):
        if n is start or n.op != "call_function":
            continue
        if not any(a in env for a in n.all_input_nodes):
            continue  # cos/sin tables, masks: not from the projection
        name = op_name(n)
        if n.target is operator.getitem:
            env[n] = env[n.args[0]][n.args[1]]
            continue
        if (name in _OUT_ACTIVATIONS or name == "layer_norm") and n.args[0] in env:
            env[n] = env[n.args[0]]
            continue
        if name in _SPATIAL or (name in _CONVS and n in nodes and _depthwise(n)):
            # over space alone (a depthwise kernel: channel by channel): a channel that holds
            # one code over space keeps it at the new positions
            x, out = env.get(n.args[0]), _val(n)
            if isinstance(x, torch.Tensor) and x.dim() >= 3 and isinstance(out, torch.Tensor):
                first = x.flatten(2)[:, :, :1]
                if torch.equal(x.flatten(2), first.expand_as(x.flatten(2))):
                    env[n] = (
                        first.view(*first.shape[:2], *[1] * (out.dim() - 2))
                        .expand(out.shape)
                        .contiguous()
                    )
            continue
        if name in _BATCH_NORMS:  # per channel: passes the codes on if they are in order
            x = env.get(n.args[0])
            at = [1] * x.dim() if isinstance(x, torch.Tensor) else []
            if at:
                at[1] = -1
                ramp = torch.arange(x.shape[1], dtype=x.dtype).view(at).expand_as(x)
                if torch.equal(x, ramp):
                    env[n] = x
            continue
        if name in _PADS and n.args[0] in env:  # entries that hold no channel: ``_PAD_CODE``
            env[n] = torch.nn.functional.pad(env[n.args[0]], list(n.args[1]), value=_PAD_CODE)
            continue
        if name in IDENTITY or name in ("mul", "div", "add", "sub", "neg"):
            env[n] = next(env[a] for a in n.args if isinstance(a, fx.Node) and a in env)
            env[n] = env[n].contiguous()  # ``contiguous`` and ``clone`` let a ``view`` follow
            continue

        def get(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a in env:
                    return env[a]
                raise KeyError(a)
            if isinstance(a, (list, tuple)):
                return type(a)(get(b) for b in a)
            return a

        try:
            env[n] = n.target(*get(n.args), **{k: get(v) for k, v in n.kwargs.items()})
        except Exception:  # noqa: BLE001 (an op that needs a tensor from elsewhere)
            continue
    return env


def _heads_of(
    codes: Any, shape: torch.Size, total: int, axis: int = 1
) -> list[tuple[int, ...]] | None:
    """Per head, the channel of each head-dim entry of a (B, H, T, D) tensor of channel codes
    (or (B * H, T, D), batch-major, as ``nn.MultiheadAttention`` computes with weights; with
    more dims, the heads on ``axis``); None unless every batch row and position reads the same
    channels."""
    if not isinstance(codes, torch.Tensor) or codes.shape != shape or codes.dim() < 3:
        return None
    if codes.dim() >= 4 and axis != 0:  # NesT attends within blocks, (B, H, blocks, T, D): heads
        # on dim 1; MaxViT's grid attention (B, grid, H, T, D): heads on dim -3
        codes = _fill_pads(codes.movedim(axis, 0).flatten(1, -2))  # (H, B * ... * T, D)
        rows = codes[:, :1, :]
        if not torch.equal(codes, rows.expand_as(codes)):
            return None
        table = rows[:, 0, :]
    else:  # heads folded into dim 0, batch-major: (B * H, ..., T, D) (HaloNet: (B * H, blocks,
        # T, D)); padded positions (``_PAD_CODE`` rows) read as their head's channels
        codes = _fill_pads(codes.flatten(1, -2))
        rows = codes[:, :1, :]
        if not torch.equal(codes, rows.expand_as(codes)):
            return None
        per_row = [tuple(r) for r in rows[:, 0, :].tolist()]
        heads = list(dict.fromkeys(per_row))
        if len(per_row) % len(heads) or any(
            r != heads[i % len(heads)] for i, r in enumerate(per_row)
        ):
            return None
        table = torch.tensor(heads, dtype=torch.float64)
    if not torch.equal(table, table.round()) or table.min() < 0 or table.max() >= total:
        return None
    return [tuple(int(c) for c in row) for row in table.long()]


def _fill_pads(codes: torch.Tensor) -> torch.Tensor:
    """(G, X, D) channel codes with every vector that is all ``_PAD_CODE`` (a padded position:
    zeros, which every linear map of the channels keeps) replaced by the first real vector of its
    group; a vector padded only in part keeps its ``_PAD_CODE`` entries (no channel map keeps
    it, and the callers' range checks fail on them)."""
    pad = (codes == _PAD_CODE).all(-1)
    if not pad.any():
        return codes
    real = (~pad).float().argmax(1)  # the first real vector of each group (0 when none)
    first = codes[torch.arange(codes.shape[0]), real].unsqueeze(1).expand_as(codes)
    return torch.where(pad.unsqueeze(-1), first, codes)


def _forward(
    start: fx.Node,
    heads: int,
    names: dict[fx.Node, str],
    order: dict,
    axis: int = 1,
    within: int = -1,
) -> Projection | None:
    """The projection that reads the attention output ``start`` ((B, H, T, Dv) or (B * H, T, Dv))
    through shaping ops (and at most one elementwise activation, ``Projection.activated``, and
    a sub-LayerNorm right before it, ``Projection.sub_norm``), with the input channels of each
    head (read by replaying them); ``axis``: the heads' dim of a >= 4-d ``start``; ``within``:
    the dim of a head's entries (-2 for XCiT's (B, H, D, N))."""
    seen = {start}
    n = start
    act = norm = side = None
    while True:
        users = list(n.users)
        if len(users) != 1:
            return None
        prev, n = n, users[0]
        if op_name(n) == "add" and side is None and act is None and norm is None:
            other = _other_operand(n, prev)
            if other is None:
                return None  # added to a tensor the value maps would not move alike
            # a per-channel branch of v (EfficientFormerV2), else q's residual (MViTv2; the
            # caller checks which tensor it is)
            side = (*(_side_branch(other, names) or (other, None)), n, prev)
            seen.add(n)
            continue
        if op_name(n) in _PROJECTIONS:
            p = _projection(n, names)
            x = n.args[1] if op_name(n) == "addmm" else n.args[0]
            if p is None or x not in seen:
                return None
            break
        if norm is not None and op_name(n) not in IDENTITY:
            return None  # the norm's channel c must be the projection's input channel c
        if op_name(n) in _OUT_ACTIVATIONS and act is None and len(n.all_input_nodes) == 1:
            act = n  # replayed as the identity: it moves no channel
        elif op_name(n) == "layer_norm" and _sub_norm(n, names) is not None:
            norm = n  # per channel after statistics over all of them: replayed as the identity
        elif op_name(n) in _SPATIAL and n.args[0] is prev and _val(prev).dim() == 4:
            pass  # replayed as: each channel's codes, over the new positions
        elif op_name(n) not in _SHAPING:
            return None
        seen.add(n)
    shape = _val(start).shape
    d = int(shape[within])
    codes = _output_codes(shape, heads, axis, within)
    got = _replay(start, codes, seen, order).get(x)
    layout = _channel_layout(got, p.channel_dim, heads, d) if p.width == heads * d else None
    if layout is None:
        return None
    p.heads = layout
    if side is not None and side[1] is None:
        p.residual = (side[0], _replay(start, codes, seen, order).get(side[-1]))
    elif side is not None:
        env = _replay(start, codes, seen, order)
        found = _side_codes(side, env.get(side[-1]))
        if found is None:
            return None
        p.side = found
    p.activated = act is not None
    p.sub_norm = _sub_norm(norm, names) if norm is not None else None
    return p


def _channel_layout(got: Any, dim: int, heads: int, d: int) -> list[tuple[int, ...]] | None:
    """Per head, the channels (along ``dim``) that hold its d entries, read from replayed
    ``_output_codes``; None unless every position holds all heads * d codes once, in one order."""
    width = heads * d
    if not isinstance(got, torch.Tensor) or got.dim() == 0 or got.shape[dim] != width:
        return None
    rows = got.movedim(dim, -1).reshape(-1, width)
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        return None
    where = {int(code): c for c, code in enumerate(rows[0].tolist())}
    if sorted(where) != list(range(width)) or not torch.equal(rows[0], rows[0].round()):
        return None
    return [tuple(where[j * d + k] for k in range(d)) for j in range(heads)]


def _merge(
    start: fx.Node, heads: int, names: dict[fx.Node, str], order: dict, axis: int
) -> Merge | None:
    """An attention output that no projection reads (BoTNet, HaloNet: it goes on to a BatchNorm):
    the first node, along single users through shaping ops, whose one dim holds every head's
    channels (each position the same layout, read by replaying ``_output_codes``)."""
    chain, n = [], start
    while True:
        users = list(n.users)
        if len(users) != 1 or op_name(users[0]) not in _SHAPING or users[0].args[:1] != (n,):
            return None
        n = users[0]
        chain.append(n)
        shape, val = _val(start).shape, _val(n)
        if not isinstance(val, torch.Tensor):
            return None
        codes = _output_codes(shape, heads, axis, -1)
        got = _replay(start, codes, {start, *chain}, order).get(n)
        for dim in range(val.dim()):
            layout = _channel_layout(got, dim, heads, int(shape[-1]))
            if layout is not None:
                rest, nodes = _downstream(n, dim, names) or (None, ())
                return Merge(n, dim - val.dim(), tuple(layout), rest, nodes)


#: Per-channel ops between a merged attention output and the next projection that a head
#: permutation passes (its BatchNorm vectors permuted with the heads).
_POOLS = {f"{a}avg_pool{k}d": k for a in ("", "adaptive_") for k in (1, 2, 3)}
_PER_CHANNEL = _OUT_ACTIVATIONS | IDENTITY | {"dropout"} | set(_POOLS)


def _downstream(n: fx.Node, dim: int, names: dict[fx.Node, str]) -> tuple | None:
    """The chain from the merged output ``n`` (channels on ``dim``) along single users through
    elementwise activations, average pooling and eval-mode BatchNorms to an ungrouped
    convolution (or a Linear over the last dim) that reads it: ``Merge.downstream``, or None
    for anything else (then no head permutation is claimed: a channel
    mixed, normalised across heads, or read twice)."""
    v = _val(n)
    nchw = v.dim() >= 3 and dim == 1  # channels first: (B, C, L), (B, C, H, W), ...
    if not nchw and dim != v.dim() - 1:
        return None
    norms: list[tuple[str, int, str]] = []
    chain: list[str] = []
    while True:
        users = list(n.users)
        if len(users) != 1 or users[0].args[:1] != (n,):
            return None
        u = users[0]
        name = op_name(u)
        if name in _BATCH_NORMS and nchw:
            if not _eval_norm(u, names, int(v.shape[1])):
                return None
            norms += [(names[a], 0, u.name) for a in u.args[1:5] if isinstance(a, fx.Node)]
        elif name in _TRANSPOSED_CONVS and nchw:
            weight = _transposed_weight(u, names, int(v.shape[dim]))
            if weight is None:
                return None
            # (in, out, *kernel): input channel c is row c, so the heads move its dim 0
            return (*norms, (weight, 0, u.name)), tuple(chain)
        elif name in _PROJECTIONS:
            p = _plain_projection(u, names)
            if (
                p is None
                or p.width != int(v.shape[dim])
                or (name == "addmm")
                or nchw != (name in _CONVS)
            ):
                return None
            return (*norms, (p.weight, 1, u.name)), tuple(chain)
        elif name not in _PER_CHANNEL or (
            name in _POOLS and (not nchw or v.dim() != _POOLS[name] + 2)
        ):
            return None
        elif len(u.all_input_nodes) != 1:
            return None  # an op that reads a second tensor (a per-channel operand)
        n = u  # (a BatchNorm too: its vectors are recorded above)
        chain.append(u.name)


#: Transposed convolutions as the projection after merged heads (LowFormer's fused output
#: projection ``ConvTranspose2d``), as ATen calls them.
_TRANSPOSED_CONVS = {f"conv_transpose{k}d" for k in (1, 2, 3)}


def _transposed_weight(n: fx.Node, names: dict[fx.Node, str], channels: int) -> str | None:
    """The weight's name of an ungrouped transposed convolution ``n`` (weight (in, out,
    *kernel), args ``(x, weight, bias, stride, padding, output_padding, groups, dilation)``)
    over ``channels`` input channels; None for a grouped one, a computed weight or another
    width."""
    groups = (*n.args, *[1] * 7)[6]
    w = n.args[1] if len(n.args) > 1 else None
    if n.kwargs or groups != 1 or w not in names or not isinstance(_val(w), torch.Tensor):
        return None
    return names[w] if int(_val(w).shape[0]) == channels else None


def _output_codes(shape: torch.Size, heads: int, axis: int, within: int) -> torch.Tensor:
    """A tensor shaped like an attention output whose entry holds ``head * d + k`` for entry k
    of head ``head`` (d entries per head along ``within``): heads on ``axis`` of a >= 4-d output,
    else folded batch-major into dim 0 (``(B * H, ..., T, Dv)``)."""
    d = int(shape[within])
    if len(shape) >= 4 and axis != 0:
        at = [1] * len(shape)
        at[axis] = int(shape[axis])
        head = torch.arange(int(shape[axis])).view(at)
    else:
        head = (torch.arange(int(shape[0])) % heads).view(-1, *[1] * (len(shape) - 1))
    entry = torch.arange(d).view(d, *[1] * (-within - 1))
    return (head * d + entry).to(torch.float64).expand(shape).contiguous()


def _other_operand(add: fx.Node, chain: fx.Node) -> fx.Node | None:
    """The operand of ``add`` (two tensors, no alpha) that is not ``chain``."""
    if len(add.args) != 2 or add.kwargs or not all(isinstance(a, fx.Node) for a in add.args):
        return None
    a, b = add.args
    return b if a is chain and b is not chain else a if b is chain and a is not chain else None


def _side_branch(n: fx.Node, names: dict[fx.Node, str]) -> tuple | None:
    """A per-channel function of a (B, C, ...) tensor added to the attention output
    (EfficientFormerV2's ``v_local``: a depthwise conv and an eval BatchNorm of v's projection):
    ``(start, params)`` with ``params`` the ``(name, is_param)`` of every tensor indexed by
    channel on its dim 0 (conv weight and bias, norm weight, bias and running statistics), or
    None when an op on the way may mix channels or reads a tensor that is not a parameter or
    buffer. Each op maps channel c to channel c alone, so a permutation of v's channels commutes
    with the branch once these tensors are permuted alike (and nothing larger: the kernel and
    the norm's affine map are per channel, not per head)."""
    params: list[str] = []
    while isinstance(n, fx.Node) and n.op == "call_function" and len(n.users) == 1:
        name = op_name(n)
        if name in IDENTITY:
            n = n.args[0]
            continue
        if name in _BATCH_NORMS:
            if not _eval_norm(n, names, int(_val(n.args[0]).shape[1])):
                return None
            params += [names[a] for a in n.args[1:5] if isinstance(a, fx.Node)]
            n = n.args[0]
            continue
        if name not in ("conv1d", "conv2d", "conv3d") or n.kwargs:
            break
        w, x = _val(n.args[1]), _val(n.args[0])
        groups = (*n.args, *[1] * 7)[6]
        channels = int(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() >= 3 else -1
        if n.args[1] not in names or groups != channels or tuple(w.shape[:2]) != (channels, 1):
            return None  # not depthwise: a channel would read its neighbours
        bias = n.args[2] if len(n.args) > 2 else None
        if bias is not None and bias not in names:
            return None
        params += [names[a] for a in (n.args[1], bias) if a is not None]
        n = n.args[0]
    else:
        if not isinstance(n, fx.Node) or n.op != "call_function":
            return None
    return (n, tuple(params)) if params else None


def _side_codes(side: tuple, attn: Any) -> tuple | None:
    """``Projection.side`` from a side branch ``(start, params, add, chain)`` and the codes
    (``head * d + entry``) of the attention output at the add: per code, the channel of
    ``start`` (the branch keeps channels in place on dim 1) added to it there; None unless each
    code meets one channel everywhere."""
    start, params, add, _ = side
    out = _val(add)
    if not isinstance(attn, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    if attn.shape != out.shape or out.dim() < 3 or _val(start).shape[1] != out.shape[1]:
        return None
    at = [1] * out.dim()
    at[1] = -1
    chan = torch.arange(out.shape[1], dtype=torch.float64).view(at).expand(out.shape)
    pairs = {(int(a), int(c)) for a, c in zip(attn.flatten().tolist(), chan.flatten().tolist(),
                                               strict=True)}  # fmt: skip
    where = dict(pairs)
    if len(where) != len(pairs):
        return None  # one code added to two channels
    return start, params, where


def _side_reads_v(side: tuple, v: Projection, heads: int, kv_heads: int, names: dict) -> bool:
    """Does the side branch start at v's projection output (a convolution's, or its eval
    BatchNorm's: ``Projection.norm``), and is entry e of head h added to v's channel of that
    entry? Then every map of v's channels moves the branch's input and output alike."""
    start, _, where = side
    if kv_heads != heads or v.channel_dim != 1:
        return False
    if start is not v.node:
        stats = tuple(names.get(a) if isinstance(a, fx.Node) else None for a in start.args[1:5])
        if op_name(start) not in _BATCH_NORMS or start.args[0] is not v.node or stats != v.norm:
            return False
    d = len(v.heads[0])
    return all(
        where.get(h * d + e) == c for h, row in enumerate(v.heads) for e, c in enumerate(row)
    )


def _sub_norm(n: fx.Node, names: dict[fx.Node, str]) -> tuple[str | None, str | None] | None:
    """(weight, bias) of a LayerNorm over the last dim alone whose affine tensors (if any) are
    parameters, else None."""
    shape, v = n.args[1], _val(n.args[0])
    affine = [n.args[k] if len(n.args) > k else None for k in (2, 3)]
    if not isinstance(v, torch.Tensor) or list(shape) != [int(v.shape[-1])]:
        return None
    if any(a is not None and a not in names for a in affine):
        return None
    return tuple(names.get(a) if a is not None else None for a in affine)


def _written_out(mm: fx.Node) -> tuple | None:
    """``softmax(q @ k^T * c + mask, -1) @ v`` ending at ``mm``: (q, k, v, masks, whether ``k``
    is k^T itself (made by a permute), the talking-heads Linears) or None. Views that keep the last three dims (H, T, S) may sit between the terms (Swin adds its shifted-window
    mask to the scores viewed as (B, windows, H, T, S)): every term's dim -3 is then the head."""
    pv = _product(mm, "pv")
    if pv is None:
        return None
    p, v, _ = pv
    mixes = []
    while isinstance(p, fx.Node) and op_name(p) in IDENTITY:
        p = p.args[0]
    if _head_mix(p) is not None:  # CaiT's talking heads mix the probabilities (proj_w) ...
        p, mix = _head_mix(p)
        mixes.append(mix)
        while isinstance(p, fx.Node) and op_name(p) in IDENTITY:
            p = p.args[0]
    if not isinstance(p, fx.Node) or op_name(p) not in ("softmax", "_softmax"):
        return None
    if p.args[1] not in (-1, _val(p).dim() - 1):
        return None
    s, masks, rels = p.args[0], [], []
    if _head_mix(s) is not None:  # ... and the scores (proj_l)
        s, mix = _head_mix(s)
        mixes.append(mix)
    copied, split = None, False
    while isinstance(s, fx.Node) and (op_name(s) in _SCORES or _whole_copy(s)):
        if _whole_copy(s):  # MViTv2's ``attn[:, :, 0:, 0:] = ...``: every entry written over
            copied, s = s.args[0], s.args[1]
        elif _split_view(s) and not split:  # (B, H, T, S) viewed as (B, H, qh, qw, kh, kw) ...
            s, split = s.args[0], True
        elif op_name(s) == "add" and split and _rel_term(s.args[1]) is not None:
            rels.append(s.args[1])  # ... with q's decomposed relative positions added
            s = s.args[0]
        elif split and op_name(s) in _VIEWS and _split_view(s, back=True):
            s, split = s.args[0], None  # the view back: ends the section
        elif split:
            return None  # any other term in the split section: its head dim is not -3
        elif op_name(s) in IDENTITY or _scalar_scale(s):
            s = s.args[0]
        elif op_name(s) in ("mul", "div") and _factor(s) is not None:
            s, factor = _factor(s)
            masks.append(factor)  # checked like a mask: same for every head, or a head table
        elif op_name(s) in ("add", "sub", "masked_fill"):
            s, mask = s.args[0], s.args[1]
            if isinstance(mask, fx.Node):
                masks.append(mask)
        elif op_name(s) in _VIEWS and _keeps_heads(s):
            s = s.args[0]
        else:
            return None
    qk = _product(s, "qk") if isinstance(s, fx.Node) else None
    if qk is None or split or (copied is not None and copied is not s) or (rels and mixes):
        return None  # (a copy over a tensor other than the product: not the scores)
    # (a mask sits below every mix: head h's bias row is added to head h's scores before the
    # mix reads them, so a head permutation moves the rows and conjugates the mix)
    q, k, k_t = qk
    return q, k, v, tuple(masks), k_t, tuple(mixes), tuple(rels)


def _whole_copy(n: fx.Node) -> bool:
    """``copy_(dst, src)`` that writes every entry of ``dst`` (same shape, no broadcast)."""
    if not str(n.target).startswith("aten.copy_.") or len(n.args) != 2 or n.kwargs:
        return False
    a, b = (_val(x) for x in n.args)
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def _split_view(n: fx.Node, back: bool = False) -> bool:
    """A view of (B, H, T, S) scores as (B, H, qh, qw, kh, kw) with qh * qw = T, kh * kw = S
    (``back``: the view from 4-d to 6-d, else from 6-d back to 4-d): B and H stay dims 0, 1."""
    if op_name(n) not in _VIEWS:
        return False
    a, b = _val(n.args[0]), _val(n)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return False
    four, six = (a, b) if back else (b, a)
    return (
        four.dim() == 4
        and six.dim() == 6
        and four.shape[:2] == six.shape[:2]
        and six.shape[2] * six.shape[3] == four.shape[2]
        and six.shape[4] * six.shape[5] == four.shape[3]
    )


def _rel_term(n: Any) -> tuple[fx.Node, fx.Node, fx.Node, str] | None:
    """``einsum(eq, [x, index(table, [idx])]).unsqueeze(...)`` (MViTv2's decomposed relative
    positions): (the einsum, x, the table's get_attr, eq) when ``eq`` contracts exactly one
    letter, the last of x and of the gathered table, every other letter of both is kept, x's
    dim 1 (the heads, checked in ``_match``) is the output's dim 1 and the table has no letter
    of it, and the index is a fixed tensor over the table's dim 0. Else None."""
    mask = _val(n) if isinstance(n, fx.Node) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 6:
        return None
    while isinstance(n, fx.Node) and op_name(n) == "unsqueeze" and len(n.users) == 1:
        k = _val(n).dim()
        if n.args[1] % k < 2:
            return None  # a dim inserted before the heads: dim 1 would no longer be q's heads
        n = n.args[0]
    if not isinstance(n, fx.Node) or op_name(n) != "einsum" or len(n.users) != 1 or n.kwargs:
        return None
    eq, operands = n.args[0], n.args[1]
    if not isinstance(eq, str) or len(operands) != 2 or "." in eq or eq.count("->") != 1:
        return None
    ins, out = eq.replace(" ", "").split("->")
    if ins.count(",") != 1:
        return None
    xs, ts = ins.split(",")
    if any(len(set(w)) != len(w) for w in (xs, ts, out)) or len(xs) < 3 or len(ts) < 2:
        return None
    c = xs[-1]
    if ts[-1] != c or c in out or (set(xs) | set(ts)) - {c} != set(out) or out[1] != xs[1]:
        return None
    if xs[1] in ts:
        return None  # a table per head: it would have to move with the heads
    x, t = operands
    while isinstance(t, fx.Node) and op_name(t) in IDENTITY:
        t = t.args[0]
    if not isinstance(t, fx.Node) or op_name(t) != "index" or len(t.args) != 2:
        return None
    table, idx = t.args
    if not isinstance(table, fx.Node) or table.op != "get_attr" or len(idx) != 1:
        return None
    if not isinstance(idx[0], fx.Node) or any(
        m.op in ("placeholder", "get_attr") for m in ancestors(idx[0])
    ):
        return None  # an index read from the input or a parameter: not a fixed gather
    tv = _val(table)
    if not isinstance(tv, torch.Tensor) or tv.dim() != 2 or not isinstance(x, fx.Node):
        return None
    return n, x, table, eq


def _product(n: fx.Node, form: str) -> tuple[fx.Node, fx.Node, bool] | None:
    """``q @ k^T`` (``form="qk"``: returns (q, k, whether ``k`` is k^T itself, made by one
    permute: LeViT)) or ``p @ v`` (``"pv"``: (p, v, False)), as a ``matmul`` / ``bmm`` or an
    ``einsum`` over batch letters (torchvision's MaxViT: ``"B G H I D, B G H J D -> B G H I J"``)."""
    name = op_name(n)
    if name in ("matmul", "bmm") and len(n.args) == 2 and not n.kwargs:
        a, b = n.args
        if form == "pv":
            return a, b, False
        while op_name(b) in ("contiguous", "clone") and not b.kwargs:
            b = b.args[0]  # GCViT: ``q @ k.transpose(-2, -1).contiguous()``
        nd = _val(b).dim() if isinstance(_val(b), torch.Tensor) else 0
        if op_name(b) == "transpose" and {x % nd for x in b.args[1:3]} == {nd - 2, nd - 1}:
            return a, b.args[0], False
        if nd >= 3:  # k^T by a permute (LeViT) or a reshape (EfficientFormerV2's (B, H, D, N)):
            return a, b, True  # ``_match`` reads its channel codes transposed back
        return None
    if name != "einsum" or len(n.args) != 2 or n.kwargs or len(n.args[1]) != 2:
        return None
    eq = n.args[0].replace(" ", "")
    if "." in eq or "->" not in eq or eq.count(",") != 1:
        return None
    (x, y), out = eq.split("->")[0].split(","), eq.split("->")[1]
    batch = out[:-2]
    i, j = out[-2:]
    if len(set(out)) != len(out) or x[:-2] != batch or y[:-2] != batch:
        return None
    if form == "qk":  # (..., i, d), (..., j, d) -> (..., i, j)
        ok = x[-2] == i and y[-2] == j and x[-1] == y[-1] and x[-1] not in out
    else:  # (..., i, j), (..., j, d) -> (..., i, d): here out[-1] is d
        ok = x[-2] == i and x[-1] == y[-2] and y[-1] == j and x[-1] not in out
    return (
        (n.args[1][0], n.args[1][1], False)
        if ok and all(isinstance(a, fx.Node) for a in n.args[1])
        else None
    )


def _factor(n: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``scores * f`` (either order) or ``scores / f`` with ``f`` computed from parameters and
    buffers only (Swin V2's ``logit_scale.clamp(max=log 100).exp()``): ``(scores, f)``."""
    if len(n.args) != 2 or n.kwargs or not all(isinstance(a, fx.Node) for a in n.args):
        return None
    a, b = n.args
    if _fixed(b):
        return a, b
    if op_name(n) == "mul" and _fixed(a):
        return b, a
    return None


def _fixed(n: fx.Node) -> bool:
    """Is ``n`` computed without the model input (from parameters, buffers, constants)?"""
    seen, stack = set(), [n]
    while stack:
        m = stack.pop()
        if m.op == "placeholder":
            return False
        if m not in seen:
            seen.add(m)
            stack.extend(m.all_input_nodes)
    return True


def _head_mix(n: Any) -> tuple[fx.Node, fx.Node] | None:
    """``linear(s.permute(0, 2, 3, 1), W, b).permute(0, 3, 1, 2)``: a Linear over the heads of
    (B, H, T, S) scores (CaiT's talking heads), or ``conv2d(s, W, b)`` with a 1 x 1 kernel, no
    stride, padding or dilation and one group (EfficientFormerV2's ``talking_head1/2``: the heads
    are the channels): (s, the linear or conv node) or None. A grouped conv (block-diagonal W)
    is not a mix that every head permutation conjugates: None."""
    if isinstance(n, fx.Node) and op_name(n) == "conv2d" and len(n.users) == 1 and not n.kwargs:
        w, v = _val(n.args[1]) if len(n.args) > 1 else None, _val(n.args[0])
        options = (*n.args[3:], *[None] * 4)[:4]
        plain = [list(x) if isinstance(x, (list, tuple)) else x for x in options]
        if (
            isinstance(w, torch.Tensor)
            and isinstance(v, torch.Tensor)
            and v.dim() == 4
            and w.dim() == 4
            and tuple(w.shape[1:]) == (int(v.shape[1]), 1, 1)
            and plain[0] in (None, [1, 1], [1])
            and plain[1] in (None, [0, 0], [0], 0)
            and plain[2] in (None, [1, 1], [1])
            and plain[3] in (None, 1)
        ):
            return n.args[0], n
        return None
    if not isinstance(n, fx.Node) or op_name(n) != "permute" or list(n.args[1]) != [0, 3, 1, 2]:
        return None
    lin = n.args[0]
    if op_name(lin) != "linear" or len(lin.users) != 1 or len(n.users) != 1:
        return None
    inner = lin.args[0]
    if op_name(inner) != "permute" or list(inner.args[1]) != [0, 2, 3, 1] or len(inner.users) != 1:
        return None
    return inner.args[0], lin


def _keeps_heads(n: fx.Node) -> bool:
    a, b = _val(n.args[0]), _val(n)
    return all(isinstance(t, torch.Tensor) and t.dim() >= 3 for t in (a, b)) and (
        a.shape[-3:] == b.shape[-3:]
    )


def ancestors(n: fx.Node) -> set[fx.Node]:
    """``n`` and every node it is computed from."""
    seen, stack = set(), [n]
    while stack:
        m = stack.pop()
        if m not in seen:
            seen.add(m)
            stack.extend(m.all_input_nodes)
    return seen


def _escapes(out: fx.Node, sources: set[fx.Node]) -> bool:
    """Is a tensor computed from ``sources`` (the projections) read by anything that does not
    lead to ``out`` (the attention output)? Then moving the projections' channels would change
    that reader too, which no site accounts for."""
    before = ancestors(out) - {out}
    stack, seen = list(sources), set()
    while stack:
        n = stack.pop()
        if n in seen or n not in before:
            continue
        seen.add(n)
        if any(u is not out and u not in before for u in n.users):
            return True
        stack.extend(n.users)
    return False


def _reads_any(node: fx.Node, targets: set[fx.Node]) -> bool:
    """Does ``node`` depend on any of ``targets``?"""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in targets:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return False


#: Ops on relative logits that only move entries (a zero pad writes zeros): with them alone the
#: logits of each query row can be read off replayed codes (``_rel_logits``).
_LOGIT_MOVES = _VIEWS | IDENTITY | {"flatten", "unflatten", "transpose", "permute", "expand"}
_LOGIT_MOVES |= {"slice", "select", "unsqueeze", "squeeze", "contiguous", "clone"}


def _rel_logits(
    mask: fx.Node, q: fx.Node, scores: tuple[int, ...], names: dict[fx.Node, str], order: dict
) -> RelLogits | None:
    """A bias on the scores computed from the queries ``q`` (..., T, D) by relative position
    tables (BoTNet's and HaloNet's ``PosEmbedRel``: ``rel_logits_1d``), or None. What is proven:

    - the mask reads the model input only through ``q``, and ``q`` only through products
      ``q' @ R^T`` (``products``) where ``q'`` is ``q`` moved by shaping ops and number scales
      (each row of ``q'`` one row of ``q``, its D entries in order: replayed codes) and ``R`` a
      2-d parameter (T_R, D) transposed, read nowhere else. For any M in GL(D), ``q -> q M^T``
      with ``R -> R M^-1`` keeps every entry of every product (``(M q_i) . (M^-T r_t) = q_i .
      r_t``), hence the mask, whatever happens after the products;
    - ``per_head``: the ops after the products only move entries, pad with zeros and add two
      such tensors, and the replayed codes show that the mask entry at (lead, i, j) (lead: the
      dims before (T, S), batch and heads) reads a product entry of a row of ``q`` with the same
      lead, in a pattern the same for every lead. Permuting the heads of ``q`` then permutes
      the mask's heads alike. (Per-head tables would differ between heads: refused above.)

    Nothing between the products and the mask may be read outside the mask."""
    above = ancestors(mask)
    if q not in above:
        return None
    down: set[fx.Node] = {q}
    for m in sorted(above, key=order.__getitem__):
        if m is not q and any(a in down for a in m.all_input_nodes):
            down.add(m)
    live = _live(above, order)
    if any(a not in down and a in live for m in down - {q} for a in m.all_input_nodes):
        return None  # the mask reads the input past ``q`` (k, v, the stream)
    products = [
        m for m in down if op_name(m) == "matmul" and m.args[0] in down and m.args[1] not in down
    ]
    tables = [_rel_table(m.args[1], names) for m in products]
    if not products or any(t is None for t in tables):
        return None
    feeding = set().union(*(ancestors(p.args[0]) for p in products))
    pre = {q} | (down & feeding)
    if any(op_name(m) not in _SHAPING and not _scalar_scale(m) for m in pre - {q}):
        return None
    if any(a in pre - {q} or a is q for m in down - pre - set(products)
           for a in m.all_input_nodes):  # fmt: skip
        return None  # the bias reads q past the products
    inner = (down - {q, mask}) | {m.args[1] for m in products}
    if any(u not in above for m in inner for u in m.users):
        return None  # a product or a table read elsewhere too
    tables_read = {m.args[1].args[0] for m in products}
    if any(u not in above for t in tables_read for u in t.users):
        return None  # a table shared with another block
    qv = _val(q)
    dim = int(qv.shape[-1])
    env = _replay(q, torch.arange(qv.numel(), dtype=torch.float64).view(qv.shape), pre, order)
    for m in products:
        left = env.get(m.args[0])
        if not isinstance(left, torch.Tensor) or left.shape != _val(m.args[0]).shape:
            return None
        ramp = torch.arange(dim, dtype=torch.float64).expand_as(left)
        if left.shape[-1] != dim or not torch.equal(left % dim, ramp):
            return None
        if not torch.equal(left - left[..., :1], ramp):
            return None  # a row of q' that is not one row of q
    post = down - pre - set(products)
    per_head = _moves_within_heads(mask, q, products, post, env, scores, order)
    names_ = tuple(dict.fromkeys(t for t in tables if t is not None))
    return RelLogits(mask, tuple(products), names_, per_head)


def _live(nodes: set[fx.Node], order: dict) -> set[fx.Node]:
    """The nodes of ``nodes`` (closed under inputs) computed from the model input (``_fixed``'s
    complement, for many nodes at once)."""
    live: set[fx.Node] = set()
    for m in sorted(nodes, key=order.__getitem__):
        if m.op == "placeholder" or any(a in live for a in m.all_input_nodes):
            live.add(m)
    return live


def _rel_table(b: Any, names: dict[fx.Node, str]) -> str | None:
    """``R^T`` of a 2-d parameter ``R`` (T, D): the parameter's name, or None."""
    if not isinstance(b, fx.Node) or op_name(b) not in ("transpose", "t", "permute"):
        return None
    table = b.args[0]
    v = _val(table)
    if table not in names or not isinstance(v, torch.Tensor) or v.dim() != 2:
        return None
    if op_name(b) == "permute" and [d % 2 for d in b.args[1]] != [1, 0]:
        return None
    if op_name(b) == "transpose" and {d % 2 for d in b.args[1:3]} != {0, 1}:
        return None
    return names[table]


def _moves_within_heads(
    mask: fx.Node, q: fx.Node, products: list, post: set, env: dict, scores: tuple, order: dict
) -> bool:
    """``RelLogits.per_head``: replay the ops after the products on codes, one product at a time
    (the others zero): a product entry of q's row r (of ``rows`` per lead) and table row t gets
    ``r * T_R + t + 1``, zeros stay zeros, two addends may not both hold a code at one entry."""
    for m in post:
        name = op_name(m)
        if name in _PADS:
            if not _zero_pad(m) or (*m.args[2:], "constant")[0] != "constant":
                return False
        elif name == "add":
            if len(m.args) != 2 or m.kwargs or not all(a in post | set(products) for a in m.args):
                return False
        elif name not in _LOGIT_MOVES:
            return False
    qv = _val(q)
    t, d = int(qv.shape[-2]), int(qv.shape[-1])
    lead = qv.numel() // (t * d)
    total = None
    for m in products:
        rows = env[m.args[0]][..., 0] // d  # the row of q (lead * T + i) of each row of q'
        width = int(_val(m).shape[-1])
        codes = rows.unsqueeze(-1) * width + torch.arange(width) + 1
        got = _replay_logits(m, codes, [p for p in products if p is not m], post, mask, order)
        if got is None or tuple(scores[:-2]) != tuple(qv.shape[:-2]):
            return False
        try:
            got = torch.broadcast_to(got, scores).reshape(lead, t, -1)
        except RuntimeError:
            return False
        at = torch.arange(lead, dtype=torch.float64).view(-1, 1, 1)
        held = got > 0
        if not torch.equal((got - 1) // (width * t) * held, at * held):
            return False  # an entry reads a query row of another lead (another head)
        rel = torch.where(held, got - at * (t * width), 0.0)
        if not torch.equal(rel, rel[:1].expand_as(rel)):
            return False  # a pattern that differs between heads
        total = held if total is None else total | held
    return total is not None


def _replay_logits(
    start: fx.Node, codes: torch.Tensor, others: list, post: set, mask: fx.Node, order: dict
) -> torch.Tensor | None:
    """The ops of ``post`` run on ``codes`` in place of ``start`` (``others`` zero); None when
    two codes meet in one entry."""
    env: dict[fx.Node, Any] = {start: codes}
    env.update({p: torch.zeros(_val(p).shape, dtype=torch.float64) for p in others})
    for m in sorted(post, key=order.__getitem__):
        try:
            args = fx.node.map_arg(m.args, env.__getitem__)
            kwargs = fx.node.map_arg(m.kwargs, env.__getitem__)
            if op_name(m) in IDENTITY:  # casts would round the codes: they move nothing
                env[m] = args[0]
                continue
            if op_name(m) == "add" and bool(((args[0] != 0) & (args[1] != 0)).any()):
                return None
            env[m] = m.target(*args, **kwargs)
        except (KeyError, RuntimeError, TypeError, IndexError):
            return None
    got = env.get(mask)
    return got if isinstance(got, torch.Tensor) else None


def find_attention(graph: fx.Graph) -> list[AttentionBlock]:
    """Every attention block of ``graph`` whose projections and head layout this module reads."""
    names = {n: str(n.target) for n in graph.nodes if n.op == "get_attr"}
    order = {n: i for i, n in enumerate(graph.nodes)}
    blocks = []
    for n in graph.nodes:
        if n.op != "call_function":
            continue
        if op_name(n) == "scaled_dot_product_attention":
            mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            qkv = (*n.args[:3], (mask,) if isinstance(mask, fx.Node) else (), False, (), ())
        else:
            qkv = _written_out(n)
            if qkv is None:
                continue
        block = _match(n, qkv, names, order) or _match_channels(n, qkv, names, order)
        if block is not None:
            blocks.append(block)
    return blocks


def _match(sdpa: fx.Node, qkv: tuple, names: dict, order: dict) -> AttentionBlock | None:
    q_node, k_node, v_node, masks, k_t, mix_nodes, rel_nodes = qkv
    envs: dict[str, tuple[dict, set]] = {}
    vals = [_val(a) for a in (q_node, k_node, v_node)]
    if any(not isinstance(t, torch.Tensor) or t.dim() < 3 for t in vals):
        return None
    if k_t:  # k^T given by a permute (``_written_out``): its codes are read transposed back
        vals[1] = vals[1].transpose(-1, -2)
    found = [_back(a, names) for a in (q_node, k_node, v_node)]
    if any(f is None for f in found):
        return None
    projections, normalized = [], set()
    axis = _head_axis(found[0], q_node, vals[0], order)
    if axis is None or any(t.dim() != vals[0].dim() for t in vals):
        return None
    for key, node, val, (p, seen, _, norms) in zip("qkv", (q_node, k_node, v_node), vals, found,
                                                  strict=True):  # fmt: skip
        codes = _channel_codes(p)
        env = _replay(p.node, codes, seen, order)
        got = env.get(node)
        if k_t and key == "k" and isinstance(got, torch.Tensor):
            got = got.transpose(-1, -2)  # k^T given by a permute: read back as k
        heads = _heads_of(got, val.shape, p.total, axis)
        if heads is None or not _whole(p.zeroed, heads) or not _within_pieces(p, heads):
            return None  # a head with zeroed and kept bias, or across two pieces of a cat bias
        if norms and not all(_per_head_norm(env.get(x), dim, heads) for _, x, dim in norms):
            return None  # normalised over tokens (XCiT) or across heads: no head map keeps it
        outside = _outside_operands(seen, env, {d for d, _, _ in norms})
        if outside is None or (key == "v" and outside):
            return None  # v mixed with a tensor from elsewhere: no v map leaves that in place
        if not all(_head_constant(env[n], _val(o), heads) for n, o in outside):
            return None  # q or k times a per-head tensor that no head permutation moves
        normalized |= {key} if norms else set()
        if p.pools and not all(_shared_entries(env.get(m.args[0]), m, heads) for m in p.pools):
            return None  # a pooling op whose channel e is not entry e of every head
        p.pool_params = tuple(t for m in p.pools for t in _pool_op(m, names) or ())
        p.heads = heads
        projections.append(p)
        envs[key] = (env, seen)
    out = _forward(sdpa, len(projections[0].heads), names, order, axis)
    merged = None
    if out is None:  # no output projection: the heads must meet again on one channel dim
        merged = _merge(sdpa, len(projections[0].heads), names, order, axis)
        if merged is None or len(projections[1].heads) != len(projections[0].heads):
            return None
    q, k, v = projections
    tables = _rel_tables(rel_nodes, q, envs["q"], order)
    if tables is None:
        return None  # a relative-position term that does not read q's entries as it should
    if merged is not None and (tables or any(p.pools for p in projections)):
        return None  # pooled heads without an output projection: not a layout read here
    if (
        out is not None
        and out.residual is not None
        and not _residual_reads_q(out.residual, q, envs["q"][0])
    ):
        return None  # added to the output: not q, entry for entry
    heads, head_dim, head_dim_v = len(q.heads), vals[0].shape[-1], vals[2].shape[-1]
    # GQA written with repeat_kv: k and v come with every query head; keep one per kv head
    k_rows, v_rows = k.heads, v.heads
    if len(k.heads) == heads and len(v.heads) == heads:
        k.heads, v.heads = list(dict.fromkeys(k.heads)), list(dict.fromkeys(v.heads))
    kv_heads = len(k.heads)
    n_out = len(out.heads) if out is not None else len(merged.channels)
    if not kv_heads or heads % kv_heads or len(v.heads) != kv_heads or n_out != heads:
        return None
    if (
        out is not None
        and out.side is not None
        and not _side_reads_v(out.side, v, heads, kv_heads, names)
    ):
        return None  # a branch added to the output that v's maps would not move alike
    rep = heads // kv_heads
    for rows, kept in ((k_rows, k.heads), (v_rows, v.heads)):
        if len(rows) == heads and any(rows[h] != kept[h // rep] for h in range(heads)):
            return None  # query heads do not read their kv heads in groups of rep
    used = [(id(p.node), c) for p in (q, k, v) for row in p.heads for c in row]
    if len(set(used)) != len(used):
        return None  # two slots read one channel: not a plain head layout
    rel, plain = [], []
    for mask in masks:  # a bias computed from q: relative position logits, else not a mask
        if not _reads_any(mask, {q.node, k.node, v.node}):
            plain.append(mask)
            continue
        scores = (*vals[0].shape[:-1], int(vals[1].shape[-2]))
        found_rel = _rel_logits(mask, q_node, scores, names, order)
        if found_rel is None:
            return None  # decomposed relative positions of another form, a bias from k or v
        rel.append(found_rel)
    masks = tuple(plain)
    if rel and tables:
        return None  # relative logits of both forms on one block: no rule reads them together
    if (merged is not None or rel or axis == 0) and _escapes(sdpa, {q.node, k.node, v.node}):
        return None
    mixes = []
    for lin in mix_nodes:  # talking heads: (H, H) weights (and (H,) biases) that are parameters
        w, b = lin.args[1], lin.args[2] if len(lin.args) > 2 else None
        shapes = [tuple(_val(a).shape) for a in (w, b) if isinstance(a, fx.Node)]
        if w not in names or (b is not None and b not in names) or shapes[0][:2] != (heads, heads):
            return None  # (a conv's (H, H, 1, 1) weight: ``_head_mix`` checked the kernel)
        mixes.append((names[w], names.get(b)))
    if mixes and kv_heads != heads:
        return None  # a mix over query heads that share kv heads: not one permutation of groups
    stack = sdpa.meta.get("nn_module_stack") or {}
    name = list(stack.values())[-1][0] if stack else sdpa.name
    rotary = found[0][2] or found[1][2]
    head_axis = axis - vals[0].dim() if vals[0].dim() >= 4 and axis != 0 else -vals[0].dim()
    # masks are read with heads on dim -3 (``head_tables``): with heads elsewhere (NesT) a mask
    # keeps the heads in place
    per_head = any(_per_head(mask, head_axis) for mask in masks) or bool(masks and head_axis != -3)
    return AttentionBlock(
        sdpa,
        name,
        q,
        k,
        v,
        out,
        heads,
        kv_heads,
        int(head_dim),
        int(head_dim_v),
        rotary,
        {q.node, k.node, v.node, *mix_nodes, *(m for r in rel for m in r.products)},
        not per_head,
        masks,
        normalized=frozenset(normalized),
        head_axis=head_axis,
        out_activation=out is not None and out.activated,
        mixes=tuple(mixes),
        decomposed_tables=tables,
        rel_logits=tuple(rel),
        merged=merged,
    )


def _match_channels(sdpa: fx.Node, qkv: tuple, names: dict, order: dict) -> AttentionBlock | None:
    """XCiT's cross-covariance attention (XCA): ``softmax(tau_h * q^ k^T) @ v`` with q, k, v of
    shape (B, H, D, N) (a head's D channels on dim -2, the N tokens on dim -1), q^ and k^ L2
    normalised over the tokens (``F.normalize(q, dim=-1)``: every normalised vector one channel
    of one sample) and a per-head factor ``tau`` on the scores (or on q^, timm's fused form).
    What this accepts between a projection and q, k or v: shaping ops, a split of a packed
    projection, number scales, one normalisation over the tokens (q and k; none on v) and, right
    after it, a factor computed from parameters alone that is the same for every channel pair
    of a head (its last two dims 1). Masks and factors on the scores must be of that form too.
    Anything else (a normalisation over channels, a per-channel temperature, a tensor from
    elsewhere): None, and the ordinary rules freeze what they do not follow."""
    q_node, k_node, v_node, masks, k_t, mix_nodes, rels = qkv
    vals = [_val(a) for a in (q_node, k_node, v_node)]
    if (
        k_t
        or mix_nodes
        or rels
        or any(not isinstance(t, torch.Tensor) or t.dim() != 4 for t in vals)
    ):
        return None
    if op_name(sdpa) == "scaled_dot_product_attention":
        causal = sdpa.args[5] if len(sdpa.args) > 5 else sdpa.kwargs.get("is_causal", False)
        if causal:
            return None  # a causal mask over the channels: no permutation of them keeps it
    found = [_back(a, names) for a in (q_node, k_node, v_node)]
    if any(f is None for f in found):
        return None
    factors = list(masks)
    projections = []
    for key, node, val, (p, seen, _, norms) in zip("qkv", (q_node, k_node, v_node), vals, found,
                                                  strict=True):  # fmt: skip
        if p.norm or p.pools or p.zeroed or p.bias_parts or len(norms) != (key != "v"):
            return None  # (v must not be normalised; q and k exactly once)
        divs = {d for d, _, _ in norms}
        if any(dim != -1 for _, _, dim in norms):
            return None  # normalised over the channels, not the tokens: not XCA
        odd = [
            n
            for n in seen
            if n.op == "call_function"
            and n is not p.node
            and n not in divs
            and n.target is not operator.getitem
            and op_name(n) not in _SHAPING | _SPLITS
            and not _scalar_scale(n)
        ]
        taus = {n: _tau(n, divs) for n in odd if _tau(n, divs) is not None}
        beside = set().union(*(ancestors(f) for f in taus.values()))  # the factors' own ops
        if (taus and key == "v") or any(n not in beside for n in odd if n not in taus):
            return None  # an op that may mix channels or reads a tensor from elsewhere
        factors += taus.values()
        codes = _channel_codes(p)
        env = _replay(p.node, codes, seen, order)
        heads = _channel_heads(env.get(node), val.shape, p.total)
        if heads is None or any(not _per_channel(env.get(x)) for _, x, _ in norms):
            return None
        p.heads = heads
        projections.append(p)
    q, k, v = projections
    heads = len(q.heads)
    if len(k.heads) != heads or len(v.heads) != heads:
        return None
    used = [(id(p.node), c) for p in (q, k, v) for row in p.heads for c in row]
    if len(set(used)) != len(used):
        return None  # two slots read one channel: not a plain head layout
    for f in factors:
        fv = _val(f)
        if not _fixed(f) or not isinstance(fv, torch.Tensor) or any(z != 1 for z in fv.shape[-2:]):
            return None  # a per-channel temperature or bias, or one computed from the input
    out = _forward(sdpa, heads, names, order, axis=1, within=-2)
    if out is None or len(out.heads) != heads or out.activated or out.sub_norm:
        return None
    stack = sdpa.meta.get("nn_module_stack") or {}
    return AttentionBlock(
        sdpa,
        list(stack.values())[-1][0] if stack else sdpa.name,
        q,
        k,
        v,
        out,
        heads,
        heads,
        int(vals[0].shape[-2]),
        int(vals[2].shape[-2]),
        False,
        {q.node, k.node, v.node},
        not any(_per_head(f) for f in factors),
        tuple(factors),
        normalized=frozenset("qk"),
        channels=True,
    )


def _tau(n: fx.Node, divs: set[fx.Node]) -> fx.Node | None:
    """``normalize(x) * f`` (either order), right after a normalisation in ``divs``: ``f``."""
    if op_name(n) != "mul" or len(n.args) != 2 or n.kwargs:
        return None
    a, b = n.args
    if a in divs and isinstance(b, fx.Node):
        return b
    return a if b in divs and isinstance(a, fx.Node) else None


def _channel_heads(codes: Any, shape: torch.Size, total: int) -> list[tuple[int, ...]] | None:
    """Per head, the projection channel of each of its D entries of a (B, H, D, N) tensor of
    channel codes (XCA's layout), or None unless every sample and token reads the same
    channels."""
    if not isinstance(codes, torch.Tensor) or codes.shape != shape or codes.dim() != 4:
        return None
    table = codes[..., 0]
    if not torch.equal(codes, table.unsqueeze(-1).expand_as(codes)):
        return None  # a token axis that also holds channels
    if not torch.equal(table, table[:1].expand_as(table)):
        return None
    table = table[0]
    if not torch.equal(table, table.round()) or table.min() < 0 or table.max() >= total:
        return None
    return [tuple(int(c) for c in row) for row in table.long()]


def _per_channel(codes: Any) -> bool:
    """Does every vector along the last dim of the channel ``codes`` hold one channel (then a
    per-channel positive scale divides out of its normalisation)?"""
    return isinstance(codes, torch.Tensor) and torch.equal(codes, codes[..., :1].expand_as(codes))


def _outside_operands(
    seen: set[fx.Node], env: dict, norms: set[fx.Node]
) -> list[tuple[fx.Node, fx.Node]] | None:
    """The elementwise ops on the way from a projection to q, k or v that also read a tensor
    from elsewhere (rotary's cos and sin, a parameter), as ``(op, operand)``; None when such an
    op could not be replayed."""
    out = []
    for n in seen:
        if n.op != "call_function" or n in norms or op_name(n) not in _ROTARY:
            continue
        if op_name(n) in _SHAPING or op_name(n) in _SPLITS or _scalar_scale(n):
            continue
        if not any(a in env for a in n.all_input_nodes):
            continue  # a table computed beside the path (DINOv3's rotary cat(sin, sin))
        others = [
            a for a in n.all_input_nodes if a not in env and isinstance(_val(a), torch.Tensor)
        ]
        if others and n not in env:
            return None
        out += [(n, a) for a in others]
    return out


def _head_constant(codes: Any, operand: Any, heads: list[tuple[int, ...]]) -> bool:
    """Is ``operand``, broadcast against the channel ``codes`` of the op's output, the same for
    every head (it has size 1 along every dim along which the codes change head)?"""
    if not isinstance(codes, torch.Tensor) or not isinstance(operand, torch.Tensor):
        return False
    head_of = {c: h for h, row in enumerate(heads) for c in row}
    ids = torch.tensor([head_of.get(int(c), -1 - int(c)) for c in codes.flatten().tolist()])
    ids = ids.view(codes.shape)
    if operand.dim() > ids.dim():
        return False
    for i in range(1, operand.dim() + 1):
        if operand.shape[-i] > 1 and not torch.equal(ids, ids.narrow(-i, 0, 1).expand_as(ids)):
            return False
    return True


def _within_pieces(p: Projection, heads: list[tuple[int, ...]]) -> bool:
    """Does every head read channels of one piece of ``p``'s computed bias (if it has one)?"""
    return all(len({_piece(p, c) for c in row}) == 1 for row in heads) if p.bias_parts else True


def _whole(zeroed: frozenset[int], heads: list[tuple[int, ...]]) -> bool:
    """Are the zeroed bias channels among ``heads`` none or all of them?"""
    used = {c for row in heads for c in row}
    return not (used & zeroed) or used <= zeroed


def _per_head_norm(codes: Any, dim: int, heads: list[tuple[int, ...]]) -> bool:
    """Does every vector that the normalisation divides by its norm (along ``dim`` of the channel
    ``codes``) hold exactly the channels of one head? Then a permutation of heads and an
    orthogonal map per head keep each norm."""
    if not isinstance(codes, torch.Tensor) or codes.dim() < 1:
        return False
    rows = codes.movedim(dim, -1).reshape(-1, codes.shape[dim])
    own = {tuple(sorted(row)) for row in heads}
    return all(tuple(sorted(r)) in own for r in {tuple(r) for r in rows.long().tolist()})


def _piece(p: Projection, c: int) -> int:
    """The index of the piece of ``p``'s computed bias that holds channel ``c``."""
    return next(i for i, (_, off, n) in enumerate(p.bias_parts) if off <= c < off + n)


def _per_head(mask: fx.Node, axis: int = -3) -> bool:
    """Can the mask differ between heads (its dim ``axis``, negative, is not broadcast)?"""
    v = _val(mask)
    return isinstance(v, torch.Tensor) and v.dim() >= -axis and v.shape[axis] > 1


def _head_axis(found: tuple, node: fx.Node, val: torch.Tensor, order: dict) -> int | None:
    """The dim of the (..., T, D) attention tensors that holds the heads: 1 (B, H, ..., T, D),
    else -3 as a positive dim (MaxViT's (B, grid, H, T, D)), whichever the query's channel
    codes fit; 1 for 3-d tensors (the (B * H, T, D) layout has no head dim); 0 for heads folded
    into the batch dim of a 4-d tensor (HaloNet's (B * H, blocks, T, D))."""
    if val.dim() < 4:
        return 1
    p, seen = found[0], found[1]
    codes = _channel_codes(p)
    got = _replay(p.node, codes, seen, order).get(node)
    for axis in (1, val.dim() - 3) if val.dim() >= 5 else (1, 0):
        heads = _heads_of(got, val.shape, p.total, axis)
        if heads is not None and len({c for row in heads for c in row}) == len(heads[0]) * len(
            heads
        ):
            return axis  # each head its own channels (a grid dim repeats them)
    return None if val.dim() >= 5 else 1
