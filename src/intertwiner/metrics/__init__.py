"""Representation metrics modulo intertwiner groups: CKA, Procrustes, group CKA, streaming, compare,
pairwise over many models.

Every metric takes features (N, C), (N, C, H, W) or (N, T, D) (tensors or numpy arrays), computes in
float64 and carries ``.invariant_to``: the group families it is invariant to.
"""

from intertwiner.layouts import to_matrix
from intertwiner.metrics.cka import cka, hsic_gram
from intertwiner.metrics.compare import Comparison, compare
from intertwiner.metrics.group_cka import group_cka
from intertwiner.metrics.pairwise import Pairwise, pairwise
from intertwiner.metrics.procrustes import procrustes_distance, procrustes_similarity
from intertwiner.metrics.registry import NAMES, Metric, metric
from intertwiner.metrics.streaming import (
    Accumulator,
    LinearCKA,
    ProcrustesDistance,
    ProcrustesSimilarity,
)

__all__ = [
    "NAMES",
    "Accumulator",
    "Comparison",
    "LinearCKA",
    "Metric",
    "Pairwise",
    "ProcrustesDistance",
    "ProcrustesSimilarity",
    "cka",
    "compare",
    "group_cka",
    "hsic_gram",
    "metric",
    "pairwise",
    "procrustes_distance",
    "procrustes_similarity",
    "to_matrix",
]
