"""Rules that follow the feature axis through views, joins, splits, reductions, padding,
pooling and resampling."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from intertwiner.groups import PERMUTATION, POSITIVE_MONOMIAL
from intertwiner.symmetry._regions import IDENTITY, op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._rules_norms import Square, feature_stat, row_stat
from intertwiner.symmetry._spaces import Info, ParamRef

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner

#: Ops that read a tensor's metadata, not its values.
NO_FEATURES = ("_assert_tensor_metadata", "sym_size", "sym_numel", "size", "dim", "sym_stride")


@rule(*NO_FEATURES, always=True)
def no_features(r: AtenRunner, n: fx.Node, value: Any) -> None:
    return None


@rule("new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like",
      "empty_like")  # fmt: skip
def fresh_like(r: AtenRunner, n: fx.Node, value: Any) -> None:
    """A new tensor shaped (or typed) like a hidden one (torchvision Swin's ``x.new_zeros`` for
    its shifted-window mask): its values do not depend on the hidden tensor's, so it is fixed."""
    if op_name(n) == "full_like" and isinstance(n.args[1] if len(n.args) > 1 else None, fx.Node):
        raise Frozen("full_like with a tensor fill value")
    return None


def regroup(r: AtenRunner, x: Info, sizes: list[int], reason: str) -> list[Info]:
    """``_regroup``, counting on each site in a chunk that a cut of the axis sent it one way
    (``_SiteState.chunked``): chunks that follow existing blocks record nothing else, and a
    reversal across the blocks (``_block_reversal``) holds only where no op told them apart."""
    out = _regroup(r, x, sizes, reason)
    if len(sizes) > 1:
        for chunk in out:
            for sid, _, _ in chunk.parts:
                r.an.sites[sid].chunked += 1
    return out


def _regroup(r: AtenRunner, x: Info, sizes: list[int], reason: str) -> list[Info]:
    """``x``'s feature axis cut into consecutive chunks of ``sizes`` channels, one Info each (in
    the chunk's own frame). An unsplit space is cut into one site per chunk (block-diagonal
    elements, ``Spaces.split_blocks``); a space already cut into blocks (an earlier split, a
    grouped convolution, a concatenation) is kept when each block lies within one chunk; a block
    across chunks is cut into runs of its elements that lie in one chunk each (a finer
    block-diagonal element: a subgroup), so no element moves channels between chunks."""
    parts = r.an.parts(x)
    if len(parts) == 1 and parts[0][2] is None:
        if parts[0][0] == 0:  # the fixed space: every chunk stays fixed
            return [x.moved(parts=((0, parts[0][1], None),), n=z) for z in sizes]
        blocks = r.an.split_blocks(x, sizes, reason)
        return [
            x.moved(parts=((sid, mode, None),), n=z)
            for (sid, mode, _), z in zip(blocks.parts, sizes, strict=True)
        ]
    if x.outer != 1 or x.inner != 1 or sum(sizes) != x.n:
        raise Frozen(f"{reason}: a flattened feature axis already split between sites")
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    for sid, mode, ch in parts:
        _cut_at(r, x, sid, mode, tuple(range(x.n)) if ch is None else ch, bounds, reason)
    parts = r.an.parts(x)
    out = []
    for start, size in zip(bounds, sizes, strict=False):
        chunk = []
        for sid, mode, ch in parts:
            chans = tuple(range(x.n)) if ch is None else ch
            inside = [start <= c < start + size for c in chans]
            if any(inside) and not all(inside) and sid != 0:  # pragma: no cover (cut above)
                raise Frozen(f"{reason}: channels split between sites across its blocks")
            if any(inside):
                chunk.append((sid, mode, tuple(c - start for c, i in zip(chans, inside) if i)))
        out.append(x.moved(parts=tuple(chunk), n=size))
    return out


def _cut_at(r: AtenRunner, x: Info, sid: int, mode, chans: tuple, bounds: list[int], reason: str):
    """Cut site ``sid`` (holding ``chans`` of ``x``) where the chunk ``bounds`` cross it."""
    if sid == 0:
        return
    runs, prev = [], None
    for c in chans:
        k = next(i for i in range(len(bounds) - 1) if bounds[i] <= c < bounds[i + 1])
        if k != prev:
            runs.append(0)
            prev = k
        runs[-1] += 1
    if len(runs) == 1:
        return
    # ``runs`` follows the site's own element order, so each block lies in one chunk whatever
    # the channel order (a channel shuffle interleaves sites)
    r.an.split_blocks(Info(((sid, mode, None),), len(chans), x.dim), runs, reason)


# -- views --------------------------------------------------------------------------------------
def reshaped(x: Info, s_in, s_out, where: str) -> Info:
    """The feature axis after a view: the output dim whose block of elements holds it whole
    (``inner``: the positions merged behind it, ``outer``: those merged in front)."""
    s_in, s_out = list(s_in), list(s_out)
    pos = x.dim + len(s_in)
    after = 1
    for v in s_in[pos + 1 :]:
        after *= v
    st = x.inner * after
    span = x.n * st
    cands = []
    for d in range(len(s_out)):
        p = 1
        for v in s_out[d + 1 :]:
            p *= v
        big = p * s_out[d]
        if st % p == 0 and big % span == 0:
            cands.append((s_out[d] == 1, d, p, big))
    if not cands:
        raise Frozen(
            f"a reshape in {where!r} that splits the feature axis over several dims "
            "(e.g. into heads)"
        )
    _, d, p, big = min(cands)
    return x.moved(dim=d - len(s_out), inner=st // p, outer=big // span)


_VIEWS = ("view", "reshape", "_unsafe_view", "view_as", "reshape_as", "flatten", "unflatten")


@rule(*_VIEWS, "squeeze")
def view(r: AtenRunner, n: fx.Node, value: Any) -> Info | None:
    x = r.first(n)
    try:
        return reshaped(x, r.val(n.args[0]).shape, value.shape, r.where(n))
    except Frozen:
        found = channel_shuffle(r, n, x)  # an exact permutation first; tying blocks is coarser
        if found is not None:
            last, out = found
            r.pending[last] = out  # the chain's last node gets the permuted space
            return None  # the chain's inner nodes have one user each: the next of the chain
        folded = radix_split(r, n, x, value)
        if folded is None:
            folded = tied_split(r, n, x, value)
        if folded is None:
            raise
        return folded


def _block_dims(s_in, s_out, pos: int, n: int) -> tuple[int, int] | None:
    """The output dims (i, j) that a view cuts feature dim ``pos`` (``n`` features, nothing else
    merged into it) into, as (K, C) with only size-1 dims between them, or None."""

    before, after = math.prod(s_in[:pos]), math.prod(s_in[pos + 1 :])
    for i in range(len(s_out)):
        for j in range(i + 1, len(s_out)):
            if any(z != 1 for z in s_out[i + 1 : j]):
                break
            k, c = s_out[i], s_out[j]
            if k >= 2 and c >= 2 and k * c == n and math.prod(s_out[:i]) == before:
                if math.prod(s_out[j + 1 :]) == after:
                    return i, j
    return None


def radix_split(r: AtenRunner, n: fx.Node, x: Info, value: Any) -> Info | None:
    """A view that cuts a space of K * C features into (K, C) on two dims (size-1 dims aside):
    SK-Net's ``fc_select`` logits viewed as ``(B, K, C, 1, 1)`` for its softmax over the K
    branches, ResNeSt's radix groups. A fresh site becomes a site of width C whose element M
    acts as diag(M, ..., M) on the K blocks (``Spaces.fold_blocks``; only when nothing else has
    read the site in a way that still matters: its actions are on whole axes, it has no
    activation yet, every other tensor of it has been read by all its users already); a space
    already cut into K sites of C channels in order (a grouped convolution's blocks) has them
    tied to one element (a subgroup). None otherwise."""
    s_in, s_out = tuple(r.val(n.args[0]).shape), tuple(value.shape)
    pos = x.dim + len(s_in)
    found = _block_dims(s_in, s_out, pos, x.n)
    if found is None or x.outer != 1 or x.inner != 1:
        return None
    k, c = s_out[found[0]], s_out[found[1]]
    out_dim = found[1] - len(s_out)
    parts = r.an.parts(x)
    if len(parts) == k and all(p[0] != 0 for p in parts):
        blocks = [tuple(range(b * c, (b + 1) * c)) for b in range(k)]
        if [p[2] for p in parts] != blocks or any(r.an.sites[p[0]].width != c for p in parts):
            return None
        for p in parts[1:]:  # one element for every block
            r.an.unify_parts((parts[0][0], parts[0][1], None), (p[0], p[1], None),
                             f"{r.where(n)}: blocks of channels viewed as one axis")  # fmt: skip
        return Info(((parts[0][0], parts[0][1], None),), c, out_dim)
    if len(parts) != 1 or parts[0][2] is not None or parts[0][0] == 0:
        return None
    sid = parts[0][0]
    for m, info in r.infos.items():  # every tensor of the site is read up already
        if isinstance(info, Info) and any(p[0] == sid for p in r.an.parts(info)):
            if any(u is not n and u not in r.infos for u in m.users):
                return None
    if not r.an.fold_blocks(sid, k):
        return None
    return Info(((sid, parts[0][1], None),), c, out_dim)


def _split_run(s_in, s_out, pos: int, n: int) -> tuple[int, int] | None:
    """The output dims (i, j) of a view whose run ``s_out[i : j + 1]`` holds feature dim ``pos``
    (``n`` features, nothing else merged into it) cut into (K1, ..., C) with C = ``s_out[j]``
    >= 2 and K = n // C >= 2 blocks, or None."""

    before, after = math.prod(s_in[:pos]), math.prod(s_in[pos + 1 :])
    for i in range(len(s_out)):
        if math.prod(s_out[:i]) != before:
            continue
        for j in range(i, len(s_out)):
            size = math.prod(s_out[i : j + 1])
            if size == n and s_out[j] >= 2 and n // s_out[j] >= 2:
                return (i, j) if math.prod(s_out[j + 1 :]) == after else None
            if size >= n:
                break
    return None


def tied_split(r: AtenRunner, n: fx.Node, x: Info, value: Any) -> Info | None:
    """A view that cuts the feature axis into (K1, ..., Km, C) (heads: GCViT's global query,
    a residual stream, viewed as (B, N, H, D); its keys and values as (B, N, 2, H, D)): the
    space is cut into K = K1 * ... * Km consecutive blocks of C channels, all tied to one element
    M (the subgroup diag(M, ..., M)), so the output's feature axis is C on the last dim of the
    run and the K dims are positions that M moves alike. Blocks already there (an earlier view
    of the same space) are tied the same way. None when the view is not such a cut."""
    s_in, s_out = tuple(r.val(n.args[0]).shape), tuple(value.shape)
    found = _split_run(s_in, s_out, x.dim + len(s_in), x.n)
    if found is None or x.outer != 1 or x.inner != 1:
        return None
    c = s_out[found[1]]
    reason = f"{r.where(n)}: the feature axis viewed as {x.n // c} blocks of {c}, one map for all"
    chunks = regroup(r, x, [c] * (x.n // c), reason)
    for chunk in chunks[1:]:
        r.an.unify(chunks[0], chunk, reason)
    return chunks[0].moved(dim=found[1] - len(s_out))


def channel_shuffle(r: AtenRunner, n: fx.Node, x: Info) -> tuple[fx.Node, Info] | None:
    """A view that splits the feature axis, followed by transposes and views (each node used only
    by the next) that give back the input's shape with the channels in another fixed order
    (ShuffleNet's ``view(b, g, c // g, h, w).transpose(1, 2).view(b, c, h, w)``): the chain is a
    fixed permutation S of the channels, so a site's element M moves the output by S M S^-1
    (conjugation): each part keeps its site, its channels renamed by S. The permutation is found
    by running the chain on a tensor of element indices; None when the chain is not one."""
    chain, cur = [n], n
    src = r.val(n.args[0])
    while len(chain) <= 8:
        users = list(cur.users)
        if len(users) != 1 or users[0].op != "call_function" or users[0].args[:1] != (cur,):
            return None
        cur = users[0]
        name = op_name(cur)
        if name not in (*IDENTITY, *_VIEWS, "transpose", "permute", "swapaxes"):
            return None
        chain.append(cur)
        out = cur.meta.get("val")
        if name in _VIEWS and out is not None and tuple(out.shape) == tuple(src.shape):
            break
    else:
        return None
    shape, ndim = tuple(src.shape), src.dim()
    pos = x.dim + ndim
    if x.outer != 1 or x.inner != 1 or shape[pos] != x.n:
        return None
    t = torch.arange(src.numel(), dtype=torch.float64).reshape(shape)
    for m in chain:  # the chain's own ops, on indices instead of values
        t = m.target(t, *fx.node.map_arg(m.args[1:], r.val), **fx.node.map_arg(m.kwargs, r.val))
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        return None
    # where each output element came from, as coordinates: positions must stay, channels move
    came = torch.stack(torch.unravel_index(t.reshape(-1).long(), shape)).reshape(ndim, *shape)
    here = torch.stack(torch.meshgrid(*(torch.arange(z) for z in shape), indexing="ij"))
    if any(not torch.equal(came[d], here[d]) for d in range(ndim) if d != pos):
        return None
    per_channel = came[pos].movedim(pos, 0).reshape(x.n, -1)
    perm = per_channel[:, 0]  # output channel c' holds input channel perm[c']
    if not torch.equal(per_channel, perm[:, None].expand_as(per_channel)):
        return None
    if not torch.equal(torch.sort(perm).values, torch.arange(x.n)):  # pragma: no cover
        return None
    new_at = torch.argsort(perm).tolist()  # input channel c lands on output channel new_at[c]
    parts = tuple(
        (sid, mode, tuple(new_at[c] for c in (range(x.n) if ch is None else ch)))
        for sid, mode, ch in r.an.parts(x)
    )
    return chain[-1], x.moved(parts=parts)


def transposed(x: Info, ndim: int, a: int, b: int) -> Info:
    pos = x.dim + ndim
    a, b = a % ndim, b % ndim
    new = b if pos == a else a if pos == b else pos
    return x.moved(dim=new - ndim)


@rule("transpose", "swapaxes", "t")
def transpose(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    a, b = (0, 1) if op_name(n) == "t" else (n.args[1], n.args[2])
    return transposed(r.first(n), r.ndim(n), a, b)


@rule("permute")
def permute(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    x, ndim = r.first(n), r.ndim(n)
    dims = [d % ndim for d in n.args[1]]
    return x.moved(dim=dims.index(x.dim + ndim) - ndim)


@rule("unsqueeze")
def unsqueeze(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    x, ndim = r.first(n), r.ndim(n)
    pos, d = x.dim + ndim, n.args[1] % (ndim + 1)
    return x.moved(dim=x.dim - 1 if d > pos else x.dim)


@rule(*IDENTITY, "native_dropout", "expand", "expand_as", "repeat")
def same_features(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """Casts, copies, eval-mode dropout, broadcasts, ``repeat`` along other dims (XCiT repeats
    its position encoding over the batch): the feature axis stays where it is (new leading dims
    leave its negative dim as it is; repeating the feature axis itself changes its size)."""
    x, ndim = r.first(n), r.ndim(n)
    out = value[0] if isinstance(value, (tuple, list)) else value
    width = x.n * x.outer * x.inner
    if ndim is not None and isinstance(out, torch.Tensor) and out.shape[x.dim] != width:
        raise Frozen("an op that changes the size of the feature axis")
    return x


@rule("slice", "select", "narrow")
def slice_(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    x, ndim, name = r.first(n), r.ndim(n), op_name(n)
    pos = x.dim + ndim
    d = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % ndim
    if d != pos:
        return x if name != "select" else x.moved(dim=x.dim + 1 if d > pos else x.dim)
    if name != "select" and value.shape[d] == r.val(n.args[0]).shape[d]:
        return x  # a full slice
    raise Frozen("slicing the feature axis")


@rule("split", "split_with_sizes", "chunk", "unbind")
def split(r: AtenRunner, n: fx.Node, value: Any) -> tuple:
    x, ndim = r.first(n), r.ndim(n)
    dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
    if op_name(n) == "unbind":
        dim = n.args[1] if len(n.args) > 1 else 0
    d, pos = dim % ndim, x.dim + ndim
    if d == pos:
        if op_name(n) == "unbind":
            raise Frozen("unbinding the feature axis")
        sizes = [int(v.shape[d]) for v in value]
        return tuple(regroup(r, x, sizes, f"split of the feature axis in {r.where(n)}"))
    out = []
    for v in value:
        drop = op_name(n) == "unbind"
        out.append(x.moved(dim=x.dim + 1 if drop and d > pos else x.dim) if v.dim() else None)
    return tuple(out)


@rule("roll", "flip")
def roll(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """Shifted windows (Swin's ``roll``) and flips move positions only: the feature axis passes
    through when it is not among the rolled dims (no dims: the flattened tensor rolls, which
    mixes channels)."""
    x, ndim = r.first(n), r.ndim(n)
    dims = n.args[2] if op_name(n) == "roll" and len(n.args) > 2 else n.kwargs.get("dims", ())
    if op_name(n) == "flip":
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dims", ())
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims or (x.dim + ndim) in {d % ndim for d in dims}:
        raise Frozen("rolling or flipping the feature axis")
    return x


@rule("repeat_interleave")
def repeat_interleave(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """``x.repeat_interleave(k, dim)`` along a dim that is not the feature axis (GCViT's global
    query repeated once per window along the batch/window dim): each output slice along ``dim``
    is a copy of an input slice, so every channel matrix commutes with it. Along the feature
    axis (each feature repeated k times: a new layout of the axis), over the flattened tensor
    (no ``dim``) or with hidden repeat counts: ``Frozen``."""
    x, ndim = r.first(n), r.ndim(n)
    repeats = n.args[1] if len(n.args) > 1 else n.kwargs.get("repeats")
    if isinstance(r.info(repeats), Info):
        raise Frozen("repeat counts computed from a hidden tensor")
    dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim")
    if dim is None:
        raise Frozen("repeat_interleave over the flattened tensor (no dim) mixes the feature axis")
    if dim % ndim == x.dim + ndim:
        raise Frozen("repeat_interleave along the feature axis")
    return x


# -- joins and reductions -----------------------------------------------------------------------
@rule("cat", "concat", "stack")
def concatenate(r: AtenRunner, n: fx.Node, value: torch.Tensor) -> Info | None:
    """``cat`` / ``stack``: along the feature axis the output's channels are the inputs'
    channels side by side (block-structured elements; untracked inputs' channels stay fixed);
    along any other axis every input must be moved by the same matrix."""
    stack = op_name(n) == "stack"
    tensors = n.args[0] if n.args else n.kwargs["tensors"]
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    infos = [r.info(a) for a in tensors]
    vals = [r.val(a) for a in tensors]
    if not any(isinstance(i, Info) for i in infos):
        return None
    where = r.where(n)
    ndim = vals[0].dim()
    first = next(i for i in infos if isinstance(i, Info))
    pos = first.dim + ndim
    d = dim % (ndim + 1 if stack else ndim)
    if stack or d != pos:
        reason = f"{'stacking' if stack else 'concatenating'} tensors in {where!r}"
        for info in infos:
            if isinstance(info, Info):
                if info.dim != first.dim:
                    raise Frozen(f"{reason} whose feature axes do not line up")
                r.an.unify(first, info, reason)
            elif isinstance(info, ParamRef) and info.plain:
                r.an.add_param(first, info, reason)
            else:
                r.an.unify(first, None, f"{reason}: joined with a tensor from the input")
        new_pos = pos + (1 if stack and d <= pos else 0)
        return first.moved(dim=new_pos - value.dim())
    parts, offset = [], 0
    for info, v in zip(infos, vals, strict=True):
        if isinstance(info, Info):
            if info.dim != first.dim or info.outer != 1 or info.inner != 1:
                raise Frozen(f"concatenating flattened feature axes in {where!r}")
            for sid, mode, ch in info.parts:
                chans = range(info.n) if ch is None else ch
                parts.append((sid, mode, tuple(offset + c for c in chans)))
        offset += v.shape[d]
    return Info(tuple(parts), offset, first.dim)


@rule("mean", "sum", "amax", "amin")
def reduce(r: AtenRunner, n: fx.Node, value: Any) -> Any:
    ndim = r.ndim(n)
    if op_name(n) == "mean" and isinstance(r.info(n.args[0]), Square):
        return row_stat(r, n, ndim)
    x = r.first(n)
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    if dims is None:
        raise Frozen("a reduction over all dims")
    dims = [d % ndim for d in ((dims,) if isinstance(dims, int) else dims)]
    pos = x.dim + ndim
    if pos in dims:
        if dims != [pos] or value.dim() != ndim or (x.outer, x.inner) != (1, 1):
            raise Frozen("a reduction over the feature axis")
        # mean/sum/max over the features alone, kept as a size-1 dim (GRN's channel mean)
        return feature_stat(r, x, PERMUTATION, f"{op_name(n)} over the features in {r.where(n)}")
    if op_name(n) in ("amax", "amin"):
        for part in r.an.parts(x):
            r.an.restrict_matrix(part, POSITIVE_MONOMIAL, f"max over positions in {n}")
    keep = value.dim() == ndim
    new = pos if keep else pos - sum(1 for d in dims if d < pos)
    return x.moved(dim=new - value.dim())


@rule("softmax", "_softmax", "log_softmax", "_log_softmax")
def softmax(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """A softmax along a dim that is not the feature axis (SK-Net's softmax over its branches,
    GCNet's attention pooling over positions): each feature is normalised on its own, so a
    permutation of the features commutes with it and a scaling does not (it would change the
    exponents): permutations only. Along the feature axis: ``Frozen``."""
    x, ndim = r.first(n), r.ndim(n)
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    if dim is None or dim % ndim == x.dim + ndim:
        raise Frozen("a softmax over the feature axis")
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, PERMUTATION, f"softmax over positions in {r.where(n)}")
    return x


# -- padding, pooling, resampling ---------------------------------------------------------------
@rule("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
      "replication_pad1d", "replication_pad2d", "replication_pad3d")  # fmt: skip
def pad(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """Padding of positions: zeros, reflections and copies commute with every channel matrix; a
    nonzero constant on every feature with permutations only. Zero channels (ResNet-20's option-A
    shortcut) are a site of their own (``Rules.pad``)."""
    x, ndim, where = r.first(n), r.ndim(n), r.where(n)
    widths = list(n.args[1])
    pos = x.dim + ndim
    padded = {ndim - 1 - i // 2 for i, p in enumerate(widths) if p}
    name = op_name(n)
    mode = n.args[2] if name == "pad" and len(n.args) > 2 else n.kwargs.get("mode", "constant")
    value_ = n.args[-1] if name == "constant_pad_nd" and len(n.args) > 2 else None
    if name == "pad":
        value_ = n.args[3] if len(n.args) > 3 else n.kwargs.get("value")
    if name.startswith(("reflection", "replication")):
        mode = name.split("_")[0]
    if pos in padded:
        return r.an.pad(x, tuple(widths), mode, value_, ndim, r.module_path(n) or n.name)
    if mode != "constant" or not value_:
        return x
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, PERMUTATION, f"{where}: padded with {value_}")
    return x


def _pool_ndim(name: str, ndim: int) -> int:
    for k in (1, 2, 3):
        if f"{k}d" in name:
            return k + 2
    return ndim


@rule("im2col")
def im2col(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """``nn.Unfold`` / ``F.unfold`` on (B, C, H, W) (or unbatched (C, H, W)) gives (B, C * k, L)
    with k = kh * kw kernel positions, channel-major: row ``c * k + p`` holds channel c at
    kernel position p (zero where the window reaches the padding). Each row copies one channel
    (or a zero), so a channel matrix M moves the rows by M kron I_k: the feature axis of C
    channels with k positions behind each (``inner``). TNT's pixel embedding unfolds its conv's
    channels this way. The feature axis on a spatial dim: ``Frozen``."""
    x, ndim = r.first(n), r.ndim(n)
    if ndim not in (3, 4) or x.dim != -3:
        raise Frozen("im2col whose feature axis is not the channel dim of (B, C, H, W)")
    k = 1
    for z in n.args[1]:
        k *= int(z)
    out = value.shape[-2]
    if out != x.n * x.outer * x.inner * k:  # pragma: no cover (im2col's contract)
        raise Frozen(f"im2col output rows {out} are not channels x kernel positions")
    return x.moved(dim=-2, inner=x.inner * k)


@rule("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
      "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
      "adaptive_max_pool3d")  # fmt: skip
def max_pool(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    x, ndim = r.first(n), r.ndim(n)
    return r.an.maxpool(x, ndim, r.where(n), _pool_ndim(op_name(n), ndim))


@rule("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
      "adaptive_avg_pool3d")  # fmt: skip
def avg_pool(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """Average pooling commutes with every channel map (on a batched input)."""
    x, ndim = r.first(n), r.ndim(n)
    r.an.need_channels(x, ndim, r.where(n), _pool_ndim(op_name(n), ndim))
    return x


@rule("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
      "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
      "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "pixel_shuffle_spatial")  # fmt: skip
def resample(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """Spatial resampling acts on each channel alike: it commutes with every channel matrix."""
    x = r.first(n)
    r.an.need_channels(x, r.ndim(n), r.where(n))
    return x
