"""CKA as a registered metric (``cka``, ``cka_debiased``, ``rbf_cka``): options, range, streaming
class, and the per-model preparation ``pairwise`` shares across pairs (each model's centred
covariance for narrow linear layers, else its centred N x N kernel with its own HSIC)."""

from __future__ import annotations

from typing import Any

import torch

from intertwiner._types import FeatureLike
from intertwiner.metrics._groups import invariances
from intertwiner.metrics._metric import Measure, Metric, Prepared, register
from intertwiner.metrics._prep import check_same_n, validate
from intertwiner.metrics.cka import (
    KernelTerms,
    LinearCKAStats,
    _prepare_one,
    check_samples,
    cka,
    constant,
    gram_cka,
    rbf_kernel,
    value_range,
)
from intertwiner.metrics.streaming import LinearCKA

#: Names that are ``cka`` with an option set.
_PRESETS = {"cka_debiased": {"debiased": True}, "rbf_cka": {"kernel": "rbf"}}


class CKAMeasure(Measure):
    names = ("cka", "cka_debiased", "rbf_cka")

    def bind(self, name: str, options: dict[str, Any]) -> Metric:
        options = {**options, **_PRESETS.get(name, {})}
        debiased = bool(options.get("debiased", False))
        linear = options.get("kernel", "linear") == "linear"
        label = ("cka" if linear else "rbf_cka") + ("_debiased" if debiased else "")
        acc = (lambda: LinearCKA(debiased=debiased)) if linear else None
        return Metric(
            label, cka, options, invariances("orthogonal"), True, acc, value_range(debiased),
            measure=self, linear_cka=linear,
        )  # fmt: skip

    def prepare(self, m: Metric, x: FeatureLike, layer: str) -> Prepared:
        debiased = bool(m.options.get("debiased", False))
        t = validate(x, layer, finite=False)
        check_samples(t.shape[0], debiased)
        c, mean_term, factor = _prepare_one(t, layer)
        if not m.linear_cka:
            sigma = m.options.get("sigma")
            k = rbf_kernel(c, None if sigma is None else sigma * factor)
            const = constant(float(torch.linalg.vector_norm(c)) ** 2, mean_term)
            return Prepared(t, {"kernel": KernelTerms.of(k, debiased), "constant": const})
        n, p = c.shape
        if p <= n:  # narrow: feature-space statistics, the covariance once
            st = LinearCKAStats.from_centred(c, c, debiased)
            return Prepared(c, {"stats": st, "constant": constant(st.scal["a"], mean_term)})
        terms, trace = KernelTerms.linear(c, debiased)
        return Prepared(c, {"kernel": terms, "constant": constant(trace, mean_term)})

    def pair(self, m: Metric, a: Prepared, b: Prepared) -> float:
        debiased = bool(m.options.get("debiased", False))
        check_same_n(a.x, b.x)
        const = a.extra["constant"] or b.extra["constant"]
        if not m.linear_cka:
            ka, kb = a.extra["kernel"], b.extra["kernel"]
            return gram_cka(ka, kb, debiased=debiased, constant=const, psd=True)
        sa, sb = a.extra.get("stats"), b.extra.get("stats")
        if sa is None or sb is None:  # a narrow layer against a wide one: the Gram form
            ka = a.extra.get("kernel") or KernelTerms.linear(a.x, debiased)[0]
            kb = b.extra.get("kernel") or KernelTerms.linear(b.x, debiased)[0]
            return gram_cka(ka, kb, debiased=debiased, constant=const)
        return LinearCKAStats.cross(sa, sb, a.x, b.x, debiased).cka(debiased, const)


CKA = register(CKAMeasure())
