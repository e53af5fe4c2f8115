"""The dissection experiment: interpretable units of one layer under the neuron basis, a random
element of its intertwiner group, Haar rotations and fractional powers of one rotation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intertwiner._types import DeviceLike, JSONDict
from intertwiner.data.concept_source import ConceptData
from intertwiner.dissection import Basis, ConceptSource, dissect_bases
from intertwiner.groups import for_activation
from intertwiner.groups._rotations import random_rotation, random_rotation_powers

__all__ = ["dissection_experiment"]


def dissection_experiment(
    model: nn.Module,
    layer: str,
    data: ConceptData,
    *,
    n_orthogonal: int = 3,
    powers: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
    seed: int = 0,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 128,
    device: DeviceLike = None,
    progress: bool = True,
) -> JSONDict:
    """Dissect ``layer`` under identity, a random element of its group, orthogonal rotations and
    fractional powers of one rotation. Returns ``{"rows": [summary per basis], "powers": [...],
    "power_counts": [...], "results": {name: DissectionResult}}``.
    """
    g = torch.Generator().manual_seed(int(seed))
    module = dict(model.named_modules()).get(layer)
    try:
        group = for_activation(module)
    except Exception:  # noqa: BLE001 (not an activation module: use G_ReLU)
        group = for_activation("relu")
    n = _layer_width(model, layer, data, device)
    bases: dict[str, Basis] = {"identity": None}
    bases[group.name] = group.sample(n, generator=g, dtype=torch.float64)
    for i in range(n_orthogonal):
        bases[f"orthogonal{i}"] = random_rotation(n, g)
    rotated = random_rotation_powers(n, powers, g)
    for p, r in zip(powers, rotated, strict=True):
        bases[f"power{p:g}"] = r
    results = dissect_bases(
        model, layer, data, bases, quantile=quantile, iou_threshold=iou_threshold,
        batch_size=batch_size, device=device, progress=progress,
    )  # fmt: skip
    rows = []
    for name, res in results.items():
        kind = "power" if name.startswith("power") else name.rstrip("0123456789")
        row = {"kind": kind, **res.summary()}
        if name.startswith("power"):
            row["power"] = float(name[len("power") :])
        rows.append(row)
    return {
        "rows": rows,
        "group": group.name,
        "powers": [float(p) for p in powers],
        "power_counts": [results[f"power{p:g}"].n_interpretable for p in powers],
        "results": results,
    }


def _layer_width(model: nn.Module, layer: str, data: ConceptData, device: DeviceLike) -> int:
    source = ConceptSource.from_data(data)
    x, _ = next(source.batches(2))
    from intertwiner.features import Capturer

    with Capturer(model, layer, device=device) as cap:
        return int(cap.run(x)[layer].shape[1])
