"""align(model_a, model_b): bring B as close as possible to A with one group element per site.

The elements are those of ``trace(B)``: every site's intertwiner group (``group="full"``), its
permutation subgroup (``group="permutation"``, the Git Re-Basin baseline) or nothing
(``group="none"``). B transformed by them computes exactly B's function.

Weight matching (``method="weights"``) minimises the squared Euclidean distance between the
parameters (buffers such as BatchNorm running statistics are moved but not counted)

    D(g) = sum over parameters || theta_A - (g . theta_B) ||^2

by coordinate descent over sites in a seeded random order: each step solves, exactly for the
monomial families, the site's element with every other site held fixed (``groups.fit_element``:
Hungarian assignment on per-pair costs with the family's best scale per pair; for positive scalings
of ReLU that scale balances the incoming rows, which it multiplies, against the outgoing columns,
which it divides; orthogonal Procrustes / least squares for dense sites), until a sweep lowers D
by less than ``tol`` relative to its value. Each step is accepted only if it does not increase D,
so D never increases. An attention-heads site is solved jointly with its per-head maps: the cost
of pairing head i of A with head j of B is the residual after the best per-head maps (qk, vo),
and the permutation of heads is the assignment on those residuals.

Continuous scales (``group="full"`` at sites such as ReLU's, whose positive scalings leave the
function unchanged) are by default not searched at all: both models are first moved to a
representative of their scaling orbits (``scales="balanced"``: the least-norm point, see
``alignment._scales``), only the discrete part (permutations, signs) is searched between the
representatives, and the element found is mapped back to A's frame (``c_A^-1 P c_B``). Scales
chosen to minimise D (``scales="distance"``, the earlier rule) shrink or inflate units to fit
A's weights, which the midpoint of the merge pays for (README, "Alignment and merging").

Activation matching (``method="activations"``) streams, in one pass over ``data``, the cross and
second moments of both models' features at every site (``Site.activations``: a residual stream
pools all its activation outputs; memory O(width^2) per site, never N x C) and solves per site
``min_g E || h_A - phi(g) h_B ||^2`` in the features themselves for the permutation and signs,
with continuous scales set per pair so that ``phi(s) h_B,j`` has the energy of ``h_A,i`` (the
least-squares scale collapses to 0 for uncorrelated pairs). Features say little about the scale
of a unit that rarely fires, so the continuous scales (ReLU's positive scaling) are then refined
by weight matching with the permutations held fixed: activations choose *which* unit, weights
*how much* (a scaled copy is recovered either way). Sites without captured activations (e.g. a
pre-LN transformer's stream, attention maps, a functional activation that no module hook can see)
are then aligned by weight matching with the others fixed.

Barrier-aware selection (``select="midpoint"``, the default when ``data`` has labels and the
group is the full group): the weight distance is not the barrier, so ``align`` runs several
searches whose results are all elements of the full group and keeps the one whose midpoint with
A has the lowest loss on ``data`` (``_select``).

This module holds ``align`` and the search order; the parts live beside it, one job each:
``_extent`` (how much of each group is searched), ``_weights`` (coordinate descent),
``_heads`` (attention-heads blocks), ``_activations`` (the streamed pass) and ``_report`` (the
``Alignment`` result and weight distances).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from intertwiner import _validate
from intertwiner._types import DataLike, ExampleInput
from intertwiner.alignment._activations import _activation_sites
from intertwiner.alignment._extent import GROUPS, Extent
from intertwiner.alignment._heads import _heads_blocks
from intertwiner.alignment._report import (
    Alignment,
    SiteReport,
    _check_same,
    _site_reports,
    weight_distance,
)
from intertwiner.alignment._scales import representatives
from intertwiner.alignment._select import (
    Selection,
    check_select,
    choose,
    has_labels,
    limited,
    loss,
    midpoint_loss,
)
from intertwiner.alignment._weights import _Problem, _weight_matching
from intertwiner.errors import InvalidOptionError
from intertwiner.groups import GroupElement, family
from intertwiner.symmetry import Site, SymmetrySpec, apply, trace

METHODS = ("weights", "activations")
SCALES = ("balanced", "unit_norm", "distance")
#: What other modules of the package import from here.
__all__ = ["GROUPS", "METHODS", "SCALES", "Alignment", "Extent", "SiteReport", "align",
           "weight_distance"]  # fmt: skip


def _in_frame(
    c_a: GroupElement | None, found: GroupElement, c_b: GroupElement | None
) -> GroupElement:
    """``c_a^-1 @ found @ c_b`` (a missing canonical element is the identity)."""
    out = found if c_b is None else found @ c_b.to(torch.float64)
    return out if c_a is None else c_a.to(torch.float64).inverse() @ out


def _example_input(
    model: nn.Module, data: DataLike | None, example_input: ExampleInput | None
) -> ExampleInput:
    if example_input is not None:
        return example_input
    if data is not None:
        from intertwiner.features import iter_batches

        for x in iter_batches(data, batch_size=8):
            return x[:8]
    from intertwiner.models import example_input as guess

    x = guess(model)  # a zoo model's input, or (N, in_features) before a first Linear
    if x is not None:
        return x
    raise InvalidOptionError(
        f"align cannot tell the input of {type(model).__name__}: pass example_input= (one batch "
        "the model takes) or data= (a Dataset, DataLoader or tensor of inputs)"
    )


def _search(
    prob: _Problem,
    model_a: nn.Module,
    model_b: nn.Module,
    spec: SymmetrySpec,
    data: DataLike,
    method: str,
    extent: Extent,
    **options: Any,
) -> tuple[list[float], int]:
    """Fill ``prob.elements``: activation matching first where asked, then weight matching over
    the remaining sites (and the scales activations cannot see). Returns (history, sweeps)."""
    blocks, in_blocks = _heads_blocks(spec)
    heads = {b.heads.name for b in blocks}
    free = [s for s in spec.sites if s.name not in heads and s.name not in in_blocks]
    scale_sites: list[Site] = []
    if method == "activations":
        done = _activation_sites(
            prob, model_a, model_b, free, data, batch_size=options["batch_size"],
            max_samples=options["max_samples"], progress=options["progress"],
        )  # fmt: skip
        fixed = {s.name for s in done}
        free = [s for s in free if s.name not in fixed]
        # Continuous scales come from the weights (see the module docstring); between scale
        # representatives only signs are left, which features that move by the permutation
        # alone (a gated unit) cannot see either.
        scale_sites = [
            s
            for s in done
            if extent.family_at(s).free_scales
            or (extent is Extent.DISCRETE and family(s.group.family).free_scales
                and extent.family_at(s).flips_signs)
        ]  # fmt: skip
    return _weight_matching(
        prob, free, blocks, max_sweeps=options["max_sweeps"], tol=options["tol"],
        seed=options["seed"], progress=options["progress"], scale_sites=scale_sites,
    )  # fmt: skip


def _align_once(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: SymmetrySpec,
    data: DataLike | None,
    method: str,
    extent: Extent,
    scales: str,
    **options: Any,
) -> Alignment:
    """One search (no selection): B aligned to A within ``extent`` (``align``'s docstring)."""
    start = time.perf_counter()
    canonical = (
        extent is Extent.SITE_GROUP
        and scales != "distance"
        and any(family(s.group.family).free_scales for s in spec.sites)
    )
    if canonical:
        # Scales are fixed by the orbit representatives, not searched (see the README for why).
        src_a, src_b, to_a, to_b = representatives(model_a, model_b, spec, scales)
        search = Extent.DISCRETE
    else:
        src_a, src_b, search = model_a, model_b, extent
    prob = _Problem(src_a, src_b, spec, search)
    history: list[float] = [weight_distance(prob.a, prob.b, relative=False)]
    sweeps = 0
    if extent is not Extent.IDENTITY:
        history, sweeps = _search(prob, src_a, src_b, spec, data, method, search, **options)
    elements = prob.elements
    prob.b = None  # the working copy goes before the aligned copy is made (peak memory)
    if canonical:
        # B' = c_A^-1 . P . c_B . B: the element found between the canonical forms, in A's frame.
        elements = {
            s.name: _in_frame(to_a.get(s.name), elements[s.name], to_b.get(s.name))
            for s in spec.sites
        }
    aligned = apply(model_b, spec, elements, validate=False)
    return Alignment(
        model=aligned,
        elements=elements,
        spec=spec,
        method=method,
        group=extent.value,
        history=history,
        seconds=time.perf_counter() - start,
        sweeps=sweeps,
    )


def _candidates(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: SymmetrySpec,
    data: DataLike,
    method: str,
    scales: str,
    **options: Any,
) -> dict[str, Alignment]:
    """The elements of B's full group that ``select="midpoint"`` chooses among (``_select``)."""
    full = _align_once(model_a, model_b, spec, data, method, Extent.SITE_GROUP, scales, **options)
    perm = _align_once(model_a, model_b, spec, data, method, Extent.PERMUTATION, scales, **options)
    out = {"full": full, "permutation": perm}
    if method == "weights":
        # The full search started from the permutations' solution: g = g_full(perm B) . g_perm.
        again = _align_once(
            model_a, perm.model, spec, data, method, Extent.SITE_GROUP, scales, **options
        )
        again.elements = {
            s.name: again.elements[s.name].to(torch.float64)
            @ perm.elements[s.name].to(torch.float64)
            for s in spec.sites
        }
        again.sweeps += perm.sweeps
        again.seconds += perm.seconds
        out["full_from_permutation"] = again
    return out


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike | None = None,
    method: str = "weights",
    group: Extent | str = Extent.SITE_GROUP,
    spec: SymmetrySpec | None = None,
    example_input: ExampleInput | None = None,
    max_sweeps: int = 100,
    tol: float = 1e-9,
    seed: int = 0,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
    scales: str = "balanced",
    select: str | None = "midpoint",
    select_repair: bool | str = False,
) -> Alignment:
    """B transformed by one element per site of ``trace(B)``, chosen to bring B close to A.

    ``method``: ``"weights"`` (coordinate descent on the parameter distance; no data needed) or
    ``"activations"`` (one streamed pass over ``data``; see the module docstring for both
    objectives). ``group``: an ``Extent`` or its name: ``"full"`` (``Extent.SITE_GROUP``: each
    site's intertwiner group), ``"permutation"`` (``Extent.PERMUTATION``: its permutations only,
    Git Re-Basin) or ``"none"`` (``Extent.IDENTITY``: identity everywhere). ``spec``: a traced spec
    of B to reuse; otherwise B is traced on ``example_input`` (default: a batch of ``data``, or a
    random input shaped from the zoo config). ``seed`` orders the sites of each sweep.
    ``scales`` (``group="full"``, sites with continuous scales such as ReLU's): ``"balanced"``
    (default) moves both models to the least-norm point of their scaling orbits (each unit's
    incoming and outgoing energies balanced), ``"unit_norm"`` to ``symmetry.canonicalize``'s
    representative (incoming norms 1); then only the discrete part (permutations, signs) is
    searched between the representatives and the result is mapped back to A's frame.
    ``"distance"`` optimises the scales for the weight distance itself (the earlier rule, which
    makes worse merges; see the README and ``alignment._scales``). With a representative, the
    ``history`` is the distance between the representatives.
    ``select`` (``group="full"`` with ``data`` of labelled ``(x, y)`` pairs): ``"midpoint"``
    (default) runs several searches whose results are all elements of the full group (the full
    search, the permutations-only search and, by weights, the full search started from the
    permutations' solution) and keeps the one with the lowest loss barrier at alpha 1/2 on
    ``data`` (``max(0, midpoint loss - endpoints' mean loss)``, a tie keeping the full search;
    the midpoint's BN re-estimated there; REPAIRed when ``select_repair`` is True, ``"summands"`` or
    ``"sum"``; at most ``max_samples`` examples, drawn with ``seed``); the choice and the losses
    are on ``Alignment.selection`` (see ``alignment._select``). Without labelled data, with
    another ``group`` or with ``select=None``: the full search alone (``selection`` is None).
    Pass training data, never the test split: the selection fits to it.
    Returns an ``Alignment`` (unpacks as ``(aligned_b, elements)``); ``model_b`` is untouched.
    """
    if method not in METHODS:
        raise InvalidOptionError(f"method must be one of {METHODS}, got {method!r}")
    max_sweeps = _validate.positive_int(max_sweeps, "max_sweeps")
    extent = Extent.parse(group)
    if method == "activations" and data is None and extent is not Extent.IDENTITY:
        raise InvalidOptionError(
            "method='activations' needs data= (a DataLoader, Dataset or tensor)"
        )
    if scales not in SCALES:
        raise InvalidOptionError(f"scales must be one of {SCALES}, got {scales!r}")
    check_select(select)
    if select_repair:
        from intertwiner.alignment._repair import _residual

        _residual(select_repair)  # refuse a bad mode before any search runs
    _check_same(dict(model_a.named_parameters()), dict(model_b.named_parameters()))
    start = time.perf_counter()
    if spec is None:
        spec = trace(model_b, _example_input(model_b, data, example_input))
    options = dict(
        max_sweeps=max_sweeps, tol=tol, seed=seed, batch_size=batch_size,
        max_samples=max_samples, progress=progress,
    )  # fmt: skip
    selection = None
    if select == "midpoint" and extent is Extent.SITE_GROUP and has_labels(data):
        assert data is not None  # has_labels is False for None
        found = _candidates(model_a, model_b, spec, data, method, scales, **options)
        fit = limited(data, max_samples, seed)
        losses, samples = {}, 0
        for name, cand in found.items():
            losses[name], samples = midpoint_loss(
                model_a, cand.model, fit, repair=select_repair, seed=seed
            )
        ends = (loss(model_a, fit)[0] + loss(model_b, fit)[0]) / 2
        chosen = choose(losses, ends)  # a tie keeps the first: the full search
        res = found[chosen]
        res.group = extent.value  # every candidate is an element of the full group
        selection = Selection(chosen, losses, ends, samples, select_repair)
    else:
        res = _align_once(model_a, model_b, spec, data, method, extent, scales, **options)
    res.sites = _site_reports(spec, model_a, model_b, res.model, extent)
    res.seconds = time.perf_counter() - start
    res.selection = selection
    return res
