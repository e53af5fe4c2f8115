"""The vocabulary of weight-space actions as types: how a site's element moves a tensor.

``Mode``: what moves a *hidden tensor* (its feature axis) when the site's element is ``A``:
``A`` itself (a pre-activation), its permutation part ``P`` only (conv rows before a BatchNorm that
absorbs the scale, the gate of a gated product) or ``phi(A)`` (an activation output).

``ActionKind``: what moves a *parameter axis*: the writer of a tensor in mode m moves its output
axis like the tensor (``ActionKind.writing(m)``), a reader moves its input axis by the inverse
transpose (``ActionKind.reading(m)``; ``P^-T = P``). ``FLIP`` is the one kind whose axis is not
the site's: a kernel axis (of its own length) reversed when the site's element is the order
reversal J of the reversal family, left alone when it is I (a convolution sliding along the
feature axis: ``conv_k(J a) = J conv_flip(k)(a)``).

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

    @staticmethod
    def writing(mode: str) -> ActionKind:
        """The kind on the output axis of a layer that writes a tensor moved in ``mode``."""
        return _WRITING[Mode(mode)]

    @staticmethod
    def reading(mode: str) -> ActionKind:
        """The kind on the input axis of a layer that reads a tensor moved in ``mode``."""
        return _READING[Mode(mode)]

    @property
    def inverse(self) -> bool:
        """Moved by the inverse transpose (an input axis)."""
        return self in (ActionKind.A_INV_T, ActionKind.PHI_INV_T)

    @property
    def on_site_axis(self) -> bool:
        """The axis moved is one of the site's width (row i moves with unit i): every kind but
        ``FLIP``, whose axis is a kernel's. Fitting and canonical keys read only these."""
        return self is not ActionKind.FLIP


_WRITING = {Mode.A: ActionKind.A, Mode.P: ActionKind.P, Mode.PHI: ActionKind.PHI}
_READING = {Mode.A: ActionKind.A_INV_T, Mode.P: ActionKind.P, Mode.PHI: ActionKind.PHI_INV_T}
