"""Rules for normalisations: BatchNorm (eval mode), LayerNorm, GroupNorm, and RMSNorm written
out as ``x * rsqrt(mean(x^2, -1, keepdim=True) + eps)`` (LLaMA, T5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx

from intertwiner.groups import ORTHOGONAL, PERMUTATION, Family
from intertwiner.symmetry._regions import op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._spaces import Info

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner


class Square:
    """``x * x`` (or ``x ** 2``) of a hidden tensor, kept only to feed a row statistic."""

    def __init__(self, x: Info):
        self.x = x


class RowStat:
    """A per-row statistic of a hidden tensor over its feature axis (RMSNorm's ``mean(x^2)``
    and elementwise functions of it): unchanged when ``x`` is moved by a matrix of ``family``."""

    def __init__(self, x: Info, family: Family):
        self.x, self.family = x, family


def squares_for_row_stats(graph: fx.Graph) -> set[fx.Node]:
    """``pow(x, 2)`` / ``mul(x, x)`` nodes read only by a ``mean`` (RMSNorm's statistic): they must
    not be taken for an activation ``x^2``."""
    out = set()
    for n in graph.nodes:
        if n.op != "call_function" or op_name(n) not in ("pow", "mul", "square"):
            continue
        a = n.args
        square = (
            (op_name(n) == "pow" and len(a) > 1 and a[1] == 2)
            or (op_name(n) == "mul" and len(a) > 1 and a[0] is a[1])
            or op_name(n) == "square"
        )
        if square and n.users and all(op_name(u) == "mean" for u in n.users):
            out.add(n)
    return out


@rule("batch_norm", "_native_batch_norm_legit_no_training")
def batch_norm(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    x, ndim = r.first(n), r.ndim(n)
    w, b, rm, rv = (list(n.args) + [None] * 5)[1:5]
    names = {
        "weight": r.pname(w),
        "bias": r.pname(b),
        "running_mean": r.pname(rm),
        "running_var": r.pname(rv),
    }
    if op_name(n) == "batch_norm" and bool(n.args[5]):
        raise Frozen("BatchNorm in training mode (batch statistics)")
    return r.an.batchnorm(
        x,
        names,
        ndim,
        affine=w is not None and b is not None,
        stats=rm is not None,
        where=r.module_path(n) or n.name,
    )


@rule("layer_norm")
def layer_norm(r: AtenRunner, n: fx.Node, value: Any) -> Info | None:
    shape, w, b = (list(n.args) + [None, None, None])[1:4]
    if list(shape) == [1]:
        return _one_element(r, n, w, b)
    return r.an.layernorm(r.first(n), r.pname(w), r.pname(b), len(shape), where=r.where(n))


def _one_element(r: AtenRunner, n: fx.Node, w: Any, b: Any) -> None:
    """LayerNorm over one element (CSATv2's ``nn.LayerNorm(1)`` on a one-channel map): ``x -
    mean(x)`` is exactly 0, so the output is the bias (0 without one) whatever the input: a
    fixed tensor, and the input's spaces are not restricted. The weight multiplies 0: no
    element can be said to move it, and the reason is recorded. Where the bias is read by
    another node too (a site there might move it), the input's spaces freeze instead."""
    if isinstance(b, fx.Node) and len(b.users) != 1:
        raise Frozen("a LayerNorm over one element whose bias is read elsewhere too")
    names = tuple(r.pname(a) for a in (w, b) if a is not None)
    if names and not any(names[0] in ps for _, _, ps in r.an.fixed_params):
        reason = (
            f"{r.where(n)}: LayerNorm over one element outputs its bias whatever the input "
            "(x - mean(x) = 0): its weight multiplies 0 and its output is fixed, so no site "
            "reaches these parameters"
        )
        r.an.fixed_params.append((r.module_path(n) or n.name, reason, names))
    return None


@rule("group_norm")
def group_norm(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """GroupNorm normalises each group of C/G channels on its own: the space splits into G
    blocks, each of which only permutations commute with (its weight and bias permuted along)."""
    x, ndim, where = r.first(n), r.ndim(n), r.where(n)
    groups = int(n.args[1])
    w = r.pname(n.args[2]) if len(n.args) > 2 else None
    b = r.pname(n.args[3]) if len(n.args) > 3 else None
    r.an.need_channels(x, ndim, where)
    # One group: statistics over every channel and position, unchanged by any permutation of the
    # channels, so channels split between sites (a zero-padded shortcut) need no new blocks.
    blocks = (
        x if groups == 1 else _group_blocks(r, x, groups, f"GroupNorm {where} ({groups} groups)")
    )
    for part in r.an.parts(blocks):
        r.an.restrict_matrix(part, PERMUTATION, f"GroupNorm {where}: centres and scales")
    for pname in (w, b):
        if pname is not None:
            r.an.act(blocks, pname, 0, "out")
    return blocks


def _group_blocks(r: AtenRunner, x: Info, groups: int, reason: str) -> Info:
    """``x`` cut into ``groups`` blocks of channels (or finer ones already there), in ``x``'s
    frame: each group is normalised on its own."""
    from intertwiner.symmetry._rules_shape import regroup  # (it imports this module)

    size = x.n // groups
    chunks = regroup(r, x, [size] * groups, reason)
    parts = []
    for j, chunk in enumerate(chunks):
        for sid, mode, ch in chunk.parts:
            parts.append((sid, mode, tuple(j * size + c for c in (ch or range(size)))))
    return x.moved(parts=tuple(parts))


def row_stat(r: AtenRunner, n: fx.Node, ndim: int) -> RowStat:
    """``mean(x^2, dim=-1, keepdim=True)``: invariant under orthogonal maps of ``x``."""
    x = r.info(n.args[0]).x
    dims = n.args[1] if len(n.args) > 1 else None
    dims = [d % ndim for d in ((dims,) if isinstance(dims, int) else (dims or []))]
    keep = (n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)) is True
    if dims != [x.dim + ndim] or not keep or x.outer != 1 or x.inner != 1:
        raise Frozen("a statistic over the feature axis other than mean(x^2, -1, keepdim)")
    return RowStat(x, ORTHOGONAL)


def normalise(r: AtenRunner, a: Any, b: Any, where: str) -> Info:
    """``x * f(mean(x^2))`` (RMSNorm): ``x`` keeps its space, restricted to the matrices under
    which the statistic is invariant; the statistic must come from ``x``'s own space."""
    x, stat = (a, b) if isinstance(b, RowStat) else (b, a)
    if not isinstance(x, Info) or r.an.parts(x) != r.an.parts(stat.x):
        raise Frozen("normalising a tensor by the statistic of another one")
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, stat.family, f"{where}: RMS normalisation over features")
    return x


# -- statistics over the feature axis or over positions (GRN, SimpleNorm, ...) --------------------
def feature_stat(r: AtenRunner, x: Info, fam: Family, why: str) -> RowStat:
    """A statistic of ``x`` over its feature axis (kept as a size-1 dim) that is unchanged when
    ``x`` moves by a matrix of ``fam``: ``x``'s sites are restricted to ``fam`` here, so the
    statistic is a fixed tensor wherever it goes (a normalisation reads it as ``RowStat``)."""
    if x.outer != 1 or x.inner != 1:
        raise Frozen("a statistic over a flattened feature axis")
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, fam, why)
    return RowStat(x, fam)


def _dims(n: fx.Node, ndim: int, at: int) -> list[int] | None:
    dims = n.args[at] if len(n.args) > at else n.kwargs.get("dim")
    if dims is None:
        return None
    return sorted(d % ndim for d in ((dims,) if isinstance(dims, int) else dims))


@rule("var", "std", "linalg_vector_norm")
def statistic(r: AtenRunner, n: fx.Node, value: Any) -> Info | RowStat:
    """Variance, standard deviation or vector norm over some dims. Over the feature axis alone
    (keepdim): a row statistic, permutation invariant (a 2-norm: orthogonal invariant). Over
    positions only: one value per feature, moved by the permutation that moves the features
    (a scaling would be squared or made absolute: permutations only)."""
    x, ndim, where = r.first(n), r.ndim(n), r.where(n)
    norm = op_name(n) == "linalg_vector_norm"
    dims = _dims(n, ndim, 2 if norm else 1)
    pos = x.dim + ndim
    keep = value.dim() == ndim
    if dims is None:
        raise Frozen("a statistic over all dims")
    if pos in dims:
        order = n.args[1] if norm and len(n.args) > 1 else n.kwargs.get("ord", 2)
        if dims != [pos] or not keep:
            raise Frozen("a statistic over the feature axis and other dims")
        fam = ORTHOGONAL if norm and order == 2 else PERMUTATION
        return feature_stat(r, x, fam, f"{where}: {op_name(n)} over the features")
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, PERMUTATION, f"{where}: {op_name(n)} over positions per feature")
    new = pos if keep else pos - sum(1 for d in dims if d < pos)
    return x.moved(dim=new - value.dim())
