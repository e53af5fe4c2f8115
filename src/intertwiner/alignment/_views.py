"""Row views: the slices of a parameter (or an activation) that one site's element moves together.

An element acting on axis ``axis`` of a tensor viewed as ``(outer, n_total, inner)`` (see
``intertwiner.symmetry.spec``) maps logical channel ``j`` (everything of the tensor at that
channel, every other axis included) to channel ``i``; so the tensor is, for the element, a matrix
with one row per channel of the site: ``(width, everything else)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intertwiner.symmetry import ParamAxis


def rows(
    t: torch.Tensor,
    axis: int,
    outer: int,
    n_total: int,
    inner: int,
    channels: Sequence[int] | None,
) -> torch.Tensor:
    """``(len(channels) or n_total, -1)``: one row per logical channel of ``t`` along ``axis``."""
    shape = list(t.shape)
    v = t.reshape(*shape[:axis], outer, n_total, inner, *shape[axis + 1 :])
    v = v.movedim(axis + 1, 0)
    if channels is not None:
        v = v.index_select(0, torch.as_tensor(list(channels), dtype=torch.long, device=t.device))
    return v.reshape(v.shape[0], -1)


def axis_rows(t: torch.Tensor, a: ParamAxis, channels: Sequence[int] | None = None) -> torch.Tensor:
    """Rows of parameter ``t`` for action ``a`` (``channels`` overrides ``a.channels``)."""
    ch = a.channels if channels is None else channels
    if a.within is not None:  # a grouped convolution's group: only its rows
        t = t.narrow(*a.within)
    return rows(t, a.axis, a.outer, a.n_total, a.inner, ch)


def feature_rows(h: torch.Tensor, ax) -> torch.Tensor:
    """``(samples, width)`` features of activation output ``h`` on an ``ActivationAxis``: the
    site's channels last, every other position (batch, space, tokens, outer blocks) a sample."""
    dim = h.dim() + ax.dim if ax.dim < 0 else ax.dim
    r = rows(h, dim, ax.outer, ax.n_total, ax.inner, ax.channels)  # (width, samples)
    return r.T


def tensor_of(model: nn.Module, a: ParamAxis) -> torch.Tensor:
    return model.get_buffer(a.name) if a.buffer else model.get_parameter(a.name)
