"""intertwiner: symmetries of neural networks and their internal representations.

Subpackages: ``groups`` (intertwiner groups of activations), ``symmetry`` (weight-space symmetries of
models), ``metrics`` (representation metrics modulo groups), ``stitching``, ``dissection``,
``experiments`` and the ``intertwiner`` command line.
"""

from intertwiner._version import __version__

__all__ = ["__version__"]
