"""Patterns of convolutional families (issue 24): per-channel parameters viewed as (1, C, 1, 1),
GroupNorm with one group, weight-standardised convolutions (NF-ResNet), grouped convolutions on
inputs already split into blocks. Each rule has a small model that exercises it and one written
to fool it, which must stay frozen or restricted; every returned spec must keep the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

F64 = torch.float64


def _traced(model, x, dtype=F64):
    return traced(model, x, dtype)


def _moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions}


def _site_of(spec, pname: str):
    return next(s for s in spec.sites if any(a.name == pname for a in s.actions))


# -- per-channel parameters viewed as (1, C, 1, 1) ----------------------------------------------
class LayerScaleBlock(nn.Module):
    """ConvNeXt-style block in NCHW: ``x + gamma.view(1, -1, 1, 1) * conv(act(conv(x)))``, with a
    bias added the same way (MetaFormer's ``Scale``, timm's ``LayerScale2d``)."""

    def __init__(self, c: int = 6, h: int = 10, view=(1, -1, 1, 1)):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.fc1 = nn.Conv2d(c, h, 1)
        self.fc2 = nn.Conv2d(h, c, 1)
        self.gamma = nn.Parameter(torch.ones(c))
        self.shift = nn.Parameter(torch.zeros(c))
        self.head = nn.Conv2d(c, 2, 1)
        self.view = view

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(F.gelu(self.fc1(x)))
        y = y * self.gamma.reshape(self.view) + self.shift.view(self.view)
        return self.head(torch.relu(x + y))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_layer_scale_viewed_per_channel_moves_with_the_stream(dtype):
    model, spec = _traced(LayerScaleBlock(), torch.randn(2, 3, 5, 5, generator=_gen()), dtype)
    assert {"gamma", "shift", "fc1.weight", "fc2.weight", "stem.weight"} <= _moved(spec)
    assert spec.dropped == []
    stream = _site_of(spec, "gamma")
    assert _site_of(spec, "shift") is stream and stream.width == 6
    acts = {(a.name, a.kind) for a in stream.actions}
    assert ("gamma", "P") in acts and ("shift", "A") in acts


def test_a_parameter_viewed_along_positions_is_not_a_channel_scale():
    """Fool: 6 values viewed as (1, 1, 6, 1) on a 6 x 6 map scale rows, not channels. The scale
    must not be moved with the channels, and the added row bias (the same for every channel)
    leaves only permutations of them."""
    model, spec = _traced(
        LayerScaleBlock(view=(1, 1, -1, 1)), torch.randn(2, 3, 6, 6, generator=_gen())
    )
    assert "gamma" not in _moved(spec) and "shift" not in _moved(spec)
    for site in spec.sites:  # the stream is frozen, or at most permuted
        if any(a.name == "stem.weight" for a in site.actions):
            assert site.group.family.name == "permutation"


class GroupNorm1Net(nn.Module):
    """PoolFormer's norm: GroupNorm with one group, twice on one stream."""

    def __init__(self, c: int = 6, groups: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.n1, self.n2 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)
        self.conv = nn.Conv2d(c, c, 1)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv(F.gelu(self.n1(x)))
        return self.head(self.n2(x))


def test_groupnorm_with_one_group_keeps_one_permutation_site():
    model, spec = _traced(GroupNorm1Net(), torch.randn(2, 3, 5, 5, generator=_gen()))
    stream = _site_of(spec, "n2.weight")
    assert _site_of(spec, "n1.weight") is stream and stream.width == 6
    assert stream.group.family.name == "permutation"  # it normalises: no scalings
    assert spec.dropped == []


def test_groupnorm_with_two_groups_keeps_its_blocks():
    """Fool: two groups normalise each half on its own: no permutation may cross the halves."""
    model, spec = _traced(GroupNorm1Net(groups=2), torch.randn(2, 3, 5, 5, generator=_gen()))
    widths = sorted(s.width for s in spec.sites if any(a.name == "n2.weight" for a in s.actions))
    assert widths == [3, 3]


# -- weight-standardised convolutions -----------------------------------------------------------
class StdConv(nn.Conv2d):
    """timm's ScaledStdConv2d written out: each filter standardised over (in, kernel), times a
    per-output-channel gain and a number."""

    def __init__(self, *args, gain: bool = True, per_input: bool = False, **kw):
        super().__init__(*args, **kw)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1)) if gain else None
        self.per_input = per_input

    def forward(self, x):
        w = self.weight.transpose(0, 1) if self.per_input else self.weight  # the fool: per input
        g = None if self.gain is None else (self.gain * 0.5).view(-1)
        w = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, weight=g, training=True)
        w = (
            w.reshape(self.weight.transpose(0, 1).shape).transpose(0, 1)
            if self.per_input
            else (w.reshape_as(self.weight))
        )
        return F.conv2d(x, w, self.bias, self.stride, self.padding, groups=self.groups)


class NFNet(nn.Module):
    def __init__(self, c: int = 8, groups: int = 1, per_input: bool = False):
        super().__init__()
        self.stem = StdConv(3, c, 3, padding=1)
        self.conv1 = StdConv(c, c, 3, padding=1, groups=groups, per_input=per_input)
        self.conv2 = StdConv(c, c, 1, gain=False)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.conv2(F.silu(self.conv1(x))) * 0.2
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_standardised_convolutions_keep_permutations(groups, dtype):
    model, spec = _traced(NFNet(groups=groups), torch.randn(2, 3, 6, 6, generator=_gen()), dtype)
    moved = _moved(spec)
    assert {"stem.weight", "stem.gain", "conv1.weight", "conv1.gain", "conv2.weight"} <= moved
    assert spec.dropped == []
    for site in spec.sites:  # scalings are standardised away on both sides
        assert site.group.family.name == "permutation", site


def test_standardisation_per_input_channel_is_frozen():
    """Fool: the same ops over the transposed weight standardise and scale per *input* channel;
    moving the gain with the output channels would be wrong, so conv1 stays frozen."""
    model, spec = _traced(NFNet(per_input=True), torch.randn(2, 3, 6, 6, generator=_gen()))
    assert "conv1.gain" not in _moved(spec) and "conv1.weight" not in _moved(spec)
    assert any("conv1" in why and "computed" in why for _, why in spec.frozen)


def test_timm_scaled_std_conv_is_recognised():
    layers = pytest.importorskip("intertwiner.testing").import_timm().layers
    model = nn.Sequential(
        layers.ScaledStdConv2d(3, 6, 3), nn.ReLU(), layers.StdConv2d(6, 4, 1), nn.GELU(),
        layers.ScaledStdConv2d(4, 2, 1),
    )  # fmt: skip
    model, spec = _traced(model, torch.randn(2, 3, 6, 6, generator=_gen()))
    assert {"0.weight", "0.gain", "2.weight", "4.weight"} <= _moved(spec)
    assert [s.width for s in spec.sites] == [6, 4]


# -- grouped convolutions on split inputs -------------------------------------------------------
class TwoGrouped(nn.Module):
    def __init__(self, g1: int, g2: int, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.a = nn.Conv2d(c, c, 3, padding=1, groups=g1)
        self.b = nn.Conv2d(c, c, 1, groups=g2)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(torch.relu(self.stem(x)))))))


def test_grouped_conv_reads_finer_blocks():
    """4 blocks from ``a`` fed to a 2-group ``b``: each block lies in one of b's groups."""
    model, spec = _traced(TwoGrouped(4, 2), torch.randn(2, 3, 5, 5, generator=_gen()))
    blocks = [s for s in spec.sites if any(a.name == "a.weight" and a.axis == 0 for a in s.actions)]
    assert sorted(s.width for s in blocks) == [2, 2, 2, 2]
    assert all(any(a.name == "b.weight" and a.axis == 1 for a in s.actions) for s in blocks)
    assert spec.dropped == []


def test_grouped_conv_cuts_coarser_blocks_at_its_groups():
    """2 blocks from ``a`` fed to a 4-group ``b``: a permutation within a block would move
    channels between b's groups, so each block is cut in two (a block-diagonal subgroup)."""
    model, spec = _traced(TwoGrouped(2, 4), torch.randn(2, 3, 5, 5, generator=_gen()))
    blocks = [s for s in spec.sites if any((a.name, a.axis) == ("a.weight", 0) for a in s.actions)]
    assert sorted(s.width for s in blocks) == [2, 2, 2, 2]
    assert all(any((a.name, a.axis) == ("b.weight", 1) for a in s.actions) for s in blocks)
    assert spec.dropped == []


# -- gating: squeeze-excitation, ECA ------------------------------------------------------------
class SEBlock(nn.Module):
    """``h * sigmoid(fc2(relu(fc1(mean(h)))))`` after a convolution with ``groups`` groups;
    ``eca=True``: the gate is ECA's conv1d over the channel axis instead (the fool)."""

    def __init__(self, c: int = 8, groups: int = 1, eca: bool = False, act=torch.relu):
        super().__init__()
        self.act = act
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1) if eca else None
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = self.act(self.conv(self.act(self.stem(x))))
        s = h.mean((2, 3), keepdim=True)
        if self.eca is not None:
            g = self.eca(s.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)
        else:
            g = self.fc2(torch.relu(self.fc1(s)))
        return self.head(h * torch.sigmoid(g))


@pytest.mark.parametrize("act", [torch.relu, F.gelu])
@pytest.mark.parametrize("groups", [1, 2])
def test_squeeze_excitation_gate_rows_move_with_the_channels(groups, act):
    """With GELU both factors are permutation-only: the unsplit sigmoid output must still be the
    gate when the grouped convolution cut the value into blocks (MixNet)."""
    x = torch.randn(2, 3, 5, 5, generator=_gen())
    model, spec = _traced(SEBlock(groups=groups, act=act), x)
    assert spec.dropped == []
    rows = [a for s in spec.sites for a in s.actions if a.name == "fc2.weight" and a.axis == 0]
    covered = {c for a in rows for c in (a.channels or range(a.n_total))}
    assert covered == set(range(8))
    for site in spec.sites:  # through the sigmoid the gate rows are only permuted
        for a in site.actions:
            if (a.name, a.axis) == ("fc2.weight", 0):
                assert a.kind == "P" or site.group.family.name == "permutation"
    gated = [s for s in spec.sites if any((a.name, a.axis) == ("fc2.weight", 0) for a in s.actions)]
    assert all(any(a.name == "conv.weight" and a.axis == 0 for a in s.actions) for s in gated)


def test_eca_conv_over_channels_leaves_only_the_reversal():
    """Fool: ECA's conv1d slides over the channel axis; a permutation of the channels would
    change which channels are neighbours, so the gated space keeps only the reversal {I, J}
    (with the kernel flipped; ``test_channel_conv.py`` has the details)."""
    model, spec = _traced(SEBlock(eca=True), torch.randn(2, 3, 5, 5, generator=_gen()))
    gated = [
        s for s in spec.sites if any((a.name, a.axis) == ("conv.weight", 0) for a in s.actions)
    ]
    assert gated and all(s.group.family.name == "reversal" for s in gated)
    assert all(any(a.name == "eca.weight" and a.kind == "flip" for a in s.actions) for s in gated)
    assert spec.dropped == []


# -- statistics over features or positions: GRN, SimpleNorm, a hand-written LayerNorm -----------
class GRNBlock(nn.Module):
    """timm's SimpleNorm (x / std over the features), ConvNeXt-V2's global response norm
    (channels last) and a LayerNorm written out as ``(x - mean) / sqrt(var + eps)``; ``fool``:
    the channel mean of another space is subtracted instead."""

    def __init__(self, c: int = 6, fool: bool = False):
        super().__init__()
        self.inp, self.other = nn.Linear(3, c), nn.Linear(3, c)
        self.w = nn.Parameter(torch.ones(c))
        self.fc1, self.fc2 = nn.Linear(c, 8), nn.Linear(8, c)
        self.grn_w, self.grn_b = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
        self.head = nn.Linear(c, 2)
        self.fool = fool

    def forward(self, x):  # x: (B, H, W, 3)
        h = self.inp(x)
        h = h * torch.rsqrt(h.var(-1, keepdim=True) + 1e-5) * self.w  # SimpleNorm
        y = F.gelu(self.fc1(h))
        g = torch.linalg.vector_norm(y, 2, dim=(1, 2), keepdim=True)  # GRN
        n = g / (g.mean(-1, keepdim=True) + 1e-6)
        y = y + torch.addcmul(self.grn_b.view(1, 1, 1, -1), self.grn_w.view(1, 1, 1, -1), y * n)
        h = h + self.fc2(y)
        m = self.other(x) if self.fool else h
        h = (h - m.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, keepdim=True) + 1e-5)
        return self.head(h.mean((1, 2)))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_grn_simple_norm_and_written_out_layernorm_keep_permutations(dtype):
    model, spec = _traced(GRNBlock(), torch.randn(2, 4, 4, 3, generator=_gen()), dtype)
    assert spec.dropped == []
    (hidden,) = [s for s in spec.sites if any(a.name == "grn_w" for a in s.actions)]
    assert any((a.name, a.axis) == ("fc1.weight", 0) for a in hidden.actions)
    assert any(a.name == "grn_b" for a in hidden.actions)
    (stream,) = [s for s in spec.sites if any(a.name == "w" for a in s.actions)]
    assert any((a.name, a.axis) == ("inp.weight", 0) for a in stream.actions)
    for site in (hidden, stream):  # normalised: no scalings
        assert site.group.family.name == "permutation"


def test_statistic_of_another_space_freezes():
    """Fool: ``h - mean(other)``: the subtracted mean is not constant under h's permutations
    unless both spaces move together, which nothing ties: h's stream is frozen."""
    model, spec = _traced(GRNBlock(fool=True), torch.randn(2, 4, 4, 3, generator=_gen()))
    assert not any(a.name == "w" for s in spec.sites for a in s.actions)
    assert any("a statistic of one space added to another" in why for _, why in spec.frozen)


class ValueRatioAttention(nn.Module):
    """Attention whose values are wider than the model (EfficientFormer's ``attn_ratio``): the
    output projection reads 2 heads x 4 = 8 channels and writes 6; exposed once layer scale no
    longer froze the space around it."""

    def __init__(self, d: int = 6, heads: int = 2, dk: int = 2, dv: int = 4):
        super().__init__()
        self.h, self.dk, self.dv = heads, dk, dv
        self.inp = nn.Linear(3, d)
        self.q, self.k, self.v = (
            nn.Linear(d, heads * dk),
            nn.Linear(d, heads * dk),
            nn.Linear(d, heads * dv),
        )
        self.proj = nn.Linear(heads * dv, d)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.inp(x)

        def split(t, dim):
            return t.view(b, n, self.h, dim).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(h), self.dk), split(self.k(h), self.dk),
                                           split(self.v(h), self.dv))  # fmt: skip
        return self.head(h + self.proj(a.transpose(1, 2).reshape(b, n, self.h * self.dv)))


def test_attention_with_wider_values_than_the_model():
    model, spec = _traced(ValueRatioAttention(), torch.randn(2, 5, 3, generator=_gen()))
    assert spec.dropped == []
    vo = [s for s in spec.sites if any((a.name, a.axis) == ("proj.weight", 1) for a in s.actions)]
    assert vo and all(any((a.name, a.axis) == ("v.weight", 0) for a in s.actions) for s in vo)
