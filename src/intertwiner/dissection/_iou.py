"""NetDissect on one conv layer under named changes of basis: thresholds, IoU, results."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from intertwiner.data.concept_source import ConceptData, ConceptSource
from intertwiner.errors import InvalidOptionError, NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.groups import DenseElement, GroupElement

__all__ = ["Basis", "DissectionResult", "dissect", "dissect_bases"]

Basis = GroupElement | torch.Tensor | np.ndarray | None


def _as_element(basis: Basis, n: int) -> GroupElement | None:
    """``None`` (identity), a group element, or a dense (n, n) matrix -> float64 element."""
    if basis is None:
        return None
    if isinstance(basis, GroupElement):
        element = basis
    else:
        m = torch.as_tensor(np.asarray(basis) if isinstance(basis, np.ndarray) else basis)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ShapeError(f"a basis must be a square matrix, got shape {tuple(m.shape)}")
        element = DenseElement(m)
    if element.n != n:
        raise ShapeError(f"basis of size {element.n} for a layer with {n} units")
    return element.to(torch.float64)


def _apply(element: GroupElement | None, acts: torch.Tensor) -> torch.Tensor:
    return acts if element is None else element.apply(acts, dim=1)


@dataclass
class DissectionResult:
    """Per-unit IoU with every concept. ``iou`` (C, K) float64, ``thresholds`` (C,) float64."""

    layer: str
    concept_names: tuple[str, ...]
    iou: torch.Tensor
    thresholds: torch.Tensor
    quantile: float
    iou_threshold: float
    n_images: int
    concept_categories: tuple[str, ...] | None = None
    basis: str = "identity"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_concept(self) -> torch.Tensor:
        """(C,) index of each unit's best concept (the first one on ties)."""
        return self.iou.argmax(dim=1)

    @property
    def best_iou(self) -> torch.Tensor:
        """(C,) each unit's best IoU."""
        return self.iou.max(dim=1).values

    @property
    def interpretable(self) -> torch.Tensor:
        """(C,) bool: best IoU > ``iou_threshold``."""
        return self.best_iou > self.iou_threshold

    @property
    def n_units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def n_interpretable(self) -> int:
        return int(self.interpretable.sum())

    @property
    def detected_concepts(self) -> list[str]:
        """Distinct concepts that some interpretable unit detects, in concept order."""
        ks = sorted(set(self.best_concept[self.interpretable].tolist()))
        return [self.concept_names[k] for k in ks]

    @property
    def n_concepts(self) -> int:
        return len(self.detected_concepts)

    @property
    def units(self) -> list[dict[str, Any]]:
        """One record per unit: ``unit, concept, category, iou, threshold, interpretable``."""
        best, biou, ok = self.best_concept.tolist(), self.best_iou.tolist(), self.interpretable
        cats = self.concept_categories
        return [
            {
                "unit": u,
                "concept": self.concept_names[k],
                "category": cats[k] if cats else None,
                "iou": biou[u],
                "threshold": float(self.thresholds[u]),
                "interpretable": bool(ok[u]),
            }
            for u, k in enumerate(best)
        ]

    def summary(self) -> dict[str, Any]:
        """A flat JSON-safe row."""
        row = {
            "layer": self.layer,
            "basis": self.basis,
            "n_units": self.n_units,
            "n_interpretable": self.n_interpretable,
            "n_concepts": self.n_concepts,
            "mean_best_iou": float(self.best_iou.mean()),
            "concepts": ",".join(self.detected_concepts),
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "n_images": self.n_images,
        }
        if self.concept_categories:
            interp = self.interpretable
            for cat in dict.fromkeys(self.concept_categories):
                in_cat = torch.tensor([self.concept_categories[k] == cat for k in range(
                    len(self.concept_names))])[self.best_concept]  # fmt: skip
                row[f"n_{cat}_units"] = int((in_cat & interp).sum())
        row.update(self.extra)
        return row


def _check_finite(acts: torch.Tensor, layer: str) -> None:
    if not torch.isfinite(acts).all():
        raise NonFiniteError(f"activations of {layer!r} contain NaN/Inf; check the model and data")


def _layer_batches(
    model: nn.Module,
    layer: str,
    source: ConceptSource,
    batch_size: int,
    device: torch.device | str | None,
    progress: bool,
    desc: str,
    with_masks: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(activations (B, C, h, w) float64, masks (B, K, H, W) bool or None) per batch."""
    from intertwiner.features import Capturer

    with Capturer(model, layer, device=device) as cap:
        bar = tqdm(total=source.n, desc=desc, unit="img", disable=not progress, leave=False)
        try:
            for x, masks in source.batches(batch_size):
                acts = cap.run(x)[layer]
                if acts.ndim != 4:
                    raise ShapeError(
                        f"dissection needs a conv layer with (N, C, H, W) output; {layer!r} "
                        f"gives {tuple(acts.shape)}"
                    )
                acts = acts.to(torch.float64)
                _check_finite(acts, layer)
                bar.update(len(x))
                yield acts, (masks if with_masks else None)
        finally:
            bar.close()


def _thresholds(model, layer, source, bases, quantile, batch_size, device, progress):
    """Pass 1: each unit's threshold (its k-th largest value) in every basis, by merging each
    batch into a running exact top-k. Returns ``(elements by basis name, thresholds (C,))``."""
    elements: dict[str, GroupElement | None] = {}
    tops: dict[str, torch.Tensor] = {}
    k = 0
    for acts, _ in _layer_batches(
        model, layer, source, batch_size, device, progress, "dissect: thresholds", False
    ):
        c, hw = acts.shape[1], acts.shape[2] * acts.shape[3]
        if not elements:
            elements = {name: _as_element(b, c) for name, b in bases.items()}
            k = max(1, math.ceil(quantile * source.n * hw))
        for name, el in elements.items():
            vals = _apply(el, acts).transpose(0, 1).reshape(c, -1)
            if name in tops:
                vals = torch.cat([tops[name], vals], dim=1)
            tops[name] = vals.topk(min(k, vals.shape[1]), dim=1).values
    return elements, {name: top[:, -1].clone() for name, top in tops.items()}


def _intersections(model, layer, source, elements, thresholds, batch_size, device, progress):
    """Pass 2: binarise the upsampled maps and count, per basis, unit/mask intersections (C, K),
    active pixels per unit (C,) and mask pixels per concept (K,)."""
    inter: dict[str, torch.Tensor] = {}
    act_count: dict[str, torch.Tensor] = {}
    mask_count = None
    for acts, masks in _layer_batches(
        model, layer, source, batch_size, device, progress, "dissect: IoU", True
    ):
        c = acts.shape[1]
        kk, size = masks.shape[1], masks.shape[2:]
        flat_masks = masks.transpose(0, 1).reshape(kk, -1).to(torch.float32)
        counts = flat_masks.sum(1).to(torch.float64)
        mask_count = counts if mask_count is None else mask_count + counts
        for name, el in elements.items():
            a = _apply(el, acts)
            if tuple(a.shape[2:]) != tuple(size):
                a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=False)
            on = (a > thresholds[name].view(1, c, 1, 1)).transpose(0, 1).reshape(c, -1)
            # 0/1 products summed over at most B*H*W < 2^24 terms: exact in float32.
            hits = (on.to(torch.float32) @ flat_masks.T).to(torch.float64)
            active = on.sum(1).to(torch.float64)
            inter[name] = hits if name not in inter else inter[name] + hits
            act_count[name] = active if name not in act_count else act_count[name] + active
    return inter, act_count, mask_count


def dissect_bases(
    model: nn.Module,
    layer: str,
    data: ConceptData,
    bases: Mapping[str, Basis],
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
    concept_names: Sequence[str] | None = None,
) -> dict[str, DissectionResult]:
    """Dissect ``layer`` once per named basis, sharing two forward passes over ``data``.

    ``bases``: name -> ``None`` (the neuron basis), a ``GroupElement`` or a dense (C, C) matrix
    applied to the units at every pixel. See ``dissect`` for the procedure and ``data``.
    """
    if not 0 < quantile < 1:
        raise InvalidOptionError(f"quantile must be in (0, 1), got {quantile}")
    if not bases:
        raise InvalidOptionError("no bases given; pass e.g. {'identity': None}")
    source = ConceptSource.from_data(data, concept_names)
    if source.n < 1:
        raise TooFewSamplesError("dissection needs at least one image")
    elements, thresholds = _thresholds(model, layer, source, bases, quantile, batch_size,
                                       device, progress)  # fmt: skip
    inter, act_count, mask_count = _intersections(
        model, layer, source, elements, thresholds, batch_size, device, progress
    )
    results = {}
    for name in elements:
        union = act_count[name].view(-1, 1) + mask_count.view(1, -1) - inter[name]
        iou = torch.where(union > 0, inter[name] / union.clamp_min(1.0), torch.zeros_like(union))
        results[name] = DissectionResult(
            layer=layer,
            concept_names=source.concept_names,
            concept_categories=source.concept_categories,
            iou=iou,
            thresholds=thresholds[name],
            quantile=float(quantile),
            iou_threshold=float(iou_threshold),
            n_images=source.n,
            basis=name,
        )
    return results


def dissect(
    model: nn.Module,
    layer: str,
    data: ConceptData,
    *,
    basis: Basis = None,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
    concept_names: Sequence[str] | None = None,
) -> DissectionResult:
    """NetDissect on conv layer ``layer`` (a ``named_modules()`` name) of ``model``.

    ``data``: a ``ConceptDataset`` (e.g. ``intertwiner.data.load("concepts").test``), ``DataSplits``
    (its test split is used) or ``(images (N, C, H, W), masks (N, K, H', W'))``. ``basis``: ``None``
    (neuron basis), a group element or a dense (C, C) matrix applied to the units first. The model
    runs in eval mode under no_grad; its train/eval flags are restored.
    """
    return dissect_bases(
        model,
        layer,
        data,
        {"identity" if basis is None else "custom": basis},
        quantile=quantile,
        iou_threshold=iou_threshold,
        batch_size=batch_size,
        device=device,
        progress=progress,
        concept_names=concept_names,
    ).popitem()[1]
