"""A per-head attention bias read from a cache (timm's TinyViT and EfficientFormer fill
``attention_bias_cache`` on their first eval-mode forward): the graph then reads a constant, not
the parameter, so a head permutation that moved the parameter would leave the bias in place.
The heads must stay (with the reason recorded on the parameter); the per-head maps stay. The
same block without the cache moves the table with its heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import assert_function_preserved

F64 = torch.float64


class CachedBiasAttention(nn.Module):
    def __init__(self, dim=8, heads=2, n=4, cache=True):
        super().__init__()
        self.h, self.d, self.use_cache = heads, dim // heads, cache
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        g = torch.Generator().manual_seed(5)
        self.attention_biases = nn.Parameter(torch.randn(heads, 2 * n - 1, generator=g))
        pos = torch.arange(n)
        self.register_buffer("idxs", pos[:, None] - pos[None, :] + n - 1, persistent=False)
        self.cache: dict[str, torch.Tensor] = {}

    def bias(self):
        if not self.use_cache:
            return self.attention_biases[:, self.idxs]
        if "cpu" not in self.cache:
            self.cache["cpu"] = self.attention_biases[:, self.idxs]
        return self.cache["cpu"]

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, self.h, -1).transpose(1, 2).chunk(3, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias())
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.embed, self.attn, self.head = (
            nn.Linear(4, 8),
            CachedBiasAttention(**kw),
            nn.Linear(8, 3),
        )

    def forward(self, x):
        h = self.embed(x)
        return self.head(torch.relu(h + self.attn(h)))


@pytest.mark.parametrize("cache", [True, False])
def test_a_cached_bias_keeps_the_heads_in_place(cache):
    model = Net(cache=cache).double()
    x = torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)  # fills the cache, as an eval-mode forward does
    spec = assert_function_preserved(model, x, generator=torch.Generator().manual_seed(1))
    assert {"attn.qk0", "attn.vo1"} <= set(spec.names)
    assert ("attn.heads" in spec.names) is not cache
    assert not spec.dropped
    assert any("from a cache" in reason for _, reason in spec.frozen) is cache


def test_a_table_beside_a_cache_of_tensors_keeps_the_heads_in_place():
    """timm's LeViT gathers its bias from the table under export (the graph reads the parameter)
    but keeps ``attention_bias_cache``, which an eval-mode forward fills and then reads instead:
    moving the table with the heads would leave that cached bias stale, so the heads stay."""
    model = Net(cache=False).double()
    model.attn.attention_bias_cache = {}
    x = torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    spec = assert_function_preserved(model, x, generator=torch.Generator().manual_seed(1))
    assert {"attn.qk0", "attn.vo1"} <= set(spec.names) and "attn.heads" not in spec.names
    assert any("cache of tensors" in reason for _, reason in spec.frozen)
