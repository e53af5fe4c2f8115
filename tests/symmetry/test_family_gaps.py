"""Gaps of conv and MLP families (issue 24): a fixed channel shuffle passes sites through by conjugation
(ShuffleNet); where a model has no symmetry to find (ECA's conv1d over channels beyond the
reversal, scalar parameters shared by every feature) the spec says why, and a sampled candidate element applied
as if a rule had passed it does change the function (the claim is not vacuous)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

from intertwiner.symmetry import check, trace

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
    frozen, with the reason recorded (the split view ties its two blocks to one map; c2 then
    meets the channels on a spatial dim, or interleaved with the blocks, and freezes them; the
    checked spec keeps the function either way)."""
    model = ShuffleFool(swap=not reuse, reuse=reuse)
    model, spec = traced(model, torch.randn(2, 3, 4, 5, generator=_gen()))
    assert "c1.weight" not in _moved(spec)
    assert [label for label, _ in spec.frozen] == ["relu"]


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
    # the sites keep c P and the numbers take its factor (test_scalar_params.py):
    # the bias always, StarReLU's scale too (relu^2 has degree 2); LAB's scale (degree 1) stays
    assert "act.bias" in _moved(spec) and "act.bias" not in why
    if conv:
        assert why["act.scale"].startswith("frozen: scalar parameter act.scale")
        assert "multiplying every feature" in why["act.scale"]
    else:
        assert "act.scale" in _moved(spec)
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


def test_eca_keeps_only_the_reversal():
    """The gated space keeps the reversal {I, J} only (kernel flipped with J: see
    ``test_channel_conv.py``); the permutations the next test samples are refused."""
    model, spec = traced(ECABlock(), torch.randn(2, 3, 5, 5, generator=_gen()))
    sites = [
        s for s in spec.sites if any((a.name, a.axis) == ("conv.weight", 0) for a in s.actions)
    ]
    assert sites and all(s.group.family.name == "reversal" for s in sites)
    assert any("only reversing their order" in why for s in sites for why in s.restrictions)


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


# -- softmax over branches (SK-Net) and attention pooling over positions (GCNet) ----------------
class SelectiveKernel(nn.Module):
    """timm's ``SelectiveKernel`` written out: two branches (3x3, dilated 3x3) stacked on a new
    dim K, ``fc_select`` writes K * C logits viewed as ``(B, K, C, 1, 1)``, softmax over K, the
    branches weighted and summed. ``fool``: the logits are also read after the view by another
    convolution (``proj``), which must keep the space from being re-cut into K blocks."""

    def __init__(self, c: int = 6, fool: bool = False):
        super().__init__()
        self.fool = fool
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.paths = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d), nn.BatchNorm2d(c), nn.ReLU())
            for d in (1, 2)
        )
        self.fc_reduce, self.fc_select = nn.Conv2d(c, 4, 1), nn.Conv2d(4, 2 * c, 1)
        self.proj = nn.Conv2d(2 * c, c, 1) if fool else None
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.stem(x))
        xs = torch.stack([p(h) for p in self.paths], dim=1)  # (B, K, C, H, W)
        s = F.relu(self.fc_reduce(xs.sum(1).mean((2, 3), keepdim=True)))
        z = self.fc_select(s)
        b, kc = z.shape[:2]
        a = torch.softmax(z.view(b, 2, kc // 2, 1, 1), dim=1)
        y = (xs * a).sum(1)
        if self.fool:
            y = y + self.proj(z)
        return self.head(F.relu(h + y))


class GlobalContext(nn.Module):
    """timm's ``GlobalContext`` (``fuse_add``): attention pooling over positions with weights
    from a one-channel conv, an MLP on the context added to every position. Fools: ``heads=2``,
    two-channel pooling weights (a space of two features the product cannot keep fixed as a
    whole); ``over_channels``: a softmax over the channels of the stream."""

    def __init__(self, c: int = 6, heads: int = 1, over_channels: bool = False):
        super().__init__()
        self.heads, self.over_channels = heads, over_channels
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv_attn = nn.Conv2d(c, heads, 1)
        self.fc1, self.fc2 = nn.Conv2d(c * heads, 4, 1), nn.Conv2d(4, c, 1)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.stem(x))
        if self.over_channels:
            h = torch.softmax(h, dim=1)
        b, c, hh, ww = h.shape
        attn = torch.softmax(self.conv_attn(h).reshape(b, self.heads, hh * ww), dim=-1)
        if self.heads == 1:
            context = h.reshape(b, c, hh * ww).unsqueeze(1) @ attn.unsqueeze(3)  # (B, 1, C, 1)
        else:
            context = h.reshape(b, c, hh * ww) @ attn.transpose(1, 2)  # (B, C, heads)
        context = context.reshape(b, c * self.heads, 1, 1)
        return self.head(F.relu(h + self.fc2(F.relu(self.fc1(context)))))


def _rows(spec, name: str) -> list:
    return [a for s in spec.sites for a in s.actions if (a.name, a.axis) == (name, 0)]


def _blocked_logits(model: nn.Module, shape: tuple, logits: str, dtype):
    """Trace ``model``, check full interior coverage and return the one action on the rows of
    ``logits`` (the K * C logits of a softmax over K) and its site."""
    model, spec = traced(_bn_stats(model), torch.randn(*shape, generator=_gen()), dtype)
    assert spec.dropped == []
    cov = spec.coverage(model)
    assert cov.interior_tensors == 1.0, cov.summary()
    (sel,) = _rows(spec, logits)
    return sel, next(s for s in spec.sites if sel in s.actions)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_selective_kernel_softmax_over_branches_keeps_the_channels(dtype):
    sel, site = _blocked_logits(SelectiveKernel(), (2, 3, 6, 6), "fc_select.weight", dtype)
    assert (sel.outer, sel.n_total) == (2, 6)  # seen as (K, C): one permutation in each branch
    assert any(a.name == "paths.0.0.weight" for a in site.actions)
    assert any(a.name == "paths.1.0.weight" for a in site.actions)


def test_selective_kernel_logits_read_elsewhere_are_tied_not_folded():
    """Logits read after the view too (``proj``) cannot be folded to width C in place; they are
    cut into K blocks tied to one map (diag(M, M) on every reader, ``tied_split``): each block of
    fc_select's rows is moved by the same site, and the proposed spec keeps the function."""
    model = _bn_stats(SelectiveKernel(fool=True))
    model, spec = traced(model, torch.randn(2, 3, 6, 6, generator=_gen()))
    rows = _rows(spec, "fc_select.weight")
    assert sorted(a.channels for a in rows) == [tuple(range(6)), tuple(range(6, 12))]
    assert len({s.name for s in spec.sites for a in s.actions if a in rows}) == 1
    x = torch.randn(2, 3, 6, 6, generator=_gen(1), dtype=F64)
    proposed = trace(model, x, verify=False)
    assert check(model, proposed, x, generator=_gen(4)) <= 1e-10 * float(model(x).abs().max())


def test_selective_kernel_branches_must_move_together():
    """Non-invariance: the element that a per-branch rule would allow, P on one branch (its conv
    rows, BN and fc_select's block of logits) and the identity on the other, changes the
    function; the traced site (one P for both branches and every block) keeps it (``traced``)."""
    model = _bn_stats(SelectiveKernel()).double().eval()
    x = torch.randn(2, 3, 6, 6, generator=_gen(), dtype=F64)
    p = torch.tensor([1, 2, 0, 4, 5, 3])
    with torch.no_grad():
        ref = model(x)
        conv, bn = model.paths[0][0], model.paths[0][1]
        for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[p])
        rows = torch.cat([p, torch.arange(6, 12)])
        model.fc_select.weight.copy_(model.fc_select.weight[rows])
        model.fc_select.bias.copy_(model.fc_select.bias[rows])
        changed = float((model(x) - ref).abs().max() / ref.abs().max())
    assert changed > 1e-4


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_global_context_pooling_keeps_the_stream(dtype):
    model, spec = traced(GlobalContext(), torch.randn(2, 3, 5, 5, generator=_gen()), dtype)
    assert spec.dropped == []
    cov = spec.coverage(model)
    unmoved = [t for f in cov.frozen if not f.output_side for t in f.tensors]
    assert unmoved == ["conv_attn.bias"], cov.summary()  # the one-channel logits stay fixed
    stream = next(s for s in spec.sites if any(a.name == "stem.weight" for a in s.actions))
    names = {(a.name, a.axis) for a in stream.actions}
    assert {("conv_attn.weight", 1), ("fc1.weight", 1), ("fc2.weight", 0)} <= names
    assert stream.group.family.name == "positive_monomial"


@pytest.mark.parametrize("fool", [{"heads": 2}, {"over_channels": True}])
def test_global_context_fools_freeze_the_stream(fool):
    model, spec = traced(GlobalContext(**fool), torch.randn(2, 3, 5, 5, generator=_gen()))
    assert _rows(spec, "stem.weight") == []


def test_softmax_over_positions_admits_no_scaling():
    """A softmax over positions of a space of several channels keeps permutations only.
    Non-invariance: a positive per-channel scaling (stem rows by D, head columns by D^-1), which
    a rule that let scalings through would allow, changes the function."""

    class SoftPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            h = self.stem(x)
            b, c = h.shape[:2]
            return self.head(torch.softmax(h.flatten(2), -1).view_as(h))

    model, spec = traced(SoftPool(), torch.randn(2, 3, 3, 3, generator=_gen()))
    (site,) = [s for s in spec.sites if any(a.name == "stem.weight" for a in s.actions)]
    assert site.group.family.name == "permutation"
    x = torch.randn(2, 3, 3, 3, generator=_gen(), dtype=F64)
    d = torch.tensor([0.5, 2.0, 1.5, 0.8], dtype=F64)
    with torch.no_grad():
        ref = model(x)
        model.stem.weight.mul_(d[:, None, None, None])
        model.stem.bias.mul_(d)
        model.head.weight.div_(d[None, :, None, None])
        changed = float((model(x) - ref).abs().max() / ref.abs().max())
    assert changed > 1e-4


class BlockSum(nn.Module):
    """``b(a(x).unflatten(-1, (2, 3)).sum(1))``: a's six outputs cut into two blocks of three and
    summed: one matrix M on both blocks (diag(M, M) on a's rows) is taken back by b's columns.
    ``act``: a ReLU before the cut (not re-cut: the space was activated at width 6)."""

    def __init__(self, act: bool = False):
        super().__init__()
        self.act = act
        self.a, self.b, self.inp = nn.Linear(4, 6), nn.Linear(3, 2), nn.Linear(3, 4)

    def forward(self, x):
        h = self.a(torch.tanh(self.inp(x)))
        h = torch.relu(h) if self.act else h
        return self.b(h.unflatten(-1, (2, 3)).sum(1))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_a_fresh_space_cut_into_blocks_acts_on_every_block(dtype):
    model, spec = traced(BlockSum(), torch.randn(5, 3, generator=_gen()), dtype)
    (rows,) = _rows(spec, "a.weight")
    assert (rows.outer, rows.n_total) == (2, 3)
    site = next(s for s in spec.sites if rows in s.actions)
    assert site.width == 3 and site.group.family.name == "general_linear"
    # activated at width 6: not folded in place, but cut into two blocks tied to one map
    model, spec = traced(BlockSum(act=True), torch.randn(5, 3, generator=_gen()), dtype)
    rows = _rows(spec, "a.weight")
    assert sorted(a.channels for a in rows) == [(0, 1, 2), (3, 4, 5)]
    assert {s.width for s in spec.sites for a in s.actions if a in rows} == {3}


def test_eca_reversal_with_a_flipped_kernel_is_the_exception_the_reason_names():
    """The recorded reason names one exception; check that it is one: reversing the gated
    channels (conv rows, head columns) with ECA's kernel flipped keeps the function."""
    model = ECABlock().double().eval()
    x = torch.randn(2, 3, 5, 5, generator=_gen(), dtype=F64)
    rev = torch.arange(7, -1, -1)
    with torch.no_grad():
        ref = model(x)
        model.conv.weight.copy_(model.conv.weight[rev])
        model.conv.bias.copy_(model.conv.bias[rev])
        model.head.weight.copy_(model.head.weight[:, rev])
        model.gate.weight.copy_(model.gate.weight.flip(-1))
        out = model(x)
    assert float((out - ref).abs().max()) <= 1e-12 * float(ref.abs().max())


# -- ResNeSt's split attention: radix groups of a grouped conv, softmax over the radix ----------
class SplitAttn(nn.Module):
    """timm's ``SplitAttn`` (radix 2, cardinality 1) written out: a grouped conv writes 2 * C
    channels (one block per radix group) viewed as (B, 2, C, H, W); the logits go through
    ``view(B, 1, 2, C).transpose(1, 2)``, a softmax over the radix, ``reshape(B, -1)`` and back
    to (B, 2, C, 1, 1). ``fool``: the radix blocks are read crossed (``flip(1)``) before the
    weighted sum, so block j's channels meet the other block's weights: kept only because
    every block is moved by the one element."""

    def __init__(self, c: int = 4, fool: bool = False):
        super().__init__()
        self.c, self.fool = c, fool
        self.stem = nn.Conv2d(3, c, 1)
        self.conv = nn.Conv2d(c, 2 * c, 3, padding=1, groups=2)
        self.bn0 = nn.BatchNorm2d(2 * c)
        self.fc1, self.fc2 = nn.Conv2d(c, 3, 1), nn.Conv2d(3, 2 * c, 1)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = F.relu(self.bn0(self.conv(F.relu(self.stem(x)))))
        b, rc, hh, ww = h.shape
        h = h.reshape(b, 2, rc // 2, hh, ww)
        gap = F.relu(self.fc1(h.sum(1).mean((2, 3), keepdim=True)))
        a = self.fc2(gap).view(b, 1, 2, -1).transpose(1, 2)
        a = torch.softmax(a, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        if self.fool:
            h = h.flip(1)
        return self.head((h * a.reshape(b, 2, rc // 2, 1, 1)).sum(1))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_split_attention_ties_the_radix_groups(dtype):
    sel, site = _blocked_logits(SplitAttn(), (2, 3, 4, 4), "fc2.weight", dtype)
    assert (sel.outer, sel.n_total) == (2, 4)  # the logits seen as (radix, C)
    conv_rows = [a for a in site.actions if (a.name, a.axis) == ("conv.weight", 0)]
    assert sorted(c for a in conv_rows for c in a.channels) == list(range(8))


def test_split_attention_one_radix_group_alone_changes_the_function():
    """Non-invariance: P on radix group 0 only (its conv rows and BN, fc2's block 0 of logits),
    the element a rule giving each group its own site would allow, changes the function."""
    model = _bn_stats(SplitAttn()).double().eval()
    x = torch.randn(2, 3, 4, 4, generator=_gen(), dtype=F64)
    p = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        ref = model(x)
        rows = torch.cat([p, torch.arange(4, 8)])
        for t in (model.conv.weight, model.conv.bias, model.bn0.weight, model.bn0.bias,
                  model.bn0.running_mean, model.bn0.running_var, model.fc2.weight, model.fc2.bias):  # fmt: skip
            t.copy_(t[rows])
        changed = float((model(x) - ref).abs().max() / ref.abs().max())
    assert changed > 1e-4


def test_split_attention_crossed_blocks_keep_the_function():
    """The fool reads the radix blocks crossed: whatever the tracer keeps must still leave the
    function unchanged (``traced`` checks three sampled elements)."""
    model = _bn_stats(SplitAttn(fool=True))
    traced(model, torch.randn(2, 3, 4, 4, generator=_gen()))
