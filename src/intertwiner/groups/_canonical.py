"""Canonical elements: the element of a group that brings a set of key rows to a fixed
representative of their orbit (the building block of ``symmetry.canonicalize``).

A site's element ``g`` acts on several row sets ("key terms", each ``(n, m_k)``: one row per unit)
by the action kinds of ``intertwiner.symmetry`` (``"A"``, ``"P"``, ``"A^-T"``, ``"phi(A)^-T"``).
``canonical_element(group, terms)`` returns ``g`` such that ``g . terms`` depends only on the orbit
of ``terms``: for every ``h`` in the group, ``canonical(h . terms) . (h . terms) == canonical(terms)
. terms`` (to round-off), provided the key is generic. Rules per family:

- Monomial families (``g = diag(s) P``): continuous scales first: each unit's key rows of the
  first exponent class (kind ``A`` before ``A^-T``/``phi(A)^-T``) that has nonzero energy are scaled
  to unit norm (ReLU: the incoming weights, or BatchNorm's gamma and beta, get norm 1); then signs
  (sign-flipping families): the sum of cubes of the signed rows is made positive; then the units are
  ordered by the projections of their normalised key on fixed pseudo-random directions (seed 0),
  a near-tie (within ``tol`` of the largest projection) broken by the next direction.
- Reversal ({I, J}): the key or its reversal, whichever has a positive centred-position moment
  of its projections (the first direction that tells them apart).
- ``c P`` (one common factor): as above with the total energy of the first class over all units
  made 1, then the units ordered.
- Orthogonal: the rows ``Z`` (every kind acts by ``Q``) are put in their singular basis,
  ``Q Z = S V^T``, each row's sign chosen so that its sum of cubes is positive.
- General linear with both ``A`` rows ``X`` and ``A^-T`` rows ``Y``: the invariant ``M = X^T Y`` is
  factored as ``U S V^T`` and ``g`` is chosen with ``g X = S^1/2 U^T`` (then ``g^-T Y = S^1/2 V^T``),
  signs as above on the columns of ``U``.

Where a key does not determine the element (a unit whose key rows are all zero, two units with the
same key, repeated or zero singular values, a GL key with rows of one kind only) the element is
still a valid group element, but the result is not canonical: the reasons are returned as
``issues``. ``complete=True`` says the key holds every row the element moves, so that units with
equal keys (or all-zero keys) are interchangeable and are not an issue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from intertwiner.errors import ShapeError
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement
from intertwiner.groups._families import GeneralLinear, Orthogonal
from intertwiner.groups._fitting import exponents
from intertwiner.groups._group import IntertwinerGroup
from intertwiner.groups._phi import IDENTITY_PHI

__all__ = ["KeyTerm", "canonical_element", "orbit_invariants", "stable_order"]

#: Pseudo-random directions the unit keys are projected on, in priority order.
N_DIRECTIONS = 4
_SEED = 0


@dataclass
class KeyTerm:
    """One row set of a site's key: ``rows`` (n, m), row ``i`` moved with unit ``i`` by ``kind``."""

    kind: str
    rows: torch.Tensor


def _directions(m: int, k: int, salt: int = 0) -> torch.Tensor:
    """``(m, k)`` fixed pseudo-random directions (the same for every call with the same m, salt)."""
    gen = torch.Generator().manual_seed(_SEED + m + 1_000_003 * salt)
    return torch.randn(m, k, generator=gen, dtype=torch.float64)


def stable_order(keys: torch.Tensor, tol: float = 1e-9) -> tuple[torch.Tensor, list[list[int]]]:
    """``(perm, ties)``: the order of the rows of ``keys`` (n, c) by column 0, rows within
    ``tol * max |column|`` of each other ordered by column 1, and so on. ``perm[i]`` is the row
    placed at position i; ``ties`` lists groups of rows that no column separates."""
    n, c = keys.shape
    scale = keys.abs().amax(0).clamp_min(torch.finfo(torch.float64).tiny) if n else keys
    ties: list[list[int]] = []
    if n > 1 and c:
        first = torch.argsort(keys[:, 0], stable=True)
        if bool((keys[first[1:], 0] - keys[first[:-1], 0] > tol * scale[0]).all()):
            return first, ties  # the first column separates every row (the usual case)

    def order(group: list[int], col: int) -> list[int]:
        if len(group) <= 1:
            return group
        if col == c:
            ties.append(sorted(group))
            return sorted(group)
        vals = keys[group, col]
        srt = [group[int(i)] for i in torch.argsort(vals, stable=True)]
        out, run = [], [srt[0]]
        for a, b in zip(srt, srt[1:], strict=False):
            if float(keys[b, col] - keys[a, col]) <= tol * float(scale[col]):
                run.append(b)
            else:
                out += order(run, col + 1)
                run = [b]
        return out + order(run, col + 1)

    return torch.as_tensor(order(list(range(n)), 0), dtype=torch.long), ties


def _cube_signs(rows: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sign making its sum of cubes positive, and whether that sum is too close to 0
    (relative to the sum of absolute cubes) for the sign to be well defined."""
    cubes = (rows**3).sum(1)
    size = (rows.abs() ** 3).sum(1)
    sign = torch.where(cubes < 0, -1.0, 1.0).to(rows.dtype)
    return sign, cubes.abs() <= tol * size


def _monomial(
    group: IntertwinerGroup, terms: list[KeyTerm], complete: bool, tol: float
) -> tuple[GroupElement, list[str]]:
    fam, phi = group.family, group.phi_kind
    n = terms[0].rows.shape[0]
    rows = [t.rows.double() for t in terms]
    ex = [exponents(t.kind, phi) for t in terms]
    issues: list[str] = []
    u = torch.zeros(n, dtype=torch.float64)
    if fam.free_scales:
        classes = sorted({p for p, _ in ex if p > 0}) + sorted(
            {p for p, _ in ex if p < 0}, reverse=True
        )
        assigned = torch.zeros(n, dtype=torch.bool)
        for p in classes:
            e = sum((r * r).sum(1) for r, (pk, _) in zip(rows, ex, strict=True) if pk == p)
            sel = ~assigned & (e > 0)
            u[sel] = -torch.log(e[sel]) / (2.0 * p)
            assigned |= sel
        if not complete and not bool(assigned.all()):
            free = torch.nonzero(~assigned).flatten().tolist()
            issues.append(f"units {free[:8]} have no key rows that see their scale")
    elif fam.common_scale:  # c P: one factor for all units, set by the total energy of a class
        classes = sorted({p for p, _ in ex if p > 0}) + sorted(
            {p for p, _ in ex if p < 0}, reverse=True
        )
        for p in classes:
            e = sum(float((r * r).sum()) for r, (pk, _) in zip(rows, ex, strict=True) if pk == p)
            if e > 0:
                u[:] = -math.log(e) / (2.0 * p)
                break
        else:
            if not complete:
                issues.append("no key rows see the common scale")
    # Per term, row i of the normalised key is factor[i] * rows[i]: statistics are taken from
    # the rows and rescaled, so the (possibly huge) key is never built.
    factors = [torch.exp(p * u) for p, _ in ex]
    sign = torch.ones(n, dtype=torch.float64)
    if fam.flips_signs:
        odd = [k for k, (_, q) in enumerate(ex) if q == 1]
        if odd:
            cubes = sum(factors[k] ** 3 * (rows[k] ** 3).sum(1) for k in odd)
            size = sum(factors[k] ** 3 * (rows[k].abs() ** 3).sum(1) for k in odd)
            zero = size == 0
            sign = torch.where(cubes < 0, -1.0, 1.0).to(torch.float64)
            bad = (cubes.abs() <= tol * size) & ~(zero & torch.tensor(complete))
            if bool(bad.any()):
                issues.append(f"units {torch.nonzero(bad).flatten().tolist()[:8]}: sign undefined")
        elif not complete:
            issues.append("no key rows see the signs")
    for k, (_, q) in enumerate(ex):
        factors[k] = factors[k] * sign**q
    proj = sum(
        factors[k].unsqueeze(1) * (r @ _directions(r.shape[1], N_DIRECTIONS, salt=k))
        for k, r in enumerate(rows)
    )
    if not fam.any_permutation:
        return _reversal_choice(proj, terms, complete, tol, issues)
    perm, ties = stable_order(proj, tol)
    if ties:
        key = torch.cat([f.unsqueeze(1) * r for f, r in zip(factors, rows, strict=True)], 1)
        for tie in ties:
            same = (key[tie] - key[tie[0]]).abs().amax() <= tol * key.abs().amax()
            if not (complete and bool(same)):
                issues.append(f"units {tie[:8]} have equal keys: their order is undefined")
    scale = sign * torch.exp(u)
    return MonomialElement(perm, scale[perm]), issues


def _reversal_choice(
    proj: torch.Tensor, terms: list[KeyTerm], complete: bool, tol: float, issues: list[str]
) -> tuple[GroupElement, list[str]]:
    """The reversal family {I, J}: of the key and its reversal, the one whose projections weighted
    by the centred positions ``i - (n - 1) / 2`` sum to a positive number on the first direction
    that tells them apart (J negates each such sum, so both members of an orbit choose alike)."""
    n = proj.shape[0]
    pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
    score = pos @ proj
    size = pos.abs() @ proj.abs()
    perm = torch.arange(n)
    for c in range(score.shape[0]):
        if float(score[c].abs()) > tol * float(size[c]):
            if float(score[c]) < 0:
                perm = torch.arange(n - 1, -1, -1)
            return MonomialElement(perm, torch.ones(n, dtype=torch.float64)), issues
    rows = torch.cat([t.rows.double() for t in terms], 1)
    same = (rows - rows.flip(0)).abs().amax() <= tol * rows.abs().amax()
    if n > 1 and not (complete and bool(same)):
        issues.append("the key reads the same reversed: the choice of I or J is undefined")
    return MonomialElement(perm, torch.ones(n, dtype=torch.float64)), issues


def _spectrum_issues(s: torch.Tensor, n: int, tol: float) -> list[str]:
    if s.numel() < n or float(s[-1]) <= tol * float(s[0]):
        return ["the key has rank below the site's width: the basis is not determined"]
    gaps = (s[:-1] - s[1:]) / s[0]
    if bool((gaps <= tol).any()):
        return ["repeated singular values: the basis is not determined"]
    return []


def _orthogonal(
    group: IntertwinerGroup, terms: list[KeyTerm], tol: float
) -> tuple[GroupElement, list[str]]:
    n = terms[0].rows.shape[0]
    if not group.phi_kind.is_identity or any(t.kind == "P" for t in terms):
        return group.identity(n), ["this orthogonal site has actions other than Q"]
    z = torch.cat([t.rows.double() for t in terms], 1)
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    issues = _spectrum_issues(s, n, tol)
    # Rows of Q Z = S V^T: each row's sign is fixed on V^T's row.
    sign, unsure = _cube_signs(u.T @ z / s.clamp_min(1e-300).unsqueeze(1), tol)
    if bool(unsure.any()):
        issues.append("a basis vector's sign is undefined")
    q = sign.unsqueeze(1) * u.T
    return DenseElement(q), issues


def _general_linear(
    group: IntertwinerGroup, terms: list[KeyTerm], tol: float
) -> tuple[GroupElement, list[str]]:
    n = terms[0].rows.shape[0]
    fwd = [t.rows.double() for t in terms if exponents(t.kind, IDENTITY_PHI)[0] > 0]
    inv = [t.rows.double() for t in terms if exponents(t.kind, IDENTITY_PHI)[0] < 0]
    if not group.phi_kind.is_identity or not fwd or not inv:
        why = "a GL site needs key rows of both kinds A and A^-T (its invariant is X^T Y)"
        return group.identity(n), [why]
    x, y = torch.cat(fwd, 1), torch.cat(inv, 1)
    if x.shape[1] < n or y.shape[1] < n:
        return group.identity(n), ["the key has rank below the site's width"]
    # X^T Y = Qx Rx Ry^T Qy^T: the SVD of the small n x n core gives that of X^T Y.
    qx, rx = torch.linalg.qr(x.T)
    qy, ry = torch.linalg.qr(y.T)
    uc, s, _ = torch.linalg.svd(rx @ ry.T)
    issues = _spectrum_issues(s, n, tol)
    if issues:
        return group.identity(n), issues
    sign, unsure = _cube_signs((qx @ uc).T, tol)  # on the columns of U
    if bool(unsure.any()):
        issues.append("a basis vector's sign is undefined")
    # g X = S^1/2 U^T with X = Rx^T Qx^T: g = S^1/2 Uc^T Rx^-T.
    left = (s.sqrt() * sign).unsqueeze(1) * uc.T
    g = torch.linalg.solve_triangular(rx, left.T, upper=True).T
    return DenseElement(g), issues


def canonical_element(
    group: IntertwinerGroup, terms: list[KeyTerm], *, complete: bool = False, tol: float = 1e-9
) -> tuple[GroupElement, list[str]]:
    """``(g, issues)``: the element bringing ``terms`` to their orbit's canonical representative
    (module docstring); ``issues`` is empty when the key determines ``g``."""
    if not terms:
        raise ShapeError("canonical_element needs at least one key term")
    n = terms[0].rows.shape[0]
    if any(t.rows.dim() != 2 or t.rows.shape[0] != n for t in terms):
        raise ShapeError(f"key terms must all be (n, m) with n = {n}")
    fam = group.family
    if fam.monomial:
        return _monomial(group, terms, complete, tol)
    if isinstance(fam, Orthogonal):
        return _orthogonal(group, terms, tol)
    if isinstance(fam, GeneralLinear):
        return _general_linear(group, terms, tol)
    return group.identity(n), [f"no canonical form for the family {fam.name}"]  # pragma: no cover


def orbit_invariants(group: IntertwinerGroup, terms: list[KeyTerm], k: int) -> torch.Tensor | None:
    """``k`` numbers that are invariant under ``group`` acting on ``terms`` (None where this
    family has none here): bilinear projections ``r^T X^T Y r'`` of GL's invariant ``X^T Y``, or
    ``r^T Z^T Z r'`` for orthogonal sites; fixed pseudo-random ``r``."""
    fam = group.family
    if not group.phi_kind.is_identity or fam.monomial:
        return None
    if isinstance(fam, Orthogonal):
        x = y = torch.cat([t.rows.double() for t in terms], 1)
    else:
        fwd = [t.rows.double() for t in terms if exponents(t.kind, IDENTITY_PHI)[0] > 0]
        inv = [t.rows.double() for t in terms if exponents(t.kind, IDENTITY_PHI)[0] < 0]
        if not fwd or not inv:
            return None
        x, y = torch.cat(fwd, 1), torch.cat(inv, 1)
    rx = _directions(x.shape[1], k)
    ry = _directions(y.shape[1] + 1, k)[1:]  # a different set of directions for Y
    return ((x @ rx) * (y @ ry)).sum(0)
