"""Model stitching with group-constrained stitch layers and the stitching penalty.

``stitch(model_a, model_b, at, layer=..., data=..., config=StitchConfig())`` splices the front of A
(up to module ``at``), a stitch layer, and the back of B; trains only the stitch (models frozen in
eval mode), chooses the epoch on validation and reports test accuracies and
``penalty = mean(acc A, acc B) - acc stitched``. Layer kinds: ``"full"``, ``"orthogonal"``,
``("low_rank", r)``, ``("lasso", lam)``, ``"diagonal"``, ``"permutation"``, ``"perm_scale"``
(G_ReLU), ``"signed_perm"``, ``"monomial"`` and ``"auto"`` (the group of the site's activation).
"""

from intertwiner.stitching._fit import StitchConfig, StitchResult, stitch
from intertwiner.stitching._layers import (
    KINDS,
    BirkhoffStitch,
    DiagonalStitch,
    FullStitch,
    LassoStitch,
    LowRankStitch,
    MonomialStitch,
    OrthogonalStitch,
    StitchLayer,
    UnknownLayerKindError,
    kind_for_activation,
    make_layer,
    parse_kind,
    resolve_kind,
)
from intertwiner.stitching._solvers import FeatureStats
from intertwiner.stitching._splice import (
    Cut,
    ResidualSiteError,
    StitchedModel,
    UnknownSiteError,
    find_cut,
)

__all__ = [
    "KINDS",
    "BirkhoffStitch",
    "Cut",
    "DiagonalStitch",
    "FeatureStats",
    "FullStitch",
    "LassoStitch",
    "LowRankStitch",
    "MonomialStitch",
    "OrthogonalStitch",
    "ResidualSiteError",
    "StitchConfig",
    "StitchLayer",
    "StitchResult",
    "StitchedModel",
    "UnknownLayerKindError",
    "UnknownSiteError",
    "find_cut",
    "kind_for_activation",
    "make_layer",
    "parse_kind",
    "resolve_kind",
    "stitch",
]
