"""Swin V2's window attention: cosine attention (q and k L2-normalised per head), a per-head
``logit_scale``, a relative position bias computed by a small MLP over fixed coordinates
(``cpb_mlp``, one output row per head) and a ``qkv`` bias whose key third is zeroed on a clone.

The heads permute with the logit scale and the MLP's output rows; the q/k maps of a head are
orthogonal (only those keep the norms), the v/o maps stay GL. Each pattern also has a variant
written to fool the rule (normalised over tokens, a zeroed range that splits a head, a scale or
MLP output mixed across heads, an MLP shared by two blocks): the sites it would need are then
not proposed, and every returned site keeps the function."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, trace
from intertwiner.symmetry.check import _run

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CosineAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttentionV2`` in 20 lines, over windows of n tokens.

    ``fool``: "tokens" (normalise q and k over tokens, XCiT-style), "split" (zero a bias range
    that splits a head), "mix_scale" (the logit scale mixed across heads), "mix_mlp" (the MLP's
    output mixed across heads), "input_mlp" (the MLP reads the tokens)."""

    def __init__(self, dim=8, heads=2, n=4, fool="", cpb=None):
        super().__init__()
        self.h, self.d, self.n, self.fool = heads, dim // heads, n, fool
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        g = _gen(7)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.rand(heads, 1, 1, generator=g) + 1))
        self.cpb = cpb or nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads, False))
        pos = torch.arange(n)
        self.register_buffer("index", (pos[:, None] - pos[None, :] + n - 1).view(-1))
        self.register_buffer("coords", torch.randn(2 * n - 1, 2, generator=g))

    def forward(self, x):
        b, n, c = x.shape
        bias = self.qkv.bias.clone()
        lo = c + 2 if self.fool == "split" else c
        bias[lo : 2 * c].zero_()
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.h, self.d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        dim = -2 if self.fool == "tokens" else -1
        attn = F.normalize(q, dim=dim) @ F.normalize(k, dim=dim).transpose(-2, -1)
        scale = self.logit_scale
        if self.fool == "mix_scale":
            scale = scale + scale.mean(0, keepdim=True)
        attn = attn * torch.clamp(scale, max=math.log(100.0)).exp()
        coords = self.coords if self.fool != "input_mlp" else self.coords + x[:1, :1, :2].mean()
        table = self.cpb(coords)
        if self.fool == "mix_mlp":
            table = table.cumsum(-1)
        rpb = table.view(-1, self.h)[self.index].view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = attn + 16 * torch.sigmoid(rpb).unsqueeze(0)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, blocks=1, shared_mlp=False, **kw):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        first = CosineAttention(**kw)
        more = [CosineAttention(**kw, cpb=first.cpb if shared_mlp else None)]
        self.attn = nn.ModuleList([first, *more[: blocks - 1]])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        for a in self.attn:
            h = h + a(h)
        return self.head(torch.relu(h))


def _x(dtype=F64) -> torch.Tensor:
    return torch.randn(4, 4, 4, generator=_gen()).to(dtype)  # 4 windows of 4 tokens


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cosine_attention_heads_move_with_scale_and_mlp_rows(dtype):
    model = Net().to(dtype)
    spec = assert_function_preserved(model, _x(dtype), generator=_gen(1))
    assert not spec.dropped
    heads = spec.site("attn.0.heads")
    moved = {(a.name, a.axis) for a in heads.actions}
    assert {("attn.0.logit_scale", 0), ("attn.0.cpb.2.weight", 0)} <= moved
    for j in (0, 1):
        assert spec.site(f"attn.0.qk{j}").group.family.name == "orthogonal"
        assert spec.site(f"attn.0.vo{j}").group.family.name == "general_linear"
    assert "attn.0.cpb.1" in spec.names  # the MLP's hidden units permute on their own


@pytest.mark.parametrize("name", ["attn.0.logit_scale", "attn.0.cpb.2.weight"])
def test_moving_the_heads_without_their_parameters_changes_the_function(name):
    """The test above can fail: permute the heads but put back the logit scale (or the MLP's
    output rows) and the output changes."""
    model = Net().double()
    x = _x()
    spec = trace(model, x)
    swaps = (spec.site("attn.0.heads").group.sample(2, generator=_gen(s)) for s in range(100))
    swap = next(g for g in swaps if not torch.equal(g.matrix(), torch.eye(2, dtype=F64)))
    moved = apply(model, spec, {"attn.0.heads": swap})
    assert (_run(moved, x) - _run(model, x)).abs().max() < 1e-12
    dict(moved.named_parameters())[name].data = dict(model.named_parameters())[name].data.clone()
    assert (_run(moved, x) - _run(model, x)).abs().max() > 1e-6


def test_a_general_linear_qk_map_would_change_cosine_attention():
    """Why the q/k sites are orthogonal: a GL map on q and its inverse transpose on k keeps
    ``q . k`` but not ``normalize(q) . normalize(k)``."""
    model = Net().double()
    x = _x()
    spec = trace(model, x)
    site = spec.site("attn.0.qk0")
    g = torch.eye(4, dtype=F64) + 0.5 * torch.randn(4, 4, dtype=F64, generator=_gen(4))
    weight = model.attn[0].qkv.weight.detach().clone()
    bias = model.attn[0].qkv.bias.detach().clone()
    weight[:4], bias[:4] = g @ weight[:4], g @ bias[:4]
    gt = torch.linalg.inv(g).T
    weight[8:12] = gt @ weight[8:12]  # the key bias is zeroed anyway
    moved = Net().double()
    moved.load_state_dict(model.state_dict())
    moved.attn[0].qkv.weight.data, moved.attn[0].qkv.bias.data = weight, bias
    assert (_run(moved, x) - _run(model, x)).abs().max() > 1e-6
    assert site.group.family.name == "orthogonal"


@pytest.mark.parametrize(
    "kw, kept",
    [
        ({"fool": "tokens"}, set()),  # no block: normalised over tokens
        ({"fool": "split"}, set()),  # no block: the zeroed range splits a key head
        ({"fool": "mix_scale"}, {"qk", "vo"}),  # heads share the scale
        ({"fool": "mix_mlp"}, {"qk", "vo"}),  # heads share MLP rows
        ({"fool": "input_mlp"}, {"qk", "vo"}),  # the bias reads the input
        ({"blocks": 2, "shared_mlp": True}, {"qk", "vo"}),  # one MLP, two blocks
    ],
)
def test_patterns_that_do_not_follow_the_heads_keep_them_in_place(kw, kept):
    model = Net(**kw).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(2))
    assert not [s for s in spec.names if s.endswith(".heads")]
    # refused by the rules, not by verification (a shared MLP's hidden units are dropped there)
    assert not [name for name, _ in spec.dropped if "cpb" not in name]
    found = {k for k in ("qk", "vo") if f"attn.0.{k}0" in spec.names}
    assert found == kept
