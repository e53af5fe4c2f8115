"""REPAIR (Jordan et al. 2023): give every channel of a merged network its endpoints' statistics.

Averaging two aligned networks shrinks the variance of their hidden channels (the averaged units
are not perfectly correlated), and the shrinkage compounds with depth: the midpoint "collapses".
REPAIR measures, at every traced site, the per-channel mean and standard deviation of the
*pre-activation* (the input of the site's activation module) in each source model on some data,
and makes the merged network's channels have the weighted averages of them:

    target mean_c = sum_k w_k mean_k,c        target std_c = sum_k w_k std_k,c

by the affine map ``z_c -> s_c z_c + t_c`` (``s_c = target std / std``, ``t_c = target mean -
s_c mean``), folded into the module that produces the pre-activation: the rows and bias of a
Linear or Conv, or the affine of a BatchNorm, LayerNorm or GroupNorm. The result is a plain model
of the same architecture (same state-dict keys and shapes). Sites are repaired in forward order,
one streamed pass each (a correction changes the input of every later site); the sources take one
pass each. Statistics are over every position but the channel (batch, space, tokens), in float64,
with population variance; models are evaluated in eval mode.

A site whose activation is not a module call (a functional activation, a residual stream that
pools several) has no place to hook and is skipped with a warning; a pre-activation made by a
module REPAIR cannot fold into (no bias to take the shift, an unsupported module) is refused.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from intertwiner._types import DataLike, ExampleInput, SiteName
from intertwiner.errors import InvalidOptionError, NonFiniteError, TooFewSamplesError
from intertwiner.symmetry import SymmetrySpec, trace

__all__ = ["repair"]

#: Modules whose output channels REPAIR can rescale and shift: (channel dim of the output,
#: names of the scale and shift parameters).
_LINEAR = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_DIM1 = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)

#: Channels whose standard deviation in the merged model is below this (relative to the target)
#: are only shifted: a dead channel cannot be rescaled to a spread.
_DEAD = 1e-12


@dataclass
class _Point:
    """One pre-activation: the activation module (call ``call``) and its producer."""

    site: str
    activation: str
    module: str
    call: int
    producer: str
    dim: int  # channel dim of the pre-activation (1 or -1)
    width: int


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted statistics are in."""


def _split(name: str) -> tuple[str, int]:
    site = SiteName.parse(name)
    return site.base, site.k


def _channel_dim(producer: nn.Module) -> int | None:
    if isinstance(producer, _LINEAR) or isinstance(producer, nn.LayerNorm):
        return -1
    if isinstance(producer, _CONV) or isinstance(producer, _NORM_DIM1):
        return 1
    return None


def _scale_shift_params(producer: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale-like, bias) parameters REPAIR folds into; refuses modules it cannot."""
    if isinstance(producer, nn.LayerNorm) and len(producer.normalized_shape) != 1:
        raise InvalidOptionError(
            f"repair: the LayerNorm {name!r} normalises over {tuple(producer.normalized_shape)}; "
            "repair folds only into a LayerNorm over the channel axis alone"
        )
    weight, bias = getattr(producer, "weight", None), getattr(producer, "bias", None)
    if weight is None or bias is None:
        raise InvalidOptionError(
            f"repair: {type(producer).__name__} {name!r} makes a pre-activation but has no "
            f"{'bias' if bias is None else 'weight'} to fold the correction into (a Linear/Conv "
            "needs bias=True, a norm affine=True); re-create it with one or use reset_bn instead"
        )
    return weight, bias


def _points(model: nn.Module, spec: SymmetrySpec, example: ExampleInput) -> list[_Point]:
    """Every site activation that is a module call, with the module producing its input, in the
    order of the forward pass."""
    named = dict(model.named_modules())
    wanted: dict[tuple[str, int], tuple[str, str]] = {}
    skipped = []
    for s in spec.sites:
        for act in s.activations:
            base, call = _split(act)
            if base in named and base != "":
                wanted.setdefault((base, call), (s.name, act))
            else:
                skipped.append(f"{s.name} ({act})")
    leaves = {n: m for n, m in named.items() if n and not list(m.children())}
    made_by: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # outputs stay alive so that ids are not reused
    calls: dict[str, int] = {}
    found: list[_Point] = []
    handles = []

    def out_hook(name):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                keep.append(out)
                made_by[id(out)] = name

        return hook

    def pre_hook(name):
        def hook(_m, inp):
            calls[name] = calls.get(name, 0) + 1
            key = (name, calls[name])
            if key not in wanted or not inp or not isinstance(inp[0], torch.Tensor):
                return
            site, act = wanted[key]
            producer = made_by.get(id(inp[0]))
            if producer is None:
                skipped.append(f"{site} ({act}: its input is not a module's output)")
                return
            dim = _channel_dim(named[producer])
            if dim is None:
                skipped.append(f"{site} ({act}: made by {type(named[producer]).__name__})")
                return
            width = inp[0].shape[dim]
            found.append(_Point(site, act, name, calls[name], producer, dim, int(width)))

        return hook

    for n, m in leaves.items():
        handles.append(m.register_forward_hook(out_hook(n)))
    for base in {b for b, _ in wanted}:
        handles.append(named[base].register_forward_pre_hook(pre_hook(base)))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    producers = [p.producer for p in found]
    for p in found:
        if producers.count(p.producer) > 1:
            raise InvalidOptionError(
                f"repair: module {p.producer!r} feeds several activations; repair folds one "
                "correction per producer"
            )
        _scale_shift_params(named[p.producer], p.producer)
    if skipped:
        warnings.warn(
            "repair: no module pre-activation to repair at " + "; ".join(skipped[:8]),
            stacklevel=3,
        )
    return found


def _rows(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``(samples, channels)`` float64 view of a pre-activation with its channels on ``dim``."""
    return z.detach().movedim(dim, -1).reshape(-1, z.shape[dim]).double()


class _Stats:
    """Streaming per-channel count, sum and sum of squares (float64)."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, rows: torch.Tensor) -> None:
        self.n += rows.shape[0]
        self.s = self.s + rows.sum(0)
        self.ss = self.ss + (rows * rows).sum(0)

    def moments(self, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise TooFewSamplesError(f"repair: no data reached {where}")
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0.0)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            raise NonFiniteError(f"repair: non-finite pre-activations at {where}")
        return mean, var.sqrt()


def _measure(
    model: nn.Module,
    points: list[_Point],
    data: DataLike,
    *,
    batch_size: int,
    max_samples: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per point (mean, std) of the pre-activation over ``data`` (one pass; eval mode)."""
    from intertwiner.features import _eval_mode, _model_device, limited_batches

    named = dict(model.named_modules())
    stats = [_Stats() for _ in points]
    calls: dict[str, int] = {}
    by_call = {(p.module, p.call): k for k, p in enumerate(points)}
    last = max((k for k in range(len(points))), default=-1)

    def pre_hook(name):
        def hook(_m, inp):
            calls[name] = calls.get(name, 0) + 1
            k = by_call.get((name, calls[name]))
            if k is not None:
                stats[k].add(_rows(inp[0], points[k].dim))
                if k == last:
                    raise _Stop  # nothing later is measured

        return hook

    handles = [named[m].register_forward_pre_hook(pre_hook(m)) for m in {p.module for p in points}]
    device = _model_device(model)
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad(), _eval_mode(model):
            for x in limited_batches(data, batch_size, max_samples, False):
                calls.clear()
                try:
                    model(x.to(device=device, dtype=dtype))
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return [st.moments(f"{p.site} ({p.activation})") for st, p in zip(stats, points, strict=True)]


def _fold(model: nn.Module, p: _Point, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``z -> scale * z + shift`` on the channels of ``p``'s producer output, in its parameters."""
    producer = model.get_submodule(p.producer)
    weight, bias = _scale_shift_params(producer, p.producer)
    with torch.no_grad():
        s = scale.to(weight.dtype).to(weight.device)
        view = [-1] + [1] * (weight.dim() - 1)  # Linear/Conv rows, norm affines: channel axis 0
        weight.mul_(s.reshape(view))
        bias.mul_(s).add_(shift.to(bias.dtype).to(bias.device))


class _Repairer:
    """The points of one architecture and the statistics of its source models."""

    def __init__(
        self,
        sources: Sequence[nn.Module],
        data: DataLike,
        *,
        spec: SymmetrySpec | None = None,
        example_input: ExampleInput | None = None,
        batch_size: int = 256,
        max_samples: int | None = None,
    ) -> None:
        from intertwiner.alignment._align import _example_input

        if not sources:
            raise InvalidOptionError("repair needs at least one source model")
        example = _example_input(sources[0], data, example_input)
        if spec is None:
            spec = trace(sources[0], example)
        self.points = _points(copy.deepcopy(sources[0]), spec, example)
        self.data, self.batch_size, self.max_samples = data, batch_size, max_samples
        self.stats = [self._measure(m) for m in sources]

    def _measure(self, model: nn.Module, points: list[_Point] | None = None):
        return _measure(
            model, self.points if points is None else points, self.data,
            batch_size=self.batch_size, max_samples=self.max_samples,
        )  # fmt: skip

    def apply(self, model: nn.Module, weights: Sequence[float]) -> nn.Module:
        """Repair ``model`` in place to ``sum_k weights[k] * stats_k`` at every point."""
        if len(weights) != len(self.stats):
            raise InvalidOptionError(f"{len(weights)} weights for {len(self.stats)} sources")
        targets = []
        for k in range(len(self.points)):
            mean_t = sum(float(w) * st[k][0] for w, st in zip(weights, self.stats, strict=True))
            std_t = sum(float(w) * st[k][1] for w, st in zip(weights, self.stats, strict=True))
            targets.append((mean_t, std_t))
        return self.apply_targets(model, targets)

    def apply_targets(
        self, model: nn.Module, targets: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> nn.Module:
        """Repair ``model`` in place to the (mean, std) ``targets[k]`` at point k (in the order
        of ``self.points``; zipping computes them from its merge matrices)."""
        for p, (mean_t, std_t) in zip(self.points, targets, strict=True):
            ((mean, std),) = self._measure(model, [p])
            if mean.shape != mean_t.shape:
                raise InvalidOptionError(
                    f"repair: {p.site} has {mean.numel()} channels, the target {mean_t.numel()}"
                )
            live = std > _DEAD * std_t.clamp_min(1.0)
            scale = torch.where(live, std_t / torch.where(live, std, 1.0), 1.0)
            _fold(model, p, scale, mean_t - scale * mean)
        return model


def repair(
    model: nn.Module,
    sources: Sequence[nn.Module],
    data: DataLike,
    *,
    weights: Sequence[float] | None = None,
    spec: SymmetrySpec | None = None,
    example_input: ExampleInput | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
) -> nn.Module:
    """A copy of ``model`` (a merge of the aligned ``sources``, one architecture) whose every
    traced pre-activation channel has, on ``data``, the mean and std ``sum_k weights[k] *
    (mean_k, std_k)`` of the sources (module docstring). ``weights``: one per source, default
    equal, normalised to sum 1 (``interpolate`` passes ``(1 - alpha, alpha)``)."""
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    total = sum(weights)
    if total == 0:
        raise InvalidOptionError("repair weights sum to zero")
    rep = _Repairer(
        sources, data, spec=spec, example_input=example_input, batch_size=batch_size,
        max_samples=max_samples,
    )  # fmt: skip
    return rep.apply(copy.deepcopy(model), [w / total for w in weights])
