"""intertwiner: symmetries of neural networks and their internal representations.

Subpackages: ``groups`` (intertwiner groups of activations), ``symmetry`` (weight-space symmetries of
models), ``metrics`` (representation metrics modulo groups), ``stitching``, ``dissection``,
``experiments`` and the ``intertwiner`` command line.
"""

from intertwiner import _allocator

# Before anything here allocates a tensor: torch reads the setting at its first allocation.
_allocator.request()

from intertwiner._version import __version__  # noqa: E402

__all__ = ["__version__"]
