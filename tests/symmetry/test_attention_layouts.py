"""Attention written the ways real model code writes it: timm's packed ``qkv`` Linear reshaped to
(B, N, 3, H, D), SDPA or ``softmax(q k^T) v`` written out, heads packed in an interleaved order,
a per-head bias on the scores. The head layout is read from the graph (the shaping ops replayed on
channel indices), never guessed: heads are found where they are one aligned block, and every site
returned keeps the function (float64, outputs and hidden activations)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, trace
from intertwiner.symmetry.check import _run

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PackedAttention(nn.Module):
    """timm's ``Attention``: one qkv Linear, ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``.
    ``layout="interleaved"`` packs (B, N, 3, D, H) instead: head h's channels are h, h + H, ..."""

    def __init__(self, dim=8, heads=2, fused=True, layout="timm", bias_table=False):
        super().__init__()
        self.h, self.d, self.fused, self.layout = heads, dim // heads, fused, layout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, 1, 1)) if bias_table else None

    def forward(self, x):
        b, n, c = x.shape
        if self.layout == "timm":
            qkv = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        else:
            qkv = self.qkv(x).reshape(b, n, 3, self.d, self.h).permute(2, 0, 4, 1, 3)
        q, k, v = qkv.unbind(0)
        mask = self.bias.expand(self.h, n, n) if self.bias is not None else None
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q * self.d**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = PackedAttention(**kw)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h)
        return self.fc2(self.act(self.fc1(h)))


@pytest.mark.parametrize("fused", [True, False])
def test_timm_packed_qkv_heads_are_found_and_sound(fused):
    model = Block(fused=fused).double()
    x = torch.randn(3, 5, 4, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(1))
    names = set(spec.names)
    assert {"attn.heads", "attn.qk0", "attn.qk1", "attn.vo0", "attn.vo1"} <= names
    heads = spec.site("attn.heads")
    # q, k and v rows of the packed weight move as whole heads; the output's columns too
    on_qkv = sorted(a.channels for a in heads.actions if a.name == "attn.qkv.weight")
    assert on_qkv == [(0, 1), (2, 3), (4, 5)]
    # head 1's query rows are channels 4..7 of the packed weight (q occupies rows 0..7)
    (q1,) = [
        a for a in spec.site("attn.qk1").actions if a.name == "attn.qkv.weight" and a.kind == "A"
    ]
    assert q1.channels == (4, 5, 6, 7)


def test_interleaved_heads_get_per_head_sites_and_permute_as_one_stride():
    """Head h reads channels h, h + H, ...: the per-head maps are read exactly. Within q (or k,
    or v) alone a head is no aligned block or stride of the packed projection, but q, k and v of
    a head together are channels h, h + H, ... of all of it: the heads permute as that stride."""
    model = Block(layout="interleaved").double()
    x = torch.randn(3, 5, 4, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(2))
    (on_qkv,) = [a for a in spec.site("attn.heads").actions if a.name == "attn.qkv.weight"]
    assert (on_qkv.n_total, on_qkv.outer, on_qkv.inner) == (2, 12, 1)
    (q0,) = [
        a for a in spec.site("attn.qk0").actions if a.name == "attn.qkv.weight" and a.kind == "A"
    ]
    assert q0.channels == (0, 2, 4, 6)


@pytest.mark.parametrize("fused", [True, False])
def test_a_per_head_bias_on_the_scores_moves_with_its_head(fused):
    model = Block(fused=fused, bias_table=True).double()
    x = torch.randn(3, 5, 4, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(3))
    assert "attn.vo0" in spec.names
    (table,) = [a for a in spec.site("attn.heads").actions if a.name == "attn.bias"]
    assert table.axis == 0 and table.channels in (None, (0, 1))  # None: all, in order


def test_a_wrong_head_layout_would_change_the_function():
    """The check above can fail: moving the packed rows as if heads were contiguous in the
    interleaved layout changes the output."""
    good = Block().double()
    bad = Block(layout="interleaved").double()
    bad.load_state_dict(good.state_dict())
    x = torch.randn(3, 5, 4, dtype=F64, generator=_gen())
    spec = trace(good, x)
    site = spec.site("attn.heads")
    swaps = (site.group.sample(2, generator=_gen(s)) for s in range(100))
    swap = next(g for g in swaps if not torch.equal(g.matrix(), torch.eye(2, dtype=F64)))
    assert (_run(apply(good, spec, {"attn.heads": swap}), x) - _run(good, x)).abs().max() < 1e-12
    moved = apply(bad, spec, {"attn.heads": swap})
    assert (_run(moved, x) - _run(bad, x)).abs().max() > 1e-6


class KVAttention(nn.Module):
    """LeViT's ``AttentionDownsample``: q from its own Linear, k and v from one ``kv`` Linear
    packed per head as (k: 2 rows, v: 3 rows), ``kv(x).view(B, N, H, 5).split([2, 3], 3)``.
    ``packing="split"``: all keys first, then all values (``[k_0 k_1 | v_0 v_1]``, viewed as
    ``(B, N, 2 * H + 3 * H)`` and cut at 2 * H): a head's k and v rows are then no block."""

    def __init__(self, heads=2, packing="levit"):
        super().__init__()
        self.h, self.packing = heads, packing
        self.q, self.kv = nn.Linear(8, 2 * heads), nn.Linear(8, 5 * heads)
        self.proj = nn.Linear(3 * heads, 8)

    def forward(self, x):
        b, n, _ = x.shape
        if self.packing == "levit":
            k, v = self.kv(x).view(b, n, self.h, 5).split([2, 3], dim=3)
        else:
            k, v = self.kv(x).split([2 * self.h, 3 * self.h], dim=-1)
            k, v = k.reshape(b, n, self.h, 2), v.reshape(b, n, self.h, 3)
        q = self.q(x).view(b, n, self.h, 2).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, 3 * self.h))


class KVBlock(Block):
    def __init__(self, **kw):
        super().__init__()
        self.attn = KVAttention(**kw)


@pytest.mark.parametrize("packing", ["levit", "split"])
def test_heads_of_a_packed_kv_move_its_key_and_value_rows_together(packing):
    """Per head, k's 2 rows alone are aligned blocks of ``kv`` but v's 3 rows (at 5 h + 2) are
    not; the 5 rows of a head together are. Split packing: no such block, heads stay."""
    model = KVBlock(packing=packing).double()
    x = torch.randn(3, 5, 4, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(4))
    assert {"attn.qk0", "attn.vo1"} <= set(spec.names) and not spec.dropped
    if packing == "split":
        assert "attn.heads" not in spec.names
        return
    (on_kv,) = [a for a in spec.site("attn.heads").actions if a.name == "attn.kv.weight"]
    assert (on_kv.n_total, on_kv.outer, on_kv.inner) == (2, 1, 5)
