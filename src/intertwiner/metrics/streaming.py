"""Streaming accumulators (torchmetrics style): ``update(X_batch, Y_batch)``, ``compute()``, ``reset()``.

They keep additive sufficient statistics, so memory does not grow with the number of samples and the
result equals the one-shot function up to round-off (1e-8 in float64), for any batching:

- ``LinearCKA``: O(p^2 + q^2 + pq) for flattened widths p, q (conv: C*H*W), biased and debiased
  exactly (the unbiased HSIC_1 needs only Gram-type sums; see ``cka.LinearCKAStats``).
- ``ProcrustesDistance`` / ``ProcrustesSimilarity``: O(C_x C_y), every group of ``procrustes``.

Floors: the one-shot functions' products, batch by batch (Procrustes: X'Y in the native layout;
``LinearCKA``: the feature-space products, its only form). Group CKA and RBF CKA need the N x N
kernel and have no exact streaming form.
"""

from __future__ import annotations

from typing import Any

import torch

from intertwiner import _validate
from intertwiner._types import FeatureLike
from intertwiner.errors import ShapeError
from intertwiner.groups import ORTHOGONAL, GroupLike
from intertwiner.layouts import to_flat
from intertwiner.metrics import procrustes as _pr
from intertwiner.metrics._groups import invariances
from intertwiner.metrics._prep import check_same_n, f64, validate
from intertwiner.metrics.cka import LinearCKAStats, check_samples, value_range


class Accumulator:
    """Base class: subclasses define ``_new_state``, ``_update`` and ``compute``."""

    invariant_to: tuple[str, ...] = ()
    value_range: tuple[float, float] = (0.0, 1.0)
    name: str = "accumulator"
    higher_is_similar: bool = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._state = self._new_state()
        self._widths: tuple[Any, Any] | None = None

    def _check_widths(self, x: torch.Tensor, y: torch.Tensor) -> None:
        widths = (tuple(x.shape[1:]), tuple(y.shape[1:]))
        if self._widths is None:
            self._widths = widths
        elif widths != self._widths:
            raise ShapeError(
                f"batch shapes changed from {self._widths} to {widths}; every batch must have "
                "the same per-sample shape (call reset() to start a new comparison)"
            )

    @property
    def n_samples(self) -> int:
        return self._state.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n={self.n_samples})"


class LinearCKA(Accumulator):
    """Streaming linear CKA over inputs (conv features flattened per input); exact."""

    def __init__(self, *, debiased: bool = False) -> None:
        self.debiased = debiased
        self.invariant_to = invariances(ORTHOGONAL)
        self.name = "cka_debiased" if debiased else "cka"
        self.value_range = value_range(debiased)
        super().__init__()

    def _new_state(self) -> LinearCKAStats:
        return LinearCKAStats(debiased_terms=self.debiased)

    def update(self, X: FeatureLike, Y: FeatureLike) -> None:
        # NaN/Inf are caught by the state's sums of squares, before it changes.
        xt, yt = validate(X, "X", finite=False), validate(Y, "Y", finite=False)
        check_same_n(xt, yt)
        self._check_widths(xt, yt)
        self._state.update(f64(to_flat(xt)), f64(to_flat(yt)))

    def compute(self) -> float:
        check_samples(self._state.n, self.debiased)
        return self._state.cka(self.debiased)


class _Procrustes(Accumulator):
    def __init__(
        self,
        *,
        group: GroupLike = "orthogonal",
        center: bool = False,
        upsample: bool = False,
        layout: str | None = None,
    ) -> None:
        self.group = _pr.procrustes_group(group)
        self.center, self.upsample, self.layout = center, upsample, layout
        self.invariant_to = invariances(self.group)
        super().__init__()

    def _new_state(self) -> _pr.ProcrustesStats:
        return _pr.new_stats(self.group, self.center)

    def update(self, X: FeatureLike, Y: FeatureLike) -> None:
        x, y = _pr.prepare_rows(X, Y, upsample=self.upsample, layout=self.layout)
        self._check_widths(x, y)
        self._state.update(x, y, self.layout)

    def _check_ready(self) -> None:
        if self._state.n == 0:
            check_samples(0, False)


class ProcrustesDistance(_Procrustes):
    """Streaming ``procrustes_distance`` (same options); exact."""

    higher_is_similar = False

    def __init__(self, *, group: GroupLike = "orthogonal", kind: str = "angular", **options: Any):
        self.kind = _validate.choice(kind, "kind", _pr.KINDS)
        self.value_range = _pr.DISTANCE_RANGE[kind]
        super().__init__(group=group, **options)
        self.name = f"procrustes_distance[{self.group},{kind}]"

    def compute(self) -> float:
        self._check_ready()
        return _pr.distance_from_stats(self._state, self.group, self.kind, self.center)


class ProcrustesSimilarity(_Procrustes):
    """Streaming ``procrustes_similarity`` (the paper's 1 - d convention); exact."""

    def __init__(self, *, group: GroupLike = "orthogonal", **options: Any):
        super().__init__(group=group, **options)
        self.name = f"procrustes_similarity[{self.group}]"
        self.value_range = _pr.similarity_range(self.group)

    def compute(self) -> float:
        self._check_ready()
        return _pr.similarity_from_stats(self._state, self.group, self.center)
