"""Per-head parameters on the attention scores move with their head: relative position tables
read through a fixed index buffer (Swin, BEiT), per-head biases (LeViT, EfficientFormer), with
Swin's head-constant shifted-window mask on top; shifted windows (``roll``), patch merging's
LayerNorm over (2, 2, C) and values wider than the stream. Each pattern is checked on a model that
uses it correctly (the heads are found, the function is kept) and on one written to fool the rule
(a table laid out across heads, a table shared by two blocks, a bias computed from the input):
the heads must then stay in place, and every returned site still keeps the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, trace
from intertwiner.symmetry.check import _run
from intertwiner.testing import sample_non_identity

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TableAttention(nn.Module):
    """Window attention over n tokens with a relative position table (2n - 1, H).

    ``layout``: "swin" (``table[index].view(n, n, H).permute(2, 0, 1)``: head h reads column h),
    "flat" (``table[index].reshape(H, n, n)``: every head reads entries of every column, the
    fooling layout), "input" (the bias is computed from the tokens, not a parameter).
    ``shift``: add a fixed mask, the same for every head, to the scores viewed per window (Swin's
    shifted windows), ``value_ratio``: values wider than the stream (EfficientFormer)."""

    def __init__(self, dim=8, heads=2, n=4, fused=True, layout="swin", shift=False,
                 value_ratio=1, table=None):  # fmt: skip
        super().__init__()
        self.h, self.d, self.n, self.fused, self.layout, self.shift = (
            heads,
            dim // heads,
            n,
            fused,
            layout,
            shift,
        )
        self.dv = self.d * value_ratio
        self.qkv = nn.Linear(dim, heads * (2 * self.d + self.dv))
        self.proj = nn.Linear(heads * self.dv, dim)
        self.table = table if table is not None else nn.Parameter(torch.randn(2 * n - 1, heads))
        pos = torch.arange(n)
        self.register_buffer("index", pos[:, None] - pos[None, :] + n - 1)
        self.register_buffer(
            "mask", torch.where(torch.rand(2, n, n, generator=_gen(9)) > 0.5, 0.0, -2.0)
        )
        self.pos = nn.Linear(dim, heads)

    def bias(self, x):
        n, h = self.n, self.h
        if self.layout == "swin":
            return self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        if self.layout == "flat":
            return self.table[self.index.view(-1)].reshape(h, n, n)
        return self.pos(x).transpose(1, 2).unsqueeze(-1)  # (B, H, n, 1): from the input

    def forward(self, x, bias=None):
        b, n, _ = x.shape
        q, k, v = (
            self.qkv(x).view(b, n, self.h, -1).transpose(1, 2).split([self.d, self.d, self.dv], -1)
        )
        bias = self.bias(x) if bias is None else bias
        if self.fused:
            mask = bias.unsqueeze(0) if bias.dim() == 3 else bias
            if self.shift:
                shift = self.mask.view(1, 2, 1, n, n).expand(b // 2, -1, self.h, -1, -1)
                mask = mask + shift.reshape(-1, self.h, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q * self.d**-0.5) @ k.transpose(-2, -1) + bias
            if self.shift:
                scores = scores.view(-1, 2, self.h, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
                scores = scores.view(-1, self.h, n, n)
            out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Net(nn.Module):
    def __init__(self, blocks=1, shared=False, once=False, **kw):
        super().__init__()
        self.once = once  # compute the first block's bias once and pass it to every block
        self.embed = nn.Linear(4, 8)
        first = TableAttention(**kw)
        more = [
            TableAttention(**kw, table=first.table if shared else None) for _ in range(blocks - 1)
        ]
        self.attn = nn.ModuleList([first, *more])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        bias = self.attn[0].bias(h) if self.once else None
        for a in self.attn:
            h = h + a(h, bias)
        return self.head(torch.relu(h))


def _x() -> torch.Tensor:
    return torch.randn(4, 4, 4, dtype=F64, generator=_gen())  # 4 windows of 4 tokens


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shift", [False, True])
def test_a_relative_position_table_moves_with_its_head(fused, shift):
    model = Net(fused=fused, shift=shift).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(1))
    heads = spec.site("attn.0.heads")
    (table,) = [a for a in heads.actions if a.name == "attn.0.table"]
    assert table.axis == 1 and table.channels in (None, (0, 1))  # None: all, in order
    assert {"attn.0.qk0", "attn.0.vo1"} <= set(spec.names)


def test_moving_the_heads_without_the_table_changes_the_function():
    """The test above can fail: permute the heads but leave the table (and nothing else) in
    place and the output changes."""
    model = Net().double()
    x = _x()
    spec = trace(model, x)
    site = spec.site("attn.0.heads")
    swap = sample_non_identity(site.group, 2)
    moved = apply(model, spec, {"attn.0.heads": swap})
    assert (_run(moved, x) - _run(model, x)).abs().max() < 1e-12
    moved.attn[0].table.data = model.attn[0].table.data.clone()
    assert (_run(moved, x) - _run(model, x)).abs().max() > 1e-6


@pytest.mark.parametrize(
    "kw",
    [
        {"layout": "flat"},  # each head reads entries of both columns
        {"layout": "flat", "fused": False},
        {"layout": "input"},  # a per-head bias computed from the tokens
        {"blocks": 2, "shared": True},  # one table read by two blocks
        {"blocks": 2, "once": True},  # one bias, computed once, read by two blocks
        {"blocks": 2, "once": True, "fused": False},
    ],
)
def test_a_table_that_does_not_follow_the_heads_keeps_them_in_place(kw):
    model = Net(**kw).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(2))
    assert not [s for s in spec.names if s.endswith(".heads")]
    assert not spec.dropped  # not proposed (and refuted at verification): not proposed at all
    assert "attn.0.vo0" in spec.names  # the per-head maps do not touch the bias


@pytest.mark.parametrize("fused", [True, False])
def test_values_wider_than_the_stream(fused):
    """EfficientFormer's values are wider than the stream: the output projection's input axis
    (where heads and value maps act) is not its output axis."""
    model = Net(fused=fused, value_ratio=2).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(3))
    assert {"attn.0.heads", "attn.0.vo0", "attn.0.vo1"} <= set(spec.names)
    assert spec.site("attn.0.vo0").width == 8


class Shifted(nn.Module):
    """Swin's shifted windows and patch merging: ``roll`` over positions, then the 2 x 2
    neighbours' features joined to (2, 2, C) and LayerNorm over all 4C."""

    def __init__(self, roll_features=False):
        super().__init__()
        self.roll_features = roll_features
        self.embed, self.fc = nn.Linear(3, 6), nn.Linear(6, 6)
        self.norm, self.reduce, self.head = nn.LayerNorm(24), nn.Linear(24, 5), nn.Linear(5, 2)

    def forward(self, x):  # (B, 4, 4, 3)
        h = torch.relu(self.embed(x))
        dims = (1, 3) if self.roll_features else (1, 2)
        h = h + self.fc(torch.roll(h, shifts=(-1, 1), dims=dims))
        b, hh, ww, c = h.shape
        h = h.reshape(b, hh // 2, 2, ww // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.head(torch.relu(self.reduce(self.norm(h))))


def test_roll_over_positions_and_patch_merging_keep_the_channel_sites():
    model = Shifted().double()
    x = torch.randn(2, 4, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(4))
    cov = spec.coverage(model, x)
    assert cov.interior_tensors == 1.0
    assert spec.site("relu").group.family.name == "permutation"  # through LayerNorm(4C)


def test_rolling_the_feature_axis_freezes_it():
    model = Shifted(roll_features=True).double()
    x = torch.randn(2, 4, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(5))
    assert any("rolling or flipping the feature axis" in r for _, r in spec.frozen)


class ConvAttention(nn.Module):
    """CoAtNet's ``Attention2d``: q, k, v from one 1 x 1 conv over (B, C, H, W), heads first
    (``view(B, H, 3 D, HW).chunk(3, 2)``), SDPA on the transposed tensors, a 1 x 1 conv out.
    ``groups=2``: the qkv conv is grouped (each half of the input feeds half of the outputs),
    which no head permutation commutes with."""

    def __init__(self, dim=8, heads=2, groups=1, table=True):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.embed = nn.Conv2d(3, dim, 1)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, groups=groups)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.table = nn.Parameter(torch.randn(7, heads)) if table else None
        pos = torch.arange(4)
        self.register_buffer("index", pos[:, None] - pos[None, :] + 3)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # (B, 3, 2, 2)
        h = self.embed(x)
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(h).view(b, self.h, 3 * self.d, -1).chunk(3, dim=2)
        bias = None
        if self.table is not None:
            bias = self.table[self.index.view(-1)].view(4, 4, -1).permute(2, 0, 1).unsqueeze(0)
        t = (q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        a = (
            F.scaled_dot_product_attention(*t, attn_mask=bias)
            .transpose(-1, -2)
            .reshape(b, c, hh, ww)
        )
        return self.head(torch.relu(h + self.proj(a)).mean((2, 3)))


class Wrapped(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = ConvAttention(**kw)

    def forward(self, x):
        return self.attn(x)


def test_conv_projections_find_the_heads():
    model = Wrapped().double()
    x = torch.randn(3, 3, 2, 2, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(6))
    heads = {a.name: a for a in spec.site("attn.heads").actions}
    assert {"attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.table"} <= set(heads)
    assert spec.coverage(model, x).interior_tensors == 1.0


def test_a_grouped_qkv_conv_is_not_a_projection():
    model = Wrapped(groups=2, table=False).double()
    x = torch.randn(3, 3, 2, 2, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(7))
    assert "attn.heads" not in spec.names


class BlockAttention(nn.Module):
    """NesT's attention within blocks: (B, T, N, C) tokens, q, k, v as (B, H, T, N, D) (5-d),
    and the output laid out as (..., D, H): channel c of the output projection's input is in
    head c % H (strided, not a block)."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.h = heads
        self.embed, self.qkv, self.proj = (
            nn.Linear(3, dim),
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )
        self.head = nn.Linear(dim, 2)

    def forward(self, x):  # (B, T, N, 3)
        h = self.embed(x)
        b, t, n, c = h.shape
        qkv = self.qkv(h).reshape(b, t, n, 3, self.h, c // self.h).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 3, 4, 1).reshape(b, t, n, c)
        return self.head(torch.relu(h + self.proj(a)))


def test_five_dim_attention_with_strided_output_heads():
    model = nn.Sequential(BlockAttention()).double()
    x = torch.randn(2, 3, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(8))
    (out,) = [a for a in spec.site("0.heads").actions if a.name == "0.proj.weight"]
    assert (out.outer, out.n_total, out.inner) == (4, 2, 1)  # c = d * H + h
    assert {"0.qk0", "0.vo1"} <= set(spec.names)


class ComputedBias(nn.Module):
    """EVA's packed qkv with a computed bias ``cat(q_bias, zeros, v_bias)``: the projection's
    bias is not a parameter; the head maps act on its parameter pieces (the zero buffer stays)."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.h = heads
        self.embed, self.qkv, self.proj = (
            nn.Linear(3, dim),
            nn.Linear(dim, 3 * dim, bias=False),
            nn.Linear(dim, dim),
        )
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.register_buffer("k_bias", torch.zeros(dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.embed(x)
        b, n, c = h.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(h, self.qkv.weight, bias).reshape(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(b, n, c)
        return self.head(torch.relu(h + self.proj(a)))


def test_a_computed_projection_bias_is_not_ignored():
    model = nn.Sequential(ComputedBias()).double()
    x = torch.randn(2, 5, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(9))
    assert {"0.heads", "0.qk0", "0.vo1"} <= set(spec.names)  # its pieces move with the heads
    assert {"0.q_bias", "0.v_bias"} <= {a.name for a in spec.site("0.heads").actions}
    assert not spec.dropped
    # the stream the projection reads keeps its site
    assert any(a.name == "0.qkv.weight" and a.axis == 1 for s in spec.sites for a in s.actions)


class FreshLike(nn.Module):
    """torchvision Swin builds its shifted-window mask with ``x.new_zeros``: a tensor shaped like
    a hidden one whose values do not depend on it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.h = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        z = h.new_zeros((h.shape[1], h.shape[1])) + torch.ones_like(h)[..., 0].sum()
        return self.h(h + self.b(h) + z.sum())


def test_new_zeros_and_ones_like_are_fixed_tensors():
    model = FreshLike().double()
    x = torch.randn(2, 5, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(10))
    assert spec.coverage(model, x).interior_tensors == 1.0
