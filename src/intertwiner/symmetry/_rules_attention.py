"""Rules for attention: the sites of each block that ``_attention.find_attention`` matched
(``<attn>.heads``, ``<attn>.qk<j>``, ``<attn>.vo<j>``; see there for the symmetries).

A per-head bias on the scores (relative position tables: BEiT, Swin; LeViT's and
EfficientFormer's attention biases) does not stop the head permutation when it is read from one
parameter by ops that only move entries (index by a fixed buffer, view, permute, expand, casts)
or map them one by one (``16 * sigmoid``): ``head_tables`` replays those ops on the index of each
slice of the table and, if head h reads slice c_h of one axis (a different slice per head), the
permutation of heads moves those slices with the heads. A head-constant addition (Swin's shifted
window mask, which is the same for every head) is peeled off first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from intertwiner.groups import ORTHOGONAL, PERMUTATION, POSITIVE_MONOMIAL, ActionKind, Mode
from intertwiner.symmetry._attention import AttentionBlock, Projection
from intertwiner.symmetry._attention import ancestors as _ancestors
from intertwiner.symmetry._forward import is_tensor_cache
from intertwiner.symmetry._regions import IDENTITY, op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._spaces import Info
from intertwiner.symmetry.spec import ActivationAxis

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner


@rule("scaled_dot_product_attention", always=True)
def sdpa(r: AtenRunner, n: fx.Node, value: Any) -> None:
    if n not in r.blocks:
        raise Frozen("an attention block whose projections or head layout differ")
    attention(r, r.blocks[n])


def attention(r: AtenRunner, b: AttentionBlock) -> None:
    """The sites of one attention block (its output node, SDPA or ``probs @ v``, is the hook)."""
    an, rep = r.an, b.heads // b.kv_heads
    for p in (b.q, b.k, b.v):
        for name, _, _ in p.bias_parts:
            if name not in an.params and bool(an.buffers[name].any()):
                raise Frozen(
                    f"the qkv bias of {b.name} is a cat of pieces, one of them {name!r}, a fixed "
                    "buffer that is not zero: moving the heads would need it moved; make it a "
                    "Parameter or zero to keep the heads' symmetries"
                )

    def on(sid: int, p: Projection, kind: ActionKind, channels: tuple[int, ...]) -> None:
        an.act_raw(sid, p.weight, p.out_axis, kind, p.total, channels=channels)
        for name, n_total, _, inner, chans in _bias_axes(an, p, p.total, 1, 1, channels) or ():
            an.act_raw(sid, name, 0, kind, n_total, inner=inner, channels=chans)
        normed(sid, p, kind, p.total, 1, 1, channels)

    def normed(sid: int, p: Projection, kind: ActionKind, n_total: int, outer: int, inner: int,
               channels: tuple[int, ...]) -> None:  # fmt: skip
        """The projection's BatchNorm (LeViT) moves with its channels: parameters and running
        statistics (the sites that reach it are permutations: a permutation commutes with
        a per-channel affine map once its vectors are permuted alike); so do the per-channel
        tensors of a branch from v added to the output (EfficientFormerV2's ``v_local``)."""
        side = b.out.side[1] if p is b.v and b.out is not None and b.out.side is not None else ()
        for name in (*p.norm, *side):
            if name is not None:
                an.act_raw(sid, name, 0, kind, n_total, outer=outer, inner=inner,
                           channels=channels, buffer=name not in an.params)  # fmt: skip

    def into_out(sid: int, kind: ActionKind, channels: tuple[int, ...], unit: int = 1) -> None:
        o = b.out  # its *input* axis (o.total counts its outputs: 448 for a 1024 -> 448 proj)
        n_in = an.shape_of(o.weight)[1 - o.out_axis]
        an.act_raw(sid, o.weight, 1 - o.out_axis, kind, n_in // unit, inner=unit,
                   channels=channels)  # fmt: skip

    def per_group(rows: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Query-head rows joined per kv group (rep heads each)."""
        return [sum(rows[j * rep : (j + 1) * rep], ()) for j in range(b.kv_heads)]

    # Per kv group j, its channels in q (rep heads), k, v and the output projection's input.
    groups = {"q": per_group(b.q.heads), "k": b.k.heads, "v": b.v.heads}
    units = _head_units(b, groups)  # (projection, blocks): what a head permutation moves
    merged = b.merged
    if merged is not None:  # no output projection: the chain after the merged heads
        width = len(merged.channels) * len(merged.channels[0])
        out_blocks = _head_blocks(per_group(list(merged.channels)), width)
        out_blocks = out_blocks if merged.downstream is not None else None
    else:
        out_blocks = _head_blocks(per_group(b.out.heads), b.out.width)
    tables = [] if b.heads_permutable else head_tables(r, b)
    if b.heads == 1:
        _single_head(r, b)
    if not all(rel.per_head for rel in b.rel_logits):
        tables = None  # relative logits not proven to move with their heads
    elif tables is None:
        _cached_tables(r, b)
    elif any(_tensor_cache(r, name) for name, _, _ in tables):
        for name, _, _ in tables:  # an eval forward may read the dict, not the table
            _freeze_table(r, name, f"{b.name} keeps its per-head bias in a dict of tensors "
                          f"({_tensor_cache(r, name)!r}) that its eval-mode forward may read instead "
                          f"of {name!r}: moving the heads would leave that bias in place")  # fmt: skip
        tables = None
    biases = None
    if out_blocks is not None and all(blocks is not None for _, blocks in units):
        biases = [_bias_axes(an, p, n, o, i, c) for p, (c, n, o, i) in units]
    if tables is not None and biases is not None and all(x is not None for x in biases):
        heads = an.new_site(b.kv_heads, name=f"{b.name}.heads", kind="attention_heads")
        an.sites[heads].family = PERMUTATION
        for (p, (channels, n_total, outer, inner)), bias in zip(units, biases, strict=True):
            an.act_raw(heads, p.weight, p.out_axis, ActionKind.A, n_total, outer=outer,
                       inner=inner, channels=channels)  # fmt: skip
            for name, n_t, o, i, chans in bias:
                an.act_raw(heads, name, 0, ActionKind.A, n_t, outer=o, inner=i, channels=chans)
            normed(heads, p, ActionKind.A, n_total, outer, inner, channels)
        channels, n_total, outer, inner = out_blocks
        if merged is not None:  # per-channel BatchNorm vectors, then the projection's columns
            *norms, (weight, axis, use) = merged.downstream
            for name, _, bn in norms:
                an.act_raw(heads, name, 0, ActionKind.A, n_total, outer=outer, inner=inner,
                           channels=channels, buffer=name not in an.params, use=bn)  # fmt: skip
            an.act_raw(heads, weight, axis, ActionKind.A_INV_T, n_total, outer=outer,
                       inner=inner, channels=channels, use=use)  # fmt: skip
            ax = ActivationAxis(merged.dim, n_total, outer, inner, channels, kind=ActionKind.P)
            for node in merged.chain:  # the activations on the way permute with the heads
                an.also_moved.setdefault(node, []).append((heads, ax))
        else:
            an.act_raw(heads, b.out.weight, 1 - b.out.out_axis, ActionKind.A_INV_T, n_total,
                       outer=outer, inner=inner, channels=channels)  # fmt: skip
        sub_norm = b.out.sub_norm if b.out is not None else None
        for name in sub_norm or ():  # the sub-LN's weight and bias move with the heads
            if name is not None:
                an.act_raw(heads, name, 0, ActionKind.A, n_total, outer=outer, inner=inner,
                           channels=channels)  # fmt: skip
        for name, axis, columns in tables:
            an.act_raw(heads, name, axis, ActionKind.A, an.shape_of(name)[axis], channels=columns)
        for weight, bias in b.mixes:  # talking heads: W <- P W P^-1, b <- P b
            an.act_raw(heads, weight, 0, ActionKind.A, b.heads)
            an.act_raw(heads, weight, 1, ActionKind.A_INV_T, b.heads)
            if bias is not None:
                an.act_raw(heads, bias, 0, ActionKind.A, b.heads)
    if b.channels:
        _channel_sites(r, b, on, into_out)
        return

    def qk_site(name: str, kv: range) -> int:
        """GL(head_dim) on q (A) of the query heads of kv groups ``kv`` and on their k (A^-T)."""
        qk = an.new_site(b.head_dim, name=name, kind="attention_qk")
        if b.q.norm or b.k.norm:  # GL would not commute with the per-channel BatchNorm
            an.sites[qk].family = PERMUTATION
        elif b.normalized & {"q", "k"}:  # cosine attention: only maps that keep norms
            an.sites[qk].family = ORTHOGONAL
        for j in kv:
            for h in range(j * rep, (j + 1) * rep):
                on(qk, b.q, ActionKind.A, b.q.heads[h])
            on(qk, b.k, ActionKind.A_INV_T, b.k.heads[j])
        return qk

    # ops shared by the heads on each head-dim entry (MViTv2's pooling): ``_shared_sites``
    shared_qk, shared_v = (
        (False, False) if merged is not None else _shared_sites(r, b, on, into_out)
    )
    # rotary embeddings rotate q and k per position: no GL(head_dim) on them. What survives
    # is smaller and not written: per rotation pair (2 dims, one frequency) q -> c R q,
    # k -> R k / c with R a plane rotation (it commutes with every position's rotation),
    # and swaps of pairs only between pairs of equal frequency.
    if b.rel_logits and not b.rotary and not shared_qk:
        # relative logits q_i . r_t with tables shared by every head (``_attention.
        # _rel_logits``): q -> M q, k -> M^-T k keeps q . k, and r -> M^-T r keeps q . r only
        # with one M for every head, the tables' columns moving by M^-T (a different M per
        # head would need a different table per head)
        qk = qk_site(f"{b.name}.qk", range(b.kv_heads))
        for table in dict.fromkeys(t for rel in b.rel_logits for t in rel.tables):
            an.act_raw(qk, table, 1, ActionKind.A_INV_T, b.head_dim)
    for j in range(b.kv_heads):
        if not b.rotary and not b.rel_logits and not shared_qk:  # q . k per head, whatever follows
            qk_site(f"{b.name}.qk{j}", range(j, j + 1))
        if shared_v or merged is not None:  # merged heads: their values below
            continue
        vo = an.new_site(b.head_dim_v, name=f"{b.name}.vo{j}", kind="attention_vo")
        if b.v.norm or b.out_activation or b.out.sub_norm or b.out.side:
            # a per-channel map on v, an activation or a LayerNorm (mean and variance over the
            # channels, then a weight per channel) on the output: permutations only
            an.sites[vo].family = PERMUTATION
        elif "v" in b.normalized:  # L2-normalised v: only maps that keep norms
            an.sites[vo].family = ORTHOGONAL
        on(vo, b.v, ActionKind.A, b.v.heads[j])
        for h in range(j * rep, (j + 1) * rep):
            into_out(vo, ActionKind.A_INV_T, b.out.heads[h])
            for name in b.out.sub_norm or ():
                if name is not None:
                    an.act_raw(vo, name, 0, ActionKind.A, b.out.width, channels=b.out.heads[h])
    if merged is not None:
        _merged_values(r, b, on)


def _shared_sites(r: AtenRunner, b: AttentionBlock, on: Any, into_out: Any) -> tuple[bool, bool]:
    """The maps within the heads when ops shared by all heads act on each head-dim entry
    (MViTv2: depthwise pooling convs and LayerNorms over head_dim on q, k, v, relative-position
    tables (R, head_dim) read by q, residual pooling ``out = A v + q``). A kernel or an affine
    map per entry commutes with permutations of the entries only, and one shared by all heads
    with the same permutation in every head; the tables' columns meet q's entries, and
    ``A v + q`` adds q's entry e to v's entry e. What survives:

    - ``<attn>.qk`` (permutation, head_dim): one permutation of the entries of q and k in every
      head, moving the pooling tensors of q and k and the tables' columns;
    - ``<attn>.vo`` (permutation): the same for v and the output projection's columns, when v
      is pooled; with residual pooling v is tied to q: one site ``<attn>.qkv`` for all three.

    Returns (whether q and k got a shared site, whether v did): the per-head sites of the
    caller are then not made. With rotary embeddings and residual pooling nothing within a
    head is kept."""
    an = r.an
    q_pooled, v_pooled = bool(b.q.pools or b.k.pools or b.decomposed_tables), bool(b.v.pools)
    tied = b.out.residual is not None
    if not (q_pooled or v_pooled or tied):
        return False, False
    if tied and (b.rotary or b.head_dim != b.head_dim_v):
        return True, True  # q's maps would need v's and v's q's: none kept

    def entries(sid: int, p: Projection) -> None:
        for name in p.pool_params:
            an.act_raw(sid, name, 0, ActionKind.A, b.head_dim_v if p is b.v else b.head_dim)

    def values(sid: int) -> None:
        for j in range(b.kv_heads):
            on(sid, b.v, ActionKind.A, b.v.heads[j])
        for h in range(b.heads):
            into_out(sid, ActionKind.A_INV_T, b.out.heads[h])
            for name in b.out.sub_norm or ():
                if name is not None:
                    an.act_raw(sid, name, 0, ActionKind.A, b.out.width, channels=b.out.heads[h])
        entries(sid, b.v)

    shared_qk = (q_pooled or tied) and not b.rotary
    if shared_qk:
        qk = an.new_site(b.head_dim, name=f"{b.name}.{'qkv' if tied else 'qk'}",
                         kind="attention_qk")  # fmt: skip
        an.sites[qk].family = PERMUTATION
        for h in range(b.heads):
            on(qk, b.q, ActionKind.A, b.q.heads[h])
        for j in range(b.kv_heads):
            on(qk, b.k, ActionKind.A_INV_T, b.k.heads[j])
        entries(qk, b.q)
        entries(qk, b.k)
        for name in b.decomposed_tables:  # (R, head_dim): column e meets q's entry e
            an.act_raw(qk, name, 1, ActionKind.A, b.head_dim)
        if tied:
            values(qk)
            return True, True
    if v_pooled:
        vo = an.new_site(b.head_dim_v, name=f"{b.name}.vo", kind="attention_vo")
        an.sites[vo].family = PERMUTATION
        values(vo)
    return q_pooled or tied, v_pooled


def _merged_values(r: AtenRunner, b: AttentionBlock, on: Any) -> None:
    """The maps of the values of a block without an output projection (``AttentionBlock.
    merged``): ``<attn>.vo<j>`` acts on head j's v rows (A), so head j's output channels move by
    the same matrix (``out_j = A_j v_j``); where the heads meet again (``merged.node``) the output
    is handed to the ordinary rules as a tensor moved by these sites, one per head's channels,
    and whatever follows (a BatchNorm, an activation, the next convolution, a residual sum)
    restricts them and moves its parameters as for any other tensor."""
    an, merged = r.an, b.merged
    parts = []
    for j in range(b.kv_heads):  # (``_match``: one query head per kv head here)
        vo = an.new_site(b.head_dim_v, name=f"{b.name}.vo{j}", kind="attention_vo")
        if b.v.norm:  # a per-channel BatchNorm on v commutes with monomial maps at most
            an.sites[vo].family = PERMUTATION
        elif "v" in b.normalized:  # L2-normalised v: only maps that keep norms
            an.sites[vo].family = ORTHOGONAL
        on(vo, b.v, ActionKind.A, b.v.heads[j])
        parts.append((vo, Mode.A, merged.channels[j]))
    width = sum(len(ch) for ch in merged.channels)
    r.pending[merged.node] = Info(tuple(parts), width, merged.dim)


def _channel_sites(r: AtenRunner, b: AttentionBlock, on: Any, into_out: Any) -> None:
    """The maps within each head j of a cross-covariance attention (XCiT's XCA,
    ``AttentionBlock.channels``): ``A = softmax(tau_h q^ k^T)`` between the head's channels, q^
    and k^ normalised over the tokens per channel, ``out = A v`` (one row per q channel).

    - ``<attn>.qo<j>`` (positive monomial D P): q's channels move by D P (the normalisation
      divides D out; P permutes A's rows, the softmax is per row) and the output projection's
      columns by P (out's rows follow A's);
    - ``<attn>.kv<j>`` (positive monomial): k's channels by D P, v's by P: A becomes A P^T
      (the softmax commutes with permuting a row's entries) and ``A P^T P v = A v``;
    - ``<attn>.vo<j>`` (GL(1): one number c != 0): v's channels times c, the output projection's
      columns of the head times 1/c. A mixes v's channels, so no other map of v survives.

    A negative scale on q or k flips the sign of a row or column of the scores: not kept. (As in
    ``F.normalize``, a channel whose norm over the tokens is under its ``eps`` is not rescaled
    away: verification covers the example input.)"""
    an, o = r.an, b.out
    for j in range(b.heads):
        qo = an.new_site(len(b.q.heads[j]), name=f"{b.name}.qo{j}", kind="attention_channels")
        an.sites[qo].family = POSITIVE_MONOMIAL
        on(qo, b.q, ActionKind.A, b.q.heads[j])
        into_out(qo, ActionKind.P, o.heads[j])
        kv = an.new_site(len(b.k.heads[j]), name=f"{b.name}.kv{j}", kind="attention_channels")
        an.sites[kv].family = POSITIVE_MONOMIAL
        on(kv, b.k, ActionKind.A, b.k.heads[j])
        on(kv, b.v, ActionKind.P, b.v.heads[j])
        v_block = _head_blocks([b.v.heads[j]], b.v.total)
        o_block = _head_blocks([o.heads[j]], o.width)
        if v_block is None or o_block is None:
            continue  # the head's channels are not one block or stride: no one-number view
        vo = an.new_site(1, name=f"{b.name}.vo{j}", kind="attention_vo")
        channels, n_total, outer, inner = v_block
        an.act_raw(vo, b.v.weight, b.v.out_axis, ActionKind.A, n_total, outer=outer, inner=inner,
                   channels=channels)  # fmt: skip
        for name, n_t, out_, in_, chans in _bias_axes(an, b.v, n_total, outer, inner, channels):
            an.act_raw(vo, name, 0, ActionKind.A, n_t, outer=out_, inner=in_, channels=chans)
        channels, n_total, outer, inner = o_block
        an.act_raw(vo, o.weight, 1 - o.out_axis, ActionKind.A_INV_T, n_total, outer=outer,
                   inner=inner, channels=channels)  # fmt: skip


def _head_units(
    b: AttentionBlock, groups: dict[str, list[tuple[int, ...]]]
) -> list[tuple[Projection, tuple[tuple[int, ...], int, int, int] | None]]:
    """The projections whose output rows a head permutation moves, each with the blocks it moves
    (``_head_blocks``; None: no view describes them): q, k and v on their own where each one's
    rows of a head form one block (or stride); else, for those read from one projection, the
    rows of a head of all of them together (LeViT's ``kv``: per head 16 key rows, then 64 value
    rows: neither alone is an aligned block, the 80 rows are)."""
    by_node: dict[fx.Node, list[tuple[str, Projection]]] = {}
    for key, p in (("q", b.q), ("k", b.k), ("v", b.v)):
        by_node.setdefault(p.node, []).append((key, p))
    units: list = []
    for members in by_node.values():
        single = [(p, _head_blocks(groups[key], p.total)) for key, p in members]
        if len(members) == 1 or all(blocks is not None for _, blocks in single):
            units += single
            continue
        merged = [
            tuple(sorted(c for key, _ in members for c in groups[key][j]))
            for j in range(b.kv_heads)
        ]
        units.append((members[0][1], _head_blocks(merged, members[0][1].total)))
    return units


def _bias_axes(
    an: Any, p: Projection, n_total: int, outer: int, inner: int, channels: tuple[int, ...]
) -> list[tuple[str, int, int, int, tuple[int, ...]]] | None:
    """The actions on ``p``'s bias of an action ``(n_total, outer, inner, channels)`` on its
    outputs, as ``[(name, n_total, outer, inner, channels)]``. A computed bias (``cat`` of
    pieces, ``Projection.bias_parts``) gets one action per parameter piece that holds moved
    blocks, in the piece's own frame; zero buffers are skipped (every linear map fixes zero;
    ``attention`` has checked that they are zero). None when a moved block is not inside one
    piece or the layout is strided (``outer`` > 1)."""
    if p.bias is not None:
        return [(p.bias, n_total, outer, inner, channels)]
    out = []
    for name, off, length in p.bias_parts:
        local = tuple(c - off // inner for c in channels if off <= c * inner < off + length)
        if not local:
            continue
        if outer != 1 or off % inner or length % inner:
            return None
        if name in an.params:
            out.append((name, length // inner, 1, inner, local))
    return out


def _single_head(r: AtenRunner, b: AttentionBlock) -> None:
    """With one head, a per-head bias table (MaxViT's first stage) has nothing to move with:
    record that on the parameters the masks read, so coverage gives the reason."""
    params = set(r.an.params)
    for mask in b.masks:
        for m in _ancestors(mask):
            name = str(m.target)
            if m.op != "get_attr" or name not in params:
                continue
            shape = r.an.shape_of(name)
            if shape[-1] != 1:
                continue  # not a one-head table (an MLP's weights have sites of their own)
            sid = r.an.new_site(shape[-1])
            r.an.act_raw(sid, name, len(shape) - 1, ActionKind.A, shape[-1])
            r.an.freeze(sid, f"{b.name} has a single attention head: no head permutation moves "
                        "its per-head bias")  # fmt: skip


def _cached_tables(r: AtenRunner, b: AttentionBlock) -> None:
    """A per-head bias that the graph reads as a constant (timm's ``attention_bias_cache``, filled
    by an eval-mode forward before the trace) while a parameter of the block's module goes unread:
    the model computes its bias from a cache, so moving that parameter with the heads would not
    move the bias. Recorded on those parameters as the reason the heads stay."""
    params = r.an.params
    if not any(m.op == "get_attr" and str(m.target) not in params and
               str(m.target) not in r.an.buffers for m in b.masks):  # fmt: skip
        return
    read = {str(n.target) for n in r.graph.nodes if n.op == "get_attr" and n.users}
    for name in params:
        if name.startswith(f"{b.name}.") and name.count(".") == b.name.count(".") + 1:
            if name not in read:
                _freeze_table(r, name, f"{b.name} reads its per-head bias from a cache (a constant "
                              f"filled by an earlier forward, not {name!r}): moving the heads "
                              "would leave the cached bias in place")  # fmt: skip


def _freeze_table(r: AtenRunner, name: str, reason: str) -> None:
    """Record ``reason`` on the per-head table ``name`` (its dim 0, the heads)."""
    shape = r.an.shape_of(name)
    sid = r.an.new_site(shape[0])
    r.an.act_raw(sid, name, 0, ActionKind.A, shape[0])
    r.an.freeze(sid, reason)


def _tensor_cache(r: AtenRunner, name: str) -> str | None:
    """The attribute of the module holding parameter ``name`` that may keep tensors computed
    from it: a dict holding tensors that is not a cache the library empties (``_forward.
    is_tensor_cache``: timm's ``attention_bias_cache`` is emptied before every forward, export
    and write of an element, so the bias is gathered again from the moved table), or None. The
    exported graph gathers the bias from the table while the eager model may read such a dict: a
    head permutation of the table would leave what it holds stale."""
    try:
        module = r.model.get_submodule(name.rpartition(".")[0])
    except AttributeError:
        return None
    for attr, value in vars(module).items():  # (not ``_parameters``, ``_buffers``)
        if attr.startswith("_") or not isinstance(value, dict) or is_tensor_cache(attr, value):
            continue
        if any(isinstance(v, torch.Tensor) for v in value.values()):
            return attr
    return None


def _head_blocks(
    rows: list[tuple[int, ...]], total: int
) -> tuple[tuple[int, ...], int, int, int] | None:
    """How a permutation of the rows (heads) acts on an axis of ``total`` channels, as
    ``(channels, n_total, outer, inner)`` of a ``ParamAxis``: every row an aligned block of
    ``len(row)`` channels in order (timm: channel c in head c // D), or every row strided by
    ``total // len(row)`` (NesT's ``permute(..., D, H)``: channel c in head c % H). None when
    the rows are neither (a head permutation would move channels no view describes)."""
    unit = len(rows[0])
    if any(len(row) != unit for row in rows) or total % unit:
        return None
    stride = total // unit
    if all(row[0] % unit == 0 and row == tuple(range(row[0], row[0] + unit)) for row in rows):
        return tuple(row[0] // unit for row in rows), stride, 1, unit
    if all(row[0] < stride and row == tuple(range(row[0], total, stride)) for row in rows):
        return tuple(row[0] for row in rows), stride, unit, 1
    return None


#: Ops that only move (or copy) entries of their first argument; other tensor arguments are fixed
#: indices.
_MOVES = {"view", "reshape", "_unsafe_view", "permute", "transpose", "unsqueeze", "squeeze"}
_MOVES |= {"expand", "flatten", "unflatten", "index", "index_select", "slice", "select", "repeat"}
_MOVES |= IDENTITY
#: Maps applied to each entry alone (their other arguments must be numbers).
_ENTRYWISE = {"sigmoid", "tanh", "mul", "div", "add", "sub", "neg", "exp", "relu"}
_ENTRYWISE |= {"clamp", "clamp_min", "clamp_max", "reciprocal"}  # Swin V2's logit scale


def head_tables(r: AtenRunner, b: AttentionBlock) -> list[tuple[str, int, tuple[int, ...]]] | None:
    """The parameters the per-head biases on the scores read, as ``[(name, axis, columns)]``:
    head h reads slice ``columns[h]`` of ``axis`` and nothing else of it. None when some bias that
    differs between heads is not of that form (the heads then stay in place)."""
    out = b.sdpa.meta.get("val")  # (B, H, T, Dv): each mask's dim -3 is the head
    if b.kv_heads != b.heads or not isinstance(out, torch.Tensor) or out.dim() < 4:
        return None
    if b.head_axis != -3:
        return None
    params = {n for n in r.graph.nodes if n.op == "get_attr" and str(n.target) in r.an.params}
    order = {n: i for i, n in enumerate(r.graph.nodes)}
    tables = []
    for mask in b.masks:
        full = mask.meta.get("val")
        if not isinstance(full, torch.Tensor) or full.dim() < 3 or full.shape[-3] == 1:
            continue  # the same for every head
        found = _head_table(r, mask, b.heads, params, order)
        if found is None or {t[0] for t in tables} & {t[0] for t in found}:
            return None
        tables += found
    return tables


def _head_table(
    r: AtenRunner, mask: fx.Node, heads: int, params: set[fx.Node], order: dict
) -> list[tuple[str, int, tuple[int, ...]]] | None:
    full = mask.meta["val"]
    if full.shape[-3] != heads:
        return None

    def fixed(n: Any) -> bool:  # not from a parameter or the input
        return not any(m.op == "placeholder" or m in params for m in _ancestors(n))

    node, chain = mask, [mask]
    while op_name(node) == "add" and len(node.args) == 2 and not node.kwargs:
        a, c = node.args
        free = [x for x in (a, c) if isinstance(x, fx.Node) and fixed(x)]
        if len(free) != 1:
            break
        v = torch.broadcast_to(_evaluate(r, free[0], {}, order), full.shape)
        if not torch.equal(v, v.narrow(-3, 0, 1).expand_as(v)):
            return None  # differs between heads
        node = c if free[0] is a else a
        chain.append(node)
    if any(len(m.users) != 1 for m in chain):
        return None  # one bias read by several blocks (BEiT's shared table): one table, many heads
    above = _ancestors(node)
    sources = above & params
    if any(m.op == "placeholder" for m in above):
        return None
    if len(sources) == 1:
        (src,) = sources
        moved = []
    else:
        found = _table_mlp(above, sources)
        if found is None:
            return None
        src, moved = found
    derived = {m for m in above if m is not src and src in _ancestors(m)}
    if any(u not in above for m in (derived | {src}) - {node} for u in m.users):
        return None  # the table (or a tensor made of it) is read elsewhere too: shared by blocks
    for m in derived:
        name, rest = op_name(m), [*m.args[1:], *m.kwargs.values()]
        if m.op != "call_function" or not m.args or not _reads(m.args[0], derived | {src}):
            return None
        if name in _ENTRYWISE:
            if any(
                not isinstance(a, (int, float, type(None))) or isinstance(a, bool) for a in rest
            ):
                return None
        elif name not in _MOVES or any(_reads(a, derived | {src}) for a in rest):
            return None
    table = r.fetch_attr(str(src.target)) if src.op == "get_attr" else src.meta["val"]
    for axis in range(table.dim()):
        if table.shape[axis] != heads:
            continue
        shape = [1] * table.dim()
        shape[axis] = heads
        codes = torch.arange(heads, dtype=torch.float64).view(shape).expand(table.shape)
        try:
            got = _evaluate(r, node, {src: codes}, order, entrywise=derived)
            got = torch.broadcast_to(got, full.shape).movedim(-3, 0).reshape(heads, -1)
        except (RuntimeError, IndexError):
            continue
        if torch.equal(got, got[:, :1].expand_as(got)):
            columns = tuple(int(c) for c in got[:, 0].tolist())
            if sorted(columns) == list(range(heads)):
                if src.op == "get_attr":
                    return [(str(src.target), axis, columns)]
                return [(name, 0, columns) for name, _ in moved]  # the MLP's output rows
    return None


def _table_mlp(
    above: set[fx.Node], sources: set[fx.Node]
) -> tuple[fx.Node, list[tuple[str, int]]] | None:
    """Swin V2's continuous position bias: the per-head table is the output of a Linear (the
    last of a small MLP over fixed coordinates, ``cpb_mlp``) whose every parameter comes before
    it. That Linear's output node and its weight and bias, whose rows (one per head) move with
    the heads; None unless one such Linear reads every parameter above the bias."""
    found = []
    for m in above:
        if (
            op_name(m) != "linear"
            or m.kwargs
            or not all(
                isinstance(a, fx.Node) and a in sources and a.op == "get_attr" for a in m.args[1:]
            )
        ):
            continue
        if sources <= _ancestors(m) and all(len(a.users) == 1 for a in m.args[1:]):
            found.append(m)
    if len(found) != 1:
        return None
    (mlp,) = found
    return mlp, [(str(a.target), 0) for a in mlp.args[1:]]


def _evaluate(
    r: AtenRunner, node: fx.Node, env: dict, order: dict, entrywise: set[fx.Node] = frozenset()
) -> Any:
    """``node``'s value computed again from the parameters and buffers (the interpreter has freed
    the intermediate values), with the values in ``env`` in place of those nodes; the entrywise
    ops among ``entrywise`` pass their first argument on unchanged (codes say where an entry
    came from, not its value)."""
    env = dict(env)
    for m in sorted(_ancestors(node), key=order.__getitem__):
        if m in env:
            continue
        if m.op == "get_attr":
            env[m] = r.fetch_attr(str(m.target))
        elif m in entrywise and op_name(m) in _ENTRYWISE:
            env[m] = env[m.args[0]]
        elif m.op == "call_function":
            env[m] = m.target(*_subst(m.args, env), **_subst(m.kwargs, env))
        else:
            raise RuntimeError(f"cannot evaluate {m.op} {m.name}")
    return env[node]


def _reads(a: Any, nodes: set[fx.Node]) -> bool:
    if isinstance(a, fx.Node):
        return a in nodes
    if isinstance(a, (list, tuple)):
        return any(_reads(x, nodes) for x in a)
    if isinstance(a, dict):
        return any(_reads(x, nodes) for x in a.values())
    return False


def _subst(a: Any, env: dict) -> Any:
    if isinstance(a, fx.Node):
        return env[a]
    if isinstance(a, (list, tuple)):
        return type(a)(_subst(x, env) for x in a)
    if isinstance(a, dict):
        return {k: _subst(v, env) for k, v in a.items()}
    return a
