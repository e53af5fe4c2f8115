"""The identity component of each family as the image of ``exp``: what continuous moves along a
group orbit (teleportation) are parameterised by.

``lie_shape(family, n)`` is the shape of a tangent vector ``xi`` at the identity (None for the
discrete families: permutations, signed permutations); ``exp_element(family, xi)`` the element
``exp(xi)``: ``diag(exp(xi))`` for the monomial families with continuous scales (the permutation
stays the identity, signs stay +), ``matrix_exp(xi - xi^T)`` for orthogonal and
``matrix_exp(xi)`` for GL (invertible for every ``xi``); ``c P`` has one number, ``exp(xi) 1``. ``exp_tensor`` is the same as a plain
tensor that keeps ``xi``'s autograd graph (elements store detached tensors): the scale vector for
monomial families, the matrix otherwise.
"""

from __future__ import annotations

import torch

from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement
from intertwiner.groups._families import Family, GeneralLinear, Orthogonal, family

__all__ = ["exp_element", "exp_tensor", "lie_shape"]


def lie_shape(fam: Family | str, n: int) -> tuple[int, ...] | None:
    """Shape of a tangent vector of the size-``n`` group at the identity (None: discrete)."""
    fam = family(fam)
    if fam.monomial:  # c P: one log-factor shared by every unit
        return (1,) if fam.common_scale else (n,) if fam.free_scales else None
    if isinstance(fam, (Orthogonal, GeneralLinear)):
        return (n, n)
    return None  # pragma: no cover


def exp_tensor(fam: Family | str, xi: torch.Tensor) -> torch.Tensor:
    """``exp(xi)`` as a differentiable tensor: scales (n,) for monomial families, else (n, n)."""
    fam = family(fam)
    if fam.monomial and (fam.free_scales or fam.common_scale):
        return torch.exp(xi)
    if isinstance(fam, Orthogonal):
        return torch.linalg.matrix_exp(xi - xi.T)
    if isinstance(fam, GeneralLinear):
        return torch.linalg.matrix_exp(xi)
    raise UnsupportedGroupError(f"the family {fam.name} is discrete: it has no exp")


def exp_element(fam: Family | str, xi: torch.Tensor, n: int | None = None) -> GroupElement:
    """``exp(xi)`` as a group element (see the module docstring); ``n``: the group size, needed
    for ``c P`` (its tangent vector is one number)."""
    fam = family(fam)
    e = exp_tensor(fam, xi.detach())
    if fam.common_scale:
        if n is None:
            raise UnsupportedGroupError(f"exp_element for {fam.name} needs the group size n")
        return MonomialElement(torch.arange(n, device=xi.device), e.expand(n).clone())
    if fam.monomial:
        return MonomialElement(torch.arange(xi.shape[0], device=xi.device), e)
    return DenseElement(e)
