"""Rotations: Haar-random elements of SO(n) and fractional powers of a rotation (a path from the
identity to it, through the real Schur form)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from intertwiner.errors import ShapeError
from intertwiner.groups._families import family

__all__ = ["random_rotation", "random_rotation_powers", "rotation_powers"]


def random_rotation(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-random rotation in SO(n), (n, n) float64 (orthogonal with determinant +1)."""
    q = family("orthogonal").sample(n, generator=generator, dtype=torch.float64).matrix().clone()
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]  # flipping one column keeps the Haar measure on the coset
    return q


def rotation_powers(rotation: torch.Tensor, powers: Sequence[float]) -> list[torch.Tensor]:
    """``R^p`` for each p, by the real Schur form ``R = Z T Z^T`` of a rotation ``R`` in SO(n).

    T is block diagonal with 2x2 rotation blocks (angle theta) and +-1 entries; ``R^p`` rotates
    each block by ``p * theta`` and pairs of -1 entries by ``p * pi`` (the principal branch), so
    ``R^0 = I``, ``R^1 = R`` and ``R^a R^b = R^(a+b)`` for a, b >= 0 with a + b <= 1.
    """
    from scipy.linalg import schur

    r = torch.as_tensor(rotation, dtype=torch.float64).numpy()
    n = r.shape[0]
    if r.shape != (n, n) or not np.allclose(r.T @ r, np.eye(n), atol=1e-8):
        raise ShapeError("rotation_powers needs an orthogonal (n, n) matrix")
    if np.linalg.det(r) < 0:
        raise ShapeError("rotation_powers needs det(R) = +1 (a rotation, not a reflection)")
    t, z = schur(r, output="real")
    blocks: list[tuple[int, int, float]] = []  # (i, j, angle): plane (e_i, e_j) rotated by angle
    minus: list[int] = []
    i = 0
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-12:
            blocks.append((i, i + 1, math.atan2(t[i + 1, i], t[i, i])))
            i += 2
        else:
            if t[i, i] < 0:
                minus.append(i)
            i += 1
    # det(R) = +1 means an even number of -1 eigenvalues: pair them as rotations by pi.
    blocks += [(a, b, math.pi) for a, b in zip(minus[0::2], minus[1::2], strict=True)]
    out = []
    for p in powers:
        tp = np.eye(n)
        for a, b, angle in blocks:
            c, s = math.cos(p * angle), math.sin(p * angle)
            tp[a, a], tp[a, b], tp[b, a], tp[b, b] = c, -s, s, c
        out.append(torch.from_numpy(z @ tp @ z.T))
    return out


def random_rotation_powers(
    n: int, powers: Sequence[float], generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Fractional powers of one Haar-random rotation: identity at 0, the full rotation at 1."""
    return rotation_powers(random_rotation(n, generator), powers)
