"""Zipping two models (ZipIt!, Stoica et al. 2024): merge features within and across models.

At each hidden site of width n the 2n features ``z = [h_A; h_B]`` (activation outputs, streamed
over ``data``) are paired into n merged features by their correlation, same-model pairs allowed
(``match="greedy"``: ZipIt's greedy matching on the correlation matrix of the concatenated
features). A pair ``(i, j)`` becomes one merged feature

    m = c/2 (z_i / s_i + z_j / s_j),   unmerged back as z_i ~ (s_i / c) m,  z_j ~ (s_j / c) m

where ``s`` is the feature's root mean square and ``c = (s_i + s_j) / 2`` when the site's
intertwiner group has free positive scales (ReLU: a unit and its rescaled copy are one feature,
recovered exactly), ``s_j`` signed by the correlation when the group flips signs (tanh), and
``s = c = 1`` otherwise (ZipIt's plain average; ``scales=False`` forces it everywhere). This
defines the *merge* matrix ``M`` (n x 2n) and the *unmerge* matrix ``U`` (2n x n) with ``M U = I``.
Layer l of the zipped model is ``W = M_l [W_A U_A,l-1 ; W_B U_B,l-1]``, ``b = M_l [b_A; b_B]``,
with ``U_0 = [I; I]`` (the input is shared).

Partial zipping (``k`` < number of sites) zips the first ``k`` sites into a shared trunk and keeps
the rest as two heads: head A is A's layers after site k with its first layer reading
``U_A,k`` of the trunk's features (likewise B). ``k=0`` is the two models side by side (the
ensemble, exactly). The heads' outputs are concatenated (``heads="concat"``: models trained on
different label sets; the joint prediction is the argmax over all logits) or averaged
(``heads="average"``: one label set).

Supported: chains of ``nn.Linear`` and elementwise activation modules (an optional Flatten
first), as a traced spec sees them (every hidden site an activation between two Linear layers),
at any ``k``: the chain is rebuilt as a ``ZippedModel`` and checked to compute the model's
outputs. Other models whose every traced site is an elementwise activation between layers with
weights (``nn.Conv*d``, ``nn.Linear``; parameter-free pooling and flattening in between) are
zipped whole (``k=None``): the result is A's architecture with merged weights and its output
Linear widened to both models' outputs (or averaged). BatchNorm after a Conv or Linear is first
folded into it with its running statistics (``torch.fx``'s ``fuse``: the same function in eval
mode), so a CNN with BatchNorm is zipped as its BN-free equivalent (the result has no BatchNorm).
Anything else (other normalisation layers, BatchNorm not right after a Conv/Linear, residual
streams, attention, grouped convolutions) is refused with ``UnsupportedModuleError``.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intertwiner import _validate
from intertwiner._types import DataLike
from intertwiner.errors import (
    InvalidOptionError,
    NonFiniteError,
    ShapeError,
    TooFewSamplesError,
    UnsupportedModuleError,
)
from intertwiner.groups import best_assignment, family
from intertwiner.symmetry import SymmetrySpec, trace

__all__ = ["MATCHES", "ZipResult", "ZipSite", "ZippedModel", "zip_models"]


class ZipMatch(str, enum.Enum):
    """How units are paired: ZipIt!'s greedy pairing over both models (``GREEDY``, within a model
    too), a one-to-one pairing across models (``PERMUTATION``, Hungarian) or unit i with unit i
    (``IDENTITY``). A matching method, not a group: the merge itself is ``M``/``U`` below."""

    GREEDY = "greedy"
    PERMUTATION = "permutation"
    IDENTITY = "identity"


MATCHES = tuple(m.value for m in ZipMatch)
HEADS = ("concat", "average")


class ZippedModel(nn.Module):
    """A shared ``trunk`` and two ``heads``: ``combine(head_a(trunk(x)), head_b(trunk(x)))`` with
    ``combine`` concatenation along the last axis (``"concat"``) or the mean (``"average"``)."""

    def __init__(self, trunk: nn.Module, head_a: nn.Module, head_b: nn.Module, combine: str):
        super().__init__()
        if combine not in HEADS:
            raise InvalidOptionError(f"heads must be one of {HEADS}, got {combine!r}")
        self.trunk = trunk
        self.heads = nn.ModuleList([head_a, head_b])
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        a, b = self.heads[0](h), self.heads[1](h)
        if self.combine == "average":
            return (a + b) / 2
        return torch.cat([a, b], dim=-1)


@dataclass
class ZipSite:
    """One zipped site: ``merge`` (n x 2n) and ``unmerge`` (2n x n) with ``merge @ unmerge = I``;
    ``pairs``: the n pairs of indices into ``[A's features, B's features]`` (0..2n-1);
    ``within``: how many pairs join two features of one model."""

    name: str
    merge: torch.Tensor
    unmerge: torch.Tensor
    pairs: list[tuple[int, int]]
    within: int


@dataclass(repr=False)
class ZipResult:
    """Result of ``zip_models``: the zipped ``model``, the ``k`` zipped sites, the options."""

    model: nn.Module
    sites: list[ZipSite] = field(default_factory=list)
    k: int = 0
    depth: int = 0
    match: str = "greedy"
    heads: str = "concat"

    def __repr__(self) -> str:
        within = sum(s.within for s in self.sites)
        return (
            f"ZipResult(k={self.k} of {self.depth} sites, match={self.match!r}, "
            f"heads={self.heads!r}, same-model pairs={within}; .model, .sites)"
        )


# -- the chain of a model ----------------------------------------------------------------------
@dataclass
class _Chain:
    linears: list[nn.Linear]  # d layers
    acts: list[nn.Module]  # d - 1 activations, acts[l] after linears[l]
    groups: list[Any]  # the site's IntertwinerGroup per activation
    names: list[str]  # site names

    def layers(self, start: int = 0) -> list[nn.Module]:
        """Linear, act, Linear, ... from Linear ``start`` to the last one."""
        out: list[nn.Module] = []
        for i in range(start, len(self.linears)):
            out.append(self.linears[i])
            if i < len(self.acts):
                out.append(self.acts[i])
        return out


def _refuse(model: nn.Module, why: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(
        f"zip_models supports chains of nn.Linear layers and elementwise activation modules "
        f"(optionally a Flatten first); {type(model).__name__} is not one: {why}"
    )


def _chain(model: nn.Module, spec: SymmetrySpec, x: torch.Tensor) -> _Chain:
    """The Linear/activation chain of ``model`` as its spec sees it, checked on ``x``."""
    bad = [
        n
        for n, m in model.named_modules()
        if len(list(m.children())) == 0
        and any(True for _ in m.parameters(recurse=False))
        and not isinstance(m, nn.Linear)
    ]
    if bad:
        raise _refuse(model, f"modules with parameters other than nn.Linear: {bad[:4]}")
    if spec.dropped:
        raise _refuse(model, f"sites the tracer could not verify: {spec.dropped[:3]}")
    producer, consumer = {}, {}
    for s in spec.sites:
        kinds = sorted((a.name, a.axis, a.kind) for a in s.actions)
        lin = {a.name.rsplit(".", 1)[0] for a in s.actions}
        ok = (
            s.kind == "activation"
            and family(s.group.family).monomial
            and len(s.actions) == 3
            and all(a.channels is None and a.outer == a.inner == 1 for a in s.actions)
            and len(s.activations) == 1
            and len(lin) == 2
        )
        if ok:
            prod = [a.name.rsplit(".", 1)[0] for a in s.actions if a.kind == "A"]
            cons = [a.name.rsplit(".", 1)[0] for a in s.actions if a.kind == "phi(A)^-T"]
            ok = len(prod) == 2 and len(set(prod)) == 1 and len(cons) == 1
            ok = ok and sorted(k[2] for k in kinds) == ["A", "A", "phi(A)^-T"]
        if not ok:
            raise _refuse(model, f"site {s.name!r} ({s.kind}) is not an activation between two "
                          f"Linear layers (it acts on {s.acts_on()})")  # fmt: skip
        producer[prod[0]], consumer[s.name] = s, cons[0]
    first = [p for p in producer if p not in consumer.values()]
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not spec.sites or len(first) != 1:
        raise _refuse(model, "no hidden activation site between Linear layers was traced")
    order, sites = [first[0]], []
    while order[-1] in producer:
        s = producer[order[-1]]
        sites.append(s)
        order.append(consumer[s.name])
    if sorted(order) != sorted(linear_names) or len(sites) != len(spec.sites):
        raise _refuse(model, f"the Linear layers {linear_names} do not form one chain")
    try:
        acts = [model.get_submodule(s.activations[0]) for s in sites]
    except AttributeError:
        raise _refuse(model, "an activation is a function call, not a module") from None
    chain = _Chain(
        [model.get_submodule(n) for n in order], acts, [s.group for s in sites],
        [s.name for s in sites],
    )  # fmt: skip
    rebuilt = nn.Sequential(nn.Flatten(), *chain.layers()).eval()
    with torch.no_grad():
        was = model.training
        model.eval()
        ref, out = model(x), rebuilt(x)
        model.train(was)
    if ref.shape != out.shape or not torch.allclose(
        out, ref, rtol=1e-5, atol=1e-6 * (1 + float(ref.abs().max()))
    ):
        raise _refuse(model, "its forward is not Flatten -> Linear -> activation -> ... -> Linear "
                      "(the rebuilt chain computes other outputs)")  # fmt: skip
    return chain


# -- statistics and matching -------------------------------------------------------------------
@torch.no_grad()
def _site_moments(
    chain_a: _Chain, chain_b: _Chain, k: int, data: DataLike, batch_size: int,
    max_samples: int | None, progress: bool,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:  # fmt: skip
    """Per site l < k: (sum of z, sum of z z^T, count) of ``z = [h_A; h_B]`` in float64."""
    from intertwiner.features import limited_batches

    moments: list[list[Any]] = [[0.0, 0.0, 0] for _ in range(k)]
    for x in limited_batches(data, batch_size, max_samples, progress, desc="zip features"):
        x = x.to(chain_a.linears[0].weight.dtype).flatten(1)
        ha, hb = x, x
        for layer in range(k):
            ha = chain_a.acts[layer](chain_a.linears[layer](ha))
            hb = chain_b.acts[layer](chain_b.linears[layer](hb))
            _add(moments[layer], torch.cat([ha, hb], dim=1), chain_a.names[layer])
    return _finish(moments)


def _add(m: list, z: torch.Tensor, site: str) -> None:
    """Accumulate the sum, ``z^T z`` and count of one batch of features ``z`` into ``m``."""
    z = z.double()
    if not torch.isfinite(z).all():
        raise NonFiniteError(f"non-finite features at site {site!r}")
    m[0] = m[0] + z.sum(0)
    m[1] = m[1] + z.T @ z
    m[2] += z.shape[0]


def _finish(moments: list[list]) -> list[tuple]:
    if moments and moments[0][2] < 2:
        raise TooFewSamplesError("zip_models needs at least 2 samples of data to correlate")
    return [tuple(m) for m in moments]


def _greedy_pairs(corr: torch.Tensor, n: int, max_within: int) -> list[tuple[int, int]]:
    """ZipIt's greedy matching: repeatedly the most correlated pair of unmatched features, at
    most ``max_within`` of them joining two features of one model (ZipIt's alpha). A same-model
    pair in one model leaves two features of the other without a partner across: those
    leftovers (all of one model) are then paired among themselves, so a budget of w gives at most
    2 w same-model pairs."""
    c = corr.clone()
    c.fill_diagonal_(-float("inf"))
    iu = torch.triu_indices(2 * n, 2 * n, offset=1)
    order = torch.argsort(c[iu[0], iu[1]], descending=True, stable=True).tolist()
    used = torch.zeros(2 * n, dtype=torch.bool)
    pairs: list[tuple[int, int]] = []
    for budget in (max_within, n):  # the second pass pairs the leftovers of one model
        within = 0
        for t in order:
            i, j = int(iu[0, t]), int(iu[1, t])
            same = (i < n) == (j < n)
            if used[i] or used[j] or (same and within >= budget):
                continue
            within += same
            used[i] = used[j] = True
            pairs.append((i, j))
            if len(pairs) == n:
                return pairs
    return pairs  # pragma: no cover (the second pass always finishes)


def _pairs(corr: torch.Tensor, n: int, match: str, max_within: int) -> list[tuple[int, int]]:
    if match == ZipMatch.GREEDY:
        return _greedy_pairs(corr, n, max_within)
    if match == ZipMatch.PERMUTATION:  # across models only, the best one-to-one (Hungarian)
        perm = best_assignment(corr[:n, n:])
        return [(i, n + int(perm[i])) for i in range(n)]
    return [(i, n + i) for i in range(n)]  # identity: unit i of A with unit i of B


def _merge_unmerge(
    pairs: list[tuple[int, int]], rms: torch.Tensor, corr: torch.Tensor, group, scales: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """M (n x 2n) and U (2n x n), float64, with M U = I (see the module docstring)."""
    n = len(pairs)
    fam = family(group.family)
    M = torch.zeros(n, 2 * n, dtype=torch.float64)
    U = torch.zeros(2 * n, n, dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        si, sj = 1.0, 1.0
        if scales and fam.free_scales and rms[i] > 0 and rms[j] > 0:
            si, sj = float(rms[i]), float(rms[j])
        if scales and fam.flips_signs and corr[i, j] < 0:
            sj = -sj
        c = (abs(si) + abs(sj)) / 2
        M[k, i], M[k, j] = c / (2 * si), c / (2 * sj)
        U[i, k], U[j, k] = si / c, sj / c
    return M, U


# -- building the zipped model -----------------------------------------------------------------
def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out = out.to(dtype=like.weight.dtype, device=like.weight.device)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _head(chain: _Chain, k: int, unmerge: torch.Tensor | None) -> nn.Sequential:
    """Layers of ``chain`` after site k; the first reads the trunk through ``unmerge``."""
    layers = [copy.deepcopy(m) for m in chain.layers(k)]
    if unmerge is not None:
        first = chain.linears[k]
        w = first.weight.detach().double() @ unmerge
        b = None if first.bias is None else first.bias.detach()
        layers[0] = _linear(w, b, first)
    return nn.Sequential(*layers)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no BatchNorm; else an eval-mode copy (a ``torch.fx``
    GraphModule) with every BatchNorm folded into the Conv/Linear before it, its running
    statistics and affine becoming that layer's weights and bias. Raises UnsupportedModuleError
    when a BatchNorm is left (not right after a Conv/Linear, or one the model cannot be traced)."""
    if not any(isinstance(m, _BATCHNORMS) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(model).eval())
    except Exception as e:  # noqa: BLE001 (any torch.fx tracing failure: say what to do)
        raise UnsupportedModuleError(
            f"zip_models folds BatchNorm into the layer before it, but {type(model).__name__} "
            f"cannot be traced by torch.fx ({e}); fold it yourself or zip a model without it"
        ) from None
    left = [n for n, m in folded.named_modules() if isinstance(m, _BATCHNORMS)]
    if left:
        raise UnsupportedModuleError(
            f"zip_models folds BatchNorm into the Conv/Linear right before it; in "
            f"{type(model).__name__} {left[:3]} follow something else (BatchNorm statistics do "
            "not merge linearly): zip a model without them"
        )
    return folded.eval()


def zip_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    *,
    k: int | None = None,
    match: str = "greedy",
    heads: str = "concat",
    scales: bool = True,
    max_within: float = 1.0,
    example_input: torch.Tensor | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
) -> ZipResult:
    """Zip A and B (see the module docstring): the first ``k`` hidden sites (default all) merged
    from the correlations of their features on ``data`` (a Dataset, DataLoader or tensor of
    inputs), the rest kept as two heads.

    ``match``: ``"greedy"`` (ZipIt: pairs within and across models), ``"permutation"`` (across
    models only, one-to-one: activation matching) or ``"identity"`` (unit i with unit i: weight
    averaging of models aligned beforehand). ``heads``: ``"concat"`` (outputs side by side: two
    label sets) or ``"average"`` (one label set). ``scales``: use the site group's scales and signs
    in the merge (see the module docstring). ``max_within``: the largest fraction of a site's pairs
    that may join two features of one model (greedy matching; ZipIt's alpha; 0: across models
    only). A and B need equal hidden widths and one input size. BatchNorm is folded into the
    layer before it first (running statistics, eval mode; module docstring).
    """
    from intertwiner.alignment._align import _example_input

    if match not in MATCHES:
        raise InvalidOptionError(f"match must be one of {MATCHES}, got {match!r}")
    if heads not in HEADS:
        raise InvalidOptionError(f"heads must be one of {HEADS}, got {heads!r}")
    if not 0.0 <= float(max_within) <= 1.0:
        raise InvalidOptionError(f"max_within is a fraction in [0, 1], got {max_within!r}")
    x = _example_input(model_a, data, example_input)
    if k != 0:  # k=0 keeps the models as they are: nothing is merged
        model_a, model_b = _fold_batchnorm(model_a), _fold_batchnorm(model_b)
    spec_a, spec_b = trace(model_a, x), trace(model_b, x)
    try:
        ca, cb = _chain(model_a, spec_a, x), _chain(model_b, spec_b, x)
    except UnsupportedModuleError as e:
        if k == 0:  # nothing zipped: the two models side by side, whatever they are
            pair = ZippedModel(nn.Identity(), copy.deepcopy(model_a), copy.deepcopy(model_b), heads)
            return ZipResult(pair.eval(), [], 0, len(spec_a.sites), match, heads)
        if k is not None and k != len(spec_a.sites):
            raise UnsupportedModuleError(
                f"{e}. Partial zipping (k={k}) needs such a chain; other models (convolutions, "
                "pooling) are zipped whole: k=None"
            ) from None
        return _zip_spec(
            model_a, model_b, spec_a, data, heads=heads, batch_size=batch_size,
            max_samples=max_samples, progress=progress,
            opts=dict(match=match, scales=scales, max_within=max_within),
        )  # fmt: skip
    widths_a = [lin.weight.shape for lin in ca.linears[:-1]] + [ca.linears[-1].weight.shape[1:]]
    widths_b = [lin.weight.shape for lin in cb.linears[:-1]] + [cb.linears[-1].weight.shape[1:]]
    if widths_a != widths_b:
        raise ShapeError(
            "zip_models needs A and B with equal input and hidden widths (outputs may differ), "
            f"got {[tuple(w) for w in widths_a]} and {[tuple(w) for w in widths_b]}"
        )
    if heads == "average" and ca.linears[-1].weight.shape != cb.linears[-1].weight.shape:
        raise ShapeError("heads='average' needs outputs of one size; use heads='concat'")
    if [type(a) for a in ca.acts] != [type(b) for b in cb.acts]:
        raise ShapeError("A and B have different activations at some site; zip needs equal ones")
    depth = len(ca.acts)
    k = depth if k is None else _validate.positive_int(k, "k", minimum=0)
    if k > depth:
        raise InvalidOptionError(f"k={k} but the models have {depth} hidden sites (k <= {depth})")
    moments = _site_moments(ca, cb, k, data, batch_size, max_samples, progress)
    opts = dict(match=match, scales=scales, max_within=max_within)
    sites: list[ZipSite] = []
    trunk: list[nn.Module] = [nn.Flatten()]
    ua = ub = None  # unmerge of the previous site, A's and B's rows
    for layer in range(k):
        n = ca.linears[layer].weight.shape[0]
        site = _zip_site(ca.names[layer], ca.groups[layer], n, moments[layer], **opts)
        M = site.merge
        la, lb = ca.linears[layer], cb.linears[layer]
        wa, wb = la.weight.detach().double(), lb.weight.detach().double()
        if ua is not None:
            wa, wb = wa @ ua, wb @ ub
        w = M @ torch.cat([wa, wb])
        b = None
        if la.bias is not None and lb.bias is not None:
            b = M @ torch.cat([la.bias.detach().double(), lb.bias.detach().double()])
        elif la.bias is not None or lb.bias is not None:
            raise ShapeError(f"only one of A and B has a bias at {ca.names[layer]!r}")
        trunk += [_linear(w, b, la), copy.deepcopy(ca.acts[layer])]
        ua, ub = site.unmerge[:n], site.unmerge[n:]
        sites.append(site)
    model = ZippedModel(nn.Sequential(*trunk), _head(ca, k, ua), _head(cb, k, ub), heads)
    return ZipResult(model.eval(), sites, k, depth, match, heads)


def _zip_site(
    name: str, group, n: int, moments: tuple, *, match: str, scales: bool, max_within: float
) -> ZipSite:
    """Pairs, merge and unmerge of one site from the moments of ``z = [h_A; h_B]``."""
    total, gram, count = moments
    mean = total / count
    cov = gram / count - torch.outer(mean, mean)
    std = cov.diagonal().clamp(min=0).sqrt()
    live = torch.outer(std, std) > 0  # a unit constant on the data correlates with nothing
    corr = torch.where(live, cov / torch.outer(std, std).clamp(min=1e-300), torch.zeros_like(cov))
    rms = (gram.diagonal() / count).clamp(min=0).sqrt()
    fam = family(group.family)
    score = corr.abs() if scales and fam.flips_signs else corr
    pairs = _pairs(score, n, match, int(max_within * n))
    M, U = _merge_unmerge(pairs, rms, corr, group, scales)
    within = sum(1 for i, j in pairs if (i < n) == (j < n))
    return ZipSite(name, M, U, pairs, within)


# -- whole models through their spec (convolutions, pooling) -------------------------------------
def _along(t: torch.Tensor, ax, mat: torch.Tensor) -> torch.Tensor:
    """``mat`` (m x n_total) applied to the channels of ``t`` along ``ax``'s view."""
    shape = list(t.shape)
    v = t.reshape(*shape[: ax.axis], ax.outer, ax.n_total, ax.inner, *shape[ax.axis + 1 :])
    d = ax.axis + 1
    out = torch.movedim(torch.tensordot(mat, v, dims=([1], [d])), 0, d)
    return out.reshape(*shape[: ax.axis], -1, *shape[ax.axis + 1 :])


def _spec_plan(model: nn.Module, spec: SymmetrySpec) -> tuple[dict, dict, str]:
    """``{param: (site, producer axis)}``, ``{param: (site, consumer axis)}`` and the output
    module's name; refuses what zipping through the spec cannot merge linearly."""

    def refuse(why: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(
            f"zip_models merges models whose every hidden site is an elementwise activation "
            f"between layers with weights (Linear, Conv); {type(model).__name__}: {why}"
        )

    weighted = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    other = [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, weighted)
    ]
    if other:  # a normalisation's statistics span features: merged features change them
        raise refuse(f"modules with parameters other than Linear/Conv: {other[:4]}")
    if spec.dropped:
        raise refuse(f"sites the tracer could not verify: {spec.dropped[:3]}")
    if not spec.sites:
        raise refuse("no hidden site was traced")
    prod: dict[str, tuple] = {}
    cons: dict[str, tuple] = {}
    for s in spec.sites:
        if s.kind != "activation" or not family(s.group.family).monomial or s.folds:
            raise refuse(f"site {s.name!r} is a {s.kind} site of group {s.group.name}")
        for a in s.actions:
            if a.buffer or a.kind not in ("A", "phi(A)^-T") or a.channels is not None or a.within:
                raise refuse(
                    f"site {s.name!r} moves {a.describe()} (BatchNorm statistics, grouped or "
                    "partial channels do not merge linearly)"
                )
            book = prod if a.kind == "A" else cons
            if a.name in book:
                raise refuse(f"{a.name} is moved by two sites on one side")
            book[a.name] = (s, a)
    params = dict(model.named_parameters())
    outputs = [n for n in params if n not in prod]
    modules = {n.rsplit(".", 1)[0] for n in outputs}
    if len(modules) != 1 or not isinstance(model.get_submodule(next(iter(modules))), nn.Linear):
        raise refuse(f"parameters outside the sites' producers, not one output Linear: {outputs}")
    return prod, cons, modules.pop()


@torch.no_grad()
def _spec_moments(
    model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, data: DataLike,
    batch_size: int, max_samples: int | None, progress: bool,
) -> list[tuple]:  # fmt: skip
    from intertwiner.alignment._views import feature_rows
    from intertwiner.features import Capturer, limited_batches

    layers = sorted({a for s in spec.sites for a in s.activations})
    moments: list[list[Any]] = [[0.0, 0.0, 0] for _ in spec.sites]
    with Capturer(model_a, layers) as cap_a, Capturer(model_b, layers) as cap_b:
        for x in limited_batches(data, batch_size, max_samples, progress, desc="zip features"):
            fa, fb = cap_a.run(x), cap_b.run(x)
            for m, s in zip(moments, spec.sites, strict=True):
                for act in s.activations:
                    ax = s.activation_axes[act]
                    za, zb = feature_rows(fa[act], ax), feature_rows(fb[act], ax)
                    _add(m, torch.cat([za, zb], dim=1), s.name)
    return _finish(moments)


def _zip_spec(
    model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, data: DataLike, *, heads: str,
    batch_size: int, max_samples: int | None, progress: bool, opts: dict,
) -> ZipResult:  # fmt: skip
    """Every site zipped: A's architecture with merged weights, the output Linear widened to
    both models' outputs (``"concat"``) or averaged."""
    prod, cons, out_name = _spec_plan(model_a, spec)
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    out_params = [n for n in pa if n not in prod]
    if pa.keys() != pb.keys() or any(pa[n].shape != pb[n].shape for n in pa if n not in out_params):
        raise ShapeError("zip_models needs A and B of one architecture (outputs may differ)")
    if heads == "average" and any(pa[n].shape != pb[n].shape for n in out_params):
        raise ShapeError("heads='average' needs outputs of one size; use heads='concat'")
    moments = _spec_moments(model_a, model_b, spec, data, batch_size, max_samples, progress)
    sites = {
        s.name: _zip_site(s.name, s.group, s.width, m, **opts)
        for s, m in zip(spec.sites, moments, strict=True)
    }
    merged: dict[str, torch.Tensor] = {}
    for name in pa:
        ta, tb = pa[name].detach().double(), pb[name].detach().double()
        if name in cons:
            s, ax = cons[name]
            u = sites[s.name].unmerge
            ta, tb = _along(ta, ax, u[: s.width].T), _along(tb, ax, u[s.width :].T)
        if name in prod:
            s, ax = prod[name]
            m = sites[s.name].merge
            merged[name] = _along(ta, ax, m[:, : s.width]) + _along(tb, ax, m[:, s.width :])
        else:
            merged[name] = (ta + tb) / 2 if heads == "average" else torch.cat([ta, tb])
    model = copy.deepcopy(model_a)
    old = model.get_submodule(out_name)
    if heads == "concat":
        new = nn.Linear(
            old.in_features, merged[f"{out_name}.weight"].shape[0], bias=old.bias is not None
        )
        parent, _, leaf = out_name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model,
            leaf,
            new.to(old.weight.device, old.weight.dtype),
        )
    with torch.no_grad():
        for name, t in merged.items():
            model.get_parameter(name).copy_(t)
    out = list(sites.values())
    return ZipResult(model.eval(), out, len(out), len(out), opts["match"], heads)
