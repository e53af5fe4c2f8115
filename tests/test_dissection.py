"""Network dissection: brute-force agreement, exact G_ReLU invariance, planted detectors, rotations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.data.concepts import CONCEPTS, masks_from_maps, render_scenes
from intertwiner.dissection import (
    alignment_stats,
    basis_alignment,
    dissect,
    dissect_bases,
    random_rotation,
    random_rotation_powers,
    rotation_powers,
)
from intertwiner.errors import NonFiniteError, ShapeError
from intertwiner.experiments.rotation_dissection import dissection_experiment
from intertwiner.groups import MonomialElement, family, for_activation
from intertwiner.report.rotation_curve import plot_rotation_curve


@pytest.fixture(scope="module")
def scenes():
    s = render_scenes(40, size=16, generator=torch.Generator().manual_seed(0))
    return s.images, masks_from_maps(s.maps)


def _net(seed: int = 0, pool: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()]
    if pool:  # a coarser map than the masks exercises the upsampling
        layers = [nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def _brute_force(model, layer, images, masks, quantile):
    """One image, one unit and one concept at a time, with numpy sorting for the threshold."""
    with torch.no_grad():
        acts = dict(model.named_children())
        x = images
        for name, mod in model.named_children():
            x = mod(x)
            if name == layer:
                break
    acts = x.double()
    n, c, h, w = acts.shape
    k = math.ceil(quantile * n * h * w)
    iou = np.zeros((c, masks.shape[1]))
    for u in range(c):
        vals = np.sort(acts[:, u].numpy().ravel())[::-1]
        t = vals[k - 1]
        inter = np.zeros(masks.shape[1])
        union = np.zeros(masks.shape[1])
        for i in range(n):
            up = F.interpolate(acts[i : i + 1, u : u + 1], size=masks.shape[2:], mode="bilinear",
                               align_corners=False)[0, 0]  # fmt: skip
            on = (up > t).numpy()
            for j in range(masks.shape[1]):
                m = masks[i, j].numpy()
                inter[j] += (on & m).sum()
                union[j] += (on | m).sum()
        iou[u] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou


@pytest.mark.parametrize("pool", [False, True])
def test_agrees_with_brute_force_and_streams(scenes, pool):
    images, masks = scenes
    model = _net(1, pool)
    layer = "2" if pool else "1"
    res = dissect(model, layer, (images, masks), quantile=0.02, batch_size=7, progress=False)
    expected = _brute_force(model, layer, images, masks, 0.02)
    np.testing.assert_allclose(res.iou.numpy(), expected, rtol=0, atol=1e-12)
    one_shot = dissect(model, layer, (images, masks), quantile=0.02, batch_size=1000,
                       progress=False)  # fmt: skip
    assert torch.equal(one_shot.iou, res.iou) and torch.equal(one_shot.thresholds, res.thresholds)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exactly_invariant_under_g_relu_units_relabelled(scenes, dtype, seed):
    images, masks = scenes
    model = _net(seed)
    el = for_activation("relu").sample(
        6, generator=torch.Generator().manual_seed(seed), dtype=dtype
    )
    both = dissect_bases(model, "2", (images, masks), {"id": None, "g": el}, progress=False)
    res, res_g = both["id"], both["g"]
    assert res_g.n_interpretable == res.n_interpretable
    assert res_g.n_concepts == res.n_concepts
    assert torch.equal(res_g.iou, res.iou[el.perm])  # exact: units relabelled, IoUs unchanged
    assert torch.equal(res_g.best_concept, res.best_concept[el.perm])
    torch.testing.assert_close(res_g.thresholds, el.scale.double() * res.thresholds[el.perm])
    # the same through a dense matrix of the same element
    dense = dissect(model, "2", (images, masks), basis=el.matrix(), progress=False)
    assert torch.equal(dense.iou, res_g.iou)


def test_not_invariant_under_the_next_larger_group_or_rotations(scenes):
    images, masks = scenes
    model = _net(0)
    res = dissect(model, "2", (images, masks), progress=False)
    # Monomial with negative entries: a negated ReLU unit fires where the original was silent.
    perm = torch.arange(6)
    flip = MonomialElement(perm, -torch.ones(6, dtype=torch.float64))
    neg = dissect(model, "2", (images, masks), basis=flip, progress=False)
    assert not torch.equal(neg.iou, res.iou)
    rot = dissect(model, "2", (images, masks), basis=random_rotation(6), progress=False)
    assert not torch.equal(rot.iou.sort(0).values, res.iou.sort(0).values)


def test_planted_colour_detectors_are_found(scenes):
    images, masks = scenes
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])  # red: r - g - b > 0 only on red
        conv.weight[1, :, 0, 0] = torch.tensor([-1.0, -1.0, 1.0])  # blue
        conv.weight[2, :, 0, 0] = torch.tensor([-1.0, 1.0, -1.0])  # green
        # unit 3 stays zero: a dead unit detects nothing
    model = nn.Sequential(conv, nn.ReLU()).eval()
    res = dissect(model, "1", (images, masks), concept_names=CONCEPTS, quantile=0.02,
                  progress=False)  # fmt: skip
    units = res.units
    assert [u["concept"] for u in units[:3]] == ["red", "blue", "green"]
    assert all(u["interpretable"] for u in units[:3])
    assert not units[3]["interpretable"] and units[3]["iou"] == 0.0
    assert res.n_interpretable == 3 and res.n_concepts == 3
    assert res.detected_concepts == ["red", "green", "blue"]


def test_rotation_powers_interpolate_from_identity_to_the_rotation():
    for n in (5, 6):
        g = torch.Generator().manual_seed(n)
        r = random_rotation(n, g)
        torch.testing.assert_close(r.T @ r, torch.eye(n, dtype=torch.float64))
        assert torch.linalg.det(r) == pytest.approx(1.0)
        p0, p3, p5, p1 = rotation_powers(r, [0.0, 0.3, 0.5, 1.0])
        torch.testing.assert_close(p0, torch.eye(n, dtype=torch.float64))
        torch.testing.assert_close(p1, r)
        torch.testing.assert_close(p5 @ p5, r)
        torch.testing.assert_close(p3.T @ p3, torch.eye(n, dtype=torch.float64))
        again = random_rotation_powers(n, [1.0], torch.Generator().manual_seed(n))[0]
        torch.testing.assert_close(again, r)
    # a rotation with a pair of -1 eigenvalues (rotation by pi in a plane)
    r = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    half = rotation_powers(r, [0.5])[0]
    torch.testing.assert_close(half @ half, r)
    with pytest.raises(ShapeError):
        rotation_powers(torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)), [0.5])


def test_alignment_stats_match_scipy_and_are_g_relu_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(500, 7, generator=g, dtype=torch.float64))
    s = alignment_stats(x)
    expected = scipy.stats.kurtosis(x.numpy(), axis=0, fisher=True, bias=True).mean()
    assert s["kurtosis"] == pytest.approx(expected, rel=1e-10)
    assert s["near_zero"] == pytest.approx(float((x <= 0.05 * x.square().mean(0).sqrt()).double()
                                                 .mean()), rel=1e-12)  # fmt: skip
    el = for_activation("relu").sample(7, generator=g)
    sg = alignment_stats(el.apply(x, dim=1))
    for key in ("kurtosis", "hoyer", "near_zero"):
        assert sg[key] == pytest.approx(s[key], rel=1e-9)
    onehot = torch.zeros(10, 2, dtype=torch.float64)
    onehot[0] = 1.0
    assert alignment_stats(onehot)["hoyer"] == pytest.approx(1.0)
    # an orthogonal rotation of sparse ReLU features lowers kurtosis
    rot = family("orthogonal").sample(7, generator=g).matrix()
    assert alignment_stats(x @ rot.T)["hoyer"] < s["hoyer"]
    with pytest.raises(ShapeError):
        alignment_stats(torch.zeros(5))
    with pytest.raises(NonFiniteError):
        alignment_stats(torch.full((4, 2), float("nan")))


def test_experiment_rows_figure_and_alignment(scenes, tmp_path):
    images, masks = scenes
    model = _net(0)
    exp = dissection_experiment(model, "2", (images, masks), n_orthogonal=2, powers=(0.0, 0.5, 1.0),
                                progress=False)  # fmt: skip
    kinds = [r["kind"] for r in exp["rows"]]
    assert kinds == ["identity", "G_ReLU", "orthogonal", "orthogonal", "power", "power", "power"]
    ident, g_relu, p0 = exp["rows"][0], exp["rows"][1], exp["rows"][4]
    assert ident["n_interpretable"] == g_relu["n_interpretable"] == p0["n_interpretable"]
    assert ident["mean_best_iou"] == g_relu["mean_best_iou"]
    json.dumps(exp["rows"])
    path = plot_rotation_curve(exp, tmp_path / "curve.png")
    assert path.exists() and path.stat().st_size > 1000
    rows = basis_alignment(model, "2", images, n_rotations=2)
    assert [r["basis"] for r in rows] == ["neuron", "G_ReLU", "orthogonal"]
    assert rows[0]["kurtosis"] == pytest.approx(rows[1]["kurtosis"], rel=1e-9)


def test_bad_inputs_raise(scenes):
    images, masks = scenes
    dense = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4), nn.ReLU())
    with pytest.raises(ShapeError):
        dissect(dense, "2", (images, masks), progress=False)
    with pytest.raises(ShapeError):
        dissect(_net(0), "2", (images, masks), basis=torch.eye(5), progress=False)
    with pytest.raises(ShapeError):
        dissect(_net(0), "2", (images, masks[:3]), progress=False)
    with pytest.raises(ValueError):
        dissect(_net(0), "2", (images, masks), quantile=0.0, progress=False)
    with pytest.raises(NonFiniteError):
        dissect(_net(0), "2", (images * float("nan"), masks), progress=False)
    with pytest.raises(TypeError):
        dissect(_net(0), "2", images, progress=False)
