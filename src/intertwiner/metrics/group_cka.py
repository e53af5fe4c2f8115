"""Group-invariant CKA: the paper's G_ReLU-CKA and its analogues for other monomial groups.

Features (N, C), (N, C, H, W) or (N, T, D) are seen as H[i, s, c]: input i, position s (pixel or
token; one for dense), neuron c. Each neuron is centred over (N, positions) and, for the groups with
scalings, unit-normalised. The kernel over inputs is

    K_ij = max_c <H_i^c, H_j^c>        (``reduce="max"``; also ``"median"`` and ``"sum"``)

the inner product of neuron c's maps for inputs i and j, reduced over neurons. K~ (diagonal set to
zero) enters the unbiased HSIC_1 of paper.md section 6, CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

Invariances: a reduction over neurons ignores their order, and <H_i^c, H_j^c> is even in neuron c, so
the kernel is unchanged by permutations and sign flips of neurons. Per-neuron normalisation also
removes positive scales. So ``group="positive_monomial"`` (the paper's G_ReLU-CKA) and ``"monomial"``
give the same number, invariant to the monomial group; ``"permutation"`` and
``"signed_permutation"`` skip the normalisation and are invariant to signed permutations only.

Range: [-1, 1], and *it can be negative*. The max-over-neurons kernel is not positive
semi-definite, and the default debiased estimator (unbiased HSIC_1) scatters around 0 on both sides
for unrelated or small samples; Cauchy-Schwarz bounds it by 1 in magnitude. A negative value means
"no detectable similarity". ``VALUE_RANGE`` records it; ``group_cka.value_range`` carries it.

Scale: each neuron is multiplied by a power of two (one per representation for the unnormalised
groups) that brings its largest magnitude near 1 before centring and squaring, so values are the
same for features of 1e-300, 1 or 1e300.

The kernel is never stored: N x N is processed in blocks of ``chunk_size`` inputs (upper triangle
only, since K is symmetric) with batched matrix products over neurons, a few neurons at a time into
a cache-sized buffer reduced at once, and only the sums HSIC needs are kept (memory
O(GROUP_BYTES + chunk_size^2 + N) besides one preprocessed copy of each representation).

Floor: the batched products, 2 C N (N + 1) / 2 S multiply-adds per representation (C neurons, S
positions), at the machine's matrix-product rate; preprocessing is O(N C S) and the HSIC sums
O(N^2). With ``dtype=torch.float32`` (products in float32, every sum in float64) this runs at
about half the float32 matmul rate or better for N in the thousands (see benchmarks/metrics.py).
"""

from __future__ import annotations

from typing import Any

import torch

from intertwiner import _validate
from intertwiner._types import FeatureLike
from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups import MONOMIAL, SIGNED_PERMUTATION, GroupLike, family
from intertwiner.layouts import to_sites
from intertwiner.metrics._groups import declare, family_name, invariances
from intertwiner.metrics._prep import (
    check_finite,
    check_same_n,
    scale_exponent,
    times_power_of_two,
    validate,
)
from intertwiner.metrics.cka import CONSTANT_RATIO, check_samples, cka_from_hsic, hsic1_from_terms

REDUCTIONS = ("max", "median", "sum")
# Elements of one C x b x b block product (about 128 MiB in float64): bounds the median's buffer.
_BLOCK_BUDGET = 1 << 24
# Bytes of the per-neuron product buffer of max and sum reductions (a few neurons at a time).
GROUP_BYTES = 1 << 21
VALUE_RANGE = (-1.0, 1.0)
DTYPES = (torch.float64, torch.float32)


def _normalised(name: str) -> bool:
    """Families with free positive scales: each neuron is normalised (its scale removed)."""
    return family(name).free_scales


def group_cka_group(group: GroupLike) -> str:
    name = family_name(group)
    if family(name).monomial and not family(name).any_permutation:
        raise UnsupportedGroupError(
            f"group_cka quotients out every permutation of the units; {name} allows two "
            "orders only: use group='permutation'"
        )
    if not family(name).monomial:
        raise UnsupportedGroupError(
            f"group_cka is for monomial groups; for {name} use cka(...) (linear CKA is invariant "
            "to orthogonal maps; nothing sensible is invariant to all of GL(n) but CCA)"
        )
    return name


def invariant_families(group: GroupLike) -> tuple[str, ...]:
    """Families group_cka(group=...) is invariant to (see the module docstring)."""
    name = group_cka_group(group)
    return invariances(MONOMIAL if _normalised(name) else SIGNED_PERMUTATION)


def _peak_exponents(h: torch.Tensor, per_neuron: bool) -> torch.Tensor:
    """``scale_exponent`` of (C, rows) ``h``: one per row, or one; NaN/Inf raise."""
    if per_neuron:
        peak = torch.maximum(h.amax(1), -h.amin(1))
    else:
        lo, hi = torch.aminmax(h)
        peak = torch.maximum(hi, -lo)
    if not bool(torch.isfinite(peak).all()):
        check_finite(h, "features")
    return -torch.frexp(peak).exponent.to(torch.int64)


def preprocess(x: torch.Tensor, normalise: bool, dtype: torch.dtype) -> torch.Tensor:
    """(C, N, S): centred (and unit-normalised) per neuron over inputs and positions.

    One copy of the features in ``dtype``, then in place: centring, and a per-neuron factor; means
    and norms are summed in float64. Power-of-two scales (per neuron when normalising: the metric
    ignores them) keep squares and products in range; they are exact, so ordinary inputs are
    unchanged. Float64 features narrowed to float32 are scaled while copying (values of 1e-300
    survive), float64 ones in place; float32 squares cannot overflow a float64 sum, so float32
    features are only scaled (when not normalised) by the final factor.
    """
    sites = to_sites(x)  # (N, S, C) view
    n, s, c = sites.shape
    h = torch.empty((c, n, s), dtype=dtype, device=x.device)
    hv = h.view(c, n * s)
    factor = torch.ones(c, dtype=torch.float64, device=x.device)
    if x.dtype == torch.float64 and dtype != torch.float64:
        e = scale_exponent(sites, per_column=normalise)
        times_power_of_two(sites.permute(2, 0, 1), e.view(-1, 1, 1) if normalise else e, out=h)
    else:
        h.copy_(sites.permute(2, 0, 1))
        if dtype == torch.float64:
            e = _peak_exponents(hv, normalise)
            times_power_of_two(hv, e.view(-1, 1) if normalise else e, out=hv)
        elif not normalise:
            factor = times_power_of_two(factor, _peak_exponents(hv, False))
    # Sums over each input's S positions in ``dtype``, then over inputs in float64: as accurate
    # as float64 throughout for float32 features (S terms), at the speed of a float32 pass.
    mean = h.sum(2).sum(1, dtype=torch.float64) / (n * s)
    hv.sub_(mean.to(dtype).view(-1, 1))
    sq = torch.linalg.vector_norm(h, dim=2).double().square().sum(1)
    # A dead or constant neuron is (rounding noise around) zero after centring: make it exactly
    # zero, so that normalising cannot blow the noise up to a unit-norm neuron (and never NaN).
    constant = sq <= CONSTANT_RATIO * (sq + (n * s) * mean.square())
    if normalise:
        factor = 1.0 / sq.sqrt().clamp_min(1e-300)
    hv.mul_(torch.where(constant, torch.zeros_like(factor), factor).to(dtype).view(-1, 1))
    return h


class _Products:
    """Kernel blocks max_c (or sum_c, median_c) <H_i^c, H_j^c> from batched per-neuron products.

    The products of a few neurons at a time go into one reused buffer of about ``GROUP_BYTES``
    and are reduced into the block at once, while still in cache (a buffer of every neuron's
    products would leave the cache and cost more than the products themselves; the median needs
    every neuron at once and takes the whole buffer)."""

    def __init__(self, h: torch.Tensor, b: int, reduce: str) -> None:
        self.h, self.reduce = h, reduce
        c = h.shape[0]
        per = b * b * h.element_size()
        self.group = c if reduce == "median" else max(1, min(c, GROUP_BYTES // per))
        self.buf = torch.empty(self.group * b * b, dtype=h.dtype, device=h.device)
        self.acc = torch.empty(b * b, dtype=h.dtype, device=h.device)

    def __call__(self, rows: slice, cols: slice) -> torch.Tensor:
        """The (rows, cols) block of the kernel, float64."""
        a, bt = self.h[:, rows], self.h[:, cols].transpose(1, 2)
        ra, rb = a.shape[1], bt.shape[2]
        acc = self.acc[: ra * rb].view(ra, rb)
        for c in range(0, a.shape[0], self.group):
            ac = a[c : c + self.group]
            out = self.buf[: ac.shape[0] * ra * rb].view(ac.shape[0], ra, rb)
            # torch's batched kernel: on these small inner dimensions (S positions) it measured
            # faster than numpy's (96 vs 90 GFLOP/s float32, benchmarks/products.py's machine).
            torch.bmm(ac, bt[c : c + self.group], out=out)
            if self.reduce == "median":
                return out.median(0).values.double()
            part = out.amax(0) if self.reduce == "max" else out.sum(0)
            if c == 0:
                acc.copy_(part)
            elif self.reduce == "max":
                torch.maximum(acc, part, out=acc)
            else:
                acc.add_(part)
        return acc.double()


def _default_chunk(c: int, n: int, reduce: str = "max") -> int:
    """Inputs per block: 256 (products large enough to run near the matmul rate, diagonal blocks
    small enough to waste little of the upper triangle; measured best from N = 1,000 to 10,000),
    fewer for very wide layers under ``reduce="median"``."""
    if reduce != "median":
        return 256
    return max(16, min(256, int((_BLOCK_BUDGET / max(c, 1)) ** 0.5)))


def kernel_matrix(
    h: torch.Tensor, reduce: str = "max", chunk_size: int | None = None
) -> torch.Tensor:
    """The full N x N kernel from preprocessed (C, N, S) features (for tests and small N)."""
    n = h.shape[1]
    b = chunk_size or _default_chunk(h.shape[0], n, reduce)
    out = torch.empty(n, n, dtype=torch.float64, device=h.device)
    prod = _Products(h, b, reduce)
    for i in range(0, n, b):
        for j in range(0, n, b):
            out[i : i + b, j : j + b] = prod(slice(i, i + b), slice(j, j + b))
    return out


def kernel(
    x: torch.Tensor,
    group: GroupLike = "positive_monomial",
    *,
    reduce: str = "max",
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The full N x N kernel of validated features ``x`` (for ``pairwise``: once per model)."""
    h = preprocess(x, _normalised(group_cka_group(group)), dtype)
    return kernel_matrix(h, reduce, chunk_size)


def hsic_sums(
    hx: torch.Tensor,
    hy: torch.Tensor,
    *,
    reduce: str = "max",
    debiased: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Blockwise tr(KL), tr(KK), tr(LL) and kernel row sums, without storing K or L."""
    n = hx.shape[1]
    b = chunk_size or _default_chunk(max(hx.shape[0], hy.shape[0]), n, reduce)
    z = dict(dtype=torch.float64, device=hx.device)
    rk, rl = torch.zeros(n, **z), torch.zeros(n, **z)
    tr = {"kl": 0.0, "kk": 0.0, "ll": 0.0}
    px, py = _Products(hx, b, reduce), _Products(hy, b, reduce)
    for i in range(0, n, b):
        for j in range(i, n, b):
            k = px(slice(i, i + b), slice(j, j + b))
            l = py(slice(i, i + b), slice(j, j + b))
            if i == j and debiased:
                k.fill_diagonal_(0.0)
                l.fill_diagonal_(0.0)
            w = 1.0 if i == j else 2.0  # an off-diagonal block stands for itself and its mirror
            tr["kl"] += w * float((k * l).sum())
            tr["kk"] += w * float((k * k).sum())
            tr["ll"] += w * float((l * l).sum())
            rk[i : i + b] += k.sum(1)
            rl[i : i + b] += l.sum(1)
            if i != j:
                rk[j : j + b] += k.sum(0)
                rl[j : j + b] += l.sum(0)
    return {"n": n, "tr": tr, "rk": rk, "rl": rl}


def cka_from_sums(s: dict[str, Any], debiased: bool) -> float:
    n, tr, rk, rl = s["n"], s["tr"], s["rk"], s["rl"]
    sk, sl = float(rk.sum()), float(rl.sum())
    if debiased:
        xy = hsic1_from_terms(tr["kl"], sk, sl, float(rk @ rl), n)
        xx = hsic1_from_terms(tr["kk"], sk, sk, float(rk @ rk), n)
        yy = hsic1_from_terms(tr["ll"], sl, sl, float(rl @ rl), n)
    else:
        # tr(KHLH) = tr(KL) - 2/n 1'KL1 + (1'K1)(1'L1)/n^2 (the 1/(n-1)^2 factor cancels).
        def h0(t: float, a: torch.Tensor, c: torch.Tensor) -> float:
            return t - 2.0 / n * float(a @ c) + float(a.sum()) * float(c.sum()) / n**2

        xy, xx, yy = h0(tr["kl"], rk, rl), h0(tr["kk"], rk, rk), h0(tr["ll"], rl, rl)
    return cka_from_hsic(xy, xx, yy)


@declare(invariances(MONOMIAL))
def group_cka(
    X: FeatureLike,
    Y: FeatureLike,
    *,
    group: GroupLike = "positive_monomial",
    debiased: bool = True,
    reduce: str = "max",
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """G-invariant CKA similarity of X and Y over N inputs (paper's G_ReLU-CKA by default).

    X, Y: (N, C), (N, C, H, W) or (N, T, D); widths and spatial sizes may differ. ``chunk_size``:
    inputs per block (default: blocks of about 2^24 kernel entries). ``dtype``: of the batched
    products (float32 is about twice as fast); sums are float64. Debiased needs N >= 4.
    Floor: the batched per-neuron products (see the module docstring); memory is bounded.

    Range [-1, 1]: the estimator can be negative (see the module docstring). Scale-free; never NaN.
    """
    name = group_cka_group(group)
    _validate.choice(reduce, "reduce", REDUCTIONS)
    _validate.choice(dtype, "dtype", DTYPES)
    if chunk_size is not None:
        chunk_size = _validate.positive_int(chunk_size, "chunk_size", hint="or None for auto")
    xt, yt = validate(X, "X"), validate(Y, "Y")
    check_same_n(xt, yt)
    check_samples(xt.shape[0], debiased)
    normalise = _normalised(name)
    hx, hy = preprocess(xt, normalise, dtype), preprocess(yt, normalise, dtype)
    sums = hsic_sums(hx, hy, reduce=reduce, debiased=debiased, chunk_size=chunk_size)
    return cka_from_sums(sums, debiased)


group_cka.value_range = VALUE_RANGE
