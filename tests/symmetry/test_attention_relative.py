"""Attention with relative position logits and its heads folded into the batch dim (BoTNet's
``BottleneckAttn``, HaloNet's ``HaloAttn``): a 1 x 1 convolution makes q, k and v, each reshaped
to (B * H, D, L); the scores ``q k^T * s`` get ``rel_to_abs(q R^T)`` added, R one (2L - 1, D)
table shared by every head; the heads' outputs are reshaped back to (B, C, L) and go on to a
BatchNorm, an activation and the next convolution (no output projection).

What survives (``_attention._rel_logits``): a permutation of the heads (q, k, v row blocks, the
BatchNorm's vectors and the next convolution's columns), ONE GL(D) for the q / k pair of every
head with the table's columns moving by its inverse transpose (a different matrix per head would
need a different table per head: it changes the function, checked below), and per head a map of
v's channels that the ordinary rules restrict after the merge (G_ReLU here). Models written to
fool the rules must be refused by the rules (nothing dropped by verification)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, random_elements, trace
from intertwiner.testing import import_timm, randomize_model

F64 = torch.float64
L, H, D = 5, 2, 4  # positions, heads, head dim


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """(N, L, 2L - 1) logits by relative offset -> (N, L, L) by absolute position (timm's
    ``rel_logits_1d``: pad, flatten, pad, reshape, slice)."""
    n = x.shape[-2]
    x = F.pad(F.pad(x, [0, 1]).flatten(1), [0, n - 1])
    return x.reshape(-1, n + 1, 2 * n - 1)[:, :n, n - 1 :]


class RelAttn(nn.Module):
    """``fool``: None, "per_head_table" (a (H, 2L - 1, D) table, head h reading table h + 1 mod
    H), "channel_pad" (the kv channels shifted by a pad), "head_major" (q folded (H * B), k and
    v (B * H)), "roll" (the logits rolled over the folded batch dim: heads exchange logits)."""

    def __init__(self, fool: str | None = None):
        super().__init__()
        self.fool, c = fool, H * D
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        shape = (H, 2 * L - 1, D) if fool == "per_head_table" else (2 * L - 1, D)
        self.rel = nn.Parameter(torch.randn(*shape, generator=_gen(5)) * 0.5)

    def forward(self, x):
        b, c, n = x.shape
        qkv = self.qkv(x)
        if self.fool == "channel_pad":
            qkv = F.pad(qkv, [0, 0, 1, 0])[:, :-1]
        q, k, v = qkv.split(c, dim=1)
        q = q.reshape(b * H, D, n).transpose(-1, -2)  # (B * H, L, D)
        if self.fool == "head_major":
            q = q.reshape(b, H, n, D).transpose(0, 1).reshape(H * b, n, D)
        k, v = k.reshape(b * H, D, n), v.reshape(b * H, D, n).transpose(-1, -2)
        if self.fool == "per_head_table":
            table = self.rel.roll(-1, 0).repeat(b, 1, 1)  # (B * H, 2L - 1, D)
            logits = rel_to_abs(q @ table.transpose(-1, -2))
        elif self.fool == "no_rel":  # plain scores: no relative logits at all
            logits = torch.zeros((), dtype=q.dtype)
        else:
            logits = rel_to_abs(q @ self.rel.transpose(-1, -2))
        if self.fool == "roll":
            logits = logits.roll(1, 0)
        attn = ((q @ k) * D**-0.5 + logits).softmax(-1)
        out = (attn @ v).transpose(-1, -2).reshape(b, c, n)
        if self.fool == "q_leak":
            return out + q.mean()  # q read outside the attention too
        return out + logits.sum((0, 1))[None, None] if self.fool == "leak" else out


def _model(fool: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, H * D, 1), nn.ReLU(), RelAttn(fool), nn.BatchNorm1d(H * D), nn.ReLU(),
        nn.Conv1d(H * D, 2, 1),
    )  # fmt: skip
    with torch.no_grad():
        model[3].running_mean.normal_(generator=_gen(7))
        model[3].running_var.uniform_(0.5, 2.0, generator=_gen(8))
        model[3].weight.uniform_(0.5, 1.5, generator=_gen(9))
    return model.double().eval()


def _x(dtype=F64) -> torch.Tensor:
    return torch.randn(2, 3, L, dtype=dtype, generator=_gen(1))


def _sites(spec) -> dict:
    return {s.name: s for s in spec.sites if s.name.startswith("2.")}


def test_relative_logits_keep_heads_one_qk_map_and_values():
    model = _model()
    spec = assert_function_preserved(model, _x(), generator=_gen(2))
    sites = _sites(spec)
    assert set(sites) == {"2.heads", "2.qk", "2.vo0", "2.vo1"} and not spec.dropped
    assert sites["2.qk"].group.family.name == "general_linear"
    moved = {(a.name, a.axis, str(a.kind)) for a in sites["2.qk"].actions}
    assert ("2.rel", 1, "A^-T") in moved  # the shared table's columns move by M^-T
    heads = {a.name for a in sites["2.heads"].actions}
    assert {"2.qkv.weight", "3.weight", "3.running_var", "5.weight"} <= heads
    assert "2.rel" not in heads  # shared by every head: nothing to permute
    assert sites["2.vo0"].group.name == "G_ReLU"  # restricted by the BatchNorm and ReLU after


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (F64, 1e-10)])
def test_a_sampled_element_keeps_the_function(dtype, tol):
    model = _model().to(dtype)
    spec = trace(model, _x(dtype))
    for seed in range(3):
        new = apply(model, spec, random_elements(spec, generator=_gen(seed)))
        ref = model(_x(dtype))
        assert float((new(_x(dtype)) - ref).abs().max()) <= tol * float(ref.abs().max())


def test_a_different_qk_map_per_head_changes_the_function():
    """The larger group (M_h per head, the shared table moved by head 0's M^-T) is not kept,
    while the same construction with one M for both heads is."""
    model = _model()
    g = _gen(4)
    m = [torch.randn(D, D, dtype=F64, generator=g) + 3 * torch.eye(D, dtype=F64) for _ in range(H)]
    ref = model(_x())

    def moved(ms):
        new = _model()
        w, c = new[2].qkv.weight.data, H * D  # (3C, C, 1): q rows, k rows, v rows
        b = new[2].qkv.bias.data
        for h in range(H):
            q, k = slice(h * D, (h + 1) * D), slice(c + h * D, c + (h + 1) * D)
            w[q, :, 0], b[q] = ms[h] @ w[q, :, 0], ms[h] @ b[q]
            inv_t = torch.linalg.inv(ms[h]).T
            w[k, :, 0], b[k] = inv_t @ w[k, :, 0], inv_t @ b[k]
        new[2].rel.data = new[2].rel.data @ torch.linalg.inv(ms[0])  # rows r -> M0^-T r
        return float((new(_x()) - ref).abs().max())

    assert moved([m[0], m[0]]) < 1e-10
    assert moved(m) > 1e-3


@pytest.mark.parametrize(
    "fool, found",
    [
        ("per_head_table", set()),  # a per-head table: no relative logits the rules read
        ("channel_pad", set()),  # a pad that shifts the channels: no head layout
        ("head_major", set()),  # q's heads folded in another order than k's and v's
        ("roll", {"2.qk", "2.vo0", "2.vo1"}),  # logits exchanged between heads: no permutation
        ("leak", set()),  # the logits also read outside the attention
        ("q_leak", set()),  # q also read outside the attention
    ],
)
def test_fooling_variants_are_refused_or_restricted(fool, found):
    model = _model(fool)
    spec = assert_function_preserved(model, _x(), generator=_gen(3))
    assert set(_sites(spec)) == found
    assert not spec.dropped  # refused by the rules, not by verification
    assert not [a for s in spec.sites for a in s.actions if a.name == "2.rel" and fool != "roll"]


class Projected(RelAttn):
    """``RelAttn`` with an output projection after the merged heads (the usual attention layout)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv1d(H * D, H * D, 1)

    def forward(self, x):
        return self.proj(super().forward(x))


def test_relative_logits_with_an_output_projection():
    model = nn.Sequential(nn.Conv1d(3, H * D, 1), nn.ReLU(), Projected(), nn.Conv1d(H * D, 2, 1))
    spec = assert_function_preserved(model.double(), _x(), generator=_gen(2))
    sites = _sites(spec)
    assert set(sites) == {"2.heads", "2.qk", "2.vo0", "2.vo1"} and not spec.dropped
    assert sites["2.vo0"].group.family.name == "general_linear"  # the projection absorbs GL
    assert "2.rel" in {a.name for a in sites["2.qk"].actions}


class Halo(nn.Module):
    """HaloNet's layout in one dim: q in blocks of ``bs`` positions, k and v in windows of
    ``bs + 2 halo`` cut by a zero pad and ``unfold``, heads folded into the batch dim, each head's
    k and v channels side by side in one convolution (``kv``)."""

    def __init__(self, bs: int = 2, halo: int = 1):
        super().__init__()
        self.bs, self.halo, c = bs, halo, H * D
        self.q, self.kv = nn.Conv1d(c, c, 1), nn.Conv1d(c, 2 * c, 1)

    def forward(self, x):
        b, c, n = x.shape
        nb, win = n // self.bs, self.bs + 2 * self.halo
        q = self.q(x).reshape(b * H, D, nb, self.bs).permute(0, 2, 3, 1)  # (BH, nb, bs, D)
        kv = F.pad(self.kv(x), [self.halo, self.halo]).unfold(2, win, self.bs)
        kv = kv.reshape(b * H, 2 * D, nb, win).permute(0, 2, 3, 1)  # (BH, nb, win, 2D)
        k, v = kv.split(D, dim=-1)
        attn = (q @ k.transpose(-1, -2) * D**-0.5).softmax(-1)
        out = (attn @ v).permute(0, 3, 1, 2)  # (BH, D, nb, bs)
        return out.reshape(b, c, n)


def test_halo_windows_with_a_zero_pad_keep_heads_and_maps():
    model = nn.Sequential(nn.Conv1d(3, H * D, 1), nn.ReLU(), Halo(), nn.Conv1d(H * D, 2, 1))
    x = torch.randn(2, 3, 6, dtype=F64, generator=_gen(1))
    spec = assert_function_preserved(model.double(), x, generator=_gen(2))
    assert set(_sites(spec)) == {"2.heads", "2.qk0", "2.qk1", "2.vo0", "2.vo1"}
    assert not spec.dropped


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed ([zoo])")
@pytest.mark.parametrize("layer", ["BottleneckAttn", "HaloAttn"])
def test_timm_bottleneck_and_halo_attention(layer):
    """timm's own layers (random weights, nothing downloaded) between a conv and BatchNorm ->
    ReLU -> conv, as in its BoTNet and HaloNet blocks."""
    timm = import_timm()
    if layer == "BottleneckAttn":
        attn = timm.layers.bottleneck_attn.BottleneckAttn(16, 16, feat_size=(4, 4), num_heads=2)
    else:
        attn = timm.layers.halo_attn.HaloAttn(16, 16, num_heads=2, block_size=2, halo_size=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), attn, nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 2, 1))  # fmt: skip
    randomize_model(model, generator=_gen(6))
    x = torch.randn(2, 3, 4, 4, dtype=F64, generator=_gen(1))
    spec = assert_function_preserved(model.eval(), x, generator=_gen(2))
    assert set(_sites(spec)) == {"2.heads", "2.qk", "2.vo0", "2.vo1"} and not spec.dropped
    assert {"2.pos_embed.height_rel", "2.pos_embed.width_rel"} <= {
        a.name for a in _sites(spec)["2.qk"].actions
    }


def test_merged_heads_without_relative_logits_keep_one_qk_map_per_head():
    """No output projection and no relative logits: each head keeps its own GL(D) on q / k
    (nothing shared ties the heads' maps), besides the head permutation and the values."""
    model = _model("no_rel")
    spec = assert_function_preserved(model, _x(), generator=_gen(2))
    sites = _sites(spec)
    assert {"2.heads", "2.qk0", "2.qk1", "2.vo0", "2.vo1"} <= set(sites) and not spec.dropped
    assert sites["2.qk0"].group.family.name == "general_linear"
    for dtype in (torch.float32, F64):
        m = model.to(dtype)
        ref = m(_x(dtype))
        new = apply(m, spec, random_elements(spec, _gen(3)))(_x(dtype))
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert float((new - ref).abs().max()) <= tol * float(ref.abs().max())


def test_merged_heads_permute_into_a_transposed_convolution():
    """The heads' merged output read by an ungrouped transposed convolution (LowFormer's fused
    output projection): the head permutation moves the rows of its (in, out, k) weight; a
    grouped one keeps the heads in place."""
    for groups, heads_found in ((1, True), (2, False)):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv1d(3, H * D, 1), nn.ReLU(), RelAttn("no_rel"),
            nn.ConvTranspose1d(H * D, 2 * groups, 3, stride=2, groups=groups),
        ).double().eval()  # fmt: skip
        spec = assert_function_preserved(model, _x(), generator=_gen(2))
        sites = _sites(spec)
        assert ("2.heads" in sites) is heads_found and not spec.dropped
        if heads_found:
            moved = {(a.name, a.axis) for a in sites["2.heads"].actions}
            assert ("3.weight", 0) in moved
