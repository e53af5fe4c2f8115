"""REPAIR through residual streams: the add's output gets the interpolated statistics, folded
into the summands that are module outputs; models written to fool the provenance are skipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.alignment import RepairWarning, interpolate, lerp
from intertwiner.alignment._repair import _measure, _Repairer, _scale_for, _Stats
from intertwiner.errors import InvalidOptionError
from intertwiner.symmetry import trace


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():  # non-trivial running statistics and affine
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


class _Res(nn.Module):
    """A stem, a block with an identity shortcut (``y + h``, or ``y += h`` in place) and a block
    with a 1x1 conv shortcut (both summands modules)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        self.stem, self.bn0, self.act0 = nn.Conv2d(1, 4, 3, padding=1), _bn(4), nn.ReLU()
        self.conv1, self.bn1, self.act1 = (
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
            _bn(4),
            nn.ReLU(),
        )
        self.conv2, self.bn2, self.act2 = (
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
            _bn(4),
            nn.ReLU(),
        )
        self.conv3, self.bn3 = nn.Conv2d(4, 6, 3, padding=1, bias=False), _bn(6)
        self.short, self.act3 = nn.Conv2d(4, 6, 1), nn.ReLU()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.act0(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(h)))))
        if self.inplace:
            y += h
        else:
            y = y + h
        h = self.act2(y)
        z = self.act3(self.bn3(self.conv3(h)) + self.short(h))
        return self.head(z.mean((2, 3)))


def _pair(build, n: int = 64, dtype=torch.float64):
    torch.manual_seed(0)
    a = build().to(dtype).eval()
    torch.manual_seed(1)
    b = build().to(dtype).eval()
    x = torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=dtype)
    return a, b, x


def _assert_interpolated(rep, m, x, alpha, atol):
    got = _measure(m, rep.points, x, batch_size=1000, max_samples=None)  # one-shot
    for k, (mean, std) in enumerate(got):
        (ma, sa), (mb, sb) = rep.stats[0][k], rep.stats[1][k]
        where = rep.points[k].activation
        assert torch.allclose(mean, (1 - alpha) * ma + alpha * mb, atol=atol, rtol=0), where
        assert torch.allclose(std, (1 - alpha) * sa + alpha * sb, atol=atol, rtol=0), where


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_summands_of_residual_adds_get_interpolated_statistics(inplace, alpha):
    a, b, x = _pair(lambda: _Res(inplace))
    rep = _Repairer([a, b], x, batch_size=24)  # default residual="summands"
    assert [(p.activation, p.output_of, p.producers) for p in rep.points] == [
        ("act0", None, ("bn0",)),
        ("act1", None, ("bn1",)),
        ("act2", "bn2", ("bn2",)),  # the identity summand h is not folded
        ("act3", "bn3", ("bn3",)),
        ("act3", "short", ("short",)),
    ]
    m = rep.apply(lerp(a, b, alpha), [1 - alpha, alpha])
    _assert_interpolated(rep, m, x, alpha, atol=1e-9)
    # Independent check of a summand: textbook moments of bn2's output (before the add).
    seen = []
    handle = m.bn2.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    _assert_textbook_moments(rep, m, x, alpha, seen, handle)
    assert m.state_dict().keys() == a.state_dict().keys()


def _assert_textbook_moments(rep, m, x, alpha, seen, handle):
    """Run ``m`` on ``x`` with ``handle``'s hook filling ``seen`` (one (N, 4, ...) tensor): its
    per-channel mean and population std equal the interpolation of the sources' statistics at
    the third repaired point (``rep.stats[k][2]``). Returns the two sources' stds."""
    with torch.no_grad():
        m(x)
    handle.remove()
    z = seen[0].transpose(0, 1).reshape(4, -1)
    (ma, sa), (mb, sb) = rep.stats[0][2], rep.stats[1][2]
    assert torch.allclose(z.std(1, unbiased=False), (1 - alpha) * sa + alpha * sb, atol=1e-9)
    assert torch.allclose(z.mean(1), (1 - alpha) * ma + alpha * mb, atol=1e-9)
    return sa, sb


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_residual_adds_get_interpolated_statistics(inplace, alpha):
    a, b, x = _pair(lambda: _Res(inplace))
    rep = _Repairer([a, b], x, batch_size=24, residual="sum")  # several batches: streaming
    described = {p.activation: (p.producers, p.fixed) for p in rep.points}
    assert described == {
        "act0": (("bn0",), ()),
        "act1": (("bn1",), ()),
        "act2": (("bn2",), described["act2"][1]),
        "act3": (("bn3", "short"), ()),
    }
    assert described["act2"][1], "the identity summand is fixed, not folded"
    m = rep.apply(lerp(a, b, alpha), [1 - alpha, alpha])
    assert rep.unreached == {}
    _assert_interpolated(rep, m, x, alpha, atol=1e-9)
    # Independent check after the identity add: textbook moments of act2's captured input.
    seen = []
    handle = m.act2.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].clone()))
    sa, sb = _assert_textbook_moments(rep, m, x, alpha, seen, handle)
    # A plain model of the same architecture, and the unrepaired line is really off at the add.
    assert m.state_dict().keys() == a.state_dict().keys()
    ((_, std0),) = _measure(lerp(a, b, alpha), rep.points[2:3], x, batch_size=64, max_samples=None)
    assert float((std0 - ((1 - alpha) * sa + alpha * sb)).abs().max()) > 1e-3


@pytest.mark.parametrize("residual", ["summands", "sum"])
def test_residual_repair_float32_and_endpoints_unchanged(residual):
    a, b, x = _pair(_Res, dtype=torch.float32)
    rep = _Repairer([a, b], x, residual=residual)
    m = rep.apply(lerp(a, b, 0.5), [0.5, 0.5])
    assert next(m.parameters()).dtype == torch.float32
    _assert_interpolated(rep, m, x, 0.5, atol=1e-4)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(3))
    data = torch.utils.data.TensorDataset(x, y)
    plain = interpolate(a, b, 3, data, reset_bn=False)
    fixed = interpolate(a, b, 3, data, reset_bn=False, repair=residual, bn_data=x)
    assert fixed.losses[0] == plain.losses[0] and fixed.losses[-1] == plain.losses[-1]
    assert fixed.losses[1] != plain.losses[1]


class _FunctionalSummand(nn.Module):
    """``act(y + 0.5 * y)`` with ``y = bn(...)``: the second summand is a functional op computed
    from the first, so scaling ``bn`` would move both."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(1, 4, 3, bias=False), _bn(4), nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.head(self.act(y + 0.5 * y).mean((2, 3)))


class _Shared(nn.Module):
    """One Linear called twice: a fold at one call would change the other. ``trace`` drops these
    sites (the bias is tied), so the test passes the spec of an untied twin, as a caller may."""

    def __init__(self, shared: bool = True):
        super().__init__()
        self.lin, self.act1, self.act2 = nn.Linear(4, 4), nn.ReLU(), nn.ReLU()
        self.lin2 = self.lin if shared else nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act2(self.lin2(self.act1(self.lin(x.flatten(1)[:, :4])))))


class _Tied(_Shared):
    """Two Linears holding one weight Parameter (tied weights): a fold into one reaches both."""

    def __init__(self):
        super().__init__(shared=False)
        self.lin2.weight = self.lin.weight


class _DependentSummands(nn.Module):
    """``act2(conv2(act1(y)) + y)``: both summands are modules, but the first is computed from
    the second (``bn1``), so a fold into ``bn1`` moves both."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 4, 3, bias=False), _bn(4), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        return self.head(self.act2(self.conv2(self.act1(y)) + y).mean((2, 3)))


class _MovesEarlier(nn.Module):
    """``act1(y)`` and ``act2(y + short(x))`` with ``y = bn1(...)``: folding the add's correction
    into ``bn1`` would change ``act1``'s input, repaired before."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = (
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            _bn(4),
            nn.ReLU(),
        )
        self.short, self.act2 = nn.Conv2d(1, 4, 1), nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        return self.head((self.act1(y) + self.act2(y + self.short(x))).mean((2, 3)))


@pytest.mark.parametrize(
    ("build", "skipped", "kept", "why"),
    [
        (_FunctionalSummand, "act", [], "depends on bn"),
        (_Shared, "act1", [], "lin is called 2 times"),  # and act2: lin2 is lin
        (_Tied, "act1", [], "lin shares a parameter with lin2"),
        (_DependentSummands, "act2", ["act1"], "'conv2' depends on bn1"),
        (_MovesEarlier, "act2", ["act1"], "would also change act1"),
    ],
)
@pytest.mark.parametrize("residual", ["summands", "sum"])
def test_models_written_to_fool_provenance_are_skipped_with_a_named_warning(
    build, skipped, kept, why, residual
):
    a, b, x = _pair(build, n=16)
    twin = build in (_Shared, _Tied)
    spec = trace(_Shared(shared=False).double(), x[:4]) if twin else None
    with pytest.warns(RepairWarning, match=rf"{skipped}: .*{why}"):
        rep = _Repairer([a, b], x, spec=spec, residual=residual)
    assert [p.activation for p in rep.points] == kept
    assert any(why in s for s in rep.skipped)
    m = rep.apply(lerp(a, b, 0.5), [0.5, 0.5])
    _assert_interpolated(rep, m, x, 0.5, atol=1e-9)  # the points it kept are still exact


class _FixedFunctional(nn.Module):
    """``act(bn(conv(x)) + 0.3 * short(x))``: a summand from a functional op (a product, not a
    module output) that does not depend on the folded module is measured and kept, like an
    identity shortcut; ``short`` itself is foldable but not a summand."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(1, 4, 3, padding=1, bias=False), _bn(4), nn.ReLU()
        self.short = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        z = self.bn(self.conv(x)) + self.short(x) * 0.3
        return self.head(self.act(z).mean((2, 3)))


@pytest.mark.parametrize("residual", ["summands", "sum"])
def test_a_functional_summand_independent_of_the_fold_is_kept_fixed(residual):
    a, b, x = _pair(_FixedFunctional)
    rep = _Repairer([a, b], x, residual=residual)
    (p,) = rep.points
    if residual == "sum":
        assert p.producers == ("bn",) and p.fixed == ("op mul",)
    else:
        assert p.output_of == "bn" and not p.fixed
    m = rep.apply(lerp(a, b, 0.5), [0.5, 0.5])
    assert rep.unreached == {}
    _assert_interpolated(rep, m, x, 0.5, atol=1e-9)


def test_scale_for_solves_the_quadratic_or_flags_the_channel():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64)
    b = 0.4 * a + torch.randn(500, 3, generator=g, dtype=torch.float64)
    b[:, 1] = -0.3 * a[:, 1] + 0.2 * b[:, 1]  # negatively correlated: two positive roots
    st = _Stats()
    st.add(a + b, a)
    target = torch.tensor([2.0, 0.9, 0.01], dtype=torch.float64)  # the last is below reach
    s, ok = _scale_for(st, target)
    assert ok.tolist() == [True, True, False]
    got = (s * a + b).std(0, unbiased=False)
    assert torch.allclose(got[:2], target[:2], atol=1e-10)
    assert s[2] == 1.0
    # Brute force over a grid of positive scales: no scale is closer to 1 with the target std.
    grid = torch.linspace(1e-3, 5, 20001, dtype=torch.float64)
    stds = (grid[:, None, None] * a[None, :, 1:2] + b[None, :, 1:2]).std(1, unbiased=False)[:, 0]
    hits = grid[(stds - target[1]).abs() < 2e-4]
    assert float((hits - 1).abs().min()) >= float((s[1] - 1).abs()) - 1e-3


def test_unknown_residual_mode_is_refused():
    a, b, x = _pair(_Res, n=8)
    with pytest.raises(InvalidOptionError, match="residual"):
        _Repairer([a, b], x, residual="stream")
    with pytest.raises(InvalidOptionError, match="repair="):
        interpolate(a, b, 3, torch.utils.data.TensorDataset(x, torch.zeros(8).long()),
                    repair="both", bn_data=x)  # fmt: skip
