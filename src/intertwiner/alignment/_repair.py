"""REPAIR (Jordan et al. 2023): give every channel of a merged network its endpoints' statistics.

Averaging two aligned networks shrinks the variance of their hidden channels (the averaged units
are not perfectly correlated), and the shrinkage compounds with depth: the midpoint "collapses".
REPAIR measures, at every traced site, the per-channel mean and standard deviation of the
*pre-activation* (the input of the site's activation module) in each source model on some data,
and makes the merged network's channels have the weighted averages of them:

    target mean_c = sum_k w_k mean_k,c        target std_c = sum_k w_k std_k,c

by the affine map ``z_c -> s_c z_c + t_c`` (``s_c = target std / std``, ``t_c = target mean -
s_c mean``), folded into the module that produces the pre-activation: the rows and bias of a
Linear or Conv (the columns of a transformers ``Conv1D``), or the affine of a BatchNorm, LayerNorm
or GroupNorm. The result is a plain model of the same architecture (same state-dict keys and
shapes). Sites are repaired in forward order, one streamed pass each (a correction changes the
input of every later site); the sources take one pass each. Statistics are over every position
but the channel (batch, space, tokens), in float64, with population variance; models are evaluated
in eval mode.

**Residual streams.** Where the pre-activation is a sum (a ResNet's ``act(bn2(...) + x)``), the
summands that are foldable module outputs (``a``: the branch's last BN/conv, a shortcut conv or
BN) are what REPAIR can change; the others (``b``: an identity shortcut, a parameter-free module
such as option-A padding, a functional op) cannot be rescaled. ``residual="summands"`` (default;
Jordan et al.'s ResNet recipe) gives each module summand the interpolated statistics of that
module's output in the sources (an identity summand is left as the sites before made it).
``residual="sum"`` repairs the add's output instead: the module summands take one common
per-channel scale ``s`` and the shift, ``s`` solving ``s^2 var(a) + 2 s cov(a, b) + var(b) =
target std^2`` (the positive root nearest 1) with ``b`` measured, so the add's output has the
interpolated statistics exactly. A channel that no positive scale reaches (its fixed summands
alone are spread more than the target, say) is only shifted; a ``RepairWarning`` names the add
and counts such channels (``_Repairer.unreached``). On the BN ResNet-20 of the merging benchmark
``"sum"`` hurts: BN reset already leaves no variance collapse there, and forcing the add's
per-channel spread through the branch alone shifts the branch/stream balance (README).

Where each pre-activation comes from is recorded in one forward pass on the example input (leaf
module hooks and a ``TorchFunctionMode`` that sees every tensor op, in-place adds included). A
site is left as it is, with a ``RepairWarning`` naming it and the reason, when its activation is
not a module call, when no summand is a Linear/Conv/norm output, when a module to fold into is
called more than once or shares a parameter (a shared module or tied weights: the fold would
change its other uses), when a summand depends on a module being folded (``bn(x) + f(bn(x))``),
or when the fold would change a site repaired before it. A foldable module without a bias to take the shift is refused.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from intertwiner._types import DataLike, ExampleInput, SiteName
from intertwiner.errors import InvalidOptionError, NonFiniteError, TooFewSamplesError
from intertwiner.symmetry import SymmetrySpec, trace

__all__ = ["RESIDUAL", "RepairWarning", "repair"]

#: How a pre-activation that is a residual add is repaired: ``"summands"`` (default; Jordan et
#: al.'s ResNet recipe) gives each module summand its own interpolated statistics, ``"sum"`` the
#: add's output (module docstring).
RESIDUAL = ("summands", "sum")

#: Modules whose output channels REPAIR can rescale and shift: (channel dim of the output,
#: names of the scale and shift parameters).
_LINEAR = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_DIM1 = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)

#: Channels whose standard deviation in the merged model is below this (relative to the target)
#: are only shifted: a dead channel cannot be rescaled to a spread.
_DEAD = 1e-12


class RepairWarning(UserWarning):
    """A traced site REPAIR leaves as it is (the message names it and says why)."""


@dataclass
class _Point:
    """One pre-activation: the activation module (call ``call``) and the modules whose outputs
    it sums. ``producers``: the summands REPAIR folds into (one for a plain pre-activation, the
    module summands of a residual add); ``fixed``: the add also has summands it cannot change
    (an identity shortcut, a parameter-free module, a functional op), measured, not folded.
    ``output_of``: a point of ``residual="summands"``: the statistics are of this module's
    output, one summand of the add that feeds ``activation``."""

    site: str
    activation: str
    module: str
    call: int
    producers: tuple[str, ...]
    fixed: tuple[str, ...]
    dim: int  # channel dim of the pre-activation (1 or -1)
    width: int
    output_of: str | None = None

    @property
    def producer(self) -> str:
        return self.producers[0]

    def describe(self) -> str:
        if self.output_of is not None:
            return f"{self.site} ({self.output_of}, a summand of {self.activation})"
        parts = " + ".join([*self.producers, *self.fixed])
        return f"{self.site} ({self.activation} <- {parts})"


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted statistics are in."""


def _split(name: str) -> tuple[str, int]:
    site = SiteName.parse(name)
    return site.base, site.k


def _is_conv1d(producer: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): ``y = x W + b`` with ``W`` (in, out)."""
    weight = getattr(producer, "weight", None)
    return (
        type(producer).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == getattr(producer, "nf", None)
    )


def _channel_dim(producer: nn.Module) -> int | None:
    if isinstance(producer, _LINEAR) or isinstance(producer, nn.LayerNorm) or _is_conv1d(producer):
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


@dataclass(frozen=True)
class _Node:
    """Where a tensor came from: a leaf module's output, an addition of tensors, another op or
    the input; ``deps``: every leaf module whose output it depends on."""

    kind: str  # "module" | "add" | "op" | "input"
    name: str
    parts: tuple[_Node, ...]
    deps: frozenset[str]


_INPUT = _Node("input", "input", (), frozenset())
#: Additions whose operands REPAIR can treat as summands (no ``alpha``, no scalar operand).
_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
         torch.Tensor.__radd__, torch.Tensor.__iadd__}  # fmt: skip


class _Provenance(TorchFunctionMode):
    """Records, during one forward pass, the :class:`_Node` of every tensor (by id; the tensors
    are kept alive so that ids are not reused). An in-place add gets a new node that holds the
    operands' nodes from before it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, _Node] = {}
        self.keep: list[torch.Tensor] = []

    def node(self, t: torch.Tensor) -> _Node:
        return self.nodes.get(id(t), _INPUT)

    def set(self, t: torch.Tensor, node: _Node) -> None:
        self.keep.append(t)
        self.nodes[id(t)] = node

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [self.node(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        out = func(*args, **kwargs)
        deps = frozenset().union(*(n.deps for n in ins))
        tensor_args = len(args) == 2 and all(isinstance(a, torch.Tensor) for a in args)
        if func in _ADDS and tensor_args and not kwargs:
            node = _Node("add", getattr(func, "__name__", "add"), tuple(ins), deps)
        else:
            node = _Node("op", getattr(func, "__name__", str(func)), (), deps)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.set(t, node)
        return out


def _summands(node: _Node) -> list[_Node]:
    """The leaves of the addition tree that made ``node`` (``[node]`` when it is no addition)."""
    if node.kind != "add":
        return [node]
    return [leaf for part in node.parts for leaf in _summands(part)]


def _classify(
    named: dict[str, nn.Module], node: _Node, calls: dict[str, int]
) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(foldable summands, fixed summands, why not repairable or None) of a pre-activation.

    A summand is foldable when it is the output of a Linear/Conv/norm called once (a shared
    module's fold would change its other calls), appears once and no other summand depends on
    it (a summand computed from it, e.g. ``bn(x) + f(bn(x))``, would move with the fold)."""
    leaves = _summands(node)
    foldable = [
        n.name for n in leaves
        if n.kind == "module" and _channel_dim(named[n.name]) is not None
    ]  # fmt: skip
    if not foldable:
        made = ", ".join(sorted({f"{n.kind} {n.name}" for n in leaves}))
        return (), (), f"no Linear/Conv/norm output to fold into (made by {made})"
    shared = [m for m in foldable if calls.get(m, 0) > 1]
    if shared:
        return (), (), f"{shared[0]} is called {calls[shared[0]]} times (a shared module)"
    for m in foldable:  # one Parameter in several modules: the fold would reach the others
        own = {id(t) for t in named[m].parameters(recurse=False)}
        for other, mod in named.items():
            if other != m and own & {id(t) for t in mod.parameters(recurse=False)}:
                return (), (), f"{m} shares a parameter with {other} (tied weights)"
    if len(set(foldable)) < len(foldable):
        return (), (), "a module output is summed more than once"
    for m in foldable:
        for n in leaves:
            if m in n.deps and not (n.kind == "module" and n.name == m):
                return (), (), f"the summand {n.kind} {n.name!r} depends on {m}'s output"
    for m in foldable:
        _scale_shift_params(named[m], m)  # refuse a producer without a bias before any work
    dims = {_channel_dim(named[m]) for m in foldable}
    if len(dims) > 1:
        return (), (), f"summands {', '.join(foldable)} keep channels on different axes"
    fixed = tuple(
        f"{n.kind} {n.name}" for n in leaves if n.kind != "module" or n.name not in foldable
    )
    return tuple(foldable), fixed, None


def _points(
    model: nn.Module, spec: SymmetrySpec, example: ExampleInput, residual: str = "summands"
) -> tuple[list[_Point], list[str]]:
    """Every site activation that is a module call whose input is a foldable module's output or
    a sum of such outputs and other tensors, in the order of the forward pass (a sum: one point,
    or with ``residual="summands"`` one point per foldable summand); and the sites left out,
    each with the reason (what :func:`_warn_skipped` reports)."""
    named = dict(model.named_modules())
    wanted: dict[tuple[str, int], tuple[str, str]] = {}
    skipped: list[str] = []
    for s in spec.sites:
        for act in s.activations:
            base, call = _split(act)
            if base in named and base != "":
                wanted.setdefault((base, call), (s.name, act))
            else:
                skipped.append(f"{s.name} ({act}: not a module call)")
    leaves = {n: m for n, m in named.items() if n and not list(m.children())}
    prov = _Provenance()
    calls: dict[str, int] = {}
    inputs: list[tuple[str, int, str, str, _Node, torch.Tensor]] = []
    handles = []

    def out_hook(name):
        def hook(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                old = prov.node(out)  # an identity returns its input: keep what it depends on
                prov.set(out, _Node("module", name, (), old.deps | {name}))

        return hook

    def pre_hook(name):
        def hook(_m, inp):
            key = (name, calls.get(name, 0) + 1)  # counted by out_hook after this call
            if key in wanted and inp and isinstance(inp[0], torch.Tensor):
                inputs.append((name, key[1], *wanted[key], prov.node(inp[0]), inp[0]))

        return hook

    for n, m in leaves.items():
        handles.append(m.register_forward_hook(out_hook(n)))
    for base in {b for b, _ in wanted}:
        handles.append(named[base].register_forward_pre_hook(pre_hook(base)))
    try:
        with torch.no_grad(), prov:
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    found: list[_Point] = []
    found_deps: list[frozenset[str]] = []  # what each found point's input depends on
    for name, call, site, act, node, z in inputs:
        producers, fixed, why = _classify(named, node, calls)
        moved = [q.activation for q, d in zip(found, found_deps, strict=True) if d & set(producers)]
        if why is None and moved:
            # Sites are repaired in forward order: a fold must not move one repaired before it.
            why = f"folding into {', '.join(producers)} would also change {moved[0]}"
        if why is not None:
            skipped.append(f"{site} ({act}: {why})")
            continue
        dim = _channel_dim(named[producers[0]])
        width = int(z.shape[dim])
        if residual == "sum" or len(_summands(node)) == 1:
            found.append(_Point(site, act, name, call, producers, fixed, dim, width))
            found_deps.append(node.deps)
            continue
        for leaf in _summands(node):
            if leaf.kind == "module" and leaf.name in producers:
                point = _Point(site, act, name, call, (leaf.name,), (), dim, width, leaf.name)
                found.append(point)
                found_deps.append(leaf.deps)
    return found, skipped


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        warnings.warn(
            "repair: left as it is (no pre-activation REPAIR can fold into soundly) at "
            + "; ".join(skipped[:8])
            + (f"; and {len(skipped) - 8} more" if len(skipped) > 8 else ""),
            RepairWarning,
            stacklevel=4,
        )


def _rows(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``(samples, channels)`` float64 view of a pre-activation with its channels on ``dim``."""
    return z.detach().movedim(dim, -1).reshape(-1, z.shape[dim]).double()


class _Stats:
    """Streaming per-channel count, sums and sums of squares (float64) of a pre-activation z and,
    at a residual add with fixed summands, of the foldable part a and the cross term a * z."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0
        self.sa, self.saa, self.saz = 0.0, 0.0, 0.0

    def add(self, rows: torch.Tensor, a: torch.Tensor | None = None) -> None:
        self.n += rows.shape[0]
        self.s = self.s + rows.sum(0)
        self.ss = self.ss + (rows * rows).sum(0)
        if a is not None:
            self.sa = self.sa + a.sum(0)
            self.saa = self.saa + (a * a).sum(0)
            self.saz = self.saz + (a * rows).sum(0)

    def moments(self, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise TooFewSamplesError(f"repair: no data reached {where}")
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp_min(0.0)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            raise NonFiniteError(f"repair: non-finite pre-activations at {where}")
        return mean, var.sqrt()

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean of a, var of a, cov(a, z - a)) per channel, population moments."""
        ma = self.sa / self.n
        va = (self.saa / self.n - ma * ma).clamp_min(0.0)
        cov_az = self.saz / self.n - ma * (self.s / self.n)
        return ma, va, cov_az - va


def _collect(
    model: nn.Module,
    points: list[_Point],
    data: DataLike,
    *,
    batch_size: int,
    max_samples: int | None,
    split: bool = False,
) -> list[_Stats]:
    """Per point the streamed moments of the pre-activation over ``data`` (one pass; eval mode);
    ``split``: also of its foldable summands' part at a residual add with fixed summands."""
    from intertwiner.features import _eval_mode, limited_batches, model_input

    named = dict(model.named_modules())
    stats = [_Stats() for _ in points]
    calls: dict[str, int] = {}
    at_input = [p for p in points if p.output_of is None]
    by_call = {(p.module, p.call): k for k, p in enumerate(points) if p.output_of is None}
    # A producer is called once (_classify), so its output needs no call count.
    outputs = {p.output_of: k for k, p in enumerate(points) if p.output_of is not None}
    parts: dict[int, torch.Tensor] = {}  # point -> its foldable summands' sum in this batch
    owner = {m: k for k, p in enumerate(points) if split and p.fixed for m in p.producers}
    done: set[int] = set()

    def seen(k: int) -> None:
        done.add(k)
        if len(done) == len(points):
            raise _Stop  # nothing later is measured

    def out_hook(name):
        def hook(_m, _inp, out):
            if name in outputs:
                k = outputs[name]  # a copy below: a later in-place add does not reach it
                stats[k].add(_rows(out, points[k].dim))
                seen(k)
            if name in owner:
                k = owner[name]
                rows = _rows(out, points[k].dim)
                parts[k] = parts[k] + rows if k in parts else rows

        return hook

    def pre_hook(name):
        def hook(_m, inp):
            calls[name] = calls.get(name, 0) + 1
            k = by_call.get((name, calls[name]))
            if k is not None:
                stats[k].add(_rows(inp[0], points[k].dim), parts.pop(k, None))
                seen(k)

        return hook

    handles = [
        named[m].register_forward_pre_hook(pre_hook(m)) for m in {p.module for p in at_input}
    ]
    handles += [named[m].register_forward_hook(out_hook(m)) for m in {*owner, *outputs}]
    try:
        with torch.no_grad(), _eval_mode(model):
            for x in limited_batches(data, batch_size, max_samples, False):
                calls.clear()
                parts.clear()
                done.clear()
                try:
                    model(model_input(x, model))
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    for st, p in zip(stats, points, strict=True):
        st.moments(f"{p.site} ({p.activation})")  # raises on no data or non-finite values
    return stats


def _measure(
    model: nn.Module, points: list[_Point], data: DataLike, *, batch_size: int,
    max_samples: int | None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Per point (mean, std) of the pre-activation over ``data`` (one pass; eval mode)."""
    stats = _collect(model, points, data, batch_size=batch_size, max_samples=max_samples)
    return [st.moments(f"{p.site} ({p.activation})") for st, p in zip(stats, points, strict=True)]


def _fold(model: nn.Module, p: _Point, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``a -> scale * a + shift`` on the channels of ``p``'s foldable part ``a`` (the sum of its
    producers' outputs): every producer's rows scaled, the shift into the first one's bias."""
    for j, name in enumerate(p.producers):
        producer = model.get_submodule(name)
        weight, bias = _scale_shift_params(producer, name)
        with torch.no_grad():
            s = scale.to(weight.dtype).to(weight.device)
            # Linear/Conv rows and norm affines: axis 0; a Conv1D's outputs are its columns
            axis = 1 if _is_conv1d(producer) else 0
            view = [1] * weight.dim()
            view[axis] = -1
            weight.mul_(s.reshape(view))
            bias.mul_(s)
            if j == 0:
                bias.add_(shift.to(bias.dtype).to(bias.device))


def _scale_for(st: _Stats, std_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At a residual add ``z = a + b`` (``a``: foldable summands, ``b``: fixed ones) the positive
    per-channel scale s with ``std(s a + b) = std_t``, the root of
    ``s^2 var(a) + 2 s cov(a, b) + var(b) = std_t^2`` nearest 1; where no positive root exists
    (``b`` alone is spread more than the target, or ``a`` is dead) s = 1 and the channel is
    only shifted. Returns (s, mask of the channels that reach the target)."""
    _, va, cab = st.split()
    vb = st.ss / st.n - (st.s / st.n) ** 2 - va - 2 * cab
    live = va > _DEAD * std_t.clamp_min(1.0) ** 2
    va_safe = torch.where(live, va, 1.0)
    disc = cab * cab - va_safe * (vb - std_t * std_t)
    root = disc.clamp_min(0.0).sqrt()
    best = torch.ones_like(va)
    found = torch.zeros_like(live)
    for r in ((-cab + root) / va_safe, (-cab - root) / va_safe):
        ok = live & (disc >= 0) & (r > 0) & (~found | ((r - 1).abs() < (best - 1).abs()))
        best = torch.where(ok, r, best)
        found = found | ok
    return best, found


def _residual(repair: bool | str) -> str:
    """The ``residual`` mode of an ``interpolate``/``merge`` ``repair=`` option (True: default)."""
    if repair is True:
        return RESIDUAL[0]
    if repair in RESIDUAL:
        return str(repair)
    raise InvalidOptionError(f"repair={repair!r}; use True, False or one of {RESIDUAL}")


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
        residual: str = "summands",
    ) -> None:
        from intertwiner.alignment._align import _example_input

        if not sources:
            raise InvalidOptionError("repair needs at least one source model")
        if residual not in RESIDUAL:
            raise InvalidOptionError(f"repair: residual={residual!r}; use one of {RESIDUAL}")
        example = _example_input(sources[0], data, example_input)
        if spec is None:
            spec = trace(sources[0], example)
        self.points, self.skipped = _points(copy.deepcopy(sources[0]), spec, example, residual)
        _warn_skipped(self.skipped)
        self.data, self.batch_size, self.max_samples = data, batch_size, max_samples
        self.stats = [self._measure(m) for m in sources]
        #: activation -> channels of the last ``apply`` that could only be shifted (residual
        #: adds whose fixed summands alone are spread more than the target)
        self.unreached: dict[str, int] = {}

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
        self.unreached = {}
        for p, (mean_t, std_t) in zip(self.points, targets, strict=True):
            (st,) = _collect(
                model, [p], self.data, batch_size=self.batch_size, max_samples=self.max_samples,
                split=bool(p.fixed),
            )  # fmt: skip
            mean, std = st.moments(f"{p.site} ({p.activation})")
            if mean.shape != mean_t.shape:
                raise InvalidOptionError(
                    f"repair: {p.site} has {mean.numel()} channels, the target {mean_t.numel()}"
                )
            if p.fixed:
                # z = a + b: only a (the module summands) moves; b keeps its mean and spread.
                scale, ok = _scale_for(st, std_t)
                mean_a = st.sa / st.n
                _fold(model, p, scale, mean_t - scale * mean_a - (mean - mean_a))
                if int((~ok).sum()):
                    self.unreached[p.activation] = int((~ok).sum())
                continue
            live = std > _DEAD * std_t.clamp_min(1.0)
            scale = torch.where(live, std_t / torch.where(live, std, 1.0), 1.0)
            _fold(model, p, scale, mean_t - scale * mean)
        if self.unreached:
            warnings.warn(
                "repair: at residual adds where no positive scale of the module summands reaches "
                "the target std (the fixed summands, e.g. an identity shortcut, alone spread more "
                "than it), channels were only shifted, not rescaled: "
                + ", ".join(f"{a}: {n} channels" for a, n in self.unreached.items()),
                RepairWarning,
                stacklevel=3,
            )
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
    residual: str = "summands",
) -> nn.Module:
    """A copy of ``model`` (a merge of the aligned ``sources``, one architecture) whose every
    traced pre-activation channel has, on ``data``, the mean and std ``sum_k weights[k] *
    (mean_k, std_k)`` of the sources (module docstring). ``weights``: one per source, default
    equal, normalised to sum 1 (``interpolate`` passes ``(1 - alpha, alpha)``). ``residual``:
    at a residual add, repair each module summand (``"summands"``) or the sum (``"sum"``)."""
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    total = sum(weights)
    if total == 0:
        raise InvalidOptionError("repair weights sum to zero")
    rep = _Repairer(
        sources, data, spec=spec, example_input=example_input, batch_size=batch_size,
        max_samples=max_samples, residual=residual,
    )  # fmt: skip
    return rep.apply(copy.deepcopy(model), [w / total for w in weights])
