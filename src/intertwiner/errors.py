"""Exceptions raised by intertwiner. Each says what went wrong and what to do about it.

They subclass the matching built-in exception (ValueError, KeyError, ...) so that callers who catch the
built-in keep working.
"""

from __future__ import annotations


class IntertwinerError(Exception):
    """Base class of every error raised on purpose by intertwiner."""


class UnknownActivationError(IntertwinerError, KeyError):
    """An activation that the intertwiner table does not know; use ``groups.discover``."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class NotElementwiseError(IntertwinerError, ValueError):
    """A function that is not elementwise, so it has no intertwiner group in the paper's sense."""


class SingularActivationError(IntertwinerError, ValueError):
    """sigma(I) is singular, so phi(A) = sigma(A) sigma(I)^-1 is undefined."""


class UnsupportedGroupError(IntertwinerError, ValueError):
    """A symmetry that none of the supported group families or phi kinds describes."""


class ShapeError(IntertwinerError, ValueError):
    """Inputs with shapes that do not fit together."""


class NonFiniteError(IntertwinerError, ValueError):
    """Inputs that contain NaN or Inf."""


class TooFewSamplesError(IntertwinerError, ValueError):
    """Fewer samples than an estimator needs."""


class DataNotFoundError(IntertwinerError, FileNotFoundError):
    """A dataset folder that is missing or not in the expected layout."""


class CheckpointError(IntertwinerError, ValueError):
    """A checkpoint that is missing, truncated, tampered with or does not match its metadata."""


class UnsupportedModuleError(IntertwinerError, NotImplementedError):
    """A module or pattern that the symmetry tracer cannot handle."""


class UnverifiedSymmetryError(UnsupportedModuleError):
    """A traced symmetry that changed the model's function when checked numerically."""


class InvalidInputError(IntertwinerError, TypeError):
    """An input of the wrong kind: not a tensor or array, complex, or not a callable."""


class InvalidOptionError(IntertwinerError, ValueError):
    """An option or size outside its valid range (a non-positive count, NaN learning rate, ...)."""


class InvalidElementError(IntertwinerError, ValueError):
    """A group element that is not one: a repeated permutation index, a zero or infinite scale."""


class ConfigMismatchError(CheckpointError):
    """An existing checkpoint made with other settings than the ones asked for (resume refused)."""


class UnknownSiteError(IntertwinerError, KeyError):
    """A site name that the SymmetrySpec does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class MemoryBudgetError(IntertwinerError, MemoryError):
    """Work whose estimated memory exceeds the limit it was given (checked before it starts)."""


class WorkerDiedError(IntertwinerError, RuntimeError):
    """A worker process that died in the middle of the work (killed, out of memory, crashed)."""
