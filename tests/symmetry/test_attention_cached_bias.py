"""A per-head attention bias read from a cache (timm's LeViT, TinyViT, EfficientFormer and
EfficientViT fill ``attention_bias_cache`` with the bias gathered from their table on an
eval-mode forward and read it afterwards instead of the table).

The library empties such caches (a dict named ``*cache`` holding tensors) before every forward it
runs, before the export ``trace`` reads and after every element it writes, so the graph gathers
the bias from the table, the heads move the table, and a transformed copy computes from its
moved table. A stale cache can then never hide a change: a copy whose table was changed behind
a filled cache is checked against what it really computes. A dict of tensors under another name
is not known to be a cache: the heads stay in place, with the reason recorded."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, check, random_elements, trace
from intertwiner.symmetry.check import _run
from intertwiner.testing import import_timm, randomize_model, sample_non_identity

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CachedBiasAttention(nn.Module):
    """``store``: where the eval-mode forward keeps the gathered bias: "attention_bias_cache"
    (timm's name), "bias_store" (a dict of tensors not named a cache) or "" (no cache)."""

    def __init__(self, dim=8, heads=2, n=4, store="attention_bias_cache"):
        super().__init__()
        self.h, self.d, self.store = heads, dim // heads, store
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, 2 * n - 1, generator=_gen(5)))
        pos = torch.arange(n)
        self.register_buffer("idxs", pos[:, None] - pos[None, :] + n - 1, persistent=False)
        if store:
            setattr(self, store, {})

    def bias(self):
        if not self.store or self.training:
            return self.attention_biases[:, self.idxs]
        cache = getattr(self, self.store)
        if "cpu" not in cache:
            cache["cpu"] = self.attention_biases[:, self.idxs]
        return cache["cpu"]

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


def _x() -> torch.Tensor:
    return torch.randn(3, 4, 4, dtype=F64, generator=_gen(0))


def _filled(**kw) -> Net:
    """An eval-mode model whose cache (if any) an earlier forward has filled."""
    model = Net(**kw).double().eval()
    with torch.no_grad():
        model(_x())
    return model


@pytest.mark.parametrize("store", ["attention_bias_cache", ""])
def test_the_heads_move_their_table_past_a_cache(store):
    model = _filled(store=store)
    spec = assert_function_preserved(model, _x(), generator=_gen(1))
    assert {"attn.heads", "attn.qk0", "attn.vo1"} <= set(spec.names)
    moved = {a.name for a in spec.site("attn.heads").actions}
    assert "attn.attention_biases" in moved
    assert not spec.dropped


def test_a_transformed_copy_computes_from_its_moved_table():
    """``apply`` writes the elements and empties the copy's cache: the copy's own forward (the
    user's call, not the library's) reads the moved table, so it computes the same function;
    the original keeps its cache."""
    model = _filled()
    x = _x()
    spec = trace(model, x)
    heads = spec.site("attn.heads")
    swap = sample_non_identity(heads.group, 2)
    new = apply(model, spec, {"attn.heads": swap})
    with torch.no_grad():
        assert (new(x) - model(x)).abs().max() < 1e-12
    assert model.attn.attention_bias_cache  # untouched
    # the copy's cache now holds the permuted bias: its rows are the original's, swapped
    cached = new.attn.attention_bias_cache["cpu"]
    assert torch.equal(cached.flip(0), model.attn.attention_bias_cache["cpu"])


def test_a_stale_cache_never_hides_a_change():
    """A copy whose table changed behind its filled cache computes something else once the cache
    is rebuilt; ``check`` (and verification) must measure that, not the cached bias."""
    model = _filled()
    x = _x()
    changed = copy.deepcopy(model)  # the cache is copied, filled
    assert changed.attn.attention_bias_cache
    with torch.no_grad():
        changed.attn.attention_biases.mul_(-1.0)  # the cache still holds the old bias
    spec = trace(model, x)
    none = {s.name: s.group.identity(s.width) for s in spec.sites}
    assert check(model, spec, x, elements=none) == 0.0
    with torch.no_grad():
        fresh = Net().double().eval()
        fresh.load_state_dict(changed.state_dict())
        real = float((fresh(x) - model(x)).abs().max())
    assert real > 1e-6
    assert float((_run(changed, x) - _run(model, x)).abs().max()) == pytest.approx(real)


def test_a_dict_of_tensors_that_is_not_named_a_cache_keeps_the_heads_in_place():
    """``bias_store`` is filled and read like a cache, but nothing says it is one (the library
    does not empty it): moving the table would leave what it holds stale, so the heads stay."""
    model = _filled(store="bias_store")
    spec = assert_function_preserved(model, _x(), generator=_gen(1))
    assert {"attn.qk0", "attn.vo1"} <= set(spec.names) and "attn.heads" not in spec.names
    assert any("from a cache" in reason for _, reason in spec.frozen)
    assert not spec.dropped


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed ([zoo])")
def test_timm_levit_heads_move_their_cached_tables():
    """timm's LeViT: every attention (and attention-downsample, whose ``kv`` packs 16 key and
    64 value rows per head) moves its heads with ``attention_biases``, past a filled cache."""
    torch.manual_seed(0)
    timm = import_timm()
    model = timm.create_model("levit_128s", pretrained=False, num_classes=5, img_size=64).eval()
    randomize_model(model, 0)
    model = model.double()
    x = torch.randn(2, 3, 64, 64, generator=_gen(1), dtype=F64)
    with torch.no_grad():
        model(x)  # fills every attention_bias_cache
    spec = trace(model, x)
    assert not spec.dropped
    heads = [s for s in spec.sites if s.kind == "attention_heads"]
    assert len(heads) == 11
    assert all(any(a.name.endswith("attention_biases") for a in s.actions) for s in heads)
    ref = float(_run(model, x).abs().max())
    assert check(model, spec, x, elements=random_elements(spec, generator=_gen(2))) < 1e-10 * ref
    assert spec.coverage(model, x).interior_tensors == 1.0
