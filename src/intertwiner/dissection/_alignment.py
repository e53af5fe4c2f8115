"""Label-free basis alignment: per-unit kurtosis, Hoyer sparsity and near-zero mass of a layer's
activations, in the neuron basis, under a group element and under random rotations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from intertwiner._types import DataLike, DeviceLike
from intertwiner.data.concept_source import ConceptData, ConceptSource
from intertwiner.errors import NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.groups import for_activation
from intertwiner.groups._rotations import random_rotation

__all__ = ["alignment_stats", "basis_alignment"]


def alignment_stats(x: torch.Tensor, *, near_zero: float = 0.05) -> dict[str, float]:
    """Mean over units of statistics of ``x`` (samples, units), computed in float64.

    ``kurtosis``: excess kurtosis (Fisher, biased moments as scipy.stats.kurtosis); ``hoyer``:
    Hoyer sparsity ``(sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1)`` over samples (0 dense, 1 one-hot);
    ``near_zero``: fraction of values with ``|x| <= near_zero * rms(x)``. Constant units are
    skipped (``n_units_used`` says how many remained). All three are invariant to positive
    scaling and permutation of the units, i.e. to G_ReLU.
    """
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 2:
        raise ShapeError(f"alignment_stats needs (samples, units), got {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2:
        raise TooFewSamplesError("alignment_stats needs at least 2 samples")
    if not torch.isfinite(x).all():
        raise NonFiniteError("activations contain NaN/Inf")
    centred = x - x.mean(0)
    m2 = (centred**2).mean(0)
    used = m2 > 1e-12 * (x**2).mean(0).clamp_min(1e-300)
    if not used.any():
        return {"kurtosis": float("nan"), "hoyer": float("nan"), "near_zero": float("nan"),
                "n_units_used": 0}  # fmt: skip
    c, m2 = centred[:, used], m2[used]
    xu = x[:, used]
    kurt = (c**4).mean(0) / m2**2 - 3.0
    l1, l2 = xu.abs().sum(0), xu.norm(dim=0)
    hoyer = (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1)
    rms = l2 / math.sqrt(n)
    nz = (xu.abs() <= near_zero * rms).to(torch.float64).mean(0)
    return {
        "kurtosis": float(kurt.mean()),
        "hoyer": float(hoyer.mean()),
        "near_zero": float(nz.mean()),
        "n_units_used": int(used.sum()),
    }


def _positions(
    model: nn.Module,
    layer: str,
    data: ConceptData | DataLike,
    max_positions: int,
    generator: torch.Generator,
    batch_size: int,
    device: DeviceLike,
) -> torch.Tensor:
    """(positions, units) float64: activations at up to ``max_positions`` random (image, pixel)."""
    from intertwiner.features import capture

    if hasattr(data, "test") and hasattr(data, "train"):
        data = data.test
    if isinstance(data, ConceptSource):
        data = data.images
    if hasattr(data, "get_batch"):  # ArrayDataset: slice batches instead of collating items
        n_items = len(data)
        data = [data.get_batch(torch.arange(i, min(i + batch_size, n_items)))[0]
                for i in range(0, n_items, batch_size)]  # fmt: skip
    acts = capture(model, data, layer, device=device, batch_size=batch_size)[layer]
    if acts.ndim == 4:
        x = acts.transpose(0, 1).reshape(acts.shape[1], -1).T
    elif acts.ndim == 3:
        x = acts.reshape(-1, acts.shape[-1])
    else:
        x = acts
    if x.shape[0] > max_positions:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_positions]]
    return x.to(torch.float64)


def basis_alignment(
    model: nn.Module,
    layer: str,
    data: ConceptData | DataLike,
    *,
    n_rotations: int = 4,
    seed: int = 0,
    max_positions: int = 100_000,
    batch_size: int = 256,
    device: DeviceLike = None,
) -> list[dict[str, Any]]:
    """Label-free alignment rows for ``layer``: neuron basis, a G element, random rotations.

    Rows (flat dicts): ``basis`` in ``"neuron"``, ``"<group name>"`` (a random element of the
    layer's intertwiner group, found from the module at ``layer`` when it is an activation, else
    G_ReLU) and ``"orthogonal"`` (mean and std over ``n_rotations`` Haar rotations), each with
    ``kurtosis``, ``hoyer``, ``near_zero`` (see ``alignment_stats``).
    """
    g = torch.Generator().manual_seed(int(seed))
    x = _positions(model, layer, data, max_positions, g, batch_size, device)
    n = x.shape[1]
    module = dict(model.named_modules()).get(layer)
    try:
        group = for_activation(module)
    except Exception:  # noqa: BLE001 (not an activation module: fall back to G_ReLU)
        group = for_activation("relu")
    rows = [{"layer": layer, "basis": "neuron", **alignment_stats(x)}]
    el = group.sample(n, generator=g, dtype=torch.float64)
    rows.append({"layer": layer, "basis": group.name, **alignment_stats(el.apply(x, dim=1))})
    rot = [alignment_stats(x @ random_rotation(n, g).T) for _ in range(n_rotations)]
    if rot:
        row: dict[str, Any] = {"layer": layer, "basis": "orthogonal", "n_rotations": n_rotations}
        for key in ("kurtosis", "hoyer", "near_zero"):
            vals = np.array([r[key] for r in rot])
            row[key] = float(vals.mean())
            row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows
