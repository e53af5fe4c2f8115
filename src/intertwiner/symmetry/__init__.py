"""Network symmetries: trace a model into a SymmetrySpec, sample and apply group elements, verify.

>>> spec = trace(model, x)                  # hidden sites, their groups and the axes they act on
>>> g = random_elements(spec, generator)    # {site name: element}
>>> model2 = apply(model, spec, g)          # a transformed deep copy; same function
>>> check(model, spec, x, g)                # max |model(x) - model2(x)|
"""

from intertwiner.symmetry._canonical import Canonical, SiteCanonical, canonicalize, fingerprint
from intertwiner.symmetry._coverage import Coverage, FrozenModule
from intertwiner.symmetry._teleport import Objective, Teleport, gradient_norm, teleport
from intertwiner.symmetry.apply import apply, random_elements
from intertwiner.symmetry.check import (
    assert_function_preserved,
    check,
    hidden_errors,
    site_errors,
)
from intertwiner.symmetry.spec import ActivationAxis, ParamAxis, Site, SymmetrySpec
from intertwiner.symmetry.trace import SUPPORTED, trace

__all__ = [
    "SUPPORTED",
    "ActivationAxis",
    "Canonical",
    "Coverage",
    "FrozenModule",
    "Objective",
    "ParamAxis",
    "SiteCanonical",
    "Site",
    "SymmetrySpec",
    "Teleport",
    "apply",
    "assert_function_preserved",
    "canonicalize",
    "check",
    "fingerprint",
    "gradient_norm",
    "hidden_errors",
    "random_elements",
    "site_errors",
    "teleport",
    "trace",
]
