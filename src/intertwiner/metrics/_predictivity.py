"""Linear predictivity (Yamins et al. 2014, Schrimpf et al. 2018's Brain-Score): how well a
cross-validated ridge regression from X predicts each neuron of Y on held-out inputs.

Procedure (``linear_predictivity(X, Y, folds=5, seed=0)``):

1. The N inputs are shuffled by ``torch.randperm(N, generator)`` (``seed``: an int, or a
   ``torch.Generator``, whose state advances) and cut into ``folds`` contiguous chunks, the first
   N mod folds one input longer (``torch.tensor_split``, as ``numpy.array_split`` and sklearn's
   ``KFold``). Rows are sample positions (``to_matrix``: conv one per input and pixel, tokens one per
   input and token); all positions of an input stay in its fold, so no input is seen in training
   and testing.
2. Per fold, ridge regression with an unpenalised intercept is fitted on the other folds: with the
   training predictor centred, Xc = U S V', the weights are W = V diag(s / (s^2 + a)) U' Yc. The
   penalty a is ``penalties`` (relative; default 1e-6 ... 10 in decades) times s_1^2, the largest
   eigenvalue of Xc'Xc, so the grid follows the predictor's scale. It is chosen, one for all of Y's
   neurons, by exact leave-one-input-out cross-validation on the training inputs: the smallest sum
   over positions and neurons of squared held-out errors of the *standardised* targets (each neuron
   divided by its training standard deviation, so every neuron weighs the same), computed from the
   one SVD (the held-out residuals of input g are (I - H_gg)^-1 r_g with H the hat matrix; for
   dense features this is h_ii, sklearn ``RidgeCV``'s default efficient LOO). Ties: the first
   (smallest) penalty.
3. Every input is predicted once, by the fold that held it out. Per neuron j of Y, r_j is the
   Pearson correlation of the pooled held-out predictions with the targets over all N positions.
   The score is the median of r_j over Y's neurons (``average="mean"``: their mean).

Conventions, never NaN: neurons of Y constant over the inputs are left out (nothing to predict);
when all are, a warning and 0.0. A neuron whose pooled predictions are constant has r_j = 0. A
predictor constant on a training split predicts the training mean.

Invariance: ridge with an isotropic penalty relative to the predictor's scale is invariant to
orthogonal maps of X (and its scale); the per-neuron correlations of standardised targets are
invariant to permutations and nonzero scalings of Y's neurons. The group acting on both sides is
their intersection, ``signed_permutation``: general monomial maps of X (ridge's penalty is not
scale-equivariant per neuron) and orthogonal maps of Y (they mix neurons) change the value.
Asymmetric (X predicts Y). Range [-1, 1] (near 1: Y is a linear function of X on new inputs).
Floor: per fold one SVD of the (positions, p) training matrix, M p min(M, p), and for each penalty
the residuals, M r q; conv and token features add a (S, S) solve per input and penalty.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from intertwiner import _validate
from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError, TooFewSamplesError
from intertwiner.layouts import to_sites
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import check_choice, matched
from intertwiner.metrics._prep import f64, scale_exponent, times_power_of_two

AVERAGES = ("median", "mean")
VALUE_RANGE = (-1.0, 1.0)
#: Ridge penalties relative to the largest eigenvalue of the centred training predictor's X'X.
PENALTIES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Singular values below this many eps times the largest (times the matrix's larger side) are zero.
RANK_EPS = 1.0


def fold_indices(n: int, folds: int, seed: int | torch.Generator = 0) -> list[torch.Tensor]:
    """The held-out inputs of each fold: ``torch.randperm(n)`` cut into ``folds`` chunks."""
    gen = seed if isinstance(seed, torch.Generator) else None
    if gen is None:
        s = _validate.positive_int(seed, "seed", minimum=0, hint="or pass a torch.Generator")
        gen = torch.Generator().manual_seed(s)
    perm = torch.randperm(n, generator=gen)
    return list(torch.tensor_split(perm, folds))


def _check_penalties(penalties: object) -> torch.Tensor:
    try:
        vals = [float(p) for p in penalties]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InvalidOptionError(
            f"penalties must be a sequence of positive numbers, got {penalties!r}"
        ) from None
    if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise InvalidOptionError(
            f"penalties must be a non-empty sequence of positive finite numbers (relative to the "
            f"predictor's largest eigenvalue), got {penalties!r}"
        )
    return torch.tensor(vals, dtype=torch.float64)


def _loo_errors(u: torch.Tensor, d: torch.Tensor, z: torch.Tensor, sites: int) -> float:
    """Sum of squared leave-one-input-out errors of standardised centred targets ``z`` (M, q) for
    the ridge smoother H = 11'/M + U diag(d) U' (U: (M, r)), inputs being blocks of ``sites`` rows."""
    m = u.shape[0]
    resid = z - u @ (d[:, None] * (u.T @ z))
    if sites == 1:
        h = 1.0 / m + (u * u) @ d
        return float(((resid / (1.0 - h)[:, None]) ** 2).sum())
    ug = u.reshape(m // sites, sites, -1)
    hgg = torch.einsum("gsr,r,gtr->gst", ug, d, ug) + 1.0 / m
    eye = torch.eye(sites, dtype=u.dtype, device=u.device)
    errs = torch.linalg.solve(eye - hgg, resid.reshape(m // sites, sites, -1))
    return float((errs**2).sum())


def _fold_predictions(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, rel: torch.Tensor, sites: int
) -> torch.Tensor:
    """Ridge predictions for ``xte`` (rows, p) from training rows ``xtr`` (M, p), ``ytr`` (M, q)."""
    xm, ym = xtr.mean(0, keepdim=True), ytr.mean(0, keepdim=True)
    xc, yc = xtr - xm, ytr - ym
    u, s, vt = torch.linalg.svd(xc, full_matrices=False)
    keep = s > s[0] * max(xc.shape) * RANK_EPS * torch.finfo(s.dtype).eps if s.numel() else s > 0
    u, s, vt = u[:, keep], s[keep], vt[keep]
    if s.numel() == 0:  # a constant predictor: the training mean
        return ym.expand(xte.shape[0], -1).clone()
    sd = yc.pow(2).sum(0).sqrt()
    live = sd > 0
    z = yc[:, live] / sd[live]
    s2 = s * s
    best, best_err = 0, math.inf
    if bool(live.any()):
        for i, a in enumerate((rel * s2[0]).tolist()):
            err = _loo_errors(u, s2 / (s2 + a), z, sites)
            if err < best_err:
                best, best_err = i, err
    a = float(rel[best] * s2[0])
    w = vt.T @ ((s / (s2 + a))[:, None] * (u.T @ yc))
    return (xte - xm) @ w + ym


def _correlations(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per column over rows, for the columns of ``target`` that vary; columns
    of constant ``pred`` get 0."""
    live = target.amax(0) > target.amin(0)
    p, t = pred[:, live], target[:, live]
    pc, tc = p - p.mean(0), t - t.mean(0)
    num = (pc * tc).sum(0)
    den = torch.sqrt(pc.pow(2).sum(0) * tc.pow(2).sum(0))
    flat = ~(p.amax(0) > p.amin(0)) | (den == 0)
    return torch.where(flat, torch.zeros_like(num), num / torch.where(flat, 1.0, den))


@measure("signed_permutation", VALUE_RANGE)
def linear_predictivity(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    folds: int = 5,
    penalties: tuple[float, ...] = PENALTIES,
    average: str = "median",
    seed: int | torch.Generator = 0,
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """Cross-validated ridge predictivity of Y from X: the median (``average="mean"``: mean) over
    Y's neurons of the Pearson correlation between held-out predictions and targets (see the
    module for the folds, the penalty choice and the conventions).

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same N inputs, positions matched (conv sizes
    equal, or ``upsample=True``). ``folds``: k of k-fold cross-validation over inputs (2 <= k <= N;
    each training split needs 2 inputs). ``penalties``: ridge penalties relative to the training
    predictor's largest eigenvalue; one is chosen per fold. Range [-1, 1]. Invariant to signed
    permutations of both sides (X alone: orthogonal maps; Y alone: nonzero per-neuron scalings and
    permutations). Asymmetric.
    """
    k = _validate.positive_int(folds, "folds", minimum=2)
    rel = _check_penalties(penalties)
    check_choice(average, "average", AVERAGES)
    x, y = matched(X, Y, upsample=upsample, layout=layout)
    xs = times_power_of_two(f64(to_sites(x, layout)), scale_exponent(x, name="X"))
    ys = times_power_of_two(f64(to_sites(y, layout)), scale_exponent(y, name="Y"))
    n, sites = xs.shape[0], xs.shape[1]
    if n < k or n - math.ceil(n / k) < 2:
        raise TooFewSamplesError(
            f"linear predictivity with {k} folds needs at least {k} inputs and 2 training inputs "
            f"per fold, got N = {n}; pass more inputs or fewer folds"
        )
    pred = torch.empty_like(ys)
    for test in fold_indices(n, k, seed):
        train = torch.ones(n, dtype=torch.bool)
        train[test] = False
        xtr, ytr = xs[train].flatten(0, 1), ys[train].flatten(0, 1)
        xte = xs[test].flatten(0, 1)
        pred[test] = _fold_predictions(xtr, ytr, xte, rel, sites).reshape(len(test), sites, -1)
    target = ys.flatten(0, 1)
    if not bool((target.amax(0) > target.amin(0)).any()):
        return undefined("linear predictivity of a constant target is undefined")
    r = _correlations(pred.flatten(0, 1), target).cpu().numpy()
    value = float(np.median(r)) if average == "median" else float(r.mean())
    return clip(value, *VALUE_RANGE)
