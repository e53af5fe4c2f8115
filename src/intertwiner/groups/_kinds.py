"""The vocabulary of weight-space actions as types: how a site's element moves a tensor.

``Mode``: what moves a *hidden tensor* (its feature axis) when the site's element is ``A``:
``A`` itself (a pre-activation), its permutation part ``P`` only (conv rows before a BatchNorm that
absorbs the scale, the gate of a gated product) or ``phi(A)`` (an activation output).

``ActionKind``: what moves a *parameter axis*: the writer of a tensor in mode m moves its output
axis like the tensor (``ActionKind.writing(m)``), a reader moves its input axis by the inverse
transpose (``ActionKind.reading(m)``; ``P^-T = P``). ``FLIP`` is the one kind whose axis is not
the site's: a kernel axis (of its own length) reversed when the site's element is the order
reversal J of the reversal family, left alone when it is I (a convolution sliding along the
feature axis: ``conv_k(J a) = J conv_flip(k)(a)``). The same reversal of another axis moves the
input of a grouped convolution under ECA: that axis viewed as ``(outer, G, C / G * inner)`` has
its G blocks reversed, their insides kept (``symmetry/_block_reversal.py``).

Three kinds move a *one-number parameter* (a tensor with one entry) by the common factor ``c``
of a ``c P`` element (``ScaledPermutation``) instead of along an axis: ``"c(A)"`` (``t <- c t``:
a number added to a tensor moved by ``A``), ``"c(phi(A))"`` (``t <- c^k t`` for phi = x^k: a
number added to an activation output) and ``"c(A)/c(phi(A))"`` (``t <- c^(1-k) t``: a number
multiplying an activation output, whose product is then moved by ``A``). A permutation has
``c = 1``: it leaves them unchanged.

Both are ``StrEnum`` s: a member equals its string (``ActionKind.A_INV_T == "A^-T"``), so specs
written as JSON and older code that compares strings read the same values.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    A = "A"
    P = "P"
    PHI = "phi"


class ActionKind(StrEnum):
    A = "A"
    P = "P"
    PHI = "phi(A)"
    A_INV_T = "A^-T"
    PHI_INV_T = "phi(A)^-T"
    FLIP = "flip"
    # one-number parameters moved by the common factor of a c P element
    SCALAR_A = "c(A)"
    SCALAR_PHI = "c(phi(A))"
    SCALAR_A_OVER_PHI = "c(A)/c(phi(A))"

    @staticmethod
    def writing(mode: str) -> ActionKind:
        """The kind on the output axis of a layer that writes a tensor moved in ``mode``."""
        return _WRITING[Mode(mode)]

    @staticmethod
    def reading(mode: str) -> ActionKind:
        """The kind on the input axis of a layer that reads a tensor moved in ``mode``."""
        return _READING[Mode(mode)]

    @staticmethod
    def scalar_added(mode: str) -> ActionKind | None:
        """The kind on a one-number parameter added to a tensor moved in ``mode`` (None for
        ``"P"``: the permutation part leaves the number unchanged)."""
        return _SCALAR_ADDED[Mode(mode)]

    @property
    def scalar(self) -> bool:
        """Moves a one-number parameter by a power of the element's common factor c."""
        return self in _SCALAR

    @property
    def inverse(self) -> bool:
        """Moved by the inverse transpose (an input axis)."""
        return self in (ActionKind.A_INV_T, ActionKind.PHI_INV_T)

    @property
    def on_site_axis(self) -> bool:
        """The axis moved is one of the site's width (row i moves with unit i): every kind but
        ``FLIP``, whose axis is a kernel's, and the scalar kinds, which move one number by the
        common factor. Fitting and canonical keys read only these."""
        return self is not ActionKind.FLIP and not self.scalar


_WRITING = {Mode.A: ActionKind.A, Mode.P: ActionKind.P, Mode.PHI: ActionKind.PHI}
_READING = {Mode.A: ActionKind.A_INV_T, Mode.P: ActionKind.P, Mode.PHI: ActionKind.PHI_INV_T}
_SCALAR_ADDED = {Mode.A: ActionKind.SCALAR_A, Mode.P: None, Mode.PHI: ActionKind.SCALAR_PHI}
_SCALAR = frozenset((ActionKind.SCALAR_A, ActionKind.SCALAR_PHI, ActionKind.SCALAR_A_OVER_PHI))
