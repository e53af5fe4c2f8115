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
