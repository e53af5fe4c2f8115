"""Gaps of conv and MLP families (issue 24): a fixed channel shuffle passes sites through by conjugation
(ShuffleNet); where a model has no symmetry to find (ECA's conv1d over channels, scalar
parameters shared by every feature) the spec says why, and a sampled candidate element applied
as if a rule had passed it does change the function (the claim is not vacuous)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

F64 = torch.float64


def _moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions}


# -- channel shuffle ----------------------------------------------------------------------------
def shuffle(y: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ``channel_shuffle``."""
    b, c, h, w = y.shape
    y = y.view(b, groups, c // groups, h, w)
    return torch.transpose(y, 1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through a branch, then the
    two halves are interleaved."""

    def __init__(self, c: int = 8, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.branch = nn.Sequential(
            nn.Conv2d(c // 2, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(),
            nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2), nn.BatchNorm2d(c // 2),
        )  # fmt: skip

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return shuffle(torch.cat([x1, F.relu(self.branch(x2))], 1), self.groups)


class ShuffleNet(nn.Module):
    def __init__(self, c: int = 8, units: int = 3, groups: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.units = nn.Sequential(*(ShuffleUnit(c, groups) for _ in range(units)))
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


class ShuffleFool(nn.Module):
    """``view(b, 2, c // 2, h, w)`` then a transpose of the channel half with a *spatial* dim and
    a view back to the input shape (h = c // 2): channels and rows trade places, which no channel
    permutation describes; ``reuse``: a true shuffle whose split view is also read elsewhere."""

    def __init__(self, c: int = 8, swap: bool = True, reuse: bool = False):
        super().__init__()
        self.swap, self.reuse = swap, reuse
        self.c1, self.c2 = nn.Conv2d(3, c, 1), nn.Conv2d(c, 2, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        b, c, h, w = y.shape
        v = y.view(b, 2, c // 2, h, w)
        t = v.transpose(2, 3) if self.swap else v.transpose(1, 2)
        out = self.c2(t.contiguous().view(b, c, h, w))
        return out + v.sum(dim=(1, 2)).mean(dim=(1, 2))[:, None, None, None] if self.reuse else out


def _bn_stats(model: nn.Module) -> nn.Module:
    g = _gen(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_passes_sites_through(dtype, groups):
    model = _bn_stats(ShuffleNet(c=8, groups=groups))
    model, spec = traced(model, torch.randn(2, 3, 5, 5, generator=_gen()), dtype)
    assert spec.dropped == []
    assert not any("splits the feature axis" in why for _, why in spec.frozen)
    cov = spec.coverage(model)
    assert cov.interior_tensors == 1.0, cov.summary()
    # the passing halves are interleaved with the branches': some site acts on the head's input
    # columns at channels out of order (its element moves them by S M S^-1)
    head = [a for s in spec.sites for a in s.actions if (a.name, a.axis) == ("head.weight", 1)]
    assert {c for a in head for c in a.channels or range(a.n_total)} == set(range(8))
    interleaved = [a.channels for a in head if a.channels is not None]
    assert any(ch != tuple(range(ch[0], ch[0] + len(ch))) for ch in interleaved)


@pytest.mark.parametrize("reuse", [False, True])
def test_channel_shuffle_fools_stay_frozen(reuse):
    """Trading channels with rows, or a split view read outside the chain: c1's channels are
    frozen with the split-view reason (the checked spec keeps the function either way)."""
    model = ShuffleFool(swap=not reuse, reuse=reuse)
    model, spec = traced(model, torch.randn(2, 3, 4, 5, generator=_gen()))
    assert "c1.weight" not in _moved(spec)
    assert any("splits the feature axis" in why for _, why in spec.frozen)


def test_channel_shuffle_is_not_the_identity():
    """Non-invariance: a permutation P of c1's channels with c2's columns moved by P itself (as
    if the shuffle were not there) changes the function; moved by S^-1 P S it does not."""
    model = ShuffleFool(swap=False).double().eval()
    x = torch.randn(2, 3, 4, 5, generator=_gen(), dtype=F64)
    perm = torch.randperm(8, generator=_gen(3))
    s = shuffle(torch.arange(8.0).view(1, 8, 1, 1), 2).flatten().long()  # out c' <- in s[c']
    q = torch.argsort(s)[perm[s]]
    with torch.no_grad():
        ref = model(x)
        w = model.c2.weight.clone()
        model.c1.weight.copy_(model.c1.weight[perm])
        model.c1.bias.copy_(model.c1.bias[perm])
        model.c2.weight.copy_(w[:, perm])
        wrong = model(x)
        model.c2.weight.copy_(w[:, q])
        right = model(x)
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()
    assert (right - ref).abs().max() <= 1e-12 * ref.abs().max()


# -- scalar parameters shared by every feature --------------------------------------------------
class StarReLU(nn.Module):
    """MetaFormer's ``s * relu(x)^2 + b`` with one-number ``s`` and ``b``."""

    def __init__(self):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor(0.8)), nn.Parameter(torch.tensor(-0.3))

    def forward(self, x):
        return self.scale * F.relu(x) ** 2 + self.bias


class AffineScalar(nn.Module):
    """HGNetV2's ``LearnableAffineBlock``: ``s * x + b`` with shape-(1,) parameters."""

    def __init__(self):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.scale * x + self.bias


class ScalarNet(nn.Module):
    def __init__(self, conv: bool = False):
        super().__init__()
        self.conv = conv
        if conv:
            self.fc1, self.bn, self.fc2 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Conv2d(6, 2, 1)
            self.act = AffineScalar()
        else:
            self.fc1, self.fc2, self.act = nn.Linear(3, 6), nn.Linear(6, 2), StarReLU()

    def forward(self, x):
        if self.conv:
            return self.fc2(self.act(F.relu(self.bn(self.fc1(x)))))
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_scalar_parameters_say_why_they_stay(conv, dtype):
    x = torch.randn(4, 3, 2, 2, generator=_gen()) if conv else torch.randn(4, 3, generator=_gen())
    model, spec = traced(_bn_stats(ScalarNet(conv)), x, dtype)
    assert {"fc1.weight", "fc2.weight"} <= _moved(spec)
    cov = spec.coverage(model)
    why = {t: f.reason for f in cov.frozen for t in f.tensors}
    assert why["act.scale"].startswith("frozen: scalar parameter act.scale")
    assert "multiplying every feature" in why["act.scale"]
    assert "added to every feature" in why["act.bias"]
    assert not any("no site acts on it" in f.reason for f in cov.frozen)


def test_star_relu_admits_no_per_feature_scaling_but_a_common_one():
    """Non-invariance: a sampled positive diagonal D moved through StarReLU (fc1 rows by D, fc2
    columns by D^-1, as if the site's group had the scalings) changes the function, so the
    permutation-only site is right; a common factor c with ``scale / c^2`` keeps it (the
    one-parameter symmetry the recorded reason names)."""
    model = ScalarNet().double().eval()
    x = torch.randn(4, 3, generator=_gen(), dtype=F64)
    g = _gen(5)
    d = torch.rand(6, generator=g, dtype=F64) + 0.5
    with torch.no_grad():
        ref = model(x)
        w1, b1, w2, s = (t.clone() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight,
                                             model.act.scale))  # fmt: skip
        model.fc1.weight.copy_(w1 * d[:, None])
        model.fc1.bias.copy_(b1 * d)
        model.fc2.weight.copy_(w2 / d)
        scaled = model(x)
        c = 1.7
        model.fc1.weight.copy_(w1 * c)
        model.fc1.bias.copy_(b1 * c)
        model.fc2.weight.copy_(w2)
        model.act.scale.copy_(s / c**2)
        common = model(x)
    assert (scaled - ref).abs().max() > 1e-3 * ref.abs().max()
    assert (common - ref).abs().max() <= 1e-12 * ref.abs().max()


# -- ECA: a convolution over the channel axis ---------------------------------------------------
class ECABlock(nn.Module):
    """``h * sigmoid(conv1d(mean(h)))`` with the conv1d sliding over channels (timm's ``EcaModule``);
    ``eca=False``: a squeeze-excitation gate instead (the control)."""

    def __init__(self, c: int = 8, eca: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 1)
        self.gate = nn.Conv1d(1, 1, 3, padding=1) if eca else nn.Conv2d(c, c, 1)
        self.eca = eca
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.conv(F.relu(self.stem(x))))
        s = h.mean((2, 3), keepdim=True)
        if self.eca:
            g = self.gate(s.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)
        else:
            g = self.gate(s)
        return self.head(h * torch.sigmoid(g))


def test_eca_is_frozen_with_its_reason():
    model, spec = traced(ECABlock(), torch.randn(2, 3, 5, 5, generator=_gen()))
    rows = [a for s in spec.sites for a in s.actions if (a.name, a.axis) == ("conv.weight", 0)]
    assert rows == [] and "conv.bias" not in _moved(spec)
    cov = spec.coverage(model)
    why = {t: f.reason for f in cov.frozen for t in f.tensors}
    assert "convolution along the feature axis" in why["conv.bias"]


@pytest.mark.parametrize("seed", range(3))
def test_eca_channel_permutation_changes_the_function(seed):
    """Non-invariance: a sampled permutation of the gated channels (conv rows, head columns),
    applied as if a rule had passed the gate, changes the function: neighbouring channels of the
    conv1d are no longer neighbours. The same element keeps a squeeze-excitation block (whose
    gate's own rows move with it) unchanged: the difference is the gate, not the test."""
    x = torch.randn(2, 3, 5, 5, generator=_gen(), dtype=F64)
    perm = torch.randperm(8, generator=_gen(seed))
    while torch.equal(perm, torch.arange(8)) or torch.equal(perm, torch.arange(7, -1, -1)):
        perm = torch.randperm(8, generator=_gen(seed + 100))
    changes = {}
    for eca in (True, False):
        torch.manual_seed(seed)
        model = ECABlock(eca=eca).double().eval()
        with torch.no_grad():
            ref = model(x)
            model.conv.weight.copy_(model.conv.weight[perm])
            model.conv.bias.copy_(model.conv.bias[perm])
            model.head.weight.copy_(model.head.weight[:, perm])
            if not eca:  # the SE gate reads and writes the gated channels
                model.gate.weight.copy_(model.gate.weight[perm][:, perm])
                model.gate.bias.copy_(model.gate.bias[perm])
            changes[eca] = float((model(x) - ref).abs().max() / ref.abs().max())
    assert changes[True] > 1e-4
    assert changes[False] <= 1e-12


# -- token-mixing MLPs: a gated one has hidden units; a single Linear over positions has none ----
class TokenMix(nn.Module):
    """One block on (B, N, C) with a token mixer over N on ``norm(x)^T``: ``"glu"``: timm's
    ``GluMlp`` (``a, b = fc1(z).chunk(2, -1)``, ``fc2(a * silu(b))``, gMixer); ``"single"``: one
    Linear over positions (ResMLP's ``linear_tokens``); ``"swap"``: the fool, a GLU whose
    product reads the halves crossed with a roll (``a * silu(b).roll(1, -1)``): the halves no
    longer line up unit by unit."""

    def __init__(self, kind: str = "glu", n: int = 5, c: int = 6, h: int = 4):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(3, c)
        self.norm = nn.LayerNorm(c)
        if kind == "single":
            self.fc1 = nn.Linear(n, n)
        else:
            self.fc1, self.fc2 = nn.Linear(n, 2 * h), nn.Linear(h, n)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.inp(x)
        z = self.norm(x).transpose(1, 2)
        if self.kind == "single":
            t = self.fc1(z)
        else:
            a, b = self.fc1(z).chunk(2, dim=-1)
            g = F.silu(b)
            t = self.fc2(a * (g.roll(1, -1) if self.kind == "swap" else g))
        return self.head((x + t.transpose(1, 2)).mean(1))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_token_glu_hidden_units_permute_both_halves_together(dtype):
    model, spec = traced(TokenMix("glu"), torch.randn(2, 5, 3, generator=_gen()), dtype)
    assert spec.dropped == []
    (hidden,) = [s for s in spec.sites if s.name.endswith(".hidden") or s.name == "hidden"]
    assert hidden.width == 4 and hidden.group.family.name == "permutation"
    acts = {(a.name, a.axis, a.outer, a.n_total) for a in hidden.actions}
    assert acts == {("fc1.weight", 0, 2, 4), ("fc1.bias", 0, 2, 4), ("fc2.weight", 1, 1, 4)}
    cov = spec.coverage(model)  # all but fc2's bias, which writes positions
    assert [t for f in cov.frozen if not f.output_side for t in f.tensors] == ["fc2.bias"]
    assert "whose outputs are positions again" in cov.frozen[0].reason + cov.frozen[-1].reason


@pytest.mark.parametrize("kind", ["swap", "single"])
def test_linear_over_positions_without_hidden_units_says_why(kind):
    model, spec = traced(TokenMix(kind), torch.randn(2, 5, 3, generator=_gen()))
    assert not any(s.name.endswith("hidden") for s in spec.sites)
    why = {t: f.reason for f in spec.coverage(model).frozen for t in f.tensors}
    assert "a Linear over token positions whose outputs are positions again" in why["fc1.weight"]
    assert not any("no site acts on it" in r for r in why.values())


def test_token_glu_halves_must_move_together():
    """Non-invariance: permuting only one half of fc1's rows (or the halves by different
    permutations) changes the function; the same P on both halves and on fc2's columns does not."""
    model = TokenMix("glu").double().eval()
    x = torch.randn(2, 5, 3, generator=_gen(), dtype=F64)
    p, q = torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1])
    with torch.no_grad():
        ref = model(x)
        w, b, w2 = model.fc1.weight.clone(), model.fc1.bias.clone(), model.fc2.weight.clone()
        out = {}
        for name, (pa, pb) in {"same": (p, p), "crossed": (p, q)}.items():
            rows = torch.cat([pa, 4 + pb])
            model.fc1.weight.copy_(w[rows])
            model.fc1.bias.copy_(b[rows])
            model.fc2.weight.copy_(w2[:, pa])
            out[name] = float((model(x) - ref).abs().max() / ref.abs().max())
    assert out["same"] <= 1e-12
    assert out["crossed"] > 1e-4
