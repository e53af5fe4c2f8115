"""Many models: align every model to the mean of the others (Git Re-Basin's MergeMany), and the
accuracy of a merge against its inputs and their ensemble.

``align_to_mean`` first aligns every model to ``models[0]`` (today's reference merge, so the
iteration starts from a consistent frame), then repeats rounds: in a seeded random order, each
model is aligned to the weighted mean of the *others* (their current, aligned weights), until a
round changes no permutation and the spread ``sum_i w_i ||theta_i - mean||^2`` falls by less than
``tol`` of its value, or ``max_iter`` rounds. Every aligned model is a transformed copy of its
input (it computes the input's function); the merge is their weighted average.

Why the mean: an average of K models pulls every unit towards the mean of K matched units; aligning
each model to the mean of the others makes the matching symmetric in the models (no input is
privileged, the merge no longer depends on which model is listed first) and, for permutation
groups, lowers the sum of pairwise distances at every step (each step is the best match of one
model to the sum of the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intertwiner import _validate
from intertwiner._types import DataLike, ExampleInput
from intertwiner.alignment._extent import Extent
from intertwiner.errors import InvalidOptionError, ShapeError
from intertwiner.groups import GroupElement, MonomialElement
from intertwiner.symmetry import SymmetrySpec, trace

__all__ = [
    "Ensemble",
    "ManyAlignment",
    "MergeReport",
    "align_to_mean",
    "merge_report",
    "reference_index",
]

REFERENCES = ("mean", "first")


def reference_index(reference: int | str, n_models: int) -> int | None:
    """``merge``'s ``reference`` as a model index, or None for ``"mean"`` (align to the mean)."""
    if isinstance(reference, str):
        if reference not in REFERENCES:
            raise InvalidOptionError(
                f"reference must be 'mean', 'first' or a model index, got {reference!r}"
            )
        return None if reference == "mean" else 0
    if isinstance(reference, bool) or not isinstance(reference, int):
        raise InvalidOptionError(
            f"reference must be 'mean', 'first' or a model index, got {reference!r}"
        )
    if not -n_models <= reference < n_models:
        raise InvalidOptionError(f"reference {reference} is out of range for {n_models} models")
    return reference % n_models


@dataclass(repr=False)
class ManyAlignment:
    """Result of ``align_to_mean``: ``models[i]`` is input i transformed by ``elements[i]``.

    ``history``: the weighted spread ``sum_i w_i ||theta_i - mean||^2`` (parameters only) after
    the alignment to ``models[0]`` and after each round; ``rounds``: rounds run; ``converged``:
    whether the last round changed no permutation (else ``max_iter`` stopped it)."""

    models: list[nn.Module]
    elements: list[dict[str, GroupElement]]
    spec: SymmetrySpec
    history: list[float] = field(default_factory=list)
    rounds: int = 0
    converged: bool = False

    def __repr__(self) -> str:
        spread = f", spread {self.history[0]:.4g} -> {self.history[-1]:.4g}" if self.history else ""
        return (
            f"ManyAlignment(models={len(self.models)}, rounds={self.rounds}, "
            f"converged={self.converged}{spread})"
        )


def _spread(models: Sequence[nn.Module], weights: Sequence[float]) -> float:
    """``sum_i w_i ||theta_i - sum_j w_j theta_j||^2`` over the parameters (float64)."""
    params = [dict(m.named_parameters()) for m in models]
    total = 0.0
    for name in params[0]:
        ts = [p[name].detach().double() for p in params]
        mean = sum(w * t for w, t in zip(weights, ts, strict=True))
        total += sum(
            float(w) * float(((t - mean) ** 2).sum()) for w, t in zip(weights, ts, strict=True)
        )
    return total


def _moves_units(delta: GroupElement) -> bool:
    """Whether an alignment step permuted units (a monomial element off the identity order)."""
    if isinstance(delta, MonomialElement):
        return bool((delta.perm != torch.arange(delta.n)).any())
    return False


def align_to_mean(
    models: Sequence[nn.Module],
    weights: Sequence[float] | None = None,
    *,
    method: str = "weights",
    group: Extent | str = Extent.SITE_GROUP,
    data: DataLike | None = None,
    spec: SymmetrySpec | None = None,
    example_input: ExampleInput | None = None,
    max_iter: int = 20,
    tol: float = 1e-6,
    seed: int = 0,
    progress: bool = False,
    **align_options: Any,
) -> ManyAlignment:
    """Align every model to the weighted mean of the others, iterated to a fixed point (see the
    module docstring). ``weights``: one per model (default equal), normalised to sum 1.
    ``method``/``group``/``data`` and ``align_options`` go to ``align`` at every step; ``spec``:
    the traced spec of the (common) architecture, traced once on ``example_input`` or a batch of
    ``data`` when not given. ``seed`` orders the models within each round (and seeds ``align``)."""
    from intertwiner.alignment._align import _example_input, align
    from intertwiner.alignment._interpolate import _average

    models = list(models)
    if len(models) < 2:
        raise InvalidOptionError(f"aligning to the mean needs at least 2 models, got {len(models)}")
    max_iter = _validate.positive_int(max_iter, "max_iter")
    weights = _normalised(weights, len(models))
    if spec is None:
        spec = trace(models[0], _example_input(models[0], data, example_input))
    # Each step aligns to a moving mean: a barrier-aware selection per step would switch between
    # candidates from round to round (no fixed point); ``merge`` selects among whole merges.
    align_options.setdefault("select", None)
    opts = dict(method=method, group=group, data=data, spec=spec, seed=seed, **align_options)

    def step(ref: nn.Module, m: nn.Module) -> tuple[nn.Module, dict[str, GroupElement]]:
        res = align(ref, m, **opts)
        return res.model, res.elements

    # Start from the reference alignment: every model in models[0]'s frame.
    current, elements = [models[0]], [{}]
    for m in models[1:]:
        aligned, els = step(models[0], m)
        current.append(aligned)
        elements.append(els)
    history = [_spread(current, weights)]
    gen = torch.Generator().manual_seed(int(seed))
    rounds, converged = 0, False
    from tqdm.auto import tqdm

    bar = tqdm(total=max_iter, disable=not progress, desc="merge many", unit="round")
    try:
        for _ in range(max_iter):
            moved = False
            for i in torch.randperm(len(models), generator=gen).tolist():
                rest = [k for k in range(len(models)) if k != i]
                w = [weights[k] for k in rest]
                s = sum(w)
                if s <= 0:  # the others carry no weight: nothing to align to
                    continue
                mean = _average([current[k] for k in rest], [x / s for x in w])
                current[i], deltas = step(mean, current[i])
                moved |= any(_moves_units(d) for d in deltas.values())
                elements[i] = {
                    k: d @ elements[i][k] if k in elements[i] else d for k, d in deltas.items()
                }
            rounds += 1
            history.append(_spread(current, weights))
            bar.update(1)
            bar.set_postfix(spread=f"{history[-1]:.4g}")
            if not moved and history[-2] - history[-1] <= tol * max(history[-2], 1e-300):
                converged = True
                break
    finally:
        bar.close()
    return ManyAlignment(current, elements, spec, history, rounds, converged)


def _normalised(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise InvalidOptionError(f"got {len(weights)} weights for {n} models")
    if any(not w >= 0 for w in weights):
        raise InvalidOptionError(f"merge weights must be >= 0, got {weights}")
    total = sum(weights)
    if total == 0:
        raise InvalidOptionError("merge weights sum to zero")
    return [w / total for w in weights]


# -- the accuracy report -----------------------------------------------------------------------
ENSEMBLES = ("probabilities", "logits")


class Ensemble(nn.Module):
    """The average of several classifiers: ``log(mean_i softmax(f_i(x)))`` (``"probabilities"``;
    its cross-entropy is the ensemble's negative log-likelihood) or ``mean_i f_i(x)``
    (``"logits"``). Outputs ``(N, classes)``; every model must give the same shape."""

    def __init__(self, models: Sequence[nn.Module], kind: str = "probabilities"):
        super().__init__()
        if kind not in ENSEMBLES:
            raise InvalidOptionError(f"ensemble must be one of {ENSEMBLES}, got {kind!r}")
        self.members = nn.ModuleList(models)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        if any(o.shape != outs[0].shape for o in outs):
            raise ShapeError(
                f"ensemble members give outputs of shapes {[tuple(o.shape) for o in outs]}; "
                "an ensemble averages outputs of one shape (one label set)"
            )
        stacked = torch.stack(outs)
        if self.kind == "logits":
            return stacked.mean(0)
        return torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - torch.log(
            torch.tensor(float(len(outs)), dtype=stacked.dtype)
        )


@dataclass
class MergeReport:
    """Accuracy and loss (``{"accuracy", "loss", "n"}``) of the merge, of each input model and of
    their ensemble (``ensemble_kind``: averaged probabilities or logits) on one data set."""

    merged: dict[str, float]
    inputs: list[dict[str, float]]
    ensemble: dict[str, float]
    ensemble_kind: str = "probabilities"

    @property
    def fraction_of_ensemble(self) -> float:
        """Merged accuracy divided by the ensemble's."""
        return self.merged["accuracy"] / self.ensemble["accuracy"]

    def to_dict(self) -> dict:
        return {
            "merged": dict(self.merged),
            "inputs": [dict(r) for r in self.inputs],
            "ensemble": dict(self.ensemble),
            "ensemble_kind": self.ensemble_kind,
            "fraction_of_ensemble": self.fraction_of_ensemble,
        }

    def table(self) -> str:
        rows = [(f"input {i}", r) for i, r in enumerate(self.inputs)]
        rows += [(f"ensemble ({self.ensemble_kind})", self.ensemble), ("merged", self.merged)]
        width = max(len(n) for n, _ in rows)
        out = [f"{'model'.ljust(width)}  accuracy  loss"]
        out += [f"{n.ljust(width)}  {100 * r['accuracy']:7.2f}%  {r['loss']:.4f}" for n, r in rows]
        return "\n".join(out)


def merge_report(
    merged: nn.Module,
    models: Sequence[nn.Module],
    data: DataLike,
    *,
    ensemble: str = "probabilities",
    batch_size: int = 512,
) -> MergeReport:
    """Evaluate ``merged``, each of ``models`` and their ensemble on ``data`` (a Dataset,
    DataLoader or iterable of ``(x, y)`` batches; see ``training.evaluate``)."""
    from intertwiner.training import evaluate

    ens = Ensemble(list(models), ensemble)
    return MergeReport(
        merged=evaluate(merged, data, batch_size=batch_size),
        inputs=[evaluate(m, data, batch_size=batch_size) for m in models],
        ensemble=evaluate(ens, data, batch_size=batch_size),
        ensemble_kind=ensemble,
    )
