"""The one paired-moment accumulator: streaming over batches equals the one-shot sums (and the
textbook products in float64) to round-off, in float32 and float64, in every form; alignment,
stitching and the metrics all accumulate through it."""

import pytest
import torch

from intertwiner._paired import PairedMoments
from intertwiner.errors import InvalidOptionError, NonFiniteError, ShapeError
from intertwiner.metrics import procrustes as pr
from intertwiner.metrics._moments import MomentAccumulator, cross_moments
from intertwiner.stitching import FeatureStats


def rows(n, p, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, p, generator=g, dtype=torch.float64) * 3 + 5).to(dtype)


def textbook(x, y):
    """float64 sums, second and cross moments, centred ones, by the definitions."""
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    return {
        "sx": x.sum(0), "sy": y.sum(0), "xx": x.T @ x, "yy": y.T @ y, "xy": x.T @ y,
        "cxx": xc.T @ xc, "cyy": yc.T @ yc, "cxy": xc.T @ yc,
    }  # fmt: skip


def form(t, full):
    return t if full else t.diagonal()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("full_x,full_y", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shift", [False, True])
def test_streaming_equals_one_shot_and_the_definitions(dtype, full_x, full_y, shift):
    x, y = rows(203, 6, 0, dtype), rows(203, 4, 1, dtype)
    ref = textbook(x, y)
    one = PairedMoments(6, 4, full_x=full_x, full_y=full_y, shift=shift, block_rows=64)
    one.update(x, y)
    many = PairedMoments(6, 4, full_x=full_x, full_y=full_y, shift=shift, block_rows=64)
    for start, stop in [(0, 1), (1, 50), (50, 51), (51, 203)]:  # uneven batches, one of 1 row
        many.update(x[start:stop], y[start:stop])
    assert one.n == many.n == 203
    # float32 rows are multiplied in float32 blocks: their round-off, not float64's
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for acc in (one, many):
        xx, yy, xy = acc.centred()
        for got, want in ((xx, form(ref["cxx"], full_x)), (yy, form(ref["cyy"], full_y)),
                          (xy, ref["cxy"])):  # fmt: skip
            assert got.dtype == torch.float64
            assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
        if not shift:
            for got, want in zip(acc.raw(), (form(ref["xx"], full_x), form(ref["yy"], full_y),
                                             ref["xy"]), strict=True):  # fmt: skip
                assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
            assert torch.allclose(acc.sx, ref["sx"], rtol=tol)
    for a, b in zip(one.centred(), many.centred(), strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max()))


def test_refusals():
    acc = PairedMoments(3, 2, shift=True)
    with pytest.raises(ShapeError):
        acc.update(torch.zeros(4, 3), torch.zeros(5, 2))
    with pytest.raises(ShapeError):
        acc.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(NonFiniteError):
        acc.update(torch.full((4, 3), float("nan")), torch.zeros(4, 2))
    assert acc.n == 0  # a refused batch changes nothing
    with pytest.raises(InvalidOptionError):
        acc.raw()  # shifted: only centred moments exist
    raw = PairedMoments(3, 2, full_x=False, full_y=False)
    raw.add(4, torch.ones(3), torch.ones(2), torch.ones(3, 2))  # no column sums given
    with pytest.raises(InvalidOptionError):
        raw.centred()


def test_the_three_users_are_this_accumulator():
    x, y = rows(120, 5, 2, torch.float64), rows(120, 3, 3, torch.float64)
    ref = textbook(x, y)
    fs = FeatureStats(5, 3)
    for i in range(0, 120, 37):
        fs.update(x[i : i + 37], y[i : i + 37])
    assert isinstance(fs, PairedMoments)
    _, _, cxx, cyy, cxy = fs.moments(center=True)
    assert torch.allclose(cxx * 120, ref["cxx"], rtol=1e-12)
    assert torch.allclose(cyy * 120, ref["cyy"].diagonal(), rtol=1e-12)
    assert torch.allclose(cxy * 120, ref["cxy"], rtol=1e-12)
    for center in (False, True):
        st = pr.new_stats("orthogonal", center)
        for i in range(0, 120, 37):
            st.update(x[i : i + 37], y[i : i + 37])
        assert isinstance(st.sums, PairedMoments) and st.n == 120
        m, xsq, ysq = st._centred(center)
        # the statistics are kept at a power-of-two scale per side: compare scale-free ratios
        key = "c" if center else ""
        want = (
            ref[key + "xy"]
            / (ref[key + "xx"].diagonal().sum() * ref[key + "yy"].diagonal().sum()) ** 0.5
        )
        got = m / (xsq.sum() * ysq.sum()) ** 0.5
        assert torch.allclose(got, want, rtol=1e-10)
    acc = MomentAccumulator()
    for i in range(0, 120, 37):
        acc.update(x[i : i + 37], y[i : i + 37])
    a, b = acc.moments(), cross_moments(x, y)
    for s, t in ((a.xx, b.xx), (a.yy, b.yy), (a.xy, b.xy)):
        assert torch.allclose(s, t, rtol=1e-10, atol=1e-12 * float(t.abs().max()))
