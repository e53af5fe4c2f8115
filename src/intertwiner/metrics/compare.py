"""Layer x layer comparison of two models on the same data, several metrics.

Streaming metrics (linear CKA, every Procrustes variant) are accumulated batch by batch with memory
independent of N; linear CKA shares each layer's statistics across all pairs and switches to
blocked Gram matrices for wide layers (``metrics._bank``), within a memory limit checked up front. The others (group CKA, RBF CKA) need all samples: the features of the layers they
use are kept (on CPU) and the metric is computed at the end, so bound N with ``max_samples``.
A cell that cannot be computed (e.g. Procrustes between layers with different spatial sizes
without ``upsample=True``) is NaN, with the reason in ``Comparison.notes``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from intertwiner import _atomic, _validate
from intertwiner._types import DataLike
from intertwiner.errors import (
    IntertwinerError,
    InvalidInputError,
    InvalidOptionError,
    MemoryBudgetError,
    NonFiniteError,
)
from intertwiner.metrics._bank import FeatureBank, GramBank
from intertwiner.metrics._plots import annotated_heatmap, save_png
from intertwiner.metrics.cka import check_samples
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
    #: How it ran: linear-CKA form, passes, estimated working memory (see ``compare``).
    plan: dict[str, Any] = field(default_factory=dict)
    #: The two models' names, for the figure's axes.
    names: tuple[str, str] = ("model a", "model b")

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
        _atomic.write_text(path, json.dumps(self.to_dict(), indent=2))

    def plot(self, path: str | os.PathLike | None = None):
        """One heatmap per metric (rows: model-a layers, columns: model-b layers); PNG if path."""
        # A bare Figure renders with the Agg canvas and leaves pyplot's global state alone.
        from matplotlib.figure import Figure

        names = list(self.matrices)
        side = max(3.4, 0.5 * max(len(self.layers_a), len(self.layers_b)) + 2.0)
        fig = Figure(figsize=(0.6 + (side + 0.4) * len(names), side))
        axes = fig.subplots(1, len(names), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            annotated_heatmap(
                fig,
                ax,
                self.matrices[name],
                self.layers_b,
                self.layers_a,
                title=name,
                higher_is_similar=self.higher_is_similar.get(name, True),
                value_range=self.value_range.get(name),
            )
            ax.set_xlabel(self.names[1])
            ax.set_ylabel(self.names[0])
        fig.tight_layout()
        if path is not None:
            save_png(fig, path)
        return fig


def _names(layers: str | Sequence[str]) -> list[str]:
    return [layers] if isinstance(layers, str) else list(layers)


FORMS = ("auto", "feature", "gram")
#: Working memory ``compare`` plans for when ``memory_limit`` is None (bytes).
DEFAULT_MEMORY_LIMIT = 25 * 10**8
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(value: int | float | str, name: str = "memory_limit") -> int:
    """Bytes from a number or a string such as ``"4GB"``, ``"512 MiB"``."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        num = text.rstrip("kmgib")
        unit = text[len(num) :]
        if unit not in _UNITS or not num:
            raise InvalidOptionError(
                f"{name}={value!r} is not a size; write e.g. 4e9, '4GB' or '3.5 GiB'"
            )
        value = float(num) * _UNITS[unit]
    return int(_validate.finite_number(value, name, low=1.0))


def _gb(b: float) -> str:
    if b >= 1e8:
        return f"{b / 1e9:.2f} GB"
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def _is_linear_cka(m: Metric) -> bool:
    return m.linear_cka and m.streaming


def _n_inputs(data: Any, max_samples: int | None) -> int | None:
    """The number of inputs ``data`` holds, when it can be known without iterating it."""
    n = None
    if isinstance(data, (torch.Tensor, np.ndarray)):
        n = int(data.shape[0])
    elif isinstance(data, DataLoader):
        ds = data.dataset
        if not isinstance(ds, IterableDataset) and hasattr(ds, "__len__"):
            n = len(data.sampler) if hasattr(data.sampler, "__len__") else len(ds)
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        n = len(data)
    if max_samples is not None:  # an upper bound is enough to plan with
        n = int(max_samples) if n is None else min(n, int(max_samples))
    return n


@dataclass
class _Plan:
    """How ``compare`` will run: the form of linear CKA, blocks, passes and the memory estimate."""

    form: str | None
    bytes: int
    limit: int
    n: int | None
    block_batches: int = 0
    passes: int = 1
    detail: dict[str, int] = field(default_factory=dict)

    def message(self) -> str:
        what = {
            None: "no linear CKA",
            "feature": "linear CKA in feature space (one pass)",
            "gram": f"linear CKA from blocked Gram matrices ({self.passes} passes over the data)",
        }[self.form]
        return (
            f"compare: {what}; estimated working memory {_gb(self.bytes)} "
            f"(limit {_gb(self.limit)}, models and data not included)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "estimated_bytes": int(self.bytes),
            "memory_limit": int(self.limit),
            "n_samples": self.n,
            "block_size": self.block_batches,
            "passes": self.passes,
            **self.detail,
        }


def _plan(
    widths: dict[Any, int],
    shapes: dict[Any, tuple[int, ...]],
    keys_a: list[Any],
    keys_b: list[Any],
    ms: list[Metric],
    n: int | None,
    batch: int,
    limit: int,
    form: str,
) -> _Plan:
    """Choose the linear-CKA form that fits ``limit`` (the cheaper in arithmetic when both do)
    and estimate the working memory; ``MemoryBudgetError`` when nothing fits."""
    pairs = [(a, b) for a in keys_a for b in keys_b]
    other = 0
    detail: dict[str, int] = {}
    if any(m.streaming and not _is_linear_cka(m) for m in ms):  # Procrustes: C_a x C_b per pair
        chan = {k: (s[0] if len(s) != 2 else s[-1]) if s else 1 for k, s in shapes.items()}
        other += 8 * sum(3 * chan[a] * chan[b] + 4 * (chan[a] + chan[b]) for a, b in pairs)
        other += 8 * 2 * batch * max(widths.values())
    kept = any(not m.streaming for m in ms)
    if kept:
        if n is None:  # a loader of unknown length: the kept features cannot be estimated
            detail["kept_features_not_estimated"] = 1
        else:
            other += 4 * n * sum(widths.values()) + 8 * 4 * n * n
    detail["other_bytes"] = other
    if not any(_is_linear_cka(m) for m in ms):
        plan = _Plan(None, other, limit, n, detail=detail)
    else:
        feat = FeatureBank.bytes_needed(widths, pairs, batch)
        feat_flops = (n or 1) * (
            sum(p * p for p in widths.values()) + sum(widths[a] * widths[b] for a, b in pairs)
        )
        room = limit - other
        blocks = 0
        if n is not None:
            fixed = GramBank.bytes_needed(widths, 0, batch, n)
            per_row = GramBank.bytes_needed(widths, 1, batch, n) - fixed
            blocks = max(0, int((room - fixed) // per_row) // batch)
            blocks = min(blocks, -(-n // batch))
        gram_flops = (n or 1) ** 2 / 2 * sum(widths.values())
        feat_fits, gram_fits = feat <= room, blocks >= 1
        if form == "feature" or (
            form == "auto" and feat_fits and (not gram_fits or feat_flops <= gram_flops)
        ):
            plan = _Plan("feature", other + feat, limit, n, detail=detail)
        else:
            b = max(blocks, 1)
            passes = -(-(n or 0) // (b * batch))
            gram = GramBank.bytes_needed(widths, b * batch, batch, n or 0)
            plan = _Plan("gram", other + gram, limit, n, b, max(passes, 1), detail)
        if plan.form == "gram" and n is None:
            raise MemoryBudgetError(
                f"linear CKA in feature space: estimated working memory {_gb(other + feat)} "
                f"exceeds the limit {_gb(limit)}, and the blocked Gram form needs the number of "
                "inputs: pass a Dataset, a tensor, a DataLoader over a sized dataset, or "
                "max_samples (or raise memory_limit)"
            )
    if plan.bytes > limit:
        raise MemoryBudgetError(
            f"{plan.message()} exceeds the limit: raise memory_limit, lower batch_size, compare "
            "fewer or narrower layers, or bound the inputs with max_samples"
        )
    return plan


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    layers_a: str | Sequence[str],
    layers_b: str | Sequence[str],
    metrics: str | Metric | Sequence[str | Metric] = ("cka", "procrustes_similarity"),
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    batch_size: int = 256,
    upsample: bool = False,
    memory_limit: int | float | str | None = None,
    form: str = "auto",
) -> Comparison:
    """Compare every layer of ``layers_a`` in model a with every layer of ``layers_b`` in model b.

    ``metrics``: names or specs (``"cka"``, ``"cka_debiased"``, ``"rbf_cka"``,
    ``"procrustes_distance:positive_monomial"``, ``"procrustes_similarity:orthogonal"``,
    ``"group_cka"``...) or ``Metric`` objects. ``upsample`` applies to Procrustes metrics.
    Both models see the same batches.

    Memory: before any work, ``compare`` estimates its working memory (statistics, one batch,
    kept features; the models and the data are not counted), says so when ``progress``, and
    raises ``MemoryBudgetError`` if it exceeds ``memory_limit`` (bytes or ``"4GB"``; default
    ``DEFAULT_MEMORY_LIMIT``). Linear CKA shares each layer's statistics across pairs and uses
    ``form="feature"`` (p x p covariances, one pass) or ``"gram"`` (N x N Gram matrices in
    blocks of inputs, several passes over ``data``, which must then give the same batches each
    time); ``"auto"`` takes the cheaper form that fits. The plan is in ``Comparison.plan``.
    """
    from intertwiner.features import limited_batches

    la, lb = _names(layers_a), _names(layers_b)
    ms = _parse_metrics(metrics, upsample)
    _validate.choice(form, "form", FORMS)
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else parse_bytes(memory_limit)
    batch_size = _validate.positive_int(batch_size, "batch_size")
    one_shot = isinstance(data, Iterator)
    # The first pass also gives the probe batch, so a single-pass run reads data once.
    first_pass = limited_batches(data, batch_size, max_samples, progress, desc="compare")
    probe = next(first_pass, None)
    if probe is None:
        check_samples(0, False)
    run = _Run(model_a, model_b, la, lb, ms, device)
    with run.capturing():
        plan = run.plan(probe, _n_inputs(data, max_samples), batch_size, limit, form)
        if plan.form == "gram" and one_shot and plan.passes > 1:
            raise MemoryBudgetError(
                f"{plan.message()}: data is a one-shot iterator, so it cannot be read "
                f"{plan.passes} times; pass a Dataset, a tensor or a DataLoader"
            )
        if progress:
            print(plan.message(), file=sys.stderr, flush=True)
        for k in range(run.passes):
            if k == 0:
                batches = itertools.chain([probe], first_pass)
            else:
                desc = f"compare (pass {k + 1}/{run.passes})"
                batches = limited_batches(data, batch_size, max_samples, progress, desc=desc)
            run.read_pass(k, batches)
    plan.n = run.n
    return run.comparison(plan)


def _parse_metrics(metrics: str | Metric | Sequence[str | Metric], upsample: bool) -> list[Metric]:
    specs = [metrics] if isinstance(metrics, (str, Metric)) else list(metrics)
    ms: list[Metric] = []
    for s in specs:
        wants_up = upsample and isinstance(s, str) and s.startswith("procrustes")
        ms.append(metric(s, upsample=True) if wants_up else metric(s))
    names = [m.name for m in ms]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"metrics repeat: {names}; list each metric once")
    return ms


class _Run:
    """The state of one ``compare`` call: captures, per-pair accumulators, kept features (for
    metrics without a streaming form) and the linear-CKA bank shared by every pair."""

    def __init__(self, model_a, model_b, la, lb, ms, device):
        from intertwiner.features import Capturer

        self.la, self.lb, self.ms = la, lb, ms
        same = model_a is model_b
        self.key_a = {name: ("a", name) for name in la}
        self.key_b = {name: ("a" if same else "b", name) for name in lb}
        self.lin = [m for m in ms if _is_linear_cka(m)]
        streamed = [m for m in ms if m.streaming and not _is_linear_cka(m)]
        self.acc = {
            (m.name, i, j): m.accumulator()
            for m in streamed
            for i in range(len(la))
            for j in range(len(lb))
        }
        self.failed: dict[tuple[str, int, int], str] = {}
        keep = any(not m.streaming for m in ms)
        self.kept_a: dict[str, list[torch.Tensor]] = {n: [] for n in la} if keep else {}
        self.kept_b: dict[str, list[torch.Tensor]] = {n: [] for n in lb} if keep else {}
        names_a = list(dict.fromkeys(la + lb)) if same else la
        self.cap_a = Capturer(model_a, names_a, device=device, call="compare")
        self.cap_b = None if same else Capturer(model_b, lb, device=device, call="compare")
        self.n, self.passes = 0, 1
        self.bank: FeatureBank | GramBank | None = None
        self.bank_error: str | None = None
        self.checksums: list[tuple[tuple[int, ...], float]] = []

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.cap_a)
            if self.cap_b is not None:
                stack.enter_context(self.cap_b)
            yield

    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        fa = self.cap_a.run(x)
        return fa, (fa if self.cap_b is None else self.cap_b.run(x))

    def plan(self, probe: torch.Tensor, n_est, batch_size: int, limit: float, form: str) -> _Plan:
        """The memory plan from the layers' shapes on the probe batch; sets up the CKA bank."""
        pa, pb = self.features(probe[:2])
        shapes = {self.key_a[k]: tuple(pa[k].shape[1:]) for k in self.la}
        shapes.update({self.key_b[k]: tuple(pb[k].shape[1:]) for k in self.lb})
        widths = {k: math.prod(s) for k, s in shapes.items()}
        keys_a = list(dict.fromkeys(self.key_a[k] for k in self.la))
        keys_b = list(dict.fromkeys(self.key_b[k] for k in self.lb))
        plan = _plan(widths, shapes, keys_a, keys_b, self.ms, n_est, batch_size, limit, form)
        if plan.form == "feature":
            self.bank = FeatureBank(keys_a, keys_b)
        elif plan.form == "gram":
            self.bank = GramBank(keys_a, keys_b, plan.block_batches)
            self.bank.begin_pass(0)
            self.passes = plan.passes
        return plan

    def read_pass(self, k: int, batches: Iterator[torch.Tensor]) -> None:
        """Pass ``k`` over the data: the bank on every pass; accumulators and kept features on
        the first. Later passes must see the same batches (checked by shape and sum)."""
        if k > 0:
            self.bank.begin_pass(k)
        for bi, x in enumerate(batches):
            self._check_same_batch(k, bi, x)
            if isinstance(self.bank, GramBank) and self.bank.block_of(bi) < k:
                continue
            fa, fb = self.features(x)
            self._update_bank(bi, fa, fb)
            if k == 0:
                self.n += x.shape[0]
                self._update_pairs(fa, fb)
            fa = fb = None  # free this batch's features before the next forward

    def _check_same_batch(self, k: int, bi: int, x: torch.Tensor) -> None:
        stamp = (tuple(x.shape), float(x.double().sum()))
        if k == 0:
            self.checksums.append(stamp)
        elif bi >= len(self.checksums) or self.checksums[bi] != stamp:
            raise InvalidInputError(
                f"data gave different batches on pass {k + 1} (batch {bi}); the Gram "
                "form reads the data several times: pass an unshuffled DataLoader, a "
                "Dataset without random augmentation, or a tensor"
            )

    def _update_bank(self, bi: int, fa: dict, fb: dict) -> None:
        if self.bank is None or self.bank_error is not None:
            return
        feats = {self.key_a[name]: fa[name] for name in self.la}
        feats.update({self.key_b[name]: fb[name] for name in self.lb})
        try:
            if isinstance(self.bank, GramBank):
                self.bank.update(bi, feats)
            else:
                self.bank.update(feats)
        except IntertwinerError as e:
            self.bank_error = str(e)

    def _update_pairs(self, fa: dict, fb: dict) -> None:
        la, lb = self.la, self.lb
        for (name, i, j), a in self.acc.items():
            if (name, i, j) in self.failed:
                continue
            try:
                a.update(fa[la[i]], fb[lb[j]])
            except IntertwinerError as e:
                self.failed[(name, i, j)] = f"{name} {la[i]} vs {lb[j]}: {e}"
        for key in self.kept_a:
            self.kept_a[key].append(fa[key])
        for key in self.kept_b:
            self.kept_b[key].append(fb[key])

    def _value(self, m: Metric, i: int, j: int, full_a: dict, full_b: dict) -> float:
        la, lb = self.la, self.lb
        if m in self.lin:
            if self.bank_error is not None:
                raise NonFiniteError(self.bank_error)
            debiased = bool(m.options.get("debiased", False))
            check_samples(self.n, debiased)
            return self.bank.cka(self.key_a[la[i]], self.key_b[lb[j]], debiased)
        if m.streaming:
            return self.acc[(m.name, i, j)].compute()
        return m(full_a[la[i]], full_b[lb[j]])

    def comparison(self, plan: _Plan) -> Comparison:
        """Every metric's layer x layer matrix (NaN, with a note, where a pair failed)."""
        la, lb, ms = self.la, self.lb, self.ms
        matrices: dict[str, np.ndarray] = {}
        notes: list[str] = []
        full_a = {k: torch.cat(v) for k, v in self.kept_a.items()}
        full_b = {k: torch.cat(v) for k, v in self.kept_b.items()}
        for m in ms:
            out = np.full((len(la), len(lb)), np.nan)
            for i in range(len(la)):
                for j in range(len(lb)):
                    if (m.name, i, j) in self.failed:
                        notes.append(self.failed[(m.name, i, j)])
                        continue
                    try:
                        out[i, j] = self._value(m, i, j, full_a, full_b)
                    except IntertwinerError as e:
                        notes.append(f"{m.name} {la[i]} vs {lb[j]}: {e}")
            matrices[m.name] = out
        return Comparison(
            layers_a=la,
            layers_b=lb,
            matrices=matrices,
            n_samples=self.n,
            invariant_to={m.name: list(m.invariant_to) for m in ms},
            higher_is_similar={m.name: m.higher_is_similar for m in ms},
            notes=notes,
            value_range={m.name: tuple(m.value_range) for m in ms},
            plan=plan.to_dict(),
        )
