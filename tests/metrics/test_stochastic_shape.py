"""The Gaussian stochastic shape distance (Duong et al. 2023; netrep's GaussianStochasticMetric,
not on the registry): the formula re-derived from the paper and minimised by brute force over O(2),
its reductions (deterministic features: the Euclidean shape distance), invariance on stochastic
inputs, and its refusals."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.optimize import minimize_scalar

from intertwiner import metrics
from intertwiner.errors import InvalidInputError, InvalidOptionError, ShapeError, TooFewSamplesError
from intertwiner.metrics import GaussianStats, gaussian_stats, stochastic_shape_distance


def _stats(seed, repeats=6, conditions=8, width=2):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g, dtype=torch.float64)
    noise = torch.randn(repeats, conditions, width, generator=g, dtype=torch.float64) @ mix
    return gaussian_stats(noise + 2.0 * torch.randn(1, conditions, width, generator=g,
                                                    dtype=torch.float64))  # fmt: skip


def _paper_distance(sx, sy, alpha):
    """Duong et al.'s d_alpha with the Bures distance from matrix square roots (scipy.linalg.sqrtm),
    means centred, each side normalised, minimised over O(2) by a grid over rotations and
    reflections refined by a bounded scalar search."""
    mx, cx = sx.means.numpy(), sx.covariances.numpy()
    my, cy = sy.means.numpy(), sy.covariances.numpy()
    mx, my = mx - mx.mean(0), my - my.mean(0)
    m = mx.shape[0]

    def total(mu, cov):
        return ((2 - alpha) * (mu * mu).sum() + alpha * sum(np.trace(c) for c in cov)) / m

    tx, ty = total(mx, cx), total(my, cy)
    mx, cx, my, cy = mx / np.sqrt(tx), cx / tx, my / np.sqrt(ty), cy / ty

    def bures2(a, b):
        ra = sqrtm(a)
        return np.trace(a) + np.trace(b) - 2 * np.trace(sqrtm(ra @ b @ ra)).real

    def objective(t):
        return sum((2 - alpha) * np.sum((mx[i] - t @ my[i]) ** 2)
                   + alpha * bures2(cx[i], t @ cy[i] @ t.T) for i in range(m)) / m  # fmt: skip

    best = math.inf
    for reflect in (1.0, -1.0):

        def rot(th, reflect=reflect):
            c, s = np.cos(th), np.sin(th)
            return np.array([[c, -s], [s, c]]) @ np.diag([1.0, reflect])

        grid = np.linspace(0, 2 * np.pi, 361)
        k = int(np.argmin([objective(rot(t)) for t in grid]))
        res = minimize_scalar(lambda t, rot=rot: objective(rot(t)), method="bounded",
                              bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 360)]),
                              options={"xatol": 1e-12})  # fmt: skip
        best = min(best, float(res.fun))
    return math.sqrt(max(best, 0.0))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_paper_formula_minimised_by_brute_force(alpha, seed):
    sx, sy = _stats(seed), _stats(seed + 10, repeats=9)
    got = stochastic_shape_distance(sx, sy, alpha)
    assert got == pytest.approx(_paper_distance(sx, sy, alpha), abs=1e-9)


def test_deterministic_features_give_the_euclidean_shape_distance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 4, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        40, 4, generator=g, dtype=torch.float64
    )
    want = metrics.shape_distance(x, torch.nn.functional.pad(y, (0, 1)), score="euclidean")
    for alpha in (0.0, 1.0, 1.7):
        assert stochastic_shape_distance(x, y, alpha) == pytest.approx(want, abs=1e-12)
    # the same as Gaussians with zero covariance, given as a tuple
    zeros = torch.zeros(40, 5, 5, dtype=torch.float64)
    assert stochastic_shape_distance((x, zeros), y) == pytest.approx(want, abs=1e-12)


def test_wasserstein_between_two_gaussians_per_condition_closed_form():
    """One neuron: B(a, b) = |sqrt(a) - sqrt(b)|, and O(1) = {+1, -1}: checkable by hand."""
    mx = torch.tensor([[1.0], [-1.0], [0.5], [-0.5]], dtype=torch.float64)
    vx = torch.tensor([1.0, 4.0, 0.25, 1.0], dtype=torch.float64)
    my = torch.tensor([[-0.8], [1.2], [-0.4], [0.0]], dtype=torch.float64)
    vy = torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    sx, sy = GaussianStats(mx, vx.view(-1, 1, 1)), GaussianStats(my, vy.view(-1, 1, 1))
    mxc, myc = mx[:, 0] - mx.mean(), my[:, 0] - my.mean()
    nx = ((mxc**2).sum() + vx.sum()) / 4
    ny = ((myc**2).sum() + vy.sum()) / 4
    want = min(
        float((((mxc / nx.sqrt() - s * myc / ny.sqrt()) ** 2)
               + (vx.sqrt() / nx.sqrt() - vy.sqrt() / ny.sqrt()) ** 2).mean())
        for s in (1.0, -1.0)
    )  # fmt: skip
    assert stochastic_shape_distance(sx, sy, 1.0) == pytest.approx(math.sqrt(want), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invariant_to_orthogonal_maps_of_stochastic_inputs_not_to_scalings(dtype):
    sx, sy = _stats(4, width=4), _stats(5, width=4, repeats=7)
    ref = stochastic_shape_distance(sx, sy)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        moved = GaussianStats((sy.means @ q.T + 3.0).to(dtype),
                              (q @ sy.covariances @ q.T).to(dtype) * 1.0)  # fmt: skip
        tol = 1e-5 if dtype == torch.float32 else 1e-9
        assert stochastic_shape_distance(sx, moved) == pytest.approx(ref, abs=tol)
        scaled = GaussianStats(moved.means * 7.0, moved.covariances * 49.0)  # scale-free
        assert stochastic_shape_distance(sx, scaled) == pytest.approx(ref, abs=tol)
    d = torch.tensor([3.0, 0.2, 1.0, 1.0], dtype=torch.float64)  # a diagonal map: not orthogonal
    stretched = GaussianStats(sy.means * d, sy.covariances * d[:, None] * d[None, :])
    assert abs(stochastic_shape_distance(sx, stretched) - ref) > 1e-3


def test_range_identity_and_covariance_sensitivity():
    sx = _stats(6, width=3)
    assert stochastic_shape_distance(sx, sx) == pytest.approx(0.0, abs=1e-7)
    wider = GaussianStats(sx.means, 4.0 * sx.covariances)  # same means, more noise
    d = stochastic_shape_distance(sx, wider)
    assert 1e-3 < d <= math.sqrt(2.0)
    assert stochastic_shape_distance(sx, wider, alpha=0.0) == pytest.approx(0.0, abs=1e-7)


def test_samples_give_unbiased_moments():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    st = gaussian_stats(s)
    assert torch.allclose(st.means, s.mean(0))
    want = torch.stack([torch.cov(s[:, i].T) for i in range(3)])
    assert torch.allclose(st.covariances, want, atol=1e-14)


def test_refusals():
    sx = _stats(0)
    with pytest.raises(InvalidOptionError):
        stochastic_shape_distance(sx, sx, alpha=2.5)
    with pytest.raises(InvalidOptionError):
        stochastic_shape_distance(sx, sx, n_init=-1)
    with pytest.raises(ShapeError):
        stochastic_shape_distance(sx, _stats(1, conditions=5))
    with pytest.raises(TooFewSamplesError):
        gaussian_stats(torch.randn(1, 4, 2))
    with pytest.raises(ShapeError):
        gaussian_stats(torch.randn(4, 2))
    with pytest.raises(ShapeError):
        GaussianStats(torch.zeros(4, 2), torch.zeros(4, 3, 3))
    with pytest.raises(InvalidInputError, match="symmetric"):
        GaussianStats(torch.zeros(4, 2), torch.tensor([[[1.0, 1.0], [0.0, 1.0]]] * 4))
    with pytest.raises(InvalidInputError, match="semi-definite"):
        stochastic_shape_distance(GaussianStats(sx.means, -sx.covariances), sx)


def test_registered_with_pairwise():
    m = metrics.metric("stochastic_shape_distance", alpha=0.5)
    assert m.invariance == "orthogonal" and not m.higher_is_similar
    assert m.value_range == (0.0, math.sqrt(2.0))
    g = torch.Generator().manual_seed(2)
    sets = [torch.randn(30, 4, generator=g) for _ in range(3)]
    res = metrics.pairwise(sets, m, progress=False)
    mat = next(iter(res.matrices.values()))
    assert mat[0, 1] == pytest.approx(m(sets[0], sets[1]), abs=1e-12)
