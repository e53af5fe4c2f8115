"""Group elements: invertible n x n matrices, stored structurally where the family allows.

Convention: an element A acts on a vector x in R^n as x -> A x. ``apply(x, dim)`` applies A along
one dimension of a tensor, i.e. ``x.movedim(dim, -1) @ A.T`` moved back, without building A when A is
monomial.

A monomial element is ``A = diag(scale) @ P`` with ``P[i, perm[i]] = 1``, so ``(A x)_i =
scale[i] * x[perm[i]]``: gather then scale, O(size of x).
"""

from __future__ import annotations

import torch

from intertwiner import _validate
from intertwiner.errors import InvalidElementError, ShapeError


class GroupElement:
    """Abstract invertible n x n matrix."""

    n: int

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (n, n) matrix."""
        raise NotImplementedError

    def inverse(self) -> GroupElement:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Apply A along ``dim`` of ``x`` (``x.shape[dim] == n``)."""
        raise NotImplementedError

    def transpose(self) -> GroupElement:
        raise NotImplementedError

    def to(self, *args, **kwargs) -> GroupElement:
        raise NotImplementedError

    def __matmul__(self, other: GroupElement) -> GroupElement:
        if not isinstance(other, GroupElement):
            return NotImplemented
        _check_same_n(self, other)
        return DenseElement(self.matrix() @ other.matrix().to(self.matrix().dtype))

    def _check_dim(self, x: torch.Tensor, dim: int) -> int:
        if x.dim() == 0:
            raise ShapeError("cannot apply a group element to a 0-d tensor")
        dim = dim % x.dim()
        if x.shape[dim] != self.n:
            raise ShapeError(
                f"group element of size {self.n} cannot act on dimension {dim} of a tensor of "
                f"shape {tuple(x.shape)}: that dimension has size {x.shape[dim]}"
            )
        return dim


def _check_same_n(a: GroupElement, b: GroupElement) -> None:
    if a.n != b.n:
        raise ShapeError(f"cannot compose elements of sizes {a.n} and {b.n}")


class DenseElement(GroupElement):
    """An element stored as a dense invertible matrix (GL, orthogonal)."""

    def __init__(self, matrix: torch.Tensor):
        try:
            matrix = _validate.square_matrix(matrix, "a group element's matrix")
        except ShapeError:
            raise ShapeError(
                f"a group element needs a square matrix, got {tuple(matrix.shape)}"
            ) from None
        self._matrix = matrix
        self.n = int(matrix.shape[0])

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._matrix if dtype is None else self._matrix.to(dtype)

    def inverse(self) -> DenseElement:
        return DenseElement(torch.linalg.inv(self._matrix))

    def transpose(self) -> DenseElement:
        return DenseElement(self._matrix.T.contiguous())

    def to(self, *args, **kwargs) -> DenseElement:
        return DenseElement(self._matrix.to(*args, **kwargs))

    def apply(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        dim = self._check_dim(x, dim)
        m = self._matrix.to(dtype=x.dtype, device=x.device)
        return (x.movedim(dim, -1) @ m.T).movedim(-1, dim)

    def __repr__(self) -> str:
        return f"DenseElement(n={self.n}, dtype={self._matrix.dtype})"


class MonomialElement(GroupElement):
    """``A = diag(scale) @ P`` with ``P[i, perm[i]] = 1``: ``(A x)_i = scale[i] * x[perm[i]]``.

    Checked on construction, so that no singular or non-finite element ever reaches ``contains``
    or ``apply``: ``perm`` must hold each of 0..n-1 once, ``scale`` must be finite and nonzero.
    """

    def __init__(self, perm: torch.Tensor, scale: torch.Tensor):
        perm_t = torch.as_tensor(perm) if isinstance(perm, (list, tuple)) else perm
        scale_t = torch.as_tensor(scale) if isinstance(scale, (list, tuple)) else scale
        if (
            not isinstance(perm_t, torch.Tensor)
            or not isinstance(scale_t, torch.Tensor)
            or perm_t.dim() != 1
            or scale_t.dim() != 1
            or perm_t.shape != scale_t.shape
        ):
            raise ShapeError(
                f"perm and scale must be 1-d tensors of equal length, got "
                f"{tuple(getattr(perm_t, 'shape', ()))} and {tuple(getattr(scale_t, 'shape', ()))}"
            )
        try:
            self.perm = _validate.permutation(perm_t, "perm")
            self.scale = _validate.scales(scale_t, "scale")
        except InvalidElementError as e:
            raise InvalidElementError(f"not a valid MonomialElement: {e}") from None
        self.n = int(perm.shape[0])

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.scale.dtype
        m = torch.zeros(self.n, self.n, dtype=dtype, device=self.scale.device)
        m[torch.arange(self.n, device=self.scale.device), self.perm.to(self.scale.device)] = (
            self.scale.to(dtype)
        )
        return m

    def inverse(self) -> MonomialElement:
        inv = torch.argsort(self.perm)
        return MonomialElement(inv, 1.0 / self.scale[inv])

    def transpose(self) -> MonomialElement:
        # (D P)^T = P^T D = P^-1 D: (A^T x)_j = scale[inv[j]] * x[inv[j]]
        inv = torch.argsort(self.perm)
        return MonomialElement(inv, self.scale[inv])

    def to(self, *args, **kwargs) -> MonomialElement:
        scale = self.scale.to(*args, **kwargs)
        return MonomialElement(self.perm.to(scale.device), scale)

    def apply(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        dim = self._check_dim(x, dim)
        out = x.index_select(dim, self.perm.to(x.device))
        shape = [1] * x.dim()
        shape[dim] = self.n
        # In place on the fresh gather: one pass less over memory than `out * scale`.
        return out.mul_(self.scale.to(dtype=x.dtype, device=x.device).view(shape))

    def __matmul__(self, other: GroupElement) -> GroupElement:
        if isinstance(other, MonomialElement):
            _check_same_n(self, other)
            # (A B x)_i = a_i (B x)_{p_i} = a_i b_{p_i} x_{q_{p_i}}
            return MonomialElement(other.perm[self.perm], self.scale * other.scale[self.perm])
        return super().__matmul__(other)

    def __repr__(self) -> str:
        return f"MonomialElement(n={self.n}, dtype={self.scale.dtype})"
