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
with ``U_0 = [I; I]`` (the input is shared; for a Conv, along its channel axes).

Partial zipping (ZipIt's): only the first ``k`` sites in forward order are zipped; every layer
after site k keeps A's and B's units side by side (A's channels first, block-diagonal weights),
the first of them reading A's and B's features back from the merged ones through ``U_A`` and
``U_B``. So the result is a plain model of A's architecture: the layers up to site k at one
model's width, the ones after it twice as wide (two heads in one), the output Linear giving both
models' outputs side by side (``heads="concat"``: models trained on different label sets; the
joint prediction over the two label sets is the argmax over all of them, A's logits first) or
their mean (``heads="average"``: one label set). ``k`` = the number of sites (the default) zips
everything but the output layer; ``k=0`` is the two models side by side (``ZippedModel``, the
ensemble exactly: the same outputs, for any models).

REPAIR after zipping (``repair=True``; Jordan et al. 2023, through ``_repair``'s folding): a
merged channel ``m = M z`` of a site's pre-activations has less spread than the features it
merges when they are not perfectly correlated, and the loss compounds with depth. Each
pre-activation channel is re-normalised, on ``data`` and site after site in forward order, to
mean ``M @ [mean_A; mean_B]`` and std ``|M| @ [std_A; std_B]`` (what a perfectly correlated pair
would give; REPAIR's midpoint target when M averages one unit of A with one of B), and channels
kept side by side to A's and B's own statistics; the correction is folded into the bias and rows
of the Conv/Linear that produces the channel, so the result is the same plain model.

Supported: models whose every traced site is an elementwise activation between layers with
weights (``nn.Conv*d``, ``nn.Linear``; parameter-free pooling and flattening in between), one
output Linear. BatchNorm after a Conv or Linear is first folded into it with its running
statistics (``torch.fx``'s ``fuse``: the same function in eval mode), so a CNN with BatchNorm is
zipped as its BN-free equivalent (the result has no BatchNorm). Anything else (other
normalisation layers, BatchNorm not right after a Conv/Linear, residual streams, attention,
grouped convolutions) is refused with ``UnsupportedModuleError``.
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
from intertwiner.models import WIDENED_ATTR, widen
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
    ``combine`` concatenation along the last axis (``"concat"``) or the mean (``"average"``).
    ``zip_models(k=0)`` returns the two models as heads of an identity trunk: the ensemble."""

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
    """Result of ``zip_models``: the zipped ``model`` (a plain model of A's architecture, wider
    after site k; ``k=0``: a ``ZippedModel``), the ``k`` zipped sites of ``depth``, the options."""

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


# -- statistics and matching -------------------------------------------------------------------
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


# -- BatchNorm -----------------------------------------------------------------------------------
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
    repair: bool = False,
    example_input: torch.Tensor | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
) -> ZipResult:
    """Zip A and B (see the module docstring): the first ``k`` hidden sites in forward order
    (default all) merged from the correlations of their features on ``data`` (a Dataset,
    DataLoader or tensor of inputs), the rest kept as two heads side by side.

    ``match``: ``"greedy"`` (ZipIt: pairs within and across models), ``"permutation"`` (across
    models only, one-to-one: activation matching) or ``"identity"`` (unit i with unit i: weight
    averaging of models aligned beforehand). ``heads``: ``"concat"`` (outputs side by side: two
    label sets, predict the argmax over all of them) or ``"average"`` (one label set). ``scales``:
    use the site group's scales and signs in the merge. ``max_within``: the largest fraction of a
    site's pairs that may join two features of one model (greedy matching; ZipIt's alpha; 0:
    across models only). ``repair``: REPAIR after zipping (module docstring), statistics from
    ``data``; nothing to repair at ``k=0``. A and B need one architecture (output sizes may differ with ``"concat"``).
    BatchNorm is folded into the layer before it first (running statistics, eval mode).
    """
    from intertwiner.alignment._align import _example_input

    if match not in MATCHES:
        raise InvalidOptionError(f"match must be one of {MATCHES}, got {match!r}")
    if heads not in HEADS:
        raise InvalidOptionError(f"heads must be one of {HEADS}, got {heads!r}")
    if not 0.0 <= float(max_within) <= 1.0:
        raise InvalidOptionError(f"max_within is a fraction in [0, 1], got {max_within!r}")
    if k is not None:
        k = _validate.positive_int(k, "k", minimum=0)
    x = _example_input(model_a, data, example_input)
    if k == 0:  # nothing merged: the two models side by side, whatever they are (exactly)
        if heads == "average":
            _same_outputs(model_a, model_b, x)
        depth = len(trace(model_a, x).sites)
        pair = ZippedModel(nn.Identity(), copy.deepcopy(model_a), copy.deepcopy(model_b), heads)
        return ZipResult(pair.eval(), [], 0, depth, match, heads)
    model_a, model_b = _fold_batchnorm(model_a), _fold_batchnorm(model_b)
    return _zip_spec(
        model_a, model_b, trace(model_a, x), data, k=k, heads=heads, repair=repair, example=x,
        batch_size=batch_size, max_samples=max_samples, progress=progress,
        opts=dict(match=match, scales=scales, max_within=max_within),
    )  # fmt: skip


def _same_outputs(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        sa, sb = model_a.eval()(x).shape, model_b.eval()(x).shape
    if sa != sb:
        raise ShapeError(
            f"heads='average' needs outputs of one size, got {tuple(sa)} and {tuple(sb)}; "
            "use heads='concat'"
        )


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
        fam = family(s.group.family)
        # zipping matches units freely: a site whose permutation part is fixed (reversal) cannot
        if s.kind != "activation" or not fam.monomial or not fam.any_permutation or s.folds:
            raise refuse(f"site {s.name!r} is a {s.kind} site of group {s.group.name}")
        for a in s.actions:
            if a.buffer or a.kind not in ("A", "phi(A)^-T") or a.channels is not None or a.within:
                raise refuse(
                    f"site {s.name!r} moves {a.describe()} (BatchNorm statistics, grouped or "
                    "partial channels and one-number parameters do not merge linearly)"
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
    model_a: nn.Module, model_b: nn.Module, sites: list, data: DataLike,
    batch_size: int, max_samples: int | None, progress: bool,
) -> list[tuple]:  # fmt: skip
    """Per site: (sum of z, sum of z z^T, count) of ``z = [h_A; h_B]`` in float64."""
    from intertwiner.alignment._views import feature_rows
    from intertwiner.features import Capturer, limited_batches

    layers = sorted({a for s in sites for a in s.activations})
    moments: list[list[Any]] = [[0.0, 0.0, 0] for _ in sites]
    with Capturer(model_a, layers) as cap_a, Capturer(model_b, layers) as cap_b:
        for x in limited_batches(data, batch_size, max_samples, progress, desc="zip features"):
            fa, fb = cap_a.run(x), cap_b.run(x)
            for m, s in zip(moments, sites, strict=True):
                for act in s.activations:
                    ax = s.activation_axes[act]
                    za, zb = feature_rows(fa[act], ax), feature_rows(fb[act], ax)
                    _add(m, torch.cat([za, zb], dim=1), s.name)
    return _finish(moments)


def _cat_along(ta: torch.Tensor, tb: torch.Tensor, ax) -> torch.Tensor:
    """``ta`` and ``tb`` side by side along the channels of ``ax``'s view (A's first)."""
    shape_a, shape_b = list(ta.shape), list(tb.shape)
    d = ax.axis
    va = ta.reshape(*shape_a[:d], ax.outer, -1, ax.inner, *shape_a[d + 1 :])
    vb = tb.reshape(*shape_b[:d], ax.outer, -1, ax.inner, *shape_b[d + 1 :])
    return torch.cat([va, vb], dim=d + 1).reshape(*shape_a[:d], -1, *shape_a[d + 1 :])


def _forward_order(model: nn.Module, spec: SymmetrySpec, prod: dict) -> list:
    """The sites in the order of their producers' parameters (forward order of a chain)."""
    position = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    first = {s.name: min(position[n] for n, (t, _) in prod.items() if t.name == s.name)
             for s in spec.sites}  # fmt: skip
    return sorted(spec.sites, key=lambda s: first[s.name])


def _zip_spec(
    model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, data: DataLike, *,
    k: int | None, heads: str, repair: bool, example: torch.Tensor, batch_size: int,
    max_samples: int | None, progress: bool, opts: dict,
) -> ZipResult:  # fmt: skip
    """The first ``k`` sites zipped, the rest side by side: A's architecture with merged weights
    up to site k, wider layers after it (A's channels, then B's; block-diagonal weights) and the
    output Linear widened to both models' outputs (``"concat"``) or averaged."""
    prod, cons, out_name = _spec_plan(model_a, spec)
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    out_params = [n for n in pa if n not in prod]
    if pa.keys() != pb.keys() or any(pa[n].shape != pb[n].shape for n in pa if n not in out_params):
        raise ShapeError("zip_models needs A and B of one architecture (outputs may differ)")
    if heads == "average" and any(pa[n].shape != pb[n].shape for n in out_params):
        raise ShapeError("heads='average' needs outputs of one size; use heads='concat'")
    order = _forward_order(model_a, spec, prod)
    depth = len(order)
    k = depth if k is None else k
    if k > depth:
        raise InvalidOptionError(f"k={k} but the models have {depth} hidden sites (k <= {depth})")
    zipped = {s.name for s in order[:k]}
    for name in cons:  # a zipped site must not read an unzipped one: k covers a prefix
        if name in prod and prod[name][0].name in zipped and cons[name][0].name not in zipped:
            raise UnsupportedModuleError(
                f"zip_models: {name} reads site {cons[name][0].name!r} (kept side by side) and "
                f"makes {prod[name][0].name!r} (zipped); the first k={k} sites in parameter "
                "order are not a prefix of the forward pass: use k=None"
            )
    moments = _spec_moments(model_a, model_b, order[:k], data, batch_size, max_samples, progress)
    sites = {
        s.name: _zip_site(s.name, s.group, s.width, m, **opts)
        for s, m in zip(order[:k], moments, strict=True)
    }
    merged: dict[str, torch.Tensor] = {}
    for name in pa:
        ta, tb = pa[name].detach().double(), pb[name].detach().double()
        if name in cons:
            s, ax = cons[name]
            if s.name in sites:  # reads merged features: through A's and B's unmerge
                u = sites[s.name].unmerge
                ta, tb = _along(ta, ax, u[: s.width].T), _along(tb, ax, u[s.width :].T)
            else:  # reads [A's features; B's features]: each its own half
                ta, tb = (
                    _cat_along(ta, torch.zeros_like(ta), ax),
                    _cat_along(torch.zeros_like(tb), tb, ax),
                )
        if name in prod:
            s, ax = prod[name]
            if s.name in sites:
                m = sites[s.name].merge
                merged[name] = _along(ta, ax, m[:, : s.width]) + _along(tb, ax, m[:, s.width :])
            else:
                merged[name] = _cat_along(ta, tb, ax)
        else:
            merged[name] = (ta + tb) / 2 if heads == "average" else torch.cat([ta, tb])
    model = copy.deepcopy(model_a)
    layers = {
        mod: list(merged[f"{mod}.weight"].shape)
        for mod in sorted({n.rsplit(".", 1)[0] for n in merged})
        if model.get_submodule(mod).weight.shape != merged[f"{mod}.weight"].shape
    }
    if layers:
        widen(model, layers)
        # A's build config alone no longer rebuilds this model: record it with the widened
        # layers, which checkpoints save and load rebuilds (a weights checkpoint otherwise)
        config = model.__dict__.pop("intertwiner_config", None)
        if isinstance(config, dict):
            setattr(model, WIDENED_ATTR, {"config": config, "layers": layers})
    with torch.no_grad():
        for name, t in merged.items():
            model.get_parameter(name).copy_(t)
    model.eval()
    if repair:
        _repair_zip(model, model_a, model_b, spec, sites, data, example, batch_size, max_samples)
    out = list(sites.values())
    return ZipResult(model, out, k, depth, opts["match"], heads)


def _repair_zip(
    model: nn.Module, model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, sites: dict,
    data: DataLike, example: torch.Tensor, batch_size: int, max_samples: int | None,
) -> None:  # fmt: skip
    """REPAIR in place: every pre-activation channel of ``model`` gets, on ``data``, the mean
    ``M @ [mean_A; mean_B]`` and std ``|M| @ [std_A; std_B]`` of the features it merges (a
    zipped site with merge matrix M), or A's and B's own statistics side by side (a site kept
    side by side)."""
    from intertwiner.alignment._repair import _Repairer

    rep = _Repairer(
        [model_a, model_b], data, spec=spec, example_input=example, batch_size=batch_size,
        max_samples=max_samples,
    )  # fmt: skip
    targets = []
    for p, (mean_a, std_a), (mean_b, std_b) in zip(rep.points, *rep.stats, strict=True):
        mean, std = torch.cat([mean_a, mean_b]), torch.cat([std_a, std_b])
        if p.site in sites:
            m = sites[p.site].merge
            mean, std = m @ mean, m.abs() @ std
        targets.append((mean, std))
    rep.apply_targets(model, targets)
