"""Attention written with ``einsum`` over grid-partitioned tokens (torchvision's MaxViT:
``einsum("B G H I D, B G H J D -> B G H I J", q, k)``), heads on dim -3 of 5-d tensors, with a
relative position table per head. The heads and per-head maps are found; the fooling variant
(the key's head and grid dims swapped, equal in size, so that query head h meets the keys of
grid cell h) must keep the heads in place, and every returned site keeps the function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.symmetry import assert_function_preserved

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GridAttention(nn.Module):
    def __init__(self, dim=8, heads=2, n=4, swap=False):
        super().__init__()
        self.h, self.d, self.swap = heads, dim // heads, swap
        self.qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(2 * n - 1, heads, generator=_gen(5)))
        pos = torch.arange(n)
        self.register_buffer("index", (pos[:, None] - pos[None, :] + n - 1).view(-1))

    def forward(self, x):  # (B, G, P, C)
        b, g, p, c = x.shape
        q, k, v = (
            t.reshape(b, g, p, self.h, self.d).permute(0, 1, 3, 2, 4)
            for t in self.qkv(x).chunk(3, -1)
        )
        if self.swap:
            k = k.transpose(1, 2)  # (B, H, G, J, D) read as (B, G, H, J, D)
        scores = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k * self.d**-0.5)
        bias = self.table[self.index].view(p, p, -1).permute(2, 0, 1).unsqueeze(0)
        probs = (scores + bias).softmax(-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", probs, v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, c))


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(3, 8), GridAttention(**kw), nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        return self.head(torch.relu(h + self.attn(h)))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_einsum_grid_attention_finds_heads_and_moves_the_table(dtype):
    model = Net().to(dtype)
    x = torch.randn(2, 2, 4, 3, generator=_gen()).to(dtype)  # 2 grid cells of 4 tokens
    spec = assert_function_preserved(model, x, generator=_gen(1))
    assert {"attn.heads", "attn.qk0", "attn.qk1", "attn.vo0", "attn.vo1"} <= set(spec.names)
    assert ("attn.table", 1) in {(a.name, a.axis) for a in spec.site("attn.heads").actions}
    assert not spec.dropped


def test_swapped_head_and_grid_dims_keep_the_heads_in_place():
    model = Net(swap=True).double()
    x = torch.randn(2, 2, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(2))
    assert not [s for s in spec.names if s.startswith("attn.")]
    assert not spec.dropped


def test_a_single_head_records_why_its_table_stays():
    """One head (MaxViT's first stage): the heads of 5-d tensors are still read on dim -3 (the
    grid dim repeats channels, it holds no heads), and the table is frozen with a reason."""
    model = Net(heads=1).double()
    x = torch.randn(2, 2, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(3))
    assert {"attn.qk0", "attn.vo0"} <= set(spec.names)
    reasons = {f.module: f.reason for f in spec.coverage(model, x).frozen}
    assert "single attention head" in reasons["attn"]


class ContiguousKeys(nn.Module):
    """GCViT's ``q @ k.transpose(-2, -1).contiguous()``; ``fool``: ``q @ k.contiguous()`` with
    head dim == tokens (a product over tokens, not over the head dim), which must be refused."""

    def __init__(self, fool=False):
        super().__init__()
        self.fool, self.qkv, self.proj = fool, nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):  # (B, 4, 8): 2 heads of 4, 4 tokens
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        kt = k.contiguous() if self.fool else k.transpose(-2, -1).contiguous()
        out = (q @ kt).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("fool", [False, True])
def test_contiguous_keys(fool):
    model = nn.Sequential(nn.Linear(3, 8), ContiguousKeys(fool), nn.ReLU(), nn.Linear(8, 2))
    model = model.double()
    x = torch.randn(2, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(4))
    assert ("1.heads" in spec.names) is not fool
    assert not spec.dropped
