"""Alignment and merging modulo the intertwiner groups of a traced model.

>>> aligned_b, elements = align(model_a, model_b)                  # weight matching, full groups
>>> aligned_b, _ = align(model_a, model_b, data=loader, method="activations")
>>> align(model_a, model_b, data=train_data).selection   # barrier-aware choice of the element
>>> curve = interpolate(model_a, aligned_b, alphas, test_data, bn_data=train_data)
>>> curve.barrier, curve.accuracies
>>> curve = interpolate(model_a, aligned_b, 11, test_data, bn_data=train_data, repair=True)
>>> merged = merge([m0, m1, m2])                      # each aligned to the mean of the others
>>> merged = merge([m0, m1], bn_data=train_data, repair=True)       # REPAIR the average
>>> merge_report(merged, [m0, m1, m2], test_data).table()       # vs each input and the ensemble
>>> zipped = zip_models(cnn_a, cnn_b, train_inputs, k=1, repair=True).model  # ZipIt!, 2 heads
"""

from intertwiner.alignment._align import (
    GROUPS,
    METHODS,
    SCALES,
    Alignment,
    Extent,
    SiteReport,
    align,
    weight_distance,
)
from intertwiner.alignment._interpolate import (
    Interpolation,
    interpolate,
    lerp,
    merge,
    reset_bn_statistics,
)
from intertwiner.alignment._many import (
    Ensemble,
    ManyAlignment,
    MergeReport,
    align_to_mean,
    merge_report,
)
from intertwiner.alignment._orbit import OrbitDistance, orbit_distance, weight_space_pairwise
from intertwiner.alignment._plot import plot_curves
from intertwiner.alignment._repair import RESIDUAL, RepairWarning, repair
from intertwiner.alignment._select import SELECTS, Selection
from intertwiner.alignment._zip import MATCHES, ZippedModel, ZipResult, ZipSite, zip_models

__all__ = [
    "GROUPS",
    "MATCHES",
    "METHODS",
    "RESIDUAL",
    "SCALES",
    "SELECTS",
    "Alignment",
    "Ensemble",
    "Extent",
    "Interpolation",
    "ManyAlignment",
    "MergeReport",
    "OrbitDistance",
    "RepairWarning",
    "Selection",
    "SiteReport",
    "ZipResult",
    "ZipSite",
    "ZippedModel",
    "align",
    "align_to_mean",
    "interpolate",
    "lerp",
    "merge",
    "merge_report",
    "orbit_distance",
    "plot_curves",
    "repair",
    "reset_bn_statistics",
    "weight_distance",
    "weight_space_pairwise",
    "zip_models",
]
