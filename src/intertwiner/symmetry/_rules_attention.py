"""Rules for attention: the sites of each block that ``_attention.find_attention`` matched
(``<attn>.heads``, ``<attn>.qk<j>``, ``<attn>.vo<j>``; see there for the symmetries)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx

from intertwiner.groups import PERMUTATION, ActionKind
from intertwiner.symmetry._attention import AttentionBlock, Projection
from intertwiner.symmetry._registry import Frozen, rule

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

    def on(sid: int, p: Projection, kind: ActionKind, channels: tuple[int, ...], unit: int = 1):
        n_total = p.total // unit
        an.act_raw(sid, p.weight, p.out_axis, kind, n_total, inner=unit, channels=channels)
        if p.bias is not None:
            an.act_raw(sid, p.bias, 0, kind, n_total, inner=unit, channels=channels)

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
    groups["out"] = per_group(b.out.heads)
    blocks = {key: _aligned(rows) for key, rows in groups.items()}
    if b.heads_permutable and all(v is not None for v in blocks.values()):
        heads = an.new_site(b.kv_heads, name=f"{b.name}.heads", kind="attention_heads")
        an.sites[heads].family = PERMUTATION
        for key, p in (("q", b.q), ("k", b.k), ("v", b.v)):
            on(heads, p, ActionKind.A, blocks[key], len(groups[key][0]))
        into_out(heads, ActionKind.A_INV_T, blocks["out"], len(groups["out"][0]))
    for j in range(b.kv_heads):
        # rotary embeddings rotate q and k per position: no GL(head_dim) on them
        if not b.rotary:
            qk = an.new_site(b.head_dim, name=f"{b.name}.qk{j}", kind="attention_qk")
            for h in range(j * rep, (j + 1) * rep):
                on(qk, b.q, ActionKind.A, b.q.heads[h])
            on(qk, b.k, ActionKind.A_INV_T, b.k.heads[j])
        vo = an.new_site(b.head_dim_v, name=f"{b.name}.vo{j}", kind="attention_vo")
        on(vo, b.v, ActionKind.A, b.v.heads[j])
        for h in range(j * rep, (j + 1) * rep):
            into_out(vo, ActionKind.A_INV_T, b.out.heads[h])


def _aligned(rows: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """Each row as the index of the aligned block of ``len(row)`` channels it fills in order
    (what a permutation of whole blocks moves), or None if some row is not such a block."""
    out = []
    for row in rows:
        unit = len(row)
        if row[0] % unit or row != tuple(range(row[0], row[0] + unit)):
            return None
        out.append(row[0] // unit)
    return tuple(out)
