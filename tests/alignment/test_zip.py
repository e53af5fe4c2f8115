"""zip_models (ZipIt!): copies zip to the model, k=0 is the ensemble, M U = I, refusals."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import TinyMLP, build_zoo
from torch import nn

from intertwiner.alignment import zip_models
from intertwiner.alignment._zip import _greedy_pairs
from intertwiner.errors import (
    InvalidOptionError,
    ShapeError,
    TooFewSamplesError,
    UnsupportedModuleError,
)
from intertwiner.symmetry import apply, random_elements, trace


def _inputs(dtype, n=256, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.GELU])
def test_zipping_a_transformed_copy_gives_the_model_at_every_k(dtype, act):
    """B = A moved by a random element of its spec (ReLU: permutation and positive scales, tanh:
    signed permutation): every unit of A has a perfectly correlated partner in B, and the merge
    with the group's scales and signs recovers A's function whatever the number of zipped sites."""
    a = TinyMLP(act=act, seed=1, dtype=dtype).eval()
    x = _inputs(dtype)
    spec = trace(a, x[:8])
    b = apply(a, spec, random_elements(spec, torch.Generator().manual_seed(7)))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    with torch.no_grad():
        ref = a(x)
        for k in (0, 1, 2):
            res = zip_models(a, b, x, k=k, heads="average")
            assert res.k == k and res.depth == 2
            assert _rel(res.model(x), ref) < tol, k
            assert all(s.within == 0 for s in res.sites)  # the partners are across models


def test_k0_is_the_ensemble_exactly():
    a = TinyMLP(seed=1).eval()
    b = TinyMLP(seed=2).eval()
    x = _inputs(torch.float32)
    with torch.no_grad():
        cat = zip_models(a, b, x, k=0).model(x)
        assert torch.equal(cat, torch.cat([a(x), b(x)], dim=1))
        avg = zip_models(a, b, x, k=0, heads="average").model(x)
        torch.testing.assert_close(avg, (a(x) + b(x)) / 2)
        full = zip_models(a, b, x).model(x)
        assert full.shape == (x.shape[0], 20)
        assert not torch.allclose(full, cat, atol=1e-3)  # zipping changed something


@pytest.mark.parametrize("match", ["greedy", "permutation", "identity"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_merge_unmerge_are_inverse_and_pairs_partition(match, act):
    a = TinyMLP(act=act, seed=1, dtype=torch.float64).eval()
    b = TinyMLP(act=act, seed=2, dtype=torch.float64).eval()
    res = zip_models(a, b, _inputs(torch.float64), match=match)
    for s in res.sites:
        n = s.merge.shape[0]
        assert s.merge.shape == (n, 2 * n) and s.unmerge.shape == (2 * n, n)
        torch.testing.assert_close(s.merge @ s.unmerge, torch.eye(n, dtype=torch.float64))
        assert sorted(i for p in s.pairs for i in p) == list(range(2 * n))
        assert ((s.unmerge != 0).sum(1) == 1).all()  # each feature is read from one merge
        if match != "greedy":
            assert s.within == 0
    if match == "identity":
        assert res.sites[0].pairs == [(i, i + 24) for i in range(24)]
    assert f"match={match!r}" in repr(res)


def test_greedy_pairs_match_the_textbook_loop():
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        z = torch.randn(40, 10, generator=gen, dtype=torch.float64)
        c = torch.corrcoef(z.T)
        got = sorted(_greedy_pairs(c, 5, max_within=5))
        # textbook: take the largest remaining off-diagonal entry, strike its rows and columns
        m, want = c.clone(), []
        m.fill_diagonal_(-float("inf"))
        for _ in range(5):
            i, j = divmod(int(m.argmax()), 10)
            want.append((min(i, j), max(i, j)))
            m[[i, j], :] = -float("inf")
            m[:, [i, j]] = -float("inf")
        assert got == sorted(want)
        cross = _greedy_pairs(c, 5, max_within=0)
        assert all((i < 5) != (j < 5) for i, j in cross) and len(cross) == 5
        for budget in (1, 2):
            some = _greedy_pairs(c, 5, max_within=budget)
            assert sorted(i for p in some for i in p) == list(range(10))
            assert sum((i < 5) == (j < 5) for i, j in some) <= 2 * budget


def test_same_model_features_are_merged_within():
    """A's unit 1 is twice its unit 0 (post-ReLU): greedy zips them together, and with the scales
    the merged feature gives both back exactly."""
    a = TinyMLP(seed=1, dtype=torch.float64).eval()
    b = TinyMLP(seed=2, dtype=torch.float64).eval()
    with torch.no_grad():
        a.fc1.weight[1] = 2 * a.fc1.weight[0]
        a.fc1.bias[1] = 2 * a.fc1.bias[0]
    x = _inputs(torch.float64)
    res = zip_models(a, b, x, k=1)
    site = res.sites[0]
    assert (0, 1) in site.pairs and site.within >= 1
    feats = {}
    res.model.act1.register_forward_hook(lambda _m, _i, out: feats.setdefault("h", out))
    with torch.no_grad():
        res.model(x)
        ua = site.unmerge[:24]
        a_feats = torch.relu(a.fc1(x.flatten(1)))
        torch.testing.assert_close((feats["h"] @ ua.T)[:, :2], a_feats[:, :2])


def test_different_label_sets_concatenate():
    a = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    b = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = _inputs(torch.float32)
    res = zip_models(a, b, x)
    assert res.model(x).shape == (256, 8)
    with pytest.raises(ShapeError, match="average"):
        zip_models(a, b, x, heads="average")


class _Scaled(nn.Module):
    """A chain of Linear and ReLU whose forward doubles the features before the head."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.head = nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4)
        self.fc2, self.act2 = nn.Linear(8, 8), nn.ReLU()

    def forward(self, x):
        return self.head(2 * self.act2(self.fc2(self.act(self.fc1(x.flatten(1))))))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_zipping_a_cnn_with_a_transformed_copy_gives_the_cnn(act):
    """Convolutions, pooling and a Flatten -> Linear head, zipped whole through the spec."""
    cnn, x = build_zoo("myrtle_cnn_nobn", act)
    x = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    spec = trace(cnn, x[:4])
    other = apply(cnn, spec, random_elements(spec, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        res = zip_models(cnn, other, x, heads="average")
        assert res.k == res.depth == len(spec.sites)
        assert _rel(res.model(x), cnn(x)) < 1e-9
        for s in res.sites:
            torch.testing.assert_close(s.merge @ s.unmerge, torch.eye(s.merge.shape[0]).double())
        both = zip_models(cnn, build_zoo("myrtle_cnn_nobn", act, seed=1)[0], x)
        assert both.model(x).shape == (64, 2 * cnn(x).shape[1])
    with torch.no_grad():  # k=0 is the ensemble for any model
        pair = zip_models(cnn, other, x, k=0).model(x)
        assert torch.equal(pair, torch.cat([cnn(x), other(x)], dim=1))


def test_zipping_a_batchnorm_cnn_folds_it_first():
    """BatchNorm after each conv is folded into the conv (running statistics): a BN CNN zipped
    with a transformed copy of itself computes the CNN's function (eval mode), without BN."""
    cnn, x = build_zoo("myrtle_cnn", "relu")
    x = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    cnn.train()
    with torch.no_grad():
        cnn(x)  # running statistics other than (0, 1), so the folding has something to do
    cnn.eval()
    spec = trace(cnn, x[:4])
    other = apply(cnn, spec, random_elements(spec, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        res = zip_models(cnn, other, x, heads="average")
        assert res.k == res.depth == len(spec.sites)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in res.model.modules())
        assert _rel(res.model(x), cnn(x)) < 1e-9
        both = zip_models(cnn, build_zoo("myrtle_cnn", "relu", seed=1)[0], x)
        assert both.model(x).shape == (64, 2 * cnn(x).shape[1])
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())  # inputs untouched


def test_unsupported_models_are_refused():
    x = _inputs(torch.float32)
    after_act = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2)
    ).eval()
    with pytest.raises(UnsupportedModuleError, match="BatchNorm"):
        zip_models(after_act, after_act, x)  # BN after the ReLU: nothing to fold it into
    ln = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        zip_models(ln, ln, x)
    scaled = _Scaled().eval()
    with (
        torch.no_grad()
    ):  # through the spec it is zipped, whole or in part (the doubling is linear)
        for k in (None, 1):
            z = zip_models(scaled, scaled, x, k=k, heads="average")
            assert _rel(z.model(x), scaled(x)) < 1e-5
    a, b = TinyMLP(seed=1), TinyMLP(seed=2, widths=(24, 8))
    with pytest.raises(ShapeError, match="one architecture"):
        zip_models(a, b, x)
    with pytest.raises(InvalidOptionError, match="k=3"):
        zip_models(a, a, x, k=3)
    with pytest.raises(TooFewSamplesError):
        zip_models(a, a, x[:1])
    with pytest.raises(InvalidOptionError, match="max_within"):
        zip_models(a, a, x, max_within=1.5)
    with pytest.raises(InvalidOptionError, match="match"):
        zip_models(a, a, x, match="optimal")
