"""Procrustes as registered metrics (``procrustes_distance``, ``procrustes_similarity``): group and
kind from the options, ranges, streaming classes; ``pairwise`` validates each model once and a pair
costs its X'Y product and the group step."""

from __future__ import annotations

import math
from typing import Any

from intertwiner.metrics import procrustes as _pr
from intertwiner.metrics._groups import invariances
from intertwiner.metrics._metric import Measure, Metric, Prepared, register
from intertwiner.metrics.streaming import ProcrustesDistance, ProcrustesSimilarity


class ProcrustesMeasure(Measure):
    names = ("procrustes_distance", "procrustes_similarity")

    def bind(self, name: str, options: dict[str, Any]) -> Metric:
        g = _pr.procrustes_group(options.get("group", "orthogonal"))
        inv = invariances(g)
        stream = {k: v for k, v in options.items() if k != "group"}
        if name == "procrustes_distance":
            kind = options.get("kind", "angular")
            return Metric(
                f"procrustes_distance[{g},{kind}]", _pr.procrustes_distance, options, inv, False,
                lambda: ProcrustesDistance(group=g, **stream),
                _pr.DISTANCE_RANGE[kind] if kind in _pr.KINDS else (0.0, math.pi), measure=self,
            )  # fmt: skip
        return Metric(
            f"procrustes_similarity[{g}]", _pr.procrustes_similarity, options, inv, True,
            lambda: ProcrustesSimilarity(group=g, **stream), _pr.similarity_range(g),
            measure=self,
        )  # fmt: skip

    def pair(self, m: Metric, a: Prepared, b: Prepared) -> float:
        return _pr.value_of(a.x, b.x, similarity=m.higher_is_similar, options=dict(m.options))


PROCRUSTES = register(ProcrustesMeasure())
