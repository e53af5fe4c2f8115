"""G-CKA as a registered metric (``group_cka``): its group from the options, and the per-model
preparation ``pairwise`` shares across pairs (each model's group kernel, once, with its HSIC)."""

from __future__ import annotations

import importlib
from typing import Any

from intertwiner._types import FeatureLike
from intertwiner.metrics._metric import Measure, Metric, Prepared, register
from intertwiner.metrics._prep import check_same_n, validate
from intertwiner.metrics.cka import KernelTerms, check_samples, gram_cka

# The package exports a function named like this module; take the module itself (its ``kernel``
# is looked up at call time, so a test can count the kernels computed).
_gc = importlib.import_module("intertwiner.metrics.group_cka")

#: Options of ``group_cka`` that shape the kernel.
_KERNEL_OPTIONS = ("reduce", "dtype", "chunk_size")


class GroupCKAMeasure(Measure):
    names = ("group_cka",)

    def bind(self, name: str, options: dict[str, Any]) -> Metric:
        group = options.get("group", "positive_monomial")
        return Metric(
            f"group_cka[{_gc.group_cka_group(group)}]", _gc.group_cka, options,
            _gc.invariant_families(group), value_range=_gc.VALUE_RANGE, measure=self,
        )  # fmt: skip

    def prepare(self, m: Metric, x: FeatureLike, layer: str) -> Prepared:
        debiased = bool(m.options.get("debiased", True))
        t = validate(x, layer, finite=True)
        check_samples(t.shape[0], debiased)
        opts = {k: v for k, v in m.options.items() if k in _KERNEL_OPTIONS}
        k = _gc.kernel(t, m.options.get("group", "positive_monomial"), **opts)
        return Prepared(t, {"kernel": KernelTerms.of(k, debiased), "constant": False})

    def pair(self, m: Metric, a: Prepared, b: Prepared) -> float:
        check_same_n(a.x, b.x)
        debiased = bool(m.options.get("debiased", True))
        return gram_cka(a.extra["kernel"], b.extra["kernel"], debiased=debiased, constant=False)


GROUP_CKA = register(GroupCKAMeasure())
