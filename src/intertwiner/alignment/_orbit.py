"""Weight-space distances modulo the traced group: ``orbit_distance`` and ``weight_space_pairwise``.

``orbit_distance(a, b) = min over g of || theta_A - g . theta_B ||`` (parameters only, Euclidean,
float64), minimised by ``align(..., method="weights")`` (coordinate descent over the sites of
``trace(B)``; every step lowers the distance, so the result is at most the naive distance
``|| theta_A - theta_B ||`` and at least the true minimum). For groups that act by isometries
(permutations, signed permutations, orthogonal maps) the quotient distance is symmetric; positive
scalings (ReLU) do not preserve norms, so ``d(a, b)`` and ``d(b, a)`` can differ:
``weight_space_pairwise`` reports the smaller of the two for every pair (both are upper bounds of
a distance between orbits), which makes the matrix symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from intertwiner._types import ExampleInput
from intertwiner.alignment._align import Alignment, align, weight_distance
from intertwiner.errors import InvalidInputError
from intertwiner.groups import GroupElement
from intertwiner.symmetry import SymmetrySpec, trace


@dataclass
class OrbitDistance:
    """Result of ``orbit_distance``: ``distance`` = ``|| theta_A - g . theta_B ||`` at the element
    found (``elements``, per site of ``spec``; ``alignment.model`` is ``g . B``), ``naive`` the
    distance before alignment; ``relative`` divides by ``|| theta_A ||``."""

    distance: float
    naive: float
    norm_a: float
    elements: dict[str, GroupElement]
    alignment: Alignment

    @property
    def relative(self) -> float:
        return self.distance / self.norm_a if self.norm_a > 0 else 0.0

    def __float__(self) -> float:
        return self.distance


def _norm(model: nn.Module) -> float:
    return sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()) ** 0.5


def orbit_distance(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: SymmetrySpec | None = None,
    example_input: ExampleInput | None = None,
    group: str = "full",
    max_sweeps: int = 200,
    tol: float = 1e-12,
    seed: int = 0,
) -> OrbitDistance:
    """The weight distance between A and B minimised over B's traced group (module docstring).

    ``spec``: a traced spec of B (else B is traced on ``example_input``, as ``align`` does).
    ``group``: ``"full"`` (every site's intertwiner group) or ``"permutation"`` (Git Re-Basin's).
    ``tol`` and ``max_sweeps`` stop the coordinate descent (see ``align``).
    """
    res = align(
        model_a, model_b, method="weights", group=group, spec=spec, example_input=example_input,
        max_sweeps=max_sweeps, tol=tol, seed=seed,
    )  # fmt: skip
    naive = weight_distance(model_a, model_b, relative=False) ** 0.5
    dist = weight_distance(model_a, res.model, relative=False) ** 0.5
    return OrbitDistance(min(dist, naive), naive, _norm(model_a), res.elements, res)


def weight_space_pairwise(
    models: list[nn.Module],
    *,
    example_input: ExampleInput | None = None,
    specs: list[SymmetrySpec] | None = None,
    group: str = "full",
    naive: bool = False,
    **options: Any,
) -> torch.Tensor:
    """``(K, K)`` float64 matrix of orbit distances between ``models`` (one architecture), the
    smaller of ``d(i, j)`` and ``d(j, i)`` per pair (symmetric, zero diagonal). Each model is traced
    once (``specs`` to reuse). ``naive=True``: the plain weight distances instead, for comparison.
    ``options`` go to ``orbit_distance`` (``max_sweeps``, ``tol``, ``seed``)."""
    k = len(models)
    if k < 1:
        raise InvalidInputError("weight_space_pairwise needs at least one model")
    if specs is None and not naive:
        specs = [trace(m, example_input) if example_input is not None else None for m in models]
    out = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            if naive:
                d = weight_distance(models[i], models[j], relative=False) ** 0.5
            else:
                d = min(
                    orbit_distance(
                        models[i], models[j], spec=specs[j], example_input=example_input,
                        group=group, **options,
                    ).distance,
                    orbit_distance(
                        models[j], models[i], spec=specs[i], example_input=example_input,
                        group=group, **options,
                    ).distance,
                )  # fmt: skip
            out[i, j] = out[j, i] = d
    return out
