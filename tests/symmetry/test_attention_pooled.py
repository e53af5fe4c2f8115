"""MViTv2's pooled attention (timm's ``MultiScaleAttention``): a packed ``qkv`` reshaped per head,
q, k and v pooled by depthwise convs over each head's entries (the heads folded into the batch:
one kernel per entry, shared by all heads), a LayerNorm over head_dim (shared), decomposed
relative positions (an einsum of q with (2 s - 1, head_dim) tables shared by the heads, added
to the scores viewed as (B, H, qh, qw, kh, kw) and written back by ``copy_``), and residual
pooling ``out = A v + q``.

What survives: the heads permute freely (every per-head part is shared); within a head, one
permutation of the entries, the same in every head and for q, k and v (``<attn>.qkv``), moving
the pooling kernels, the norms' affine vectors and the tables' columns. Without residual
pooling v's permutation is its own (``<attn>.vo``). Checked in float32 and float64; a wider
map (a permutation per head, or q's without v's) changes the function. Variants written to fool
the rules (a pooling conv that is not depthwise, per-head pooling, a table read with its
columns reversed, a per-head table, k added instead of q) get none of these sites, and every
returned spec keeps the function."""

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


class PooledAttention(nn.Module):
    """``MultiScaleAttention`` in 35 lines. ``fool``: "dense" (pool_k mixes entries), "unshared"
    (q pooled over all H * D channels: a kernel per head), "flip" (a table read with its
    columns reversed), "per_head" (a table per head), "k_res" (k added to the output, not q),
    "no_res" (no residual pooling: a legitimate variant)."""

    def __init__(self, dim=8, heads=2, size=4, fool=""):
        super().__init__()
        self.h, self.d, self.fool = heads, dim // heads, fool
        d, s = self.d, 2 * size - 1
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        qc = dim if fool == "unshared" else d
        self.pool_q = nn.Conv2d(qc, qc, 3, padding=1, groups=qc, bias=False)
        kv_stride = 1 if fool == "k_res" else 2
        self.pool_k = nn.Conv2d(d, d, 3, kv_stride, 1, groups=1 if fool == "dense" else d)
        self.pool_v = nn.Conv2d(d, d, 3, kv_stride, 1, groups=d, bias=False)
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.rel_pos_h = nn.Parameter(torch.randn(s, heads * d if fool == "per_head" else d))
        self.rel_pos_w = nn.Parameter(torch.randn(s, d))

    def pool(self, t, conv, norm, hw):
        b, h, n, d = t.shape
        if conv.in_channels == h * d:  # "unshared": the heads' channels side by side
            t = conv(t.transpose(1, 2).reshape(b, *hw, h * d).permute(0, 3, 1, 2))
            return norm(t.reshape(b, h, d, -1).transpose(2, 3)), list(t.shape[2:])
        t = conv(t.reshape(b * h, *hw, d).permute(0, 3, 1, 2))
        return norm(t.reshape(b, h, d, -1).transpose(2, 3)), list(t.shape[2:])

    def forward(self, x, hw):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, (qh, qw) = self.pool(q, self.pool_q, self.norm_q, hw)
        k, (kh, kw) = self.pool(k, self.pool_k, self.norm_k, hw)
        v, _ = self.pool(v, self.pool_v, self.norm_v, hw)
        attn = (q * self.d**-0.5) @ k.transpose(-2, -1)
        r = qh // kh
        dist = torch.arange(qh)[:, None] - torch.arange(kh)[None] * r + (kh - 1) * r
        r_q = q.reshape(b, self.h, qh, qw, self.d)
        if self.fool == "per_head":
            table = self.rel_pos_h[dist].view(qh, kh, self.h, self.d)
            rel_h = torch.einsum("byhwc,hkyc->byhwk", r_q, table)
        else:
            table = self.rel_pos_h[dist]
            rel_h = torch.einsum(
                "byhwc,hkc->byhwk", r_q, table.flip(-1) if self.fool == "flip" else table
            )
        rel_w = torch.einsum("byhwc,wkc->byhwk", r_q, self.rel_pos_w[dist])
        attn[:, :, 0:, 0:] = (
            attn[:, :, 0:, 0:].view(b, -1, qh, qw, kh, kw)
            + rel_h.unsqueeze(-1)
            + rel_w.unsqueeze(-2)
        ).view(b, -1, qh * qw, kh * kw)
        x = attn.softmax(-1) @ v
        if self.fool != "no_res":
            x = x + (k if self.fool == "k_res" else q)
        return self.proj(x.transpose(1, 2).reshape(b, -1, self.h * self.d))


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.attn, self.head = nn.Linear(5, 8), PooledAttention(**kw), nn.Linear(8, 4)
        with torch.no_grad():  # norms' affine vectors away from 1 and 0
            for norm in (self.attn.norm_q, self.attn.norm_k, self.attn.norm_v):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_()

    def forward(self, x):
        return self.head(torch.relu(self.attn(F.layer_norm(self.embed(x), (8,)), [4, 4])))


def _x(dtype=F64) -> torch.Tensor:
    return torch.randn(2, 16, 5, generator=_gen(1)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_pooled_attention_sites_keep_the_function(dtype):
    spec = assert_function_preserved(Net().to(dtype), _x(dtype), dtype=dtype, generator=_gen(3))
    assert not spec.dropped
    site = spec.site("attn.qkv")
    assert site.width == 4 and site.group.family.name == "permutation"
    moved = {(a.name, a.axis) for a in site.actions}
    for t in "qkv":
        assert {(f"attn.pool_{t}.weight", 0), (f"attn.norm_{t}.weight", 0)} <= moved
    assert {("attn.rel_pos_h", 1), ("attn.rel_pos_w", 1), ("attn.proj.weight", 1)} <= moved
    heads = {(a.name, a.axis) for a in spec.site("attn.heads").actions}
    assert heads == {("attn.qkv.weight", 0), ("attn.qkv.bias", 0), ("attn.proj.weight", 1)}


def test_without_residual_pooling_v_has_its_own_permutation():
    spec = assert_function_preserved(Net(fool="no_res").double(), _x(), generator=_gen(3))
    assert {"attn.heads", "attn.qk", "attn.vo"} <= set(spec.names)
    assert ("attn.pool_v.weight", 0) in {(a.name, a.axis) for a in spec.site("attn.vo").actions}


def _changed(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((_run(a, x) - _run(b, x)).abs().max())


def test_a_wider_map_changes_the_function():
    """q's and k's entries permuted without v's (residual pooling ties them), or one head's
    entries permuted alone (the kernels are shared), change the function; the site's element
    does not."""
    model, x = Net().double(), _x()
    spec = trace(model, x)
    perm = torch.tensor([2, 0, 3, 1])
    g = spec.site("attn.qkv").group.project(torch.eye(4, dtype=F64)[perm])
    moved = apply(model, spec, {"attn.qkv": g})
    assert _changed(model, moved, x) < 1e-12
    no_v = apply(model, spec, {"attn.qkv": g})
    with torch.no_grad():  # v's rows of qkv (16:24), pool and norm, proj's columns back
        for name in ("pool_v.weight", "norm_v.weight", "norm_v.bias", "proj.weight"):
            no_v.attn.get_parameter(name).copy_(model.attn.get_parameter(name))
        no_v.attn.qkv.weight[16:] = model.attn.qkv.weight[16:]
        no_v.attn.qkv.bias[16:] = model.attn.qkv.bias[16:]
    assert _changed(model, no_v, x) > 1e-6
    one_head = Net().double()
    one_head.load_state_dict(model.state_dict())
    with torch.no_grad():  # head 0's q, k, v rows and proj's columns only: not the kernels
        for start in (0, 8, 16):
            one_head.attn.qkv.weight[start : start + 4] = model.attn.qkv.weight[start + perm]
            one_head.attn.qkv.bias[start : start + 4] = model.attn.qkv.bias[start + perm]
        one_head.attn.proj.weight[:, :4] = model.attn.proj.weight[:, perm]
    assert _changed(model, one_head, x) > 1e-6


@pytest.mark.parametrize("fool", ["dense", "unshared", "flip", "per_head", "k_res"])
def test_fooling_variants_get_no_entry_sites_and_keep_the_function(fool):
    spec = assert_function_preserved(Net(fool=fool).double(), _x(), generator=_gen(3))
    assert not {"attn.qkv", "attn.qk", "attn.vo"} & set(spec.names)


class EinsumMix(nn.Module):
    """A hidden (B, N, C) tensor through ``einsum(eq, [h, w])`` with a parameter ``w``: "mix"
    (``bnc,nm->bmc``: positions mixed, the same for every feature: the features pass), and
    variants the einsum rule must freeze: "linear" (``bnc,cd->bnd``: the features summed with a
    weight), "per_feature" (``bnc,nc->bnc``: a weight per feature), "bilinear" (``bnc,bmc->bnm``
    of two hidden tensors)."""

    def __init__(self, eq="mix"):
        super().__init__()
        self.eq = eq
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6 if eq != "bilinear" else 4, 3)
        shapes = {"mix": (4, 4), "linear": (6, 6), "per_feature": (4, 6), "bilinear": (1,)}
        self.w = nn.Parameter(torch.randn(*shapes[eq], generator=_gen(5)))

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        equation = {"mix": "bnc,nm->bmc", "linear": "bnc,cd->bnd", "per_feature": "bnc,nc->bnc"}
        if self.eq == "bilinear":
            return self.fc2(torch.einsum("bnc,bmc->bnm", h, h))
        return self.fc2(torch.einsum(equation[self.eq], h, self.w))


def test_einsum_passes_the_features_when_it_mixes_positions_alone():
    model, x = EinsumMix().double(), torch.randn(2, 4, 5, generator=_gen(1), dtype=F64)
    spec = assert_function_preserved(model, x, generator=_gen(2))
    (site,) = [s for s in spec.sites if ("fc2.weight", 1) in {(a.name, a.axis) for a in s.actions}]
    assert site.width == 6 and ("fc1.weight", 0) in {(a.name, a.axis) for a in site.actions}


@pytest.mark.parametrize(
    ("eq", "why"),
    [
        ("linear", "sums over the feature axis"),
        ("per_feature", "varies along the feature axis"),
        ("bilinear", "a product of computed tensors"),
    ],  # fmt: skip
)
def test_einsum_freezes_other_equations_with_the_reason(eq, why):
    model, x = EinsumMix(eq).double(), torch.randn(2, 4, 5, generator=_gen(1), dtype=F64)
    spec = assert_function_preserved(model, x, generator=_gen(2))
    assert not any(("fc1.weight", 0) in {(a.name, a.axis) for a in s.actions} for s in spec.sites)
    reasons = " ".join(f.reason for f in spec.coverage(model, x).frozen)
    assert "einsum" in reasons and why in reasons
