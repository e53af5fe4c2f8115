"""Representation metrics modulo intertwiner groups: CKA, Procrustes, group CKA, the CCA family
(cca, svcca, pwcca), RSA, linear regression and linear predictivity, k-NN measures (mutual_knn, cknna, knn_jaccard), shape
metrics (shape_distance, soft_matching_distance, stochastic_shape_distance), streaming, compare, pairwise over many models.

Every metric takes features (N, C), (N, C, H, W) or (N, T, D) (tensors or numpy arrays), computes in
float64 and carries ``.invariant_to``: the group families it is invariant to.
"""

from intertwiner.layouts import to_matrix
from intertwiner.metrics._catalog import MomentStream
from intertwiner.metrics._cca import cca, pwcca, svcca
from intertwiner.metrics._knn import cknna, knn_jaccard, mutual_knn
from intertwiner.metrics._predictivity import linear_predictivity
from intertwiner.metrics._regression import linear_regression
from intertwiner.metrics._rsa import rsa
from intertwiner.metrics._shape import shape_distance, soft_matching_distance
from intertwiner.metrics._stochastic import GaussianStats, gaussian_stats, stochastic_shape_distance
from intertwiner.metrics.cka import cka, hsic_gram
from intertwiner.metrics.compare import Comparison, compare
from intertwiner.metrics.group_cka import group_cka
from intertwiner.metrics.pairwise import Pairwise, pairwise
from intertwiner.metrics.procrustes import procrustes_distance, procrustes_similarity
from intertwiner.metrics.registry import NAMES, Measure, Metric, metric, register, unregister
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
    "GaussianStats",
    "LinearCKA",
    "Measure",
    "Metric",
    "MomentStream",
    "Pairwise",
    "ProcrustesDistance",
    "ProcrustesSimilarity",
    "cca",
    "cka",
    "cknna",
    "compare",
    "gaussian_stats",
    "group_cka",
    "hsic_gram",
    "knn_jaccard",
    "linear_predictivity",
    "linear_regression",
    "metric",
    "mutual_knn",
    "pairwise",
    "procrustes_distance",
    "procrustes_similarity",
    "pwcca",
    "register",
    "rsa",
    "shape_distance",
    "soft_matching_distance",
    "stochastic_shape_distance",
    "svcca",
    "to_matrix",
    "unregister",
]
