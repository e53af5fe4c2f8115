"""Centered kernel alignment (CKA), linear and RBF, biased and debiased.

Samples are the N inputs: a conv feature (N, C, H, W) is compared as N vectors of length C*H*W, so
layers of different widths and spatial sizes can be compared. CKA = HSIC(K, L) / sqrt(HSIC(K, K)
HSIC(L, L)) for N x N kernels K (of X) and L (of Y).

- biased: HSIC_0 = tr(K H L H) (the 1/(n-1)^2 factor cancels in CKA).
- debiased: the unbiased HSIC_1 of Song et al. (2012), as in paper.md section 6:
  ``HSIC_1 = [tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with K~ the
  kernel with its diagonal set to zero.

Linear CKA with N larger than the widths uses the feature-space form (memory O(C^2), not O(N^2));
the same sufficient statistics drive the streaming accumulator, so both agree to round-off.
Floor (linear): the products of the cheaper exact form on the centred float64 (N, p) and (N, q)
matrices, feature space X'X, Y'Y, X'Y (N (p^2 + q^2 + pq) multiply-adds) or Gram XX', YY'
(N^2 (p + q)); besides them O(N^2) or O(p^2) sums. float64 rows are multiplied as they are and
centred afterwards (X'X - N mu mu', or HKH from K), no copy, while the mean is at most
``MEAN_DOMINANCE`` times the spread; other dtypes, and larger means (where centring after the
products would cancel digits), take one centred float64 copy per side first. RBF: the two N x N
distance matrices.
A constant representation has no variance, so CKA is 0/0: we warn and return 0.0, never NaN.

Ranges: biased CKA (linear or RBF: positive semi-definite kernels) is in [0, 1]. The debiased
estimator is in [-1, 1] (HSIC_1 is an inner product of U-centred kernels, so Cauchy-Schwarz bounds
it) and *can be negative*: it is an unbiased estimate, and on unrelated or tiny samples it scatters
around 0 on both sides. A negative value means "no detectable similarity", not an error.
``VALUE_RANGE`` records both; the metric functions carry ``.value_range`` for their defaults.

Scale: CKA is invariant to scaling X or Y. Inputs are multiplied by a power of two that brings their
largest magnitude near 1 before anything is squared (``_prep.scale_exponent``), so features of 1e-300 or
1e300 give the same value as features of 1, in float64 and float32 alike.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from intertwiner import _products as products
from intertwiner import _validate
from intertwiner._types import FeatureLike
from intertwiner.errors import InvalidOptionError, NonFiniteError, TooFewSamplesError
from intertwiner.groups import ORTHOGONAL
from intertwiner.layouts import to_flat
from intertwiner.metrics._groups import declare, invariances
from intertwiner.metrics._prep import (
    check_same_n,
    f64,
    scale_exponent,
    times_power_of_two,
    validate,
    within,
)

_ORTHOGONAL = invariances(ORTHOGONAL)
# Features with peaks within 2**+-SAFE_EXPONENT need no scaling (see _centred_scaled): CKA takes
# fourth powers (squared Gram entries), which stay normal floats there.
SAFE_EXPONENT = 200
# A representation whose centred sum of squares is below this fraction of its raw sum of squares
# is constant up to round-off (std/mean < 1e-10): what is left after centring is rounding noise.
CONSTANT_RATIO = 1e-20
# Centring after the products (X'X - n mu mu') loses about log2(1 + 2 r) bits of the centred
# statistics, r = n |mu|^2 / (centred sum of squares); their relative error is then near
# eps sqrt(p) (1 + 2 r), 1e-13 at p = 512 and r = 16. Beyond r, one-shot linear CKA centres
# a float64 copy of the rows first.
MEAN_DOMINANCE = 16.0
KERNELS = ("linear", "rbf")
#: (low, high) of the value: biased CKA (PSD kernels) and the debiased estimator.
VALUE_RANGE = {"biased": (0.0, 1.0), "debiased": (-1.0, 1.0)}


def value_range(debiased: bool) -> tuple[float, float]:
    """The range CKA values lie in: [0, 1] biased, [-1, 1] debiased (can be negative)."""
    return VALUE_RANGE["debiased" if debiased else "biased"]


def is_constant(centred_sq: float, raw_sq: float) -> bool:
    """True when centring left only round-off (or nothing) of a representation."""
    return centred_sq <= CONSTANT_RATIO * raw_sq


def min_samples(debiased: bool) -> int:
    return 4 if debiased else 2


def check_samples(n: int, debiased: bool) -> None:
    need = min_samples(debiased)
    if n < need:
        what = "the debiased (unbiased HSIC) estimator" if debiased else "CKA"
        raise TooFewSamplesError(
            f"{what} needs at least {need} samples, got {n}; pass more inputs"
            + (" or use debiased=False" if debiased else "")
        )


def hsic1_from_terms(tr_kl: Any, sum_k: Any, sum_l: Any, sum_kl: Any, n: int) -> Any:
    """Unbiased HSIC_1 from tr(K~L~), 1'K~1, 1'L~1 and 1'K~L~1 (paper.md section 6)."""
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * sum_kl) / (n * (n - 3))


def hsic_gram(k: torch.Tensor, l: torch.Tensor, *, debiased: bool = False) -> float:
    """HSIC of two N x N kernel matrices: biased tr(KHLH)/(n-1)^2, or the unbiased HSIC_1."""
    n = k.shape[0]
    check_samples(n, debiased)
    k, l = f64(k), f64(l)
    if not debiased:
        return float((_double_centred(k) * l).sum()) / (n - 1) ** 2
    kt = k.clone()
    lt = l.clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    return float(hsic1_from_terms((kt * lt).sum(), kt.sum(), lt.sum(), kt.sum(1) @ lt.sum(1), n))


def cka_from_hsic(
    xy: float, xx: float, yy: float, constant: bool = False, low: float = -1.0
) -> float:
    """CKA from the three HSICs, clipped to [low, 1] (the bounds hold exactly; only round-off
    can step over them); 0.0 with a warning when a representation is constant."""
    if not all(math.isfinite(v) for v in (xy, xx, yy)):
        raise NonFiniteError(
            "CKA statistics overflowed; the batches fed to a streaming accumulator differ in "
            "scale by more than about 1e150: rescale them to a common scale"
        )
    if constant or xx <= 0 or yy <= 0:
        warnings.warn(
            "CKA of a (numerically) constant representation is undefined; returning 0.0",
            RuntimeWarning,
            stacklevel=3,
        )
        return 0.0
    return within(xy / (math.sqrt(xx) * math.sqrt(yy)), (low, 1.0))


@dataclass
class KernelTerms:
    """What HSIC needs of one N x N kernel, made once: the double-centred kernel HKH (biased) or
    the kernel with a zero diagonal K~ with its row sums and total (debiased), and HSIC(K, K)."""

    matrix: torch.Tensor
    rows: torch.Tensor | None
    total: float
    debiased: bool
    self_hsic: float = math.nan

    @classmethod
    def of(cls, k: torch.Tensor, debiased: bool, *, linear_of_centred: bool = False) -> KernelTerms:
        """Terms of kernel ``k``. ``linear_of_centred``: ``k`` is the Gram matrix of centred rows,
        made for this call (so already double-centred, HKH = K, and free to overwrite): no
        centring and no copy, only the diagonal zeroed in place for the debiased form."""
        k = f64(k)
        if debiased:
            kt = k if linear_of_centred else k.clone()
            kt.fill_diagonal_(0.0)
            rows = kt.sum(1)
            t = cls(kt, rows, float(rows.sum()), True)
        else:
            t = cls(k if linear_of_centred else _double_centred(k), None, 0.0, False)
        t.self_hsic = t.hsic(t)
        return t

    @classmethod
    def linear(cls, centred: torch.Tensor, debiased: bool) -> tuple[KernelTerms, float]:
        """Terms of the linear kernel of centred float64 rows (N, p) (the Gram matrix by a
        symmetric rank-k update), and its trace (the centred sum of squares)."""
        k = products.gram(centred)
        trace = float(k.trace())
        return cls.of(k, debiased, linear_of_centred=True), trace

    def hsic(self, other: KernelTerms) -> float:
        """HSIC of this kernel with ``other`` (biased: tr(KHLH) / (n - 1)^2; debiased: HSIC_1)."""
        n = self.matrix.shape[0]
        tr = float(torch.vdot(self.matrix.flatten(), other.matrix.flatten()))
        if not self.debiased:
            return tr / (n - 1) ** 2
        return float(
            hsic1_from_terms(tr, self.total, other.total, float(self.rows @ other.rows), n)
        )


def gram_cka(
    k: torch.Tensor | KernelTerms,
    l: torch.Tensor | KernelTerms,
    *,
    debiased: bool = False,
    constant: bool = False,
    psd: bool = True,
) -> float:
    """CKA of two N x N kernel matrices, or of their ``KernelTerms`` made once (``pairwise``)
    (``constant``: a representation is known constant; ``psd``: both kernels positive
    semi-definite, so biased CKA is >= 0). The HSICs of ``hsic_gram``."""
    n = k.matrix.shape[0] if isinstance(k, KernelTerms) else k.shape[0]
    check_samples(n, debiased)
    tk = k if isinstance(k, KernelTerms) else KernelTerms.of(k, debiased)
    tl = l if isinstance(l, KernelTerms) else KernelTerms.of(l, debiased)
    return cka_from_hsic(
        tk.hsic(tl),
        tk.self_hsic,
        tl.self_hsic,
        constant,
        value_range(debiased)[0] if psd else -1.0,
    )


def _double_centred(k: torch.Tensor) -> torch.Tensor:
    """HKH for an N x N kernel K (H the centring matrix)."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


@dataclass
class LinearCKAStats:
    """Sufficient statistics of linear CKA, additive over samples; memory O(p^2 + q^2 + pq).

    Rows are shifted by a fixed vector (the first batch's mean) before accumulation: CKA (biased
    with explicit centring, and the unbiased HSIC_1) is translation invariant, and the shift keeps
    round-off small.
    """

    n: int = 0
    exp_x: torch.Tensor | None = None
    exp_y: torch.Tensor | None = None
    shift_x: torch.Tensor | None = None
    shift_y: torch.Tensor | None = None
    gxy: torch.Tensor | None = None
    gxx: torch.Tensor | None = None
    gyy: torch.Tensor | None = None
    sx: torch.Tensor | None = None
    sy: torch.Tensor | None = None
    # Debiased terms: a_i = |x_i|^2, b_i = |y_i|^2.
    scal: dict[str, float] = field(default_factory=dict)
    vec: dict[str, torch.Tensor] = field(default_factory=dict)
    # Per-row a and b, kept by ``from_centred`` (debiased) for ``cross``.
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Whether ``update`` gathers the debiased terms (``scal`` aa/bb/ab, ``vec``): three passes
    #: over each batch that the biased estimator never reads.
    debiased_terms: bool = True
    # One batch-sized buffer per side, reused by ``update`` for the shifted rows: subtracting
    # into fresh memory cost 6x the subtraction itself (page faults), 2,000 x 512 float64.
    _scratch: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: x (b, p) and y (b, q), float64. The first batch fixes a power-of-two scale
        per side (CKA is scale-invariant) that keeps the squares clear of underflow/overflow."""
        if self.exp_x is None:  # no scaling needed (exact either way) near 1: see SAFE_EXPONENT
            self.exp_x, self.exp_y = (_exponent_if_needed(scale_exponent(t)) for t in (x, y))
        x, y = _scaled(x, self.exp_x), _scaled(y, self.exp_y)
        if self.shift_x is None:
            self.shift_x, self.shift_y = x.mean(0), y.mean(0)
            p, q = x.shape[1], y.shape[1]
            z = dict(dtype=torch.float64, device=x.device)
            self.gxy, self.gxx, self.gyy = (
                torch.zeros(p, q, **z),
                torch.zeros(p, p, **z),
                torch.zeros(q, q, **z),
            )
            self.sx, self.sy = torch.zeros(p, **z), torch.zeros(q, **z)
            for k in ("a", "b", "aa", "bb", "ab", "raw_x", "raw_y"):
                self.scal[k] = 0.0
            self.vec = (
                {}
                if not self.debiased_terms
                else {
                    "xa": torch.zeros(p, **z),
                    "xb": torch.zeros(p, **z),
                    "ya": torch.zeros(q, **z),
                    "yb": torch.zeros(q, **z),
                }
            )
        raw_x, raw_y = (
            float(torch.linalg.vector_norm(x)) ** 2,
            float(torch.linalg.vector_norm(y)) ** 2,
        )
        if not math.isfinite(raw_x + raw_y):  # NaN/Inf raise here, before the state changes
            _validate.check_finite(x, "X")
            _validate.check_finite(y, "Y")
        self.scal["raw_x"] += raw_x
        self.scal["raw_y"] += raw_y
        x = _minus_into(x, self.shift_x, self._scratch, "x")
        y = _minus_into(y, self.shift_y, self._scratch, "y")
        self.n += x.shape[0]
        products.add_matmul_(self.gxy, x.T, y)
        products.add_cov_(self.gxx, x)
        products.add_cov_(self.gyy, y)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        if not self.debiased_terms:
            return
        a = torch.linalg.vector_norm(x, dim=1).square()
        b = torch.linalg.vector_norm(y, dim=1).square()
        self.scal["a"] += float(a.sum())
        self.scal["b"] += float(b.sum())
        self.scal["aa"] += float(a @ a)
        self.scal["bb"] += float(b @ b)
        self.scal["ab"] += float(a @ b)
        ab = torch.stack([a, b])  # one pass over x and one over y for the four vectors
        (xa, xb), (ya, yb) = ab @ x, ab @ y
        self.vec["xa"] += xa
        self.vec["xb"] += xb
        self.vec["ya"] += ya
        self.vec["yb"] += yb

    @classmethod
    def from_centred(cls, x: torch.Tensor, y: torch.Tensor, debiased: bool) -> LinearCKAStats:
        """Statistics of float64 rows x (n, p), y (n, q) in range (one-shot ``cka``), centred or
        not (the sums ``sx``, ``sy`` centre them afterwards): no shift and no copies; the
        debiased per-row terms only when ``debiased``."""
        gxx = products.cov(x)
        if y is x:  # one representation's own statistics (pairwise): one product, not three
            gyy, gxy = gxx.clone(), gxx.clone()
        else:
            gyy, gxy = products.cov(y), products.matmul(x.T, y)
        st = cls(
            n=x.shape[0],
            gxy=gxy,
            gxx=gxx,
            gyy=gyy,
            sx=x.sum(0),
            sy=y.sum(0),
            debiased_terms=debiased,
        )
        sq_x, sq_y = float(st.gxx.diagonal().sum()), float(st.gyy.diagonal().sum())
        st.scal = {"a": sq_x, "b": sq_y, "raw_x": sq_x, "raw_y": sq_y}
        if debiased:
            a = torch.linalg.vector_norm(x, dim=1).square()
            b = torch.linalg.vector_norm(y, dim=1).square()
            st.scal.update(aa=float(a @ a), bb=float(b @ b), ab=float(a @ b))
            ab = torch.stack([a, b])  # one pass over x and one over y for the four vectors
            (xa, xb), (ya, yb) = ab @ x, ab @ y
            st.vec = {"xa": xa, "xb": xb, "ya": ya, "yb": yb}
            st.rows = {"a": a, "b": b}
        return st

    @classmethod
    def cross(
        cls,
        sx: LinearCKAStats,
        sy: LinearCKAStats,
        x: torch.Tensor,
        y: torch.Tensor,
        debiased: bool,
    ) -> LinearCKAStats:
        """Statistics of the pair (x, y) from each side's own ``from_centred(t, t)`` statistics:
        only the cross terms (X'Y, and for the debiased form two matrix-vector products) are new."""
        st = cls(
            n=sx.n, gxy=products.matmul(x.T, y), gxx=sx.gxx, gyy=sy.gxx, sx=sx.sx, sy=sy.sx,
            debiased_terms=debiased,
        )  # fmt: skip
        st.scal = {"a": sx.scal["a"], "b": sy.scal["a"]}
        st.scal.update(raw_x=sx.scal["raw_x"], raw_y=sy.scal["raw_x"])
        if debiased:
            a, b = sx.rows["a"], sy.rows["a"]
            st.scal.update(aa=sx.scal["aa"], bb=sy.scal["aa"], ab=float(a @ b))
            st.vec = {"xa": sx.vec["xa"], "xb": b @ x, "ya": a @ y, "yb": sy.vec["xa"]}
        return st

    def constant(self) -> bool:
        """Either representation constant up to round-off (see ``is_constant``)."""
        n, s = self.n, self.scal
        cx = float(self.gxx.diagonal().sum() - self.sx @ self.sx / n)
        cy = float(self.gyy.diagonal().sum() - self.sy @ self.sy / n)
        return is_constant(cx, s["raw_x"]) or is_constant(cy, s["raw_y"])

    def cka(self, debiased: bool, constant: bool = False) -> float:
        n = self.n
        check_samples(n, debiased)
        constant = constant or self.constant()
        if not debiased:
            cxy = self.gxy - torch.outer(self.sx, self.sy) / n
            cxx = self.gxx - torch.outer(self.sx, self.sx) / n
            cyy = self.gyy - torch.outer(self.sy, self.sy) / n
            return cka_from_hsic(
                float((cxy * cxy).sum()),
                float((cxx * cxx).sum()),
                float((cyy * cyy).sum()),
                constant,
                0.0,
            )
        if not self.debiased_terms:
            raise InvalidOptionError(
                "these statistics were gathered without the debiased terms; accumulate with "
                "LinearCKA(debiased=True) for the debiased estimator"
            )
        s, v = self.scal, self.vec
        sx, sy = self.sx, self.sy
        xy = hsic1_from_terms(
            float((self.gxy * self.gxy).sum()) - s["ab"],
            float(sx @ sx) - s["a"],
            float(sy @ sy) - s["b"],
            float(sx @ self.gxy @ sy) - float(v["xb"] @ sx) - float(v["ya"] @ sy) + s["ab"],
            n,
        )
        xx = hsic1_from_terms(
            float((self.gxx * self.gxx).sum()) - s["aa"],
            float(sx @ sx) - s["a"],
            float(sx @ sx) - s["a"],
            float(sx @ self.gxx @ sx) - 2 * float(v["xa"] @ sx) + s["aa"],
            n,
        )
        yy = hsic1_from_terms(
            float((self.gyy * self.gyy).sum()) - s["bb"],
            float(sy @ sy) - s["b"],
            float(sy @ sy) - s["b"],
            float(sy @ self.gyy @ sy) - 2 * float(v["yb"] @ sy) + s["bb"],
            n,
        )
        return cka_from_hsic(xy, xx, yy, constant)


def _minus_into(
    t: torch.Tensor, v: torch.Tensor, scratch: dict[str, torch.Tensor], key: str
) -> torch.Tensor:
    """``t - v`` (rows minus a vector) written into ``scratch[key]``, grown when too small."""
    buf = scratch.get(key)
    if buf is None or buf.numel() < t.numel() or buf.dtype != t.dtype or buf.device != t.device:
        buf = scratch[key] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
    return torch.sub(t, v, out=buf[: t.numel()].view(t.shape))


def _exponent_if_needed(e: torch.Tensor) -> torch.Tensor:
    """``e``, or 0 when features of that scale need none (see ``SAFE_EXPONENT``)."""
    return torch.zeros_like(e) if abs(int(e)) <= SAFE_EXPONENT else e


def _scaled(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return x if int(e) == 0 else times_power_of_two(x, e)


def _prepare(
    x: Any, y: Any, debiased: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float], tuple[float, float]]:
    """Centred float64 (N, width) matrices (scaled by powers of two to a largest magnitude near 1
    when far from it), N |mean|^2 of each (for ``constant``), and the two factors used. One
    float64 copy of each; NaN/Inf are caught by the scale's peak."""
    xt, yt = _validated(x, y, debiased)
    cx, mx, fx = _prepare_one(xt, "X")
    cy, my, fy = _prepare_one(yt, "Y")
    return cx, cy, (mx, my), (fx, fy)


def _validated(x: Any, y: Any, debiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """X and Y as tensors with the same N, enough of it for the estimator (NaN/Inf: later)."""
    xt, yt = validate(x, "X", finite=False), validate(y, "Y", finite=False)
    check_same_n(xt, yt)
    check_samples(xt.shape[0], debiased)
    return xt, yt


def _uncentred_gram_terms(
    f: torch.Tensor, name: str, debiased: bool
) -> tuple[KernelTerms, float, float] | None:
    """``KernelTerms`` of the linear kernel of float64 rows f (N, p) as they are, double-centred
    afterwards (HKH = K - r 1'/N - 1 r'/N + 1'K1/N^2, r = K 1: O(N^2) instead of a centred
    (N, p) copy), with the centred sum of squares and N |mean|^2. None where that is not exact
    to round-off (see ``_uncentred_feature_cka``)."""
    if f.dtype != torch.float64:
        return None
    f = _scaled(f, _exponent_if_needed(scale_exponent(f, name=name)))
    k = products.gram(f)
    n = k.shape[0]
    rows = k.sum(1)
    total = float(rows.sum())
    mean_term = total / n
    centred = float(k.trace()) - mean_term
    if not _centre_afterwards(centred, mean_term):
        return None
    k.sub_(rows.view(-1, 1) / n).sub_(rows.view(1, -1) / n).add_(total / (n * n))
    return KernelTerms.of(k, debiased, linear_of_centred=True), centred, mean_term


def _uncentred_feature_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float | None:
    """Linear CKA in feature space from the float64 rows x (N, p), y (N, q) as they are: the
    products of the raw rows, centred afterwards (X'X - n mu mu', ...), without the two centred
    copies. None where that is not exact to round-off: other dtypes, or a mean that dominates
    the spread (``MEAN_DOMINANCE``); the caller then centres first."""
    if x.dtype != torch.float64 or y.dtype != torch.float64:
        return None
    # Features far from 1 are scaled (a copy) as ``_centred_scaled`` does: powers of two keep
    # every value bit-identical; scale_exponent also raises NonFiniteError on NaN/Inf.
    x, y = (
        _scaled(t, _exponent_if_needed(scale_exponent(t, name=k))) for t, k in ((x, "X"), (y, "Y"))
    )
    st = LinearCKAStats.from_centred(x, y, debiased)
    for g, s in ((st.gxx, st.sx), (st.gyy, st.sy)):
        mean_term = float(s @ s) / st.n
        if not _centre_afterwards(float(g.diagonal().sum()) - mean_term, mean_term):
            return None
    return st.cka(debiased)


def _centre_afterwards(centred_sq: float, mean_term: float) -> bool:
    """Whether statistics centred after the products are exact to round-off: the mean term
    N |mu|^2 is at most ``MEAN_DOMINANCE`` times the centred sum of squares (False for NaN)."""
    return centred_sq > mean_term / MEAN_DOMINANCE


def _prepare_one(t: torch.Tensor, name: str = "features") -> tuple[torch.Tensor, float, float]:
    """One validated representation: (centred float64 (N, width), N |mean|^2, scale factor)."""
    f = to_flat(t)
    c, mean, e = _centred_scaled(f, scale_exponent(f, name=name))
    return c, f.shape[0] * float(mean @ mean), math.ldexp(1.0, int(e))


def constant(centred_sq: float, mean_term: float) -> bool:
    """A representation whose centred sum of squares is round-off of its raw one (``is_constant``),
    from the centred sum and N |mean|^2 (the raw sum is their sum)."""
    return is_constant(centred_sq, centred_sq + mean_term)


def _centred_scaled(
    f: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f * 2**e' - mean) as a new float64 tensor, the mean, and e'. Every CKA statistic scales
    with a power of two exactly (IEEE operations commute with it), so features whose peak lies
    within 2**+-SAFE_EXPONENT are left unscaled (e' = 0): their squares and sums stay in range;
    others are scaled by 2**e first (e' = e)."""
    if abs(int(e)) <= SAFE_EXPONENT:
        mean = f.mean(0, dtype=torch.float64)
        # One new float64 matrix: a float64 input is subtracted into it, any other cast into it
        # and centred in place (a mixed-dtype subtraction is several times slower).
        c = torch.sub(f, mean) if f.dtype == torch.float64 else f64(f).sub_(mean)
        return c, mean, torch.zeros_like(e)
    f = times_power_of_two(f64(f), e)  # a new float64 matrix (f64 of a float64 f is f itself)
    mean = f.mean(0)
    return f.sub_(mean), mean, e


def _median_sigma(sq: torch.Tensor) -> float:
    n = sq.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=sq.device)
    d = sq[iu[0], iu[1]]
    med = float(d.median())
    if med <= 0:
        pos = d[d > 0]
        med = float(pos.mean()) if pos.numel() else 1.0
    return med**0.5


def rbf_kernel(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """exp(-|x_i - x_j|^2 / (2 sigma^2)); sigma defaults to sqrt(median squared distance)."""
    sq = torch.cdist(x, x).pow(2)
    s = _median_sigma(sq) if sigma is None else float(sigma)
    return torch.exp(-sq / (2.0 * s * s))


@declare(_ORTHOGONAL)
def cka(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    kernel: str = "linear",
    debiased: bool = False,
    sigma: float | None = None,
) -> float:
    """CKA similarity (1 = same up to rotation and scale) of X and Y, each (N, ...) over N inputs.

    ``kernel="linear"`` (memory O(width^2) when N exceeds the widths) or ``"rbf"`` (N x N Gram
    matrices; ``sigma=None``: sqrt of the median squared distance between inputs).
    ``debiased=True`` uses the unbiased HSIC_1 and needs N >= 4. Computed in float64.
    Floor (linear): the products of the cheaper of the feature-space and Gram forms (module doc).

    Range: [0, 1] biased; [-1, 1] debiased: the debiased estimator can be negative, its scatter
    around "no similarity" (see ``value_range``). Exactly scale-free; never NaN.
    """
    _validate.choice(kernel, "kernel", KERNELS)
    if sigma is not None:
        sigma = _validate.finite_number(
            sigma, "sigma", low=0.0, low_open=True, hint="or None for the median heuristic"
        )
    xt, yt = _validated(X, Y, debiased)
    xf, yf = to_flat(xt), to_flat(yt)
    n, p, q = xf.shape[0], xf.shape[1], yf.shape[1]
    # Multiply-adds of the two exact forms (symmetric products cost half a general one).
    feature_form = p * p + q * q + 2 * p * q <= n * (p + q)
    if kernel == "linear" and feature_form:
        value = _uncentred_feature_cka(xf, yf, debiased)
        if value is not None:
            return value
    elif kernel == "linear":
        terms = [_uncentred_gram_terms(f, k, debiased) for f, k in ((xf, "X"), (yf, "Y"))]
        if terms[0] is not None and terms[1] is not None:
            (tk, ck, mk), (tl, cl, ml) = terms
            return gram_cka(
                tk, tl, debiased=debiased, constant=constant(ck, mk) or constant(cl, ml)
            )
    xc, yc, (mx, my), (fx, fy) = _prepare(xt, yt, debiased)
    if kernel == "rbf":
        const = any(constant(float(torch.linalg.vector_norm(c)) ** 2, m)
                    for c, m in ((xc, mx), (yc, my)))  # fmt: skip
        # sigma is in the units of the inputs: scale it with them (the median default is free).
        sx, sy = (None, None) if sigma is None else (sigma * fx, sigma * fy)
        k, l = rbf_kernel(xc, sx), rbf_kernel(yc, sy)
        return gram_cka(k, l, debiased=debiased, constant=const)
    if feature_form:
        st = LinearCKAStats.from_centred(xc, yc, debiased)
        const = constant(st.scal["a"], mx) or constant(st.scal["b"], my)
        return st.cka(debiased, const)
    (tk, trace_k), (tl, trace_l) = (
        KernelTerms.linear(xc, debiased),
        KernelTerms.linear(yc, debiased),
    )
    const = constant(trace_k, mx) or constant(trace_l, my)
    return gram_cka(tk, tl, debiased=debiased, constant=const)


cka.value_range = VALUE_RANGE["biased"]
