"""Linear interpolation between two models, the loss barrier, BatchNorm re-estimation, merging.

``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` for every parameter and floating-point
buffer (integer buffers such as ``num_batches_tracked`` are A's). The loss barrier is

    barrier = max_alpha [ L(theta(alpha)) - ((1 - alpha) L(theta_A) + alpha L(theta_B)) ]

(Frankle et al. 2020; Entezari et al. 2022), evaluated on the given alphas with the endpoints
always included. Averaging two BatchNorm networks averages their running statistics, which do not
describe the averaged network's pre-activations (its variance collapses): without re-estimating
them (``reset_bn=True``: one pass over ``bn_data`` in train mode with a cumulative average,
Jordan et al. 2022 "REPAIR") BN networks show a large spurious barrier.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intertwiner import _validate
from intertwiner._types import DataLike
from intertwiner.alignment._extent import Extent
from intertwiner.errors import InvalidOptionError, ShapeError, TooFewSamplesError

__all__ = ["Interpolation", "interpolate", "lerp", "merge", "reset_bn_statistics"]


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def lerp(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A new model with ``(1 - alpha) * A + alpha * B`` in every parameter and float buffer."""
    return _average([model_a, model_b], [1.0 - float(alpha), float(alpha)])


def _average(models: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    out = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ShapeError("models to average must have one architecture (same state dict)")
    new = {}
    for k in keys:
        t0 = states[0][k]
        if not torch.is_floating_point(t0):
            new[k] = t0.clone()
            continue
        acc = torch.zeros_like(t0, dtype=torch.float64)
        for w, s in zip(weights, states, strict=True):
            acc += float(w) * s[k].double()
        new[k] = acc.to(t0.dtype)
    out.load_state_dict(new)
    return out


@torch.no_grad()
def reset_bn_statistics(
    model: nn.Module,
    data: DataLike,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``data`` (in place; returns
    ``model``): running statistics reset, a cumulative average (``momentum=None``) over one pass
    with only the BN modules in train mode. Modes and momenta are restored; no BN: no-op.

    A Dataset or tensor is visited in an order shuffled with ``seed`` (batch statistics of
    class-sorted data would misestimate the variance); a DataLoader is used as it comes."""
    from intertwiner.features import limited_batches, model_input

    bns = _bn_modules(model)
    if not bns:
        return model
    data = _shuffled(data, seed)
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        seen = 0
        for x in limited_batches(data, batch_size, max_samples, False):
            model(model_input(x, model))
            seen += x.shape[0]
        if seen == 0:
            raise TooFewSamplesError("no data to re-estimate BatchNorm statistics")
    finally:
        for m, f in flags.items():
            m.training = f
        for m, mom in momenta.items():
            m.momentum = mom
    return model


def _shuffled(data: DataLike, seed: int) -> DataLike:
    from torch.utils.data import Dataset, IterableDataset, Subset

    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(data, torch.Tensor):
        return data[torch.randperm(data.shape[0], generator=gen)]
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return Subset(data, torch.randperm(len(data), generator=gen).tolist())
    return data


@dataclass
class Interpolation:
    """Loss and accuracy along the line from A (alpha = 0) to B (alpha = 1)."""

    alphas: list[float]
    losses: list[float]
    accuracies: list[float]
    reset_bn: bool
    label: str = ""
    extra: dict = field(default_factory=dict)

    def _endpoints(self, values: list[float], alpha: float) -> float:
        return (1 - alpha) * values[0] + alpha * values[-1]

    @property
    def barrier(self) -> float:
        """max over alphas of loss minus the linear interpolation of the endpoint losses."""
        return max(
            loss - self._endpoints(self.losses, a)
            for a, loss in zip(self.alphas, self.losses, strict=True)
        )

    @property
    def accuracy_barrier(self) -> float:
        """max over alphas of the endpoints' interpolated accuracy minus the accuracy."""
        return max(
            self._endpoints(self.accuracies, a) - acc
            for a, acc in zip(self.alphas, self.accuracies, strict=True)
        )

    @property
    def midpoint(self) -> dict[str, float]:
        """Loss and accuracy at the alpha closest to 0.5."""
        k = min(range(len(self.alphas)), key=lambda i: abs(self.alphas[i] - 0.5))
        return {"alpha": self.alphas[k], "loss": self.losses[k], "accuracy": self.accuracies[k]}

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "alphas": list(self.alphas),
            "losses": list(self.losses),
            "accuracies": list(self.accuracies),
            "reset_bn": self.reset_bn,
            "barrier": self.barrier,
            "accuracy_barrier": self.accuracy_barrier,
            "midpoint": self.midpoint,
            **self.extra,
        }

    def plot(self, path: str | None = None, **kwargs):
        """Loss and accuracy against alpha (a matplotlib Figure); a PNG at ``path`` if given."""
        from intertwiner.alignment._plot import plot_curves

        return plot_curves([self], path=path, **kwargs)


def _alphas(alphas: int | Sequence[float]) -> list[float]:
    if isinstance(alphas, int):
        alphas = _validate.positive_int(alphas, "alphas (a count of points)", minimum=2)
        vals = [i / (alphas - 1) for i in range(alphas)]
    else:
        vals = sorted({float(a) for a in alphas} | {0.0, 1.0})
    if min(vals) < 0 or max(vals) > 1:
        raise InvalidOptionError("alphas must lie in [0, 1]")
    return vals


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    alphas: int | Sequence[float],
    data: DataLike,
    *,
    reset_bn: bool = True,
    repair: bool | str = False,
    bn_data: DataLike | None = None,
    bn_samples: int | None = None,
    batch_size: int = 512,
    label: str = "",
    progress: bool = False,
) -> Interpolation:
    """Loss and accuracy of ``lerp(A, B, alpha)`` on ``data`` (a Dataset or DataLoader of
    ``(x, y)``) for each alpha (a count of evenly spaced points, or values; 0 and 1 always added).

    Align B to A first (``align``) to measure the barrier modulo the symmetry group.
    ``reset_bn``: re-estimate BatchNorm statistics of each interpolated model strictly between
    the endpoints on ``bn_data`` (default ``data``; pass training data to keep evaluation data
    unseen), capped at ``bn_samples``; at alpha 0 and 1 the models are A and B exactly. No effect
    on models without BatchNorm. ``repair``: REPAIR (``alignment.repair``) every interpolated
    model strictly between the endpoints, after any BN reset: each traced pre-activation channel
    gets ``(1 - alpha)`` A's plus ``alpha`` B's mean and std on ``bn_data`` (B aligned to A);
    ``"sum"`` or ``"summands"`` (= True) picks how a residual add is repaired (``RESIDUAL``).
    """
    from tqdm.auto import tqdm

    from intertwiner.training import evaluate

    vals = _alphas(alphas)
    if bn_samples is not None:  # checked here even when no BatchNorm uses it
        bn_samples = _validate.positive_int(bn_samples, "bn_samples", hint="or None for all")
    has_bn = bool(_bn_modules(model_a))
    fit = data if bn_data is None else bn_data
    repairer = None
    if repair:
        from intertwiner.alignment._repair import _Repairer, _residual

        repairer = _Repairer(
            [model_a, model_b], fit, max_samples=bn_samples, residual=_residual(repair)
        )
    losses, accs = [], []
    for a in tqdm(vals, disable=not progress, desc="interpolate"):
        m = lerp(model_a, model_b, a)
        # The endpoints are the trained models themselves, their own statistics included:
        # re-estimating them would shift the endpoints and the barrier measured from them.
        if reset_bn and has_bn and 0.0 < a < 1.0:
            reset_bn_statistics(m, fit, max_samples=bn_samples)
        if repairer is not None and 0.0 < a < 1.0:
            repairer.apply(m, [1.0 - a, a])
        r = evaluate(m, data, batch_size=batch_size)
        losses.append(r["loss"])
        accs.append(r["accuracy"])
    extra = {"repair": bool(repair)}
    return Interpolation(vals, losses, accs, bool(reset_bn and has_bn), label=label, extra=extra)


def merge(
    models: Sequence[nn.Module],
    weights: Sequence[float] | None = None,
    *,
    reference: int | str = "mean",
    method: str | None = "weights",
    group: Extent | str = Extent.SITE_GROUP,
    data: DataLike | None = None,
    bn_data: DataLike | None = None,
    repair: bool | str = False,
    max_iter: int = 20,
    select: str | None = "midpoint",
    **align_options: Any,
) -> nn.Module:
    """A weighted average of ``models`` after aligning them to one another.

    ``reference``: ``"mean"`` (default: each model aligned to the mean of the others, iterated to
    a fixed point; Git Re-Basin's MergeMany, see ``align_to_mean``; at most ``max_iter`` rounds),
    or a model index (``"first"`` = 0): every model aligned to that one.
    ``weights``: one per model (default: equal), normalised to sum 1. ``method``: ``"weights"``,
    ``"activations"`` (needs ``data``) or None (plain averaging, no alignment). ``bn_data``:
    when given, the merged model's BatchNorm statistics are re-estimated on it. ``repair``:
    then REPAIR the merge on ``bn_data`` (needed): every traced pre-activation channel gets the
    weighted mean and std of the aligned models' (``alignment.repair``; ``"sum"`` or
    ``"summands"`` as in ``interpolate``).
    ``select`` (``group="full"``, with labelled ``(x, y)`` fitting data: ``data``, else
    ``bn_data``): ``"midpoint"`` (default) chooses among elements of the full group by the loss
    barrier of the merge on that data (BN reset, REPAIR when ``repair``): with a reference model,
    each ``align`` selects (``align(select=...)``); aligned to the mean, the merge of the
    full-group alignment and the merge of the permutations-only alignment are both made and the
    one with the lower ``max(0, loss - weighted mean of the inputs' losses)`` is returned (a tie
    keeps the full group's). None: the full-group search alone, as before.
    """
    from intertwiner.alignment._align import align
    from intertwiner.alignment._many import _normalised, align_to_mean, reference_index
    from intertwiner.alignment._select import check_select, has_labels

    models = list(models)
    if not models:
        raise InvalidOptionError("merge needs at least one model")
    if repair and bn_data is None:
        raise InvalidOptionError("merge(repair=True) needs bn_data= (inputs to measure on)")
    check_select(select)
    weights = _normalised(weights, len(models))
    reference = reference_index(reference, len(models))
    ref = models[0 if reference is None else reference]
    if data is None and bn_data is not None and "example_input" not in align_options:
        # weight matching needs only an input to trace the models: bn_data has inputs
        from intertwiner.alignment._align import _example_input

        align_options["example_input"] = _example_input(ref, bn_data, None)
    fit = data if data is not None else bn_data
    selecting = (
        select == "midpoint"
        and method is not None
        and len(models) > 1
        and Extent.parse(group) is Extent.SITE_GROUP
        and has_labels(fit)
    )
    if method is None or len(models) == 1:
        return _finish(models, weights, bn_data, repair, align_options)
    if reference is None:
        extents = [group] + ([Extent.PERMUTATION] if selecting else [])
        candidates = [
            _finish(
                align_to_mean(
                    models,
                    weights,
                    method=method,
                    group=g,
                    data=data,
                    max_iter=max_iter,
                    **align_options,
                ).models,
                weights,
                bn_data,
                repair,
                align_options,
            )  # fmt: skip
            for g in extents
        ]
        if len(candidates) == 1:
            return candidates[0]
        from intertwiner.alignment._select import choose, limited, loss

        scored = limited(fit, align_options.get("max_samples"), align_options.get("seed", 0))
        ends = sum(w * loss(m, scored)[0] for w, m in zip(weights, models, strict=True))
        losses = {str(k): loss(c, scored)[0] for k, c in enumerate(candidates)}
        return candidates[int(choose(losses, ends))]
    sel = {"select": select, "select_repair": repair} if selecting else {"select": None}
    aligned = [
        m
        if k == reference
        else align(
            ref,
            m,
            data=fit if selecting else data,
            method=method,
            group=group,
            **sel,
            **align_options,
        ).model  # fmt: skip
        for k, m in enumerate(models)
    ]
    return _finish(aligned, weights, bn_data, repair, align_options)


def _finish(
    aligned: Sequence[nn.Module],
    weights: Sequence[float],
    bn_data: DataLike | None,
    repair: bool | str,
    align_options: dict,
) -> nn.Module:
    """The weighted average of aligned models, BN re-estimated and REPAIRed on ``bn_data``."""
    out = _average(aligned, weights)
    if bn_data is not None:
        reset_bn_statistics(out, bn_data)
    if repair:
        from intertwiner.alignment._repair import _Repairer, _residual

        example = align_options.get("example_input")
        _Repairer(aligned, bn_data, example_input=example, residual=_residual(repair)).apply(
            out, weights
        )
    return out
