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
only, since K is symmetric) with batched matrix products over neurons, and only the sums HSIC needs
are kept (memory O(C * chunk_size^2 + N) besides the features).
"""

from __future__ import annotations

from typing import Any

import torch

from intertwiner import _validate
from intertwiner.errors import UnsupportedGroupError
from intertwiner.layouts import to_sites
from intertwiner.metrics._groups import declare, family_name, subgroups
from intertwiner.metrics._prep import (
    check_same_n,
    scale_exponent,
    times_power_of_two,
    validate,
)
from intertwiner.metrics.cka import CONSTANT_RATIO, check_samples, cka_from_hsic, hsic1_from_terms

REDUCTIONS = ("max", "median", "sum")
_NORMALISED = {"positive_monomial", "monomial"}
_UNNORMALISED = {"permutation", "signed_permutation"}
# Elements of one C x b x b block product (about 128 MiB in float64).
_BLOCK_BUDGET = 1 << 24
VALUE_RANGE = (-1.0, 1.0)
DTYPES = (torch.float64, torch.float32)


def group_cka_group(group: Any) -> str:
    name = family_name(group)
    if name in ("orthogonal", "general_linear"):
        raise UnsupportedGroupError(
            f"group_cka is for monomial groups; for {name} use cka(...) (linear CKA is invariant "
            "to orthogonal maps; nothing sensible is invariant to all of GL(n) but CCA)"
        )
    return name


def invariant_families(group: Any) -> tuple[str, ...]:
    """Families group_cka(group=...) is invariant to (see the module docstring)."""
    name = group_cka_group(group)
    return subgroups("monomial" if name in _NORMALISED else "signed_permutation")


def preprocess(x: torch.Tensor, normalise: bool, dtype: torch.dtype) -> torch.Tensor:
    """(C, N, S): centred (and unit-normalised) per neuron over inputs and positions.

    One copy of the features in ``dtype``; centring and scaling happen in place, with the means and
    norms taken in float64.
    """
    sites = to_sites(x)  # (N, S, C) view
    n, s, c = sites.shape
    # Power-of-two scales (per neuron when normalising: the metric ignores them) keep the squares
    # below in float64's range; exact, so ordinary inputs are unchanged. Applied while copying, so
    # values of 1e-300 survive a float32 ``dtype``.
    e = scale_exponent(sites, per_column=normalise)
    h = torch.empty((c, n, s), dtype=dtype, device=x.device)
    times_power_of_two(sites.permute(2, 0, 1), e.view(-1, 1, 1) if normalise else e, out=h)
    raw = torch.linalg.vector_norm(h, dim=(1, 2), keepdim=True, dtype=torch.float64)
    h.sub_(h.mean(dim=(1, 2), keepdim=True, dtype=torch.float64).to(dtype))
    norm = torch.linalg.vector_norm(h, dim=(1, 2), keepdim=True, dtype=torch.float64)
    # A dead or constant neuron is (rounding noise around) zero after centring: make it exactly
    # zero, so that normalising cannot blow the noise up to a unit-norm neuron (and never NaN).
    constant = norm.square() <= CONSTANT_RATIO * raw.square()
    scale = 1.0 / norm.clamp_min(1e-300) if normalise else torch.ones_like(norm)
    h.mul_(torch.where(constant, torch.zeros_like(scale), scale).to(dtype))
    return h


class _Products:
    """Batched per-neuron products into one reused buffer (fresh 100 MiB allocations cost more
    than the reduction that follows)."""

    def __init__(self, h: torch.Tensor, b: int, buf: torch.Tensor | None = None) -> None:
        self.h = h
        size = h.shape[0] * b * b
        if buf is None or buf.numel() < size:
            buf = torch.empty(size, dtype=h.dtype, device=h.device)
        self.buf = buf

    def __call__(self, rows: slice, cols: slice, reduce: str) -> torch.Tensor:
        a, bt = self.h[:, rows], self.h[:, cols].transpose(1, 2)
        out = self.buf[: a.shape[0] * a.shape[1] * bt.shape[2]].view(a.shape[0], a.shape[1], -1)
        torch.bmm(a, bt, out=out)
        return _reduce(out, reduce).double()


def _reduce(blk: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "max":
        return blk.amax(0)
    if reduce == "sum":
        return blk.sum(0)
    return blk.median(0).values


def _default_chunk(c: int) -> int:
    return max(16, int((_BLOCK_BUDGET / max(c, 1)) ** 0.5))


def kernel_matrix(
    h: torch.Tensor, reduce: str = "max", chunk_size: int | None = None
) -> torch.Tensor:
    """The full N x N kernel from preprocessed (C, N, S) features (for tests and small N)."""
    n = h.shape[1]
    b = chunk_size or _default_chunk(h.shape[0])
    out = torch.empty(n, n, dtype=torch.float64, device=h.device)
    prod = _Products(h, b)
    for i in range(0, n, b):
        for j in range(0, n, b):
            out[i : i + b, j : j + b] = prod(slice(i, i + b), slice(j, j + b), reduce)
    return out


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
    b = chunk_size or _default_chunk(max(hx.shape[0], hy.shape[0]))
    z = dict(dtype=torch.float64, device=hx.device)
    rk, rl = torch.zeros(n, **z), torch.zeros(n, **z)
    tr = {"kl": 0.0, "kk": 0.0, "ll": 0.0}
    px = _Products(hx, b)
    py = _Products(hy, b, px.buf)  # each block is reduced before the next product: share
    for i in range(0, n, b):
        for j in range(i, n, b):
            k = px(slice(i, i + b), slice(j, j + b), reduce)
            l = py(slice(i, i + b), slice(j, j + b), reduce)
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


@declare(subgroups("monomial"))
def group_cka(
    X: Any,
    Y: Any,
    *,
    group: Any = "positive_monomial",
    debiased: bool = True,
    reduce: str = "max",
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """G-invariant CKA similarity of X and Y over N inputs (paper's G_ReLU-CKA by default).

    X, Y: (N, C), (N, C, H, W) or (N, T, D); widths and spatial sizes may differ. ``chunk_size``:
    inputs per block (default: blocks of about 2^24 kernel entries). ``dtype``: of the batched
    products (float32 is about twice as fast); sums are float64. Debiased needs N >= 4.

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
    normalise = name in _NORMALISED
    hx, hy = preprocess(xt, normalise, dtype), preprocess(yt, normalise, dtype)
    sums = hsic_sums(hx, hy, reduce=reduce, debiased=debiased, chunk_size=chunk_size)
    return cka_from_sums(sums, debiased)


group_cka.value_range = VALUE_RANGE
