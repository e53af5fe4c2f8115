"""ECA after a grouped convolution (issue 24: timm's eca_resnext26ts, eca_botnext26ts,
eca_halonext26ts): the order reversal J of the ECA'd channels maps block g of the grouped
convolution's output onto block G - 1 - g, so it survives only with the blocks of the
convolution's input reversed too (``symmetry/_block_reversal.py``). Small hand-written ResNeXt
blocks (1x1 and 3x3 grouped convolutions, groups 2 and 4): J with the input's blocks reversed
keeps the function in float64 and float32 (written out by hand as well), J without that block
reversal and a random permutation change it; the fooling variants (input blocks that are not one
site each, a channel shuffle, an uncentred ECA kernel) are refused with the ECA node named."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.groups import PERMUTATION, REVERSAL, ActionKind, MonomialElement, reversal_perm
from intertwiner.symmetry import apply, check, random_elements, trace

C = 8


class ECA(nn.Module):
    """``x * sigmoid(conv1d(mean(x)))`` over the channels; ``pad`` pads the pooled channels
    first (the conv then pads nothing)."""

    def __init__(self, pad: tuple[int, int] | None = None):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv1d(1, 1, 3, padding=0 if pad else 1, bias=False)

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        if self.pad is not None:
            y = F.pad(y, self.pad)
        return x * self.conv(y).sigmoid().view(x.shape[0], -1, 1, 1)


class Net(nn.Module):
    """stem -> [c1 1x1 -> BN -> ReLU -> (feed) -> c2 grouped -> BN -> ReLU -> ECA -> c3 1x1 -> BN]
    + shortcut -> ReLU -> pooled head (timm's ByobNet bottleneck with ECA after conv2_kxk)."""

    def __init__(
        self, groups: int, k: int = 3, feed=None, pad=None, tap: int = 0, split=None, after=None
    ):
        super().__init__()
        self.groups, self.feed, self.after = groups, feed, after
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C)
        # ``split`` = (a, b): c1's rows written by two convs of a and b rows instead
        self.c1b = nn.Conv2d(C, split[1], 1, bias=False) if split else None
        if split:
            self.c1 = nn.Conv2d(C, split[0], 1, bias=False)
        self.c2 = nn.Conv2d(C, C, k, padding=k // 2, groups=groups, bias=False)
        self.b2 = nn.BatchNorm2d(C)
        self.eca = ECA(pad)
        self.c3, self.b3 = nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C)
        self.head = nn.Linear(C, 5)
        # ``tap`` > 0: a second reader of the first ``tap`` channels of the feeding space
        self.tap = nn.Linear(tap, 5) if tap else None

    def forward(self, x):
        s = self.stem(x).relu()
        h = self.c1(s) if self.c1b is None else torch.cat([self.c1(s), self.c1b(s)], 1)
        h = self.b1(h).relu()
        extra = self.tap(h[:, : self.tap.in_features].mean((2, 3))) if self.tap else 0
        if self.feed is not None:
            h = self.feed(h)
        h = self.eca(self.b2(self.c2(h)).relu())
        if self.after is not None:
            h = self.after(h)
        return self.head((s + self.b3(self.c3(h))).relu().mean((2, 3))) + extra


def _shuffle(h, groups=2):
    b, c, hh, ww = h.shape
    return h.view(b, groups, c // groups, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)


def _scale_first_half(h):
    """The first half of the channels doubled: a cut that follows the blocks of groups 2 (each
    block inside one chunk, so no site is cut), then one block treated unlike the other."""
    a, b = h.chunk(2, dim=1)
    return torch.cat([2 * a, b], dim=1)


def _net(groups: int, k: int = 3, **kw) -> Net:
    torch.manual_seed(0)
    net = Net(groups, k, **kw).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
        for bn in (net.b1, net.b2, net.b3):
            bn.running_var.uniform_(0.5, 1.5, generator=g)
    return net.eval()


def _x(dtype=torch.float64):
    return torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=dtype)


def _change(net, other, x) -> float:
    with torch.no_grad():
        ref, got = net(x), other(x)
    return float((got - ref).abs().max() / ref.abs().max())


def _eca_site(spec):
    sites = [s for s in spec.sites if any(a.name == "eca.conv.weight" for a in s.actions)]
    assert len(sites) == 1, spec
    return sites[0]


def _j(n: int = C) -> MonomialElement:
    return MonomialElement(reversal_perm(n), torch.ones(n, dtype=torch.float64))


def _only(spec, site, g):
    return {s.name: g if s.name == site.name else s.group.identity(s.width) for s in spec.sites}


def _reverse_by_hand(net: Net) -> None:
    """J on the ECA'd space and the reversal of c2's input blocks, written out: c2's rows, b2,
    c3's columns and the kernel reversed; c1's rows and b1 reversed block by block."""
    g = net.groups
    with torch.no_grad():
        for t in (net.c2.weight, net.b2.weight, net.b2.bias, net.b2.running_mean,
                  net.b2.running_var):  # fmt: skip
            t.copy_(t.flip(0))
        net.c3.weight.copy_(net.c3.weight.flip(1))
        net.eca.conv.weight.copy_(net.eca.conv.weight.flip(2))
        for t in (net.c1.weight, net.b1.weight, net.b1.bias, net.b1.running_mean,
                  net.b1.running_var):  # fmt: skip
            t.copy_(t.reshape(g, C // g, -1).flip(0).reshape(t.shape))


@pytest.mark.parametrize("groups, k", [(2, 1), (2, 3), (4, 1), (4, 3)])
def test_reversal_across_the_blocks_of_a_grouped_conv(groups, k):
    net = _net(groups, k)
    x = _x()
    spec = trace(net, x)
    site = _eca_site(spec)
    assert site.group.family is REVERSAL and site.width == C
    blocks = [a for a in site.actions if a.kind == ActionKind.FLIP and a.n_total == groups]
    assert {a.name for a in blocks} >= {"c1.weight", "b1.weight", "b1.bias"}
    assert all(a.inner == C // groups for a in blocks if a.name == "c1.weight")
    # the grouped conv's input axis is not moved by the reversal (B and J cancel there)
    assert not any(a.name == "c2.weight" and a.axis == 1 for a in site.actions)
    # the feeding space keeps one site per group; every interior tensor moves
    assert sum(1 for s in spec.sites if any(a.name == "c2.weight" and a.axis == 1
                                            for a in s.actions)) == groups  # fmt: skip
    assert spec.coverage(net, x).interior_tensors == 1.0
    assert check(net, spec, x) < 1e-9
    gen = torch.Generator().manual_seed(4)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        model = net.to(dtype)
        xd = x.to(dtype)
        assert _change(model, apply(model, spec, _only(spec, site, _j())), xd) < tol
        # J with random elements at every other site (the input blocks' own elements compose)
        every = {**random_elements(spec, generator=gen), site.name: _j()}
        assert _change(model, apply(model, spec, every), xd) < tol
        # without the block reversal of c2's input, J changes the function
        bare_site = dataclasses.replace(site, actions=[a for a in site.actions if a not in blocks])
        bare = dataclasses.replace(spec, sites=[bare_site if s is site else s for s in spec.sites])
        assert _change(model, apply(model, bare, _only(bare, bare_site, _j())), xd) > 1e-3
        # a permutation that is neither I nor J changes it too
        for _ in range(3):
            p = PERMUTATION.sample(C, generator=gen)
            if REVERSAL.contains(p):
                continue
            other = apply(model, spec, _only(spec, site, p), validate=False)
            assert _change(model, other, xd) > 1e-3
    net = net.double()
    with torch.no_grad():  # the identity written out by hand, independent of ``apply``
        ref = net(x)
        _reverse_by_hand(net)
        assert float((net(x) - ref).abs().max() / ref.abs().max()) < 1e-12


FOOLING = [
    # c2's input written by two convs of 3 and 5 rows: its first block lies across both
    ("unequal_writers", dict(groups=2, split=(3, 5))),
    # two convs of 4 rows: each block its own weights, so the blocks cannot trade places
    ("two_writers", dict(groups=2, split=(4, 4))),
    # a second reader of 3 of c2's input channels (a slice: the feeding space is frozen)
    ("unequal_blocks", dict(groups=2, tap=3)),
    # a channel shuffle between c1 and c2: c2's input blocks interleave c1's rows
    ("channel_shuffle", dict(groups=2, feed=_shuffle)),
    # the input blocks told apart after the grouped conv's cut: the first one doubled
    ("scaled_input_block", dict(groups=2, feed=_scale_first_half)),
    # the ECA'd blocks told apart after ECA: the first one doubled before c3
    ("scaled_output_block", dict(groups=2, after=_scale_first_half)),
    # ECA's kernel with padding on one side only: not even the plain reversal survives
    ("asymmetric_pad", dict(groups=2, pad=(2, 0))),
]


@pytest.mark.parametrize("name, kw", FOOLING, ids=[n for n, _ in FOOLING])
def test_fooling_variants_are_refused(name, kw):
    net = _net(**kw)
    x = _x()
    # the rules refuse these themselves: verification is not what drops them
    assert not any(s.group.family is REVERSAL for s in trace(net, x, verify=False).sites)
    spec = trace(net, x)
    assert not any(s.group.family is REVERSAL for s in spec.sites) and not spec.dropped
    moved = {a.name for s in spec.sites for a in s.actions}
    assert "eca.conv.weight" not in moved and "b2.weight" not in moved
    assert any("eca.conv" in reason for _, reason in spec.frozen)
    assert check(net, spec, x) < 1e-9
    if "writers" in name:
        return  # no single c1 to reverse by hand
    # the premise: the reversal written out by hand does break these
    with torch.no_grad():
        ref = net(x)
        _reverse_by_hand(net)
        assert float((net(x) - ref).abs().max() / ref.abs().max()) > 1e-3


class Stacked(nn.Module):
    """Two grouped convolutions with ECA, the second reading the first's ECA'd blocks: J on the
    first space alone would need the second convolution's outputs block-reversed, which its
    ECA does not allow (only J on both at once, with c4's columns reversed, is a symmetry: not
    claimed). Neither reversal may be returned on its own."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.c2 = nn.Conv2d(C, C, 3, padding=1, groups=2, bias=False)
        self.c4 = nn.Conv2d(C, C, 3, padding=1, groups=2, bias=False)
        self.eca1, self.eca2 = ECA(), ECA()
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        h = self.eca1(self.c2(self.stem(x).relu()).relu())
        return self.head(self.eca2(self.c4(h).relu()).mean((2, 3)))


def test_stacked_grouped_ecas_are_refused():
    torch.manual_seed(0)
    net = Stacked().double().eval()
    x = _x()
    unverified = trace(net, x, verify=False)
    assert not any(s.group.family is REVERSAL for s in unverified.sites)
    assert any("of such a reversal" in r for _, r in unverified.frozen)
    spec = trace(net, x)
    assert not spec.dropped and check(net, spec, x) < 1e-9
    # the premise: J on the first ECA'd space (c2's rows, eca1's kernel, c4's input blocks and
    # stem's rows reversed as the block reversal would) changes the function
    with torch.no_grad():
        ref = net(x)
        net.c2.weight.copy_(net.c2.weight.flip(0))
        net.eca1.conv.weight.copy_(net.eca1.conv.weight.flip(2))
        for t in (net.stem.weight, net.stem.bias):
            t.copy_(t.reshape(2, C // 2, -1).flip(0).reshape(t.shape))
        assert float((net(x) - ref).abs().max() / ref.abs().max()) > 1e-3


def test_canonical_forms_see_the_block_reversal():
    """B = A with J and the input's block reversal written out by hand: the canonical forms of
    A and B are one model (the reversal site picks I or J, the input blocks their order)."""
    from intertwiner.symmetry import canonicalize

    a, b, x = _net(2), _net(2), _x()
    _reverse_by_hand(b)
    ca, cb = canonicalize(a, example_input=x), canonicalize(b, example_input=x)
    assert ca.error < 1e-12 and cb.error < 1e-12 and not ca.not_canonical
    for pa, pb in zip(ca.model.parameters(), cb.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-10)


class InARow(nn.Module):
    """Two grouped convolutions in a row, ECA after the second (``added``: the ECA'd blocks
    added back to the stream the first conv reads instead). B on the second conv's input moves
    rows of the first, which read only their own group: its input blocks would need reversing
    too; J on a stream the grouped conv reads needs its columns reversed. Neither is claimed."""

    def __init__(self, added: bool):
        super().__init__()
        self.added = added
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.c1 = nn.Conv2d(C, C, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(C, C, 3, padding=1, groups=2)
        self.eca = ECA()
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        h = self.stem(x).relu()
        if self.added:
            return self.head((h + self.eca(self.c2(h).relu())).relu().mean((2, 3)))
        return self.head(self.eca(self.c2(self.c1(h).relu()).relu()).mean((2, 3)))


@pytest.mark.parametrize("added", [False, True])
def test_grouped_convs_in_a_row_are_refused(added):
    torch.manual_seed(0)
    net = InARow(added).double().eval()
    x = _x()
    assert not any(s.group.family is REVERSAL for s in trace(net, x, verify=False).sites)
    spec = trace(net, x)
    assert not spec.dropped and check(net, spec, x) < 1e-9
    assert any("eca.conv" in r for _, r in spec.frozen)
    if not added:  # the premise: c2's rows, ECA's kernel and c1's rows block-reversed break it
        with torch.no_grad():
            ref = net(x)
            net.c2.weight.copy_(net.c2.weight.flip(0))
            net.c2.bias.copy_(net.c2.bias.flip(0))
            net.eca.conv.weight.copy_(net.eca.conv.weight.flip(2))
            for t in (net.c1.weight, net.c1.bias):
                t.copy_(t.reshape(2, C // 2, -1).flip(0).reshape(t.shape))
            assert float((net(x) - ref).abs().max() / ref.abs().max()) > 1e-3
