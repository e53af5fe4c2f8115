"""Confidence intervals, three-valued verdicts and power for the claims ``reproduce`` checks.

Every interval here is a two-sided Student t-interval (95% by default) over independent units:
model pairs, seeds or repeats. With the few units a CPU run affords (3-10), a bootstrap interval
would be too narrow (it ignores the t-distribution's heavier tails), so the t-interval is the one
reported; ``bootstrap_interval`` is here for larger samples and for checking.

A claim is "the statistic lies in (low, high)" (one-sided claims use an infinite bound). Its verdict
is ``"holds"`` when the whole interval lies inside, ``"does not hold"`` when the whole interval lies
outside, and ``"inconclusive"`` when the interval straddles a bound: this run cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from intertwiner.errors import TooFewSamplesError

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
LEVEL = 0.95

__all__ = [
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "Interval",
    "bootstrap_interval",
    "detectable_effect",
    "mean_ranks",
    "t_interval",
    "verdict",
    "welch_interval",
]


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval. ``sd``: the std (ddof 1) of the units (for a
    difference of two groups, the pooled std); ``effect``: mean / sd (Cohen's d; inf when sd = 0
    and mean != 0, nan for fewer than 2 units); ``method``: how the interval was made."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    method: str = "t"
    level: float = LEVEL

    @property
    def effect(self) -> float:
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        if self.sd == 0:
            return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)
        return self.mean / self.sd

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. ``100`` for accuracy points)."""
        return Interval(self.mean * factor, self.low * factor, self.high * factor, self.n,
                        self.sd * abs(factor), self.method, self.level)  # fmt: skip

    def format(self, digits: int = 2) -> str:
        """``"m [low, high]"``."""
        if not math.isfinite(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "sd": self.sd, "effect": self.effect, "method": self.method,
                "level": self.level}  # fmt: skip


def _clean(values: Sequence[float | None]) -> np.ndarray:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return v[np.isfinite(v)]


def t_interval(values: Sequence[float | None], level: float = LEVEL) -> Interval:
    """Student t-interval of the mean of ``values`` (None and non-finite dropped).

    One value gives an infinite interval (nothing can be concluded from one unit); none raises
    TooFewSamplesError.
    """
    v = _clean(values)
    if v.size == 0:
        raise TooFewSamplesError("no finite values to make an interval from")
    m = float(v.mean())
    if v.size == 1:
        return Interval(m, -math.inf, math.inf, 1, math.nan, "t", level)
    sd = float(v.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return Interval(m, m - half, m + half, int(v.size), sd, "t", level)


def mean_ranks(scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean rank of each row of ``scores`` (rows: candidates, columns: criteria; higher is
    better) over the columns: 1 = best, ties share their average rank, NaN ranks last."""
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise TooFewSamplesError(f"mean_ranks needs a (candidates, criteria) array, got {a.shape}")
    if a.shape[1] == 0:
        return np.full(a.shape[0], math.nan)
    ranks = np.stack([_st.rankdata(-np.nan_to_num(col, nan=-np.inf)) for col in a.T], axis=1)
    return ranks.mean(axis=1)


def welch_interval(
    a: Sequence[float | None], b: Sequence[float | None], level: float = LEVEL
) -> Interval:
    """Welch t-interval of mean(a) - mean(b) for two independent samples; ``sd`` is the pooled
    std sqrt((sa² + sb²) / 2), so ``effect`` is Cohen's d."""
    x, y = _clean(a), _clean(b)
    if x.size == 0 or y.size == 0:
        raise TooFewSamplesError("both samples need at least one finite value")
    m = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Interval(m, -math.inf, math.inf, int(min(x.size, y.size)), math.nan, "welch", level)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if se == 0:
        return Interval(m, m, m, int(min(x.size, y.size)), 0.0, "welch", level)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(_st.t.ppf(0.5 + level / 2, df)) * se
    return Interval(m, m - half, m + half, int(min(x.size, y.size)), pooled, "welch", level)


def bootstrap_interval(
    values: Sequence[float | None], level: float = LEVEL, n_boot: int = 4000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean (seeded); too narrow for fewer than ~10 units."""
    v = _clean(values)
    if v.size == 0:
        raise TooFewSamplesError("no finite values to make an interval from")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return Interval(float(v.mean()), float(lo), float(hi), int(v.size), sd, "bootstrap", level)


def verdict(interval: Interval, low: float = -math.inf, high: float = math.inf) -> str:
    """Whether the claim "the statistic lies in (low, high)" holds, fails or cannot be told."""
    if not (math.isfinite(interval.low) or math.isfinite(interval.high)) and interval.n < 2:
        return INCONCLUSIVE
    if interval.low > low and interval.high < high:
        return HOLDS
    if interval.high <= low or interval.low >= high:
        return FAILS
    return INCONCLUSIVE


def detectable_effect(
    sd: float, n: int, *, two_sample: bool = True, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true difference a t-test with ``n`` units per group (std ``sd``) detects
    with the given power at two-sided level ``alpha``: (t_{1-alpha/2} + t_{power}) · sd · sqrt(k/n),
    k = 2 for two independent groups, 1 for paired differences (df = k(n - 1))."""
    if n < 2:
        return math.inf
    k = 2 if two_sample else 1
    df = k * (n - 1)
    return float((_st.t.ppf(1 - alpha / 2, df) + _st.t.ppf(power, df)) * sd * math.sqrt(k / n))
