"""``teleport``: move a model along its orbit (the function never changes) to raise or lower an
objective, e.g. the gradient norm (symmetry teleportation, Zhao et al. 2022).

Every site whose group has continuous parameters moves: ReLU-type positive scalings (and the
magnitudes of monomial scalings), orthogonal streams, GL maps (attention qk/vo, linear spaces);
permutations and sign flips are discrete and stay. Each step parameterises one element per site
as ``exp(xi)`` (``groups.exp_element``), differentiates the objective of the transformed weights
with respect to ``xi`` at ``xi = 0``, and takes a step of length ``lr`` (in ``xi``, all sites
together) along the normalised gradient. The step is applied as an exact group element (float64,
``apply``'s in-place action), so the loss changes only by round-off; a step that does not improve
the objective is halved (up to 6 times) and then the teleport stops.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from intertwiner.errors import InvalidOptionError, UnknownSiteError
from intertwiner.groups import GroupElement, exp_element, exp_tensor, exponents, lie_shape
from intertwiner.symmetry._canonical import _prefold
from intertwiner.symmetry._forward import flat_output
from intertwiner.symmetry.apply import restore, transform_site
from intertwiner.symmetry.spec import ParamAxis, Site, SymmetrySpec
from intertwiner.symmetry.trace import trace

#: ``objective(model, params, batch) -> scalar tensor``: ``params`` maps every parameter and
#: buffer name to its (transformed, differentiable) tensor; evaluate with ``functional_call``.
Objective = Callable[[nn.Module, dict[str, torch.Tensor], Any], torch.Tensor]


def gradient_norm(loss_fn: Callable = nn.functional.cross_entropy) -> Objective:
    """The squared norm of the gradient of ``loss_fn(model(x), y)`` with respect to the
    parameters, on a batch ``(x, y)``: the objective of symmetry teleportation."""

    def objective(model: nn.Module, params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        x, y = batch
        names = [n for n, _ in model.named_parameters()]
        loss = loss_fn(_logits(functional_call(model, params, (x,))), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        return sum((g * g).sum() for g in grads)

    return objective


def _logits(out: Any) -> torch.Tensor:
    """A model's main output: the tensor, a Hugging Face output's ``logits``, or the first item."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


@dataclass
class Teleport:
    """Result of ``teleport``: ``model`` (a float64 copy moved along the orbit), the objective
    before and after each accepted step, the loss (``loss_fn`` given) and the largest relative
    output change against the input model on each step's batch (round-off only)."""

    model: nn.Module
    objective: list[float]
    sites: list[str]
    loss: list[float] = field(default_factory=list)
    output_change: list[float] = field(default_factory=list)
    elements: list[dict[str, GroupElement]] = field(default_factory=list)


def _along(t: torch.Tensor, a: ParamAxis, fn: Callable) -> torch.Tensor:
    """``fn(view, dim)`` applied on the channels of ``a``'s ``(outer, n_total, inner)`` view of
    ``t`` (out of place, differentiable)."""
    shape = list(t.shape)
    v = t.reshape(*shape[: a.axis], a.outer, a.n_total, a.inner, *shape[a.axis + 1 :])
    dim = a.axis + 1
    if a.channels is None:
        return fn(v, dim).reshape(shape)
    idx = torch.as_tensor(a.channels, dtype=torch.long)
    return v.index_copy(dim, idx, fn(v.index_select(dim, idx), dim)).reshape(shape)


def _act(t: torch.Tensor, a: ParamAxis, site: Site, e: torch.Tensor) -> torch.Tensor:
    """``t`` moved on axis ``a`` by ``exp(xi)`` given as ``e = exp_tensor(xi)`` (differentiable,
    unlike ``transform_site``). Monomial ``exp(xi)`` is diagonal and positive, so every kind
    scales row ``i`` by ``e_i ** p`` (``groups.exponents``); dense sites have phi = identity."""
    if site.group.family.monomial:
        p, _ = exponents(a.kind, site.group.phi_kind)
        if p == 0:
            return t

        def fn(v, dim):
            shape = [1] * v.dim()
            shape[dim] = -1
            return v * (e**p).reshape(shape)

    else:
        m = e if a.kind == "A" else torch.linalg.inv(e).T

        def fn(v, dim):
            return (v.movedim(dim, -1) @ m.T).movedim(-1, dim)

    if a.within is None:
        return _along(t, a, fn)
    ax, start, length = a.within
    part = _along(t.narrow(ax, start, length), a, fn)
    return torch.cat(
        [t.narrow(ax, 0, start), part, t.narrow(ax, start + length, t.shape[ax] - start - length)],
        ax,
    )


def _as_batches(data: Any) -> Iterable:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return itertools.repeat(data)
    return itertools.cycle(data)


def _double(batch: Any) -> Any:
    return tuple(t.double() if torch.is_floating_point(t) else t for t in batch)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def teleport(
    model: nn.Module,
    objective: Objective,
    data: Any,
    steps: int = 10,
    *,
    spec: SymmetrySpec | None = None,
    lr: float = 0.1,
    maximize: bool = True,
    sites: list[str] | None = None,
    loss_fn: Callable | None = None,
) -> Teleport:
    """Move ``model`` along its orbit for ``steps`` steps to maximise (or minimise) ``objective``.

    ``objective``: ``objective(model, params, batch)`` (see ``Objective``; ``gradient_norm()``
    is the usual one). ``data``: one batch ``(x, y)`` or an iterable of batches (cycled, one per
    step). ``spec``: a traced spec (else traced on the first batch's ``x``). ``sites``: names of
    the sites to move (default: every site with continuous parameters). ``loss_fn(output, y)``:
    recorded per step to show that the loss does not change. Works in float64 throughout.
    """
    if steps < 0 or not lr > 0:
        raise InvalidOptionError(f"teleport needs steps >= 0 and lr > 0, got {steps} and {lr}")
    batches = _as_batches(data)
    first = _double(next(iter(batches)))
    work = copy.deepcopy(model).double().eval()
    if spec is None:
        spec = trace(work, first[0])
    _prefold(work, spec)
    movable = [s for s in spec.sites if lie_shape(s.group.family, s.width) is not None]
    if sites is not None:
        unknown = sorted(set(sites) - {s.name for s in movable})
        if unknown:
            raise UnknownSiteError(
                f"cannot teleport along {unknown}: not sites with continuous parameters "
                f"(those are {[s.name for s in movable]})"
            )
        movable = [s for s in movable if s.name in sites]
    reference = copy.deepcopy(model).double().eval()
    sign = 1.0 if maximize else -1.0
    res = Teleport(work, [], [s.name for s in movable])

    def evaluate(batch) -> float:
        with torch.enable_grad():
            params = {
                n: t.clone().requires_grad_(True) if torch.is_floating_point(t) else t
                for n, t in _tensors(work).items()
            }
            return float(objective(work, params, batch).detach())

    def record(batch) -> None:
        with torch.no_grad():
            ref = flat_output(reference(batch[0]))
            out = flat_output(work(batch[0]))
        res.output_change.append(float((out - ref).abs().max()) / (float(ref.abs().max()) or 1))
        if loss_fn is not None:
            with torch.no_grad():
                res.loss.append(float(loss_fn(_logits(work(batch[0])), batch[1])))

    res.objective.append(evaluate(first))
    record(first)
    for _ in range(steps):
        batch = _double(next(batches))
        step = _ascent(work, movable, objective, batch)
        if step is None:
            break
        current = evaluate(batch)
        size, accepted = lr, None
        for _half in range(7):
            saved: dict = {}
            elements = {
                s.name: exp_element(s.group.family, sign * size * step[s.name], s.width)
                for s in movable
            }
            for s in movable:
                transform_site(work, s, elements[s.name], saved)
            value = evaluate(batch)
            if sign * (value - current) > 0:
                accepted = (value, elements)
                break
            restore(saved)
            size /= 2
        if accepted is None:
            break
        res.objective.append(accepted[0])
        res.elements.append(accepted[1])
        record(batch)
    return res


def _ascent(
    work: nn.Module, movable: list[Site], objective: Objective, batch: Any
) -> dict[str, torch.Tensor] | None:
    """The normalised gradient of the objective with respect to each site's ``xi`` at 0."""
    base = {
        n: t.clone().requires_grad_(True) if torch.is_floating_point(t) else t
        for n, t in _tensors(work).items()
    }
    xi = [
        torch.zeros(lie_shape(s.group.family, s.width), dtype=torch.float64, requires_grad=True)
        for s in movable
    ]
    with torch.enable_grad():
        cur = dict(base)
        for s, v in zip(movable, xi, strict=True):
            e = exp_tensor(s.group.family, v)
            for a in s.actions:
                cur[a.name] = _act(cur[a.name], a, s, e)
        value = objective(work, cur, batch)
        grads = torch.autograd.grad(value, xi, allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g for v, g in zip(xi, grads, strict=True)]
    norm = float(sum((g * g).sum() for g in grads)) ** 0.5
    if not norm > 0:
        return None
    return {s.name: g / norm for s, g in zip(movable, grads, strict=True)}
