"""Network dissection: unit/concept IoU and interpretable-unit counts under changes of basis.

As NetDissect (Bau et al. 2017) does it, for every unit u of a conv layer (layout (N, C, h, w)):

1. the threshold ``T_u`` is the k-th largest activation of u over all images and positions, with
   ``k = ceil(quantile * N * h * w)``, so a fraction ``quantile`` of the values reach it;
2. each activation map is upsampled bilinearly (``align_corners=False``) to the mask resolution and
   binarised with ``> T_u``;
3. ``IoU(u, c) = sum_images |A_u & M_c| / sum_images |A_u | M_c|`` for every concept mask c;
4. the unit's concept is its best IoU; it is *interpretable* when that IoU exceeds ``iou_threshold``.

A change of basis ``B`` (a group element or a dense (C, C) matrix) replaces the units by ``B a`` at
every pixel before step 1. Everything after the forward pass runs in float64: a positive scaling
then moves the threshold with the unit, so the result under any G_ReLU element is the same
dissection with units relabelled (tested exactly). Two streaming passes over the data (thresholds,
then counts) keep memory independent of the number of images, and many bases share the passes.

Label-free basis alignment (``alignment_stats``, ``basis_alignment``): excess kurtosis, Hoyer
sparsity and the fraction of near-zero values of each unit, in the neuron basis and in rotated ones.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from intertwiner.errors import NonFiniteError, ShapeError, TooFewSamplesError
from intertwiner.groups import DenseElement, GroupElement, family, for_activation

__all__ = [
    "ConceptSource",
    "DissectionResult",
    "alignment_stats",
    "basis_alignment",
    "dissect",
    "dissect_bases",
    "dissection_experiment",
    "plot_rotation_curve",
    "random_rotation",
    "random_rotation_powers",
    "rotation_powers",
]


# ------------------------------------------------------------------------------------------------
# Data: images with concept masks.


@dataclass
class ConceptSource:
    """Images ``(N, C, H, W)`` (model inputs) with concept masks ``(N, K, H', W')`` bool.

    Built by ``ConceptSource.from_data`` from a ``ConceptDataset`` (``intertwiner.data.load(
    "concepts")``), from ``DataSplits`` (its test split) or from a tuple ``(images, masks)``.
    """

    images: Any  # an object with get_batch(indices) -> (x, y), or an (N, C, H, W) tensor
    masks_fn: Any  # indices -> (B, K, H', W') bool
    n: int
    concept_names: tuple[str, ...]
    concept_categories: tuple[str, ...] | None = None

    @classmethod
    def from_data(cls, data: Any, concept_names: Sequence[str] | None = None) -> ConceptSource:
        from intertwiner.data.splits import DataSplits

        if isinstance(data, ConceptSource):
            return data
        if isinstance(data, DataSplits):
            data = data.test
        if hasattr(data, "masks") and hasattr(data, "get_batch"):
            base = data.subset(torch.arange(len(data)), augment=False) if data.augment else data
            return cls(
                images=base,
                masks_fn=base.masks,
                n=len(base),
                concept_names=tuple(concept_names or base.concept_names),
                concept_categories=tuple(getattr(base, "concept_categories", ())) or None,
            )
        if isinstance(data, tuple | list) and len(data) == 2:
            images, masks = (torch.as_tensor(t) for t in data)
            if images.ndim != 4 or masks.ndim != 4 or len(images) != len(masks):
                raise ShapeError(
                    f"expected images (N, C, H, W) and masks (N, K, H, W), got "
                    f"{tuple(images.shape)} and {tuple(masks.shape)}"
                )
            names = tuple(concept_names or (f"concept{k}" for k in range(masks.shape[1])))
            if len(names) != masks.shape[1]:
                raise ShapeError(f"{len(names)} concept names for {masks.shape[1]} masks")
            return cls(images=images, masks_fn=lambda i: masks[i].bool(), n=len(images),
                       concept_names=names)  # fmt: skip
        raise TypeError(
            f"cannot dissect with data of type {type(data).__name__}: pass a ConceptDataset "
            "(intertwiner.data.load('concepts').test), DataSplits, or a tuple (images, masks)"
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x (B, C, H, W) float32, masks (B, K, H', W') bool)`` in order."""
        for start in range(0, self.n, batch_size):
            idx = torch.arange(start, min(start + batch_size, self.n))
            if isinstance(self.images, torch.Tensor):
                x = self.images[idx].float()
            else:
                x = self.images.get_batch(idx)[0]
            yield x, self.masks_fn(idx)


# ------------------------------------------------------------------------------------------------
# Bases.

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


def random_rotation(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-random rotation in SO(n), (n, n) float64 (orthogonal with determinant +1)."""
    q = family("orthogonal").sample(n, generator=generator, dtype=torch.float64).matrix().clone()
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]  # flipping one column keeps the Haar measure on the coset
    return q


def rotation_powers(rotation: torch.Tensor, powers: Sequence[float]) -> list[torch.Tensor]:
    """``R^p`` for each p, by the real Schur form ``R = Z T Z^T`` of a rotation ``R`` in SO(n).

    T is block diagonal with 2x2 rotation blocks (angle theta) and +-1 entries; ``R^p`` rotates
    each block by ``p * theta`` and pairs of -1 entries by ``p * pi`` (the principal branch), so
    ``R^0 = I``, ``R^1 = R`` and ``R^a R^b = R^(a+b)`` for a, b >= 0 with a + b <= 1.
    """
    from scipy.linalg import schur

    r = torch.as_tensor(rotation, dtype=torch.float64).numpy()
    n = r.shape[0]
    if r.shape != (n, n) or not np.allclose(r.T @ r, np.eye(n), atol=1e-8):
        raise ShapeError("rotation_powers needs an orthogonal (n, n) matrix")
    if np.linalg.det(r) < 0:
        raise ShapeError("rotation_powers needs det(R) = +1 (a rotation, not a reflection)")
    t, z = schur(r, output="real")
    blocks: list[tuple[int, int, float]] = []  # (i, j, angle): plane (e_i, e_j) rotated by angle
    minus: list[int] = []
    i = 0
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-12:
            blocks.append((i, i + 1, math.atan2(t[i + 1, i], t[i, i])))
            i += 2
        else:
            if t[i, i] < 0:
                minus.append(i)
            i += 1
    # det(R) = +1 means an even number of -1 eigenvalues: pair them as rotations by pi.
    blocks += [(a, b, math.pi) for a, b in zip(minus[0::2], minus[1::2], strict=True)]
    out = []
    for p in powers:
        tp = np.eye(n)
        for a, b, angle in blocks:
            c, s = math.cos(p * angle), math.sin(p * angle)
            tp[a, a], tp[a, b], tp[b, a], tp[b, b] = c, -s, s, c
        out.append(torch.from_numpy(z @ tp @ z.T))
    return out


def random_rotation_powers(
    n: int, powers: Sequence[float], generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Fractional powers of one Haar-random rotation: identity at 0, the full rotation at 1."""
    return rotation_powers(random_rotation(n, generator), powers)


# ------------------------------------------------------------------------------------------------
# Dissection.


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


def dissect_bases(
    model: nn.Module,
    layer: str,
    data: Any,
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
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not bases:
        raise ValueError("no bases given; pass e.g. {'identity': None}")
    source = ConceptSource.from_data(data, concept_names)
    if source.n < 1:
        raise TooFewSamplesError("dissection needs at least one image")
    elements: dict[str, GroupElement | None] = {}
    tops: dict[str, torch.Tensor] = {}
    k = 0
    # Pass 1: exact per-unit top-k by merging each batch into a running top-k.
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
    thresholds = {name: top[:, -1].clone() for name, top in tops.items()}
    del tops
    # Pass 2: binarise upsampled maps and count intersections with every concept mask.
    inter: dict[str, torch.Tensor] = {}
    act_count: dict[str, torch.Tensor] = {}
    mask_count = None
    for acts, masks in _layer_batches(
        model, layer, source, batch_size, device, progress, "dissect: IoU", True
    ):
        assert masks is not None
        b, c = acts.shape[:2]
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
    assert mask_count is not None
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
    data: Any,
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


# ------------------------------------------------------------------------------------------------
# Label-free basis alignment.


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
    data: Any,
    max_positions: int,
    generator: torch.Generator,
    batch_size: int,
    device: Any,
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
    data: Any,
    *,
    n_rotations: int = 4,
    seed: int = 0,
    max_positions: int = 100_000,
    batch_size: int = 256,
    device: Any = None,
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


# ------------------------------------------------------------------------------------------------
# The experiment: identity vs G vs orthogonal vs rotation powers, and its figure.


def dissection_experiment(
    model: nn.Module,
    layer: str,
    data: Any,
    *,
    n_orthogonal: int = 3,
    powers: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
    seed: int = 0,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 128,
    device: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
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


def _layer_width(model: nn.Module, layer: str, data: Any, device: Any) -> int:
    source = ConceptSource.from_data(data)
    x, _ = next(source.batches(2))
    from intertwiner.features import Capturer

    with Capturer(model, layer, device=device) as cap:
        return int(cap.run(x)[layer].shape[1])


def _atomic_savefig(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_rotation_curve(
    experiment: Mapping[str, Any], path: str | Path, *, title: str | None = None
) -> Path:
    """Interpretable units vs rotation power (PNG at ``path``), with the identity, group and
    orthogonal counts as reference lines. ``experiment`` is ``dissection_experiment``'s output.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = experiment["rows"]
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r["n_interpretable"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(experiment["powers"], experiment["power_counts"], "o-", label="rotation power p")
    styles = {"identity": ("k", "--"), "orthogonal": ("tab:red", ":")}
    for kind, counts in by_kind.items():
        if kind == "power":
            continue
        colour, ls = styles.get(kind, ("tab:green", "-."))
        ax.axhline(
            float(np.mean(counts)), color=colour, ls=ls, label=f"{kind} ({np.mean(counts):g})"
        )
    ax.set_xlabel("rotation power p (0 = neuron basis, 1 = full random rotation)")
    ax.set_ylabel("interpretable units")
    n_units = rows[0]["n_units"]
    ax.set_ylim(0, n_units * 1.05)
    ax.set_title(title or f"dissection of {rows[0]['layer']} ({n_units} units)")
    ax.legend(fontsize=8)
    try:
        return _atomic_savefig(fig, path)
    finally:
        plt.close(fig)
