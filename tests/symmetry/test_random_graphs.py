"""Property test for soundness: random programs of the ops real models use (Linear, activations
with arguments, composite elementwise functions, concatenation, splitting, gates, RMS and
LayerNorm, per-feature scales, residual additions, and ops with no symmetry) traced by both front
ends. Whatever ``trace`` returns must preserve the function at float64 round-off, and no site may
need the verifier to drop it (a dropped site means a rule claimed too much)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.check import _run

OPS = [
    "linear",
    "relu",
    "tanh",
    "gelu_tanh",
    "silu_written_out",
    "hardtanh_0_3",
    "leaky_0.2",
    "scalar_affine",
    "cat_branches",
    "split_recombine",
    "gate",
    "rmsnorm",
    "layernorm",
    "scale_param",
    "residual_mlp",
    "softmax",
    "cumsum",
]


class Program(nn.Module):
    """Applies ``ops`` in order to a hidden tensor of width ``d`` (every op keeps the width)."""

    def __init__(self, ops: list[str], d: int):
        super().__init__()
        self.ops = ops
        self.inp, self.out = nn.Linear(3, d), nn.Linear(d, 2)
        self.layers = nn.ModuleList()
        for op in ops:
            m = nn.Module()
            if op in ("linear", "cat_branches", "split_recombine", "gate", "residual_mlp"):
                m.a, m.b = nn.Linear(d, d), nn.Linear(d, d)
                m.c = nn.Linear(2 * d, d)
            if op in ("rmsnorm", "scale_param"):
                m.w = nn.Parameter(torch.rand(d) + 0.5)
            if op == "layernorm":
                m.norm = nn.LayerNorm(d)
            self.layers.append(m)

    def forward(self, x):
        h = self.inp(x)
        for op, m in zip(self.ops, self.layers, strict=True):
            h = _step(op, m, h)
        return self.out(h)


def _step(op: str, m: nn.Module, h: torch.Tensor) -> torch.Tensor:  # noqa: C901 (a table)
    if op == "linear":
        return m.a(h)
    if op == "relu":
        return torch.relu(h)
    if op == "tanh":
        return torch.tanh(h)
    if op == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if op == "silu_written_out":
        return h * torch.sigmoid(h)
    if op == "hardtanh_0_3":
        return F.hardtanh(h, 0.0, 3.0)
    if op == "leaky_0.2":
        return F.leaky_relu(h, 0.2)
    if op == "scalar_affine":
        return 2.0 * h + 1.0
    if op == "cat_branches":
        return m.c(torch.cat([torch.relu(m.a(h)), torch.tanh(m.b(h))], dim=-1))
    if op == "split_recombine":
        both = torch.cat([m.a(h), m.b(h)], dim=-1)
        p, q = both.split([h.shape[-1], h.shape[-1]], dim=-1)
        return m.c(torch.cat([torch.relu(p), q * 0.5], dim=-1))
    if op == "gate":
        return m.c(torch.cat([m.a(h) * torch.sigmoid(m.b(h)), h], dim=-1))
    if op == "rmsnorm":
        return m.w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
    if op == "layernorm":
        return m.norm(h)
    if op == "scale_param":
        return h * m.w
    if op == "residual_mlp":
        return h + m.b(torch.relu(m.a(h)))
    if op == "softmax":
        return torch.softmax(h, dim=-1)
    if op == "cumsum":
        return torch.cumsum(h, dim=-1)
    raise AssertionError(op)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=5),
    d=st.integers(2, 5),
    seed=st.integers(0, 999),
    frontend=st.sampled_from(["auto", "export"]),
)
def test_random_programs_are_sound(ops, d, seed, frontend):
    torch.manual_seed(seed)
    model = Program(ops, d).double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    spec = trace(model, x, frontend=frontend)
    assert not spec.dropped, (ops, spec.dropped)
    ref = _run(model, x)
    for s in range(2):
        new = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(s)))
        err = float((_run(new, x) - ref).abs().max() / ref.abs().max())
        assert err < 1e-9, (ops, frontend, err, spec.names)


class Attention(nn.Module):
    """Self-attention written the way model code writes it, with switchable variations:
    grouped-query heads, a rotary-style rotation of q and k, a per-head additive bias, a packed
    q|k|v projection."""

    def __init__(self, d: int, heads: int, kv_heads: int, rotary: bool, bias: bool, packed: bool):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.rotary, self.packed = rotary, packed
        if packed:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, kv_heads * self.hd)
            self.v = nn.Linear(d, kv_heads * self.hd)
        self.o = nn.Linear(d, d)
        self.head_bias = nn.Parameter(torch.randn(heads, 1, 1)) if bias else None

    def forward(self, x):
        b, t, d = x.shape
        if self.packed:
            q, k, v = self.qkv(x).split(d, dim=-1)
            kv = self.h
        else:
            q, k, v, kv = self.q(x), self.k(x), self.v(x), self.kv
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, kv, self.hd).transpose(1, 2)
        v = v.view(b, t, kv, self.hd).transpose(1, 2)
        if self.rotary:
            angle = torch.arange(t, dtype=x.dtype)[:, None] * 0.3
            cos, sin = torch.cos(angle), torch.sin(angle)

            def rot(z):
                half = z.shape[-1] // 2
                rotated = torch.cat([-z[..., half:], z[..., :half]], dim=-1)
                return z * cos + rotated * sin

            q, k = rot(q), rot(k)
        mask = None
        if self.head_bias is not None:
            mask = self.head_bias.expand(self.h, t, t).unsqueeze(0).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != self.h)
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class TokenProgram(nn.Module):
    def __init__(self, blocks: list[tuple], heads: int, d: int):
        super().__init__()
        self.inp, self.out = nn.Linear(3, d), nn.Linear(d, 2)
        self.attn = nn.ModuleList(Attention(d, heads, *b[:4]) for b in blocks)
        self.norms = nn.ModuleList(nn.LayerNorm(d) if b[4] else nn.Identity() for b in blocks)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in blocks
        )

    def forward(self, x):
        h = self.inp(x)
        for attn, norm, mlp in zip(self.attn, self.norms, self.mlps, strict=True):
            h = h + attn(norm(h))
            h = h + mlp(norm(h))
        return self.out(h)


attention_block = st.tuples(
    st.sampled_from([1, 2]),  # kv heads (with 2 or 4 query heads: plain or grouped-query)
    st.booleans(),  # rotary
    st.booleans(),  # per-head bias
    st.booleans(),  # packed q|k|v (only without GQA)
    st.booleans(),  # LayerNorm on the stream
)


@settings(max_examples=25, deadline=None)
@given(
    blocks=st.lists(attention_block, min_size=1, max_size=2),
    heads=st.sampled_from([2, 4]),
    seed=st.integers(0, 999),
)
def test_random_attention_programs_are_sound(blocks, heads, seed):
    blocks = [
        (min(kv, heads), rot, bias, packed and kv == heads, ln)
        for kv, rot, bias, packed, ln in blocks
    ]
    torch.manual_seed(seed)
    model = TokenProgram(blocks, heads, d=2 * heads).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    spec = trace(model, x)
    assert not spec.dropped, (blocks, spec.dropped)
    kinds = [s.kind for s in spec.sites]
    assert kinds.count("attention_vo") == sum(
        kv if not packed else heads for kv, _, _, packed, _ in blocks
    )
    ref = _run(model, x)
    for s in range(2):
        new = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(s)))
        err = float((_run(new, x) - ref).abs().max() / ref.abs().max())
        assert err < 1e-9, (blocks, err, spec.names)
