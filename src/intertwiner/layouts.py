"""Feature layouts: which axis holds the neurons, and views as samples x neurons.

A captured feature tensor has one of three layouts (the neuron axis is the one a group element of the
layer acts on):

- ``"dense"``  (N, C): N samples, C neurons.
- ``"conv"``   (N, C, H, W): channels are the neurons, the same at every pixel.
- ``"tokens"`` (N, T, D): D is the neuron axis, the same at every token.

``to_matrix`` gives (positions, neurons) with one row per sample *position* (conv: N*H*W rows;
tokens: N*T rows), ``to_flat`` one row per input ((N, C*H*W)), ``to_sites`` (N, S, C) with S
positions per input. ``neuron_blocks`` walks the (positions, neurons) matrix in blocks of rows
without making a channels-last copy of the whole tensor (conv features are copied one small block
at a time, in cache), which is how the metrics reach their matrix-product floor on every layout.

Bottom of the layering: imports torch, numpy and ``intertwiner.errors`` only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from intertwiner.errors import ShapeError

__all__ = [
    "LAYOUTS",
    "block_samples",
    "copies",
    "infer",
    "n_positions",
    "neuron_blocks",
    "neuron_dim",
    "to_flat",
    "to_matrix",
    "to_sites",
    "width",
]

LAYOUTS = ("dense", "conv", "tokens")
_NDIM_TO_LAYOUT = {2: "dense", 3: "tokens", 4: "conv"}
_LAYOUT_TO_NDIM = {v: k for k, v in _NDIM_TO_LAYOUT.items()}
#: Bytes of one block of ``neuron_blocks`` (fits in a core's L2 cache with its partner).
BLOCK_BYTES = 1 << 19


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def infer(x: torch.Tensor, layout: str | None = None) -> str:
    """The layout of ``x``: ``layout`` checked against ``x.dim()``, or read from it (2, 3 or 4)."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise ShapeError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        want = _LAYOUT_TO_NDIM[layout]
        if x.dim() != want:
            raise ShapeError(
                f"layout {layout!r} needs a {want}-d tensor, got shape {tuple(x.shape)}"
            )
        return layout
    if x.dim() not in _NDIM_TO_LAYOUT:
        raise ShapeError(
            f"features must be (N, C), (N, T, D) or (N, C, H, W); got shape {tuple(x.shape)}. "
            "Flatten other layouts yourself, keeping the neuron axis."
        )
    return _NDIM_TO_LAYOUT[x.dim()]


def neuron_dim(x: torch.Tensor, layout: str | None = None) -> int:
    """The axis of ``x`` that holds the neurons (1 for dense and conv, 2 for tokens)."""
    return 2 if infer(x, layout) == "tokens" else 1


def width(x: torch.Tensor, layout: str | None = None) -> int:
    """The number of neurons C of ``x``."""
    return int(x.shape[neuron_dim(x, layout)])


def n_positions(x: torch.Tensor, layout: str | None = None) -> int:
    """Positions per input S: 1 dense, H*W conv, T tokens."""
    lay = infer(x, layout)
    if lay == "dense":
        return 1
    return int(x.shape[1]) if lay == "tokens" else int(x.shape[2] * x.shape[3])


def to_matrix(x: torch.Tensor | np.ndarray, layout: str | None = None) -> torch.Tensor:
    """(samples, neurons): dense (N, C) as is; conv (N*H*W, C) (a copy); tokens (N*T, D). Dtype kept."""
    t = _tensor(x)
    lay = infer(t, layout)
    if lay == "dense":
        return t
    if lay == "conv":
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[2])


def to_flat(x: torch.Tensor | np.ndarray, layout: str | None = None) -> torch.Tensor:
    """(N, everything else): one row per input (a view when ``x`` is contiguous)."""
    t = _tensor(x)
    infer(t, layout)
    return t.reshape(t.shape[0], -1)


def to_sites(x: torch.Tensor | np.ndarray, layout: str | None = None) -> torch.Tensor:
    """(N, S, C) view: per input, S positions (pixels or tokens; 1 for dense) times C neurons."""
    t = _tensor(x)
    lay = infer(t, layout)
    if lay == "dense":
        return t.unsqueeze(1)
    if lay == "conv":
        return t.flatten(2).transpose(1, 2)
    return t


def block_samples(
    x: torch.Tensor, layout: str | None = None, block_bytes: int = BLOCK_BYTES
) -> int:
    """Inputs per block of ``neuron_blocks``: about ``block_bytes`` of float64 rows, at least 1."""
    per_input = width(x, layout) * n_positions(x, layout) * 8
    return max(1, block_bytes // per_input)


def copies(x: torch.Tensor, layout: str | None = None, dtype: torch.dtype | None = None) -> bool:
    """Whether ``neuron_blocks(x, layout, dtype=dtype)`` copies (conv, or a dtype change)."""
    return infer(x, layout) == "conv" or (dtype is not None and x.dtype != dtype)


def neuron_blocks(
    x: torch.Tensor,
    layout: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    samples: int | None = None,
) -> Iterator[torch.Tensor]:
    """Neuron-major blocks (C, rows) of the (positions, neurons) matrix, in the order of rows.

    ``samples`` inputs per block (default ``block_samples``). Dense and token features of the
    requested ``dtype`` give transposed views (no copy); conv features, or a dtype change, give
    one small copy per block, into a buffer reused from block to block: consume each block before
    asking for the next.
    """
    lay = infer(x, layout)
    dtype = dtype or x.dtype
    n = x.shape[0]
    step = samples or block_samples(x, lay)
    if not copies(x, lay, dtype):
        m = to_matrix(x, lay)
        s = n_positions(x, lay)
        for i in range(0, n, step):
            yield m[i * s : (i + step) * s].T
        return
    ncs = x.flatten(2) if lay == "conv" else x.transpose(1, 2) if lay == "tokens" else x[:, :, None]
    c, s = ncs.shape[1], ncs.shape[2]
    buf = torch.empty(c, min(step, n), s, dtype=dtype, device=x.device)
    for i in range(0, n, step):
        blk = ncs[i : i + step]
        out = buf[:, : blk.shape[0]]
        out.copy_(blk.transpose(0, 1))
        yield out.reshape(c, -1)
