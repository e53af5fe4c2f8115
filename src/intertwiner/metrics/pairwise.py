"""Many models at once: K x K matrices of one metric, each model's preprocessing done once.

``pairwise(features_or_models, metric)`` compares K models (or K sets of features) pairwise, for one
layer or for every pair of several layers. Like netrep's ``pairwise_distances``, the work that
depends on one network only is done once per network, not once per pair:

- CKA-type metrics (``cka``, ``cka_debiased``, ``rbf_cka``, ``group_cka``): each model's N x N kernel
  (for linear CKA on narrow layers, its p x p covariance instead) is computed once, and centred or
  zero-diagonalled once with its own HSIC (``KernelTerms``); a pair then costs one inner product of
  N x N kernels (linear CKA in feature space: one cross product). For G_ReLU-CKA this turns K^2
  kernel computations into K.
- Procrustes metrics: each model's features are validated and converted to float64 once; a pair
  costs its X'Y product and the group step (SVD or assignment).

What is kept per model and how a pair is computed is the metric's registered ``Measure``
(``prepare`` and ``pair``; see ``_metric``), so a new metric needs no change here. Values equal
the K^2 one-shot calls up to round-off. Memory: the kept kernels, K N^2 float64 per
layer, are checked against ``memory_limit`` before any work (``MemoryBudgetError``).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from intertwiner import _validate
from intertwiner._types import DataLike, DeviceLike, FeatureLike
from intertwiner.errors import (
    IntertwinerError,
    InvalidInputError,
    InvalidOptionError,
    MemoryBudgetError,
    ShapeError,
    WorkerDiedError,
)
from intertwiner.metrics._metric import Prepared
from intertwiner.metrics._plots import annotated_heatmap, save_png
from intertwiner.metrics.cka import KernelTerms, LinearCKAStats
from intertwiner.metrics.compare import parse_bytes
from intertwiner.metrics.registry import Metric
from intertwiner.metrics.registry import metric as make_metric
from intertwiner.runners.base import exit_with_parent

DEFAULT_MEMORY_LIMIT = 4 * 10**9
#: One model's features: one layer's tensor, or ``{layer: tensor}``.
FeatureSet = FeatureLike | Mapping[str, FeatureLike]
#: What ``pairwise`` compares: feature sets or models, as a sequence or a ``{name: ...}`` mapping.
ModelsOrFeatures = (
    Sequence[FeatureSet | torch.nn.Module] | Mapping[str, FeatureSet | torch.nn.Module]
)


@dataclass
class Pairwise:
    """``matrices[(layer_a, layer_b)][i, j]``: the metric of model i at layer_a vs model j at
    layer_b. ``matrix()`` gives the single matrix of a one-layer call."""

    names: list[str]
    layers: list[str]
    metric: str
    matrices: dict[tuple[str, str], np.ndarray]
    higher_is_similar: bool = True
    value_range: tuple[float, float] = (0.0, 1.0)
    notes: list[str] = field(default_factory=list)

    def matrix(self, layer_a: str | None = None, layer_b: str | None = None) -> np.ndarray:
        """The K x K matrix of a layer pair (default: the first layer with itself)."""
        la = layer_a if layer_a is not None else self.layers[0]
        return self.matrices[(la, layer_b if layer_b is not None else la)]

    def distances(self, layer_a: str | None = None, layer_b: str | None = None) -> np.ndarray:
        """The matrix as dissimilarities: 1 - value for similarities, symmetrised, zero diagonal."""
        m = self.matrix(layer_a, layer_b)
        d = (self.value_range[1] - m) if self.higher_is_similar else m.copy()
        d = (d + d.T) / 2
        np.fill_diagonal(d, 0.0)
        return np.clip(np.nan_to_num(d, nan=np.nanmax(d) if np.isfinite(d).any() else 0.0), 0, None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN cells become None."""

        def cell(v: float) -> float | None:
            return float(v) if math.isfinite(float(v)) else None

        return {
            "names": list(self.names),
            "layers": list(self.layers),
            "metric": self.metric,
            "higher_is_similar": self.higher_is_similar,
            "value_range": list(self.value_range),
            "matrices": [
                {"layer_a": a, "layer_b": b, "values": [[cell(v) for v in r] for r in m.tolist()]}
                for (a, b), m in self.matrices.items()
            ],
            "notes": list(self.notes),
        }

    def plot(
        self,
        path: str | os.PathLike | None = None,
        *,
        layer: str | None = None,
        embedding: str = "dendrogram",
    ):
        """Heatmap of one layer's K x K matrix beside a dendrogram (average linkage) or a
        classical MDS embedding of the models; a PNG at ``path`` if given."""
        _validate.choice(embedding, "embedding", ("dendrogram", "mds"))
        return _figure(self, path, layer, embedding)


def classical_mds(d: np.ndarray, dim: int = 2) -> np.ndarray:
    """(K, dim) coordinates whose distances approximate the K x K dissimilarities ``d``."""
    k = d.shape[0]
    h = np.eye(k) - 1.0 / k
    b = -0.5 * h @ (d**2) @ h
    vals, vecs = np.linalg.eigh(b)
    order = np.argsort(vals)[::-1][:dim]
    return vecs[:, order] * np.sqrt(np.clip(vals[order], 0, None))


def _figure(
    res: Pairwise, path: str | os.PathLike | None, layer: str | None, embedding: str
) -> Any:
    from matplotlib.figure import Figure

    la = layer if layer is not None else res.layers[0]
    m, d = res.matrix(la), res.distances(la)
    side = max(3.6, 0.45 * len(res.names) + 2.2)
    fig = Figure(figsize=(2 * side + 0.8, side))
    ax_m, ax_e = fig.subplots(1, 2)
    title = f"{res.metric} at {la}" if len(res.layers) > 1 or la != "features" else res.metric
    annotated_heatmap(fig, ax_m, m, res.names, res.names, title=title,
                      higher_is_similar=res.higher_is_similar,
                      value_range=res.value_range)  # fmt: skip
    if embedding == "mds":
        xy = classical_mds(d)
        ax_e.scatter(xy[:, 0], xy[:, 1])
        for name, (px, py) in zip(res.names, xy, strict=True):
            ax_e.annotate(name, (px, py), fontsize=8)
        ax_e.set_title("MDS of 1 - similarity" if res.higher_is_similar else "MDS", fontsize=9)
    else:
        from scipy.cluster.hierarchy import dendrogram, linkage
        from scipy.spatial.distance import squareform

        z = linkage(squareform(d, checks=False), method="average")
        dendrogram(z, labels=list(res.names), ax=ax_e, leaf_rotation=45)
        ax_e.set_title("average-linkage dendrogram", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_png(fig, path)
    return fig


# ---- per-model preparation and per-pair values ------------------------------------------------
#: One model's one layer, ready for pairs (the metric's ``Measure`` says what it keeps).
_Prepared = Prepared


def _prepare_layer(m: Metric, x: FeatureLike, layer: str) -> Prepared:
    return m.measure.prepare(m, x, layer)


def _pair_value(m: Metric, a: Prepared, b: Prepared) -> float:
    return m.measure.pair(m, a, b)


_WORKER: dict[str, Any] = {}


def _init_worker(m: Metric, prepared: list[dict[str, _Prepared]], parent: int = 0) -> None:
    """Keep what every pair needs; in a pool worker (``parent``: the caller's pid) also exit
    when the caller dies, so that a killed caller leaves no orphans."""
    _WORKER["metric"], _WORKER["prepared"] = m, prepared
    if parent:
        exit_with_parent(parent)


def _worker_cell(job: tuple[int, int, str, str]) -> tuple[float, str | None]:
    i, j, la, lb = job
    prep = _WORKER["prepared"]
    try:
        return _pair_value(_WORKER["metric"], prep[i][la], prep[j][lb]), None
    except IntertwinerError as e:
        return math.nan, str(e)


# ---- inputs -------------------------------------------------------------------------------------
def _as_feature_sets(
    items: Any, layers: Sequence[str] | None, names: Sequence[str] | None
) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(names, per-model {layer: features}, layers) from feature tensors, dicts or models."""
    if isinstance(items, Mapping):
        names = names or [str(k) for k in items]
        items = list(items.values())
    items = list(items)
    if len(items) < 2:
        raise InvalidInputError(
            f"pairwise needs at least 2 models or feature sets, got {len(items)}"
        )
    names = list(names) if names is not None else [f"model_{i}" for i in range(len(items))]
    if len(names) != len(items):
        raise InvalidOptionError(f"{len(names)} names for {len(items)} models")
    sets: list[Any] = []
    for it in items:
        if isinstance(it, torch.nn.Module):
            sets.append(it)
        elif isinstance(it, Mapping):
            sets.append(dict(it))
        elif isinstance(it, (torch.Tensor, np.ndarray)):
            sets.append({"features": it})
        else:
            raise InvalidInputError(
                f"pairwise takes feature tensors, {{layer: tensor}} dicts or nn.Modules, got "
                f"{type(it).__name__}"
            )
    if any(isinstance(s, torch.nn.Module) for s in sets) and layers is None:
        raise InvalidOptionError("comparing models needs layers=[...] (module names to capture)")
    if layers is None:
        layers = list(sets[0])
        for s in sets[1:]:
            if list(s) != layers:
                raise InvalidOptionError(
                    f"feature sets have different layers ({list(s)} vs {layers}); pass layers="
                )
    return names, sets, list(layers)


def _features_of(s: Any, layers: list[str], capture: dict[str, Any]) -> dict[str, Any]:
    if isinstance(s, torch.nn.Module):
        from intertwiner.features import capture as run_capture

        opts = {k: v for k, v in capture.items() if k != "data"}
        return run_capture(s, capture["data"], layers, progress=False, **opts)
    missing = [la for la in layers if la not in s]
    if missing:
        raise InvalidOptionError(f"feature set lacks layers {missing}; it has {list(s)}")
    return {la: s[la] for la in layers}


def pairwise(
    features_or_models: ModelsOrFeatures,
    metric: str | Metric = "cka",
    *,
    layers: Sequence[str] | None = None,
    cross_layers: bool = True,
    names: Sequence[str] | None = None,
    data: DataLike | None = None,
    device: DeviceLike = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
    workers: int = 0,
    memory_limit: int | float | str | None = None,
) -> Pairwise:
    """K x K matrices of ``metric`` (a name such as ``"group_cka"`` or a ``Metric``) over K models or feature sets (see the module docstring).

    ``features_or_models``: a sequence (or ``{name: ...}`` mapping) of feature tensors (N, C, ...),
    ``{layer: tensor}`` dicts (every set with the same layers, same N inputs), or ``nn.Module``s,
    run once each over ``data`` (streamed in batches through ``features.capture``, at most
    ``max_samples`` inputs) at ``layers``. With several layers, every layer pair is compared
    (``cross_layers=False``: each layer with itself). ``workers > 0`` computes the pairs in a
    process pool; a worker that dies raises ``WorkerDiedError`` at once. A pair that cannot be
    computed is NaN, with the reason in ``notes``.
    """
    from tqdm.auto import tqdm

    m = make_metric(metric)
    workers = _validate.positive_int(workers, "workers", minimum=0, hint="0 runs in this process")
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else parse_bytes(memory_limit)
    capture = {"data": data, "device": device, "max_samples": max_samples, "batch_size": batch_size}
    names_, sets, layers_ = _as_feature_sets(features_or_models, layers, names)
    if any(isinstance(s, torch.nn.Module) for s in sets) and data is None:
        raise InvalidOptionError("comparing models needs data= (inputs to run them on)")
    prepared: list[dict[str, _Prepared]] = []
    first_rows: dict[str, np.ndarray] | None = None
    for name, s in zip(names_, tqdm(sets, desc="pairwise: prepare", unit="model",
                                    disable=not progress), strict=False):  # fmt: skip
        feats = _features_of(s, layers_, capture)
        rows = {la: np.empty((int(np.shape(x)[0]), 0)) for la, x in feats.items()}  # shapes only
        first_rows = rows if first_rows is None else first_rows
        check_rows({names_[0]: first_rows, name: rows})
        if device is not None:
            feats = {k: torch.as_tensor(v).to(device) for k, v in feats.items()}
        prepared.append({la: _prepare_layer(m, feats[la], la) for la in layers_})
        _check_memory(prepared, len(sets), limit)
    pairs = [(a, b) for a in layers_ for b in layers_ if cross_layers or a == b]
    k = len(sets)
    jobs = [(i, j, a, b) for a, b in pairs for i in range(k) for j in range(k)]
    cells = _run_jobs(m, prepared, jobs, workers, progress)
    matrices = {p: np.full((k, k), np.nan) for p in pairs}
    notes: list[str] = []
    for (i, j, a, b), (v, err) in zip(jobs, cells, strict=True):
        matrices[(a, b)][i, j] = v
        if err is not None:
            notes.append(f"{names_[i]}:{a} vs {names_[j]}:{b}: {err}")
    return Pairwise(names_, layers_, m.name, matrices, m.higher_is_similar, m.value_range, notes)


def check_rows(sets: Mapping[str, Mapping[str, Any]]) -> None:
    """``{name: {layer: features}}``: every array must have the same rows (features of the same
    inputs, in the same order); a mismatch is a ``ShapeError`` naming both, before any work,
    never a matrix of NaN."""
    first: tuple[str, str, int] | None = None
    for name, feats in sets.items():
        for la, x in feats.items():
            n = int(np.shape(x)[0]) if np.ndim(x) else 0
            if first is None:
                first = (name, la, n)
            elif n != first[2]:
                where = "" if la == first[1] else f" at {la!r}"
                raise ShapeError(
                    f"{first[0]} has {first[2]} rows (samples) at {first[1]!r} and {name} has "
                    f"{n}{where}: every input must hold features of the same inputs, in the same "
                    "order; capture them on one dataset (or cut them to the same rows)"
                )


def _check_memory(prepared: list[dict[str, _Prepared]], k: int, limit: int) -> None:
    """Extrapolate the kept statistics of the models prepared so far to all K."""
    used = sum(
        sum(t.numel() * t.element_size() for t in _tensors(p)) for d in prepared for p in d.values()
    )
    estimate = used * k / len(prepared)
    if estimate > limit:
        raise MemoryBudgetError(
            f"pairwise would keep about {estimate / 1e9:.2f} GB of per-model statistics (limit "
            f"{limit / 1e9:.2f} GB): bound the inputs with max_samples, compare fewer layers or "
            "models at once, or raise memory_limit"
        )


def _tensors(p: _Prepared) -> list[torch.Tensor]:
    out = [p.x]
    for v in p.extra.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, KernelTerms):
            out.append(v.matrix)
        elif isinstance(v, LinearCKAStats):
            out += [t for t in (v.gxx,) if t is not None]
    return out


def _run_jobs(
    m: Metric,
    prepared: list[dict[str, _Prepared]],
    jobs: list[tuple[int, int, str, str]],
    workers: int,
    progress: bool,
) -> list[tuple[float, str | None]]:
    from tqdm.auto import tqdm

    bar: Callable[[Any], Any] = lambda it: tqdm(  # noqa: E731
        it, total=len(jobs), desc="pairwise", unit="pair", disable=not progress
    )
    if workers == 0:
        _init_worker(m, prepared)
        try:
            return [_worker_cell(j) for j in bar(jobs)]
        finally:
            _WORKER.clear()
    # spawn, not fork: a forked child inherits torch's OpenMP pool in a state it can deadlock on.
    # The workers need the metric's function and options only (its accumulator factory may be a
    # lambda, which spawn cannot pickle).
    ctx = multiprocessing.get_context("spawn")
    sent = dataclasses.replace(m, make_accumulator=None)
    chunks = max(1, len(jobs) // (4 * workers))
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(sent, prepared, os.getpid()),
        ) as pool:
            return list(bar(pool.map(_worker_cell, jobs, chunksize=chunks)))
    except BrokenProcessPool as e:  # raised as soon as a worker is gone: never a hang
        raise WorkerDiedError(
            f"a pairwise worker process died (killed, or out of memory: each of the {workers} "
            "workers holds a copy of every model's prepared statistics), so no matrix was "
            "made. Run again with fewer workers, or workers=0 to compute the pairs in this "
            "process"
        ) from e
