"""Linear regression R^2 between representations (Kornblith et al. 2019's R^2_LR).

Least squares predicts the centred target from the centred predictor (an intercept is fitted);
positions are the samples (see ``_moments``). With the predictor whitened over its numerical rank,
Wx = Vx Lx^(-1/2), the explained part of each target neuron j is ||(Wx' X'Y)_{:, j}||^2, so

- ``average="variance_weighted"`` (default; Kornblith's R^2_LR, sklearn's
  ``r2_score(..., multioutput="variance_weighted")``): sum_j explained_j / tr(Y'Y). Invariant to GL
  on the predictor and orthogonal maps of the target: the family is ``orthogonal``.
- ``average="uniform"`` (sklearn's default ``LinearRegression.score``): mean over target neurons of
  explained_j / var_j, leaving out neurons of zero variance (sklearn counts them as 1.0). Invariant
  to any monomial map of the target: the family is ``monomial``.

``direction``: ``"x_to_y"`` (default: how much of Y a linear map of X explains), ``"y_to_x"``, or
``"both"`` (their mean: symmetric). Range [0, 1]. A predictor of rank >= M - 1 interpolates any
target (R^2 = 1 whatever the data): ``TooFewSamplesError``. A constant target has nothing to
explain: a warning and 0.0. Floor: the moment products plus one p^3 eigendecomposition per side.
"""

from __future__ import annotations

from intertwiner._types import FeatureLike
from intertwiner.errors import TooFewSamplesError
from intertwiner.metrics._cca import principal
from intertwiner.metrics._measures import clip, measure, undefined
from intertwiner.metrics._moments import CrossMoments, check_choice, cross_moments

DIRECTIONS = ("x_to_y", "y_to_x", "both")
AVERAGES = ("variance_weighted", "uniform")
VALUE_RANGE = (0.0, 1.0)


def _r2(m: CrossMoments, average: str) -> float:
    """R^2 of predicting Y from X."""
    bx = principal(m.xx)
    if bx.rank >= m.n - 1:
        raise TooFewSamplesError(
            f"linear regression needs more sample positions than the predictor's rank + 1 (rank "
            f"{bx.rank}, M = {m.n}); with fewer the fit interpolates any target. Pass more "
            "inputs or reduce the predictor's dimensions"
        )
    var = m.yy.diagonal()
    if float(var.sum()) <= 0.0:
        return undefined("R^2 of a constant target is undefined")
    explained = ((bx.whitener().T @ m.xy) ** 2).sum(0)
    if average == "variance_weighted":
        return clip(float(explained.sum() / var.sum()), *VALUE_RANGE)
    live = var > 0
    return clip(float((explained[live] / var[live]).mean()), *VALUE_RANGE)


def regression_from_moments(
    m: CrossMoments, direction: str = "x_to_y", average: str = "variance_weighted"
) -> float:
    check_choice(direction, "direction", DIRECTIONS)
    check_choice(average, "average", AVERAGES)
    m.require(3, "linear regression")
    if direction == "x_to_y":
        return _r2(m, average)
    if direction == "y_to_x":
        return _r2(m.swapped(), average)
    return 0.5 * (_r2(m, average) + _r2(m.swapped(), average))


@measure("orthogonal", VALUE_RANGE)
def linear_regression(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    direction: str = "x_to_y",
    average: str = "variance_weighted",
    upsample: bool = False,
    layout: str | None = None,
) -> float:
    """R^2 of the least-squares linear prediction of Y from X (``direction``; see the module).

    X, Y: (N, C), (N, C, H, W) or (N, T, D) over the same inputs (rows are positions). Range [0, 1].
    Invariant to orthogonal maps (``average="uniform"``: to monomial maps).
    """
    m = cross_moments(X, Y, upsample=upsample, layout=layout)
    return regression_from_moments(m, direction, average)


def regression_invariance(average: str = "variance_weighted") -> str:
    """The family linear regression with this averaging is invariant to."""
    check_choice(average, "average", AVERAGES)
    return "orthogonal" if average == "variance_weighted" else "monomial"
