"""Layer x layer comparison of two models on the same data, several metrics, one pass.

Streaming metrics (linear CKA, every Procrustes variant) are accumulated batch by batch with memory
independent of N. The others (group CKA, RBF CKA) need all samples: the features of the layers they
use are kept (on CPU) and the metric is computed at the end, so bound N with ``max_samples``.
A cell that cannot be computed (e.g. Procrustes between layers with different spatial sizes
without ``upsample=True``) is NaN, with the reason in ``Comparison.notes``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from intertwiner.errors import IntertwinerError, InvalidOptionError
from intertwiner.metrics.registry import Metric, metric


@dataclass
class Comparison:
    """Results of ``compare``: ``matrices[metric_name][i, j]`` for layers_a[i] vs layers_b[j]."""

    layers_a: list[str]
    layers_b: list[str]
    matrices: dict[str, np.ndarray]
    n_samples: int
    invariant_to: dict[str, list[str]] = field(default_factory=dict)
    higher_is_similar: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (low, high) each metric's values lie in; a CKA estimator that can be negative says so.
    value_range: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN cells become None."""

        def cell(v: float) -> float | None:
            return None if not math.isfinite(float(v)) else float(v)

        return {
            "layers_a": list(self.layers_a),
            "layers_b": list(self.layers_b),
            "n_samples": int(self.n_samples),
            "metrics": {
                name: {
                    "values": [[cell(v) for v in row] for row in m.tolist()],
                    "invariant_to": list(self.invariant_to.get(name, [])),
                    "higher_is_similar": bool(self.higher_is_similar.get(name, True)),
                    "value_range": list(self.value_range.get(name, (math.nan, math.nan))),
                }
                for name, m in self.matrices.items()
            },
            "notes": list(self.notes),
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` atomically."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        os.replace(tmp, path)

    def plot(self, path: str | os.PathLike | None = None):
        """One heatmap per metric (rows: model-a layers, columns: model-b layers); PNG if path."""
        # A bare Figure renders with the Agg canvas and leaves pyplot's global state alone.
        from matplotlib.figure import Figure

        names = list(self.matrices)
        fig = Figure(figsize=(0.6 + 3.6 * len(names), 3.4))
        axes = fig.subplots(1, len(names), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            m = self.matrices[name]
            im = ax.imshow(m, cmap="viridis" if self.higher_is_similar.get(name, True) else "magma")
            ax.set_title(name, fontsize=9)
            ax.set_xticks(range(len(self.layers_b)), self.layers_b, rotation=45, ha="right")
            ax.set_yticks(range(len(self.layers_a)), self.layers_a)
            ax.set_xlabel("model b")
            ax.set_ylabel("model a")
            finite = m[np.isfinite(m)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    if np.isfinite(m[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{m[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="black" if m[i, j] > mid else "white",
                        )
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        if path is not None:
            path = os.fspath(path)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png")
            os.close(fd)
            fig.savefig(tmp, dpi=120, format="png")
            os.replace(tmp, path)
        return fig


def _names(layers: str | Sequence[str]) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    layers_a: str | Sequence[str],
    layers_b: str | Sequence[str],
    metrics: str | Metric | Sequence[str | Metric] = ("cka", "procrustes_similarity"),
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    batch_size: int = 256,
    upsample: bool = False,
) -> Comparison:
    """Compare every layer of ``layers_a`` in model a with every layer of ``layers_b`` in model b.

    ``metrics``: names or specs (``"cka"``, ``"cka_debiased"``, ``"rbf_cka"``,
    ``"procrustes_distance:positive_monomial"``, ``"procrustes_similarity:orthogonal"``,
    ``"group_cka"``...) or ``Metric`` objects. ``upsample`` applies to Procrustes metrics.
    One pass over ``data``; both models see the same batches.
    """
    from intertwiner.features import Capturer, limited_batches

    la, lb = _names(layers_a), _names(layers_b)
    specs = [metrics] if isinstance(metrics, (str, Metric)) else list(metrics)
    ms: list[Metric] = []
    for s in specs:
        wants_up = upsample and isinstance(s, str) and s.startswith("procrustes")
        ms.append(metric(s, upsample=True) if wants_up else metric(s))
    names = [m.name for m in ms]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"metrics repeat: {names}; list each metric once")

    acc: dict[tuple[str, int, int], Any] = {}
    failed: dict[tuple[str, int, int], str] = {}
    for m in ms:
        if m.streaming:
            for i in range(len(la)):
                for j in range(len(lb)):
                    acc[(m.name, i, j)] = m.accumulator()
    keep = any(not m.streaming for m in ms)
    kept_a: dict[str, list[torch.Tensor]] = {n: [] for n in la} if keep else {}
    kept_b: dict[str, list[torch.Tensor]] = {n: [] for n in lb} if keep else {}

    same = model_a is model_b
    cap_a = Capturer(
        model_a, list(dict.fromkeys(la + lb)) if same else la, device=device, call="compare"
    )
    cap_b = None if same else Capturer(model_b, lb, device=device, call="compare")
    n = 0
    with cap_a:
        if cap_b is not None:
            cap_b.__enter__()
        try:
            for x in limited_batches(data, batch_size, max_samples, progress, desc="compare"):
                fa = cap_a.run(x)
                fb = fa if cap_b is None else cap_b.run(x)
                n += x.shape[0]
                for (name, i, j), a in acc.items():
                    if (name, i, j) in failed:
                        continue
                    try:
                        a.update(fa[la[i]], fb[lb[j]])
                    except IntertwinerError as e:
                        failed[(name, i, j)] = f"{name} {la[i]} vs {lb[j]}: {e}"
                for k in kept_a:
                    kept_a[k].append(fa[k])
                for k in kept_b:
                    kept_b[k].append(fb[k])
        finally:
            if cap_b is not None:
                cap_b.__exit__(None, None, None)

    matrices: dict[str, np.ndarray] = {}
    notes: list[str] = []
    full_a = {k: torch.cat(v) for k, v in kept_a.items()}
    full_b = {k: torch.cat(v) for k, v in kept_b.items()}
    for m in ms:
        out = np.full((len(la), len(lb)), np.nan)
        for i in range(len(la)):
            for j in range(len(lb)):
                key = (m.name, i, j)
                if key in failed:
                    notes.append(failed[key])
                    continue
                try:
                    out[i, j] = (
                        acc[key].compute() if m.streaming else m(full_a[la[i]], full_b[lb[j]])
                    )
                except IntertwinerError as e:
                    notes.append(f"{m.name} {la[i]} vs {lb[j]}: {e}")
        matrices[m.name] = out
    return Comparison(
        layers_a=la,
        layers_b=lb,
        matrices=matrices,
        n_samples=n,
        invariant_to={m.name: list(m.invariant_to) for m in ms},
        higher_is_similar={m.name: m.higher_is_similar for m in ms},
        notes=notes,
        value_range={m.name: tuple(m.value_range) for m in ms},
    )
