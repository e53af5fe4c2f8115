"""Alignment and merging modulo the intertwiner groups of a traced model.

>>> aligned_b, elements = align(model_a, model_b)                  # weight matching, full groups
>>> aligned_b, _ = align(model_a, model_b, data=loader, method="activations")
>>> curve = interpolate(model_a, aligned_b, alphas, test_data, bn_data=train_data)
>>> curve.barrier, curve.accuracies
>>> merged = merge([m0, m1, m2])                                    # aligned to m0, then averaged
>>> curve = interpolate(model_a, aligned_b, 11, test_data, bn_data=train_data, repair=True)
>>> merged = merge([m0, m1], bn_data=train_data, repair=True)       # REPAIR the average
"""

from intertwiner.alignment._align import (
    GROUPS,
    METHODS,
    SCALES,
    Alignment,
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
from intertwiner.alignment._orbit import OrbitDistance, orbit_distance, weight_space_pairwise
from intertwiner.alignment._plot import plot_curves
from intertwiner.alignment._repair import repair

__all__ = [
    "GROUPS",
    "METHODS",
    "SCALES",
    "Alignment",
    "Interpolation",
    "OrbitDistance",
    "SiteReport",
    "align",
    "interpolate",
    "lerp",
    "merge",
    "orbit_distance",
    "plot_curves",
    "repair",
    "reset_bn_statistics",
    "weight_distance",
    "weight_space_pairwise",
]
