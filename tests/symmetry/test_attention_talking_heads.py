"""EfficientFormerV2's ``Attention2d``: talking heads written as 1 x 1 convolutions over the heads
(``talking_head1`` on the scores, ``talking_head2`` on the probabilities), a per-head attention
bias gathered by a fixed index below the first mix, and ``v_local``: a depthwise conv (and eval
BatchNorm) of v's projection added to the heads' output before the activation.

What survives: the heads permute when both talking-head convs take the permutation on their in
and out channels (their biases with it), the bias table's rows and ``v_local``'s channels move
with them; per head, q and k keep a permutation (their BatchNorms) and v one that ``v_local``'s
channels follow. Each is checked in float32 and float64, and the rule is shown no larger: a head
permutation without the mixes, without ``v_local`` or without the table changes the function.
Variants written to fool it (a grouped talking-head conv, a ``v_local`` that is not depthwise,
a branch added from another projection) get no head sites, and their specs keep the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, check, random_elements, trace
from intertwiner.symmetry.check import _run

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _conv_bn(i: int, o: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, groups=groups), nn.BatchNorm2d(o))


class Attention2d(nn.Module):
    """timm's ``Attention2d`` in 30 lines. ``fool``: "groups" (talking_head1 grouped), "dense"
    (v_local mixes channels), "k_local" (the branch reads k, not v)."""

    def __init__(self, dim=8, kd=2, heads=3, r=3, fool="", stride=False):
        super().__init__()
        self.h, self.kd, self.fool = heads, kd, fool
        # the strided form: a depthwise conv first, the output upsampled before the activation
        self.stride_conv = nn.Conv2d(dim, dim, 3, 2, 1, groups=dim) if stride else None
        dv = 2 * kd * heads
        self.q, self.k, self.v = (
            _conv_bn(dim, kd * heads),
            _conv_bn(dim, kd * heads),
            _conv_bn(dim, dv),
        )
        self.v_local = _conv_bn(dv, dv, 3, groups=1 if fool == "dense" else dv)
        self.k_local = _conv_bn(kd * heads, dv, 1)
        self.talking_head1 = nn.Conv2d(heads, heads, 1, groups=3 if fool == "groups" else 1)
        self.talking_head2 = nn.Conv2d(heads, heads, 1)
        self.proj = _conv_bn(dv, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, r * r, generator=_gen(2)))
        pos = torch.stack(torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")).flatten(
            1
        )
        rel = (pos[..., :, None] - pos[..., None, :]).abs()
        self.register_buffer("idx", rel[0] * r + rel[1], persistent=False)

    def forward(self, x):
        x = self.stride_conv(x) if self.stride_conv is not None else x
        b, _, hh, ww = x.shape
        n = hh * ww
        q = self.q(x).reshape(b, self.h, -1, n).permute(0, 1, 3, 2)
        k, v = self.k(x), self.v(x)
        local = self.k_local(k) if self.fool == "k_local" else self.v_local(v)
        k = k.reshape(b, self.h, -1, n)
        v = v.reshape(b, self.h, -1, n).permute(0, 1, 3, 2)
        attn = (q @ k) * self.kd**-0.5 + self.attention_biases[:, self.idx]
        attn = self.talking_head2(self.talking_head1(attn).softmax(-1))
        out = (attn @ v).transpose(2, 3).reshape(b, -1, hh, ww) + local
        if self.stride_conv is not None:
            out = F.interpolate(out, scale_factor=2.0, mode="bilinear")
        return self.proj(F.gelu(out))


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.stem, self.attn, self.head = _conv_bn(3, 8, 3), Attention2d(**kw), nn.Linear(8, 4)

    def forward(self, x):
        h = F.relu(self.stem(x))
        return self.head((h + self.attn(h)).mean((2, 3)))


def _model(dtype=F64, **kw) -> Net:
    """Random weights and BatchNorm statistics (eval mode)."""
    torch.manual_seed(0)
    m = Net(**kw)
    with torch.no_grad():
        for i, bn in enumerate(x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            g = _gen(10 + i)
            bn.running_mean.normal_(generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.normal_(generator=g)
            bn.bias.normal_(generator=g)
    return m.eval().to(dtype)


def _x(dtype=F64, size=3) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=_gen(1)).to(dtype)


@pytest.mark.parametrize(("dtype", "stride"), [(torch.float32, False), (F64, False), (F64, True)])
def test_talking_heads_sites_keep_the_function(dtype, stride):
    model = _model(dtype, stride=stride, r=2 if stride else 3)
    x = _x(dtype, 4 if stride else 3)
    spec = assert_function_preserved(model, x, dtype=dtype, generator=_gen(3))
    assert not spec.dropped
    moved = {(a.name, a.axis) for a in spec.site("attn.heads").actions}
    for name in ("talking_head1", "talking_head2"):
        assert {(f"attn.{name}.weight", 0), (f"attn.{name}.weight", 1)} <= moved
        assert (f"attn.{name}.bias", 0) in moved
    assert {("attn.attention_biases", 0), ("attn.v_local.0.weight", 0)} <= moved
    for j in range(3):
        assert spec.site(f"attn.qk{j}").group.family.name == "permutation"
        vo = spec.site(f"attn.vo{j}")
        assert vo.group.family.name == "permutation" and vo.width == 4
        assert ("attn.v_local.1.running_mean", 0) in {(a.name, a.axis) for a in vo.actions}


def test_many_draws_keep_the_function():
    model, x = _model(), _x()
    spec = trace(model, x)
    ref = float(_run(model, x).abs().max())
    for seed in range(10):
        elements = random_elements(spec, generator=_gen(seed))
        assert check(model, spec, x, elements=elements) < 1e-12 * ref


def _changed(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((_run(a, x) - _run(b, x)).abs().max())


@pytest.mark.parametrize(
    "kept",
    [
        ("talking_head1.weight",),
        ("talking_head2.bias",),
        ("attention_biases",),
        ("v_local.0.weight", "v_local.0.bias"),
    ],  # fmt: skip
)
def test_a_head_permutation_without_what_moves_with_it_changes_the_function(kept):
    model, x = _model(), _x()
    spec = trace(model, x)
    cycle = spec.site("attn.heads").group.project(torch.eye(3, dtype=F64)[[1, 2, 0]])
    moved = apply(model, spec, {"attn.heads": cycle})
    assert _changed(model, moved, x) < 1e-12
    with torch.no_grad():
        for name in kept:
            moved.attn.get_parameter(name).copy_(model.attn.get_parameter(name))
    assert _changed(model, moved, x) > 1e-6


@pytest.mark.parametrize("fool", ["groups", "dense", "k_local"])
def test_fooling_variants_get_no_head_sites_and_keep_the_function(fool):
    spec = assert_function_preserved(_model(fool=fool), _x(), generator=_gen(3))
    assert not any(n.startswith("attn.heads") or n.startswith("attn.vo") for n in spec.names)
