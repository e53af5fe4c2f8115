"""Barrier-aware selection: among candidate elements of the full group, keep the one whose
midpoint with A has the lowest loss on the fitting data.

The weight distance that ``align`` minimises is not the loss barrier, and the discrete search
between scale representatives can end in another local optimum than the permutations-only search
(README, "Merging: scales, REPAIR and the rebasin package"). Every permutation is an element of
the full group, so when labelled data is given, ``align(group="full", select="midpoint")`` runs
several searches, all of them elements of B's full group (so every candidate computes B's
function exactly):

- ``"full"``: the full-group search from the scale representatives (the ``select=None`` result),
- ``"permutation"``: the permutations-only search (same method),
- ``"full_from_permutation"`` (weight matching only): the full-group search started from the
  permutations' solution (activation matching solves each site globally from the features, so
  its start does not matter and this candidate would repeat ``"full"``),

and keeps the candidate with the lowest loss barrier at alpha 1/2 on that data,
``max(0, L(lerp(A, B', 1/2)) - (L(A) + L(B)) / 2)`` with L the mean cross-entropy (BatchNorm
statistics of the midpoint re-estimated on the data where the model has BatchNorm; then REPAIRed
when ``select_repair`` asks for it). The endpoints compute A's and B's functions for every
candidate, so the ranking is that of the midpoint losses, except that every midpoint at or below
the endpoints' mean has barrier 0 (the barrier is a maximum over alphas that include the endpoints)
and a tie keeps the first candidate, the full search: a permuted and rescaled copy of A, which
the full search recovers exactly (midpoint = A, barrier 0), is never traded for a permutation
whose midpoint happens to fit the data better than A itself. The data is the data ``align`` was
given (training data: never pass the test split); nothing else is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from intertwiner._types import DataLike
from intertwiner.errors import InvalidOptionError

__all__ = [
    "SELECTS",
    "Selection",
    "barrier",
    "check_select",
    "choose",
    "has_labels",
    "limited",
    "loss",
    "midpoint_loss",
]

#: ``align(select=...)``: ``"midpoint"`` (the default; runs only with labelled ``data`` and the
#: full group) or None (the search from the representatives alone, as before).
SELECTS = ("midpoint", None)


@dataclass
class Selection:
    """Which candidate element ``align(select="midpoint")`` kept, and why.

    ``chosen``: the candidate's name (``"full"``, ``"permutation"`` or
    ``"full_from_permutation"``); ``losses``: each candidate's midpoint loss (mean cross-entropy
    at alpha 1/2 on the fitting data, BN re-estimated, REPAIRed when ``repair``);
    ``endpoint_loss``: the mean of A's and B's losses there; ``samples``: how many targets the
    losses are over (examples; every position of a sequence output, ``training.per_target``);
    ``repair``: the REPAIR mode used (False for none)."""

    chosen: str
    losses: dict[str, float] = field(default_factory=dict)
    endpoint_loss: float = 0.0
    samples: int = 0
    repair: bool | str = False

    @property
    def barriers(self) -> dict[str, float]:
        """Each candidate's barrier at alpha 1/2, the quantity minimised (``barrier``)."""
        return {k: barrier(v, self.endpoint_loss) for k, v in self.losses.items()}

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:.4f}" for k, v in self.losses.items())
        return (
            f"selected {self.chosen!r} by the barrier at 1/2 on {self.samples} samples "
            f"(midpoint losses: {parts}; endpoints' mean {self.endpoint_loss:.4f})"
        )


def barrier(loss: float, endpoint_loss: float) -> float:
    """``max(0, loss - endpoint_loss)``, with differences within float noise of the losses (a
    relative 1e-6) counted as 0, so that an exact recovery ties with any other zero barrier."""
    excess = loss - endpoint_loss
    return 0.0 if excess <= 1e-6 * max(1.0, abs(endpoint_loss)) else excess


def choose(losses: dict[str, float], endpoint_loss: float) -> str:
    """The candidate with the lowest ``barrier``; a tie keeps the first listed."""
    return min(losses, key=lambda k: barrier(losses[k], endpoint_loss))


def has_labels(data: DataLike | None) -> bool:
    """Whether ``data`` yields ``(x, y)`` pairs with integer class labels (a loss can be taken).

    Asked of a map-style Dataset's first item (a DataLoader's dataset too); a tensor or array is
    inputs only, and any other iterable is not read here (a pass over a stream would cost a pass
    of its own), so it counts as unlabelled."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if not isinstance(data, Dataset) or isinstance(data, IterableDataset):
        return False
    try:
        if len(data) == 0:  # type: ignore[arg-type]
            return False
        item = data[0]
    except (TypeError, IndexError, NotImplementedError):
        return False
    if not isinstance(item, tuple | list) or len(item) != 2:
        return False
    y = torch.as_tensor(item[1])
    return not torch.is_floating_point(y) and not torch.is_complex(y)


def limited(data: DataLike, max_samples: int | None, seed: int) -> DataLike:
    """At most ``max_samples`` examples of a Dataset, drawn with ``seed`` (a DataLoader is used
    as it comes: its own batching decides)."""
    if max_samples is None or not isinstance(data, Dataset) or isinstance(data, IterableDataset):
        return data
    n = len(data)  # type: ignore[arg-type]
    if n <= max_samples:
        return data
    gen = torch.Generator().manual_seed(int(seed))
    return Subset(data, torch.randperm(n, generator=gen)[:max_samples].tolist())


def loss(model: nn.Module, data: DataLike, batch_size: int = 512) -> tuple[float, int]:
    """(mean cross-entropy, examples) of ``model`` on ``data`` in eval mode."""
    from intertwiner.training import evaluate

    r = evaluate(model, data, batch_size=batch_size)
    return float(r["loss"]), int(r["n"])


def midpoint_loss(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    *,
    repair: bool | str = False,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[float, int]:
    """(mean cross-entropy, examples) of ``lerp(A, B, 1/2)`` on ``data``: BatchNorm statistics
    re-estimated on ``data`` first, then REPAIR (the statistics of A and B on ``data``) when
    ``repair`` (True, ``"summands"`` or ``"sum"``)."""
    from intertwiner.alignment._interpolate import _bn_modules, lerp, reset_bn_statistics

    mid = lerp(model_a, model_b, 0.5)
    if _bn_modules(mid):
        reset_bn_statistics(mid, data, seed=seed)
    if repair:
        from intertwiner.alignment._repair import _Repairer, _residual

        _Repairer([model_a, model_b], data, residual=_residual(repair)).apply(mid, [0.5, 0.5])
    return loss(mid, data, batch_size)


def check_select(select: str | None) -> None:
    """Refuse a ``select=`` that is not one of ``SELECTS``."""
    if select not in SELECTS:
        raise InvalidOptionError(f"select must be one of {SELECTS}, got {select!r}")
