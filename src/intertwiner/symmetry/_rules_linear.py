"""Rules for layers that write a fresh space: embeddings, linear maps (``linear``, GPT-2's
Conv1D ``addmm``, ``x @ W.T``) and convolutions (plain, transposed, grouped, depthwise)."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from intertwiner.groups import MONOMIAL, PERMUTATION, REVERSAL, ActionKind, Mode
from intertwiner.symmetry._attention import ancestors
from intertwiner.symmetry._block_reversal import GroupedConv, reverse_blocks
from intertwiner.symmetry._regions import ELEMENTWISE, IDENTITY, op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._rules_elementwise import contract_features, fixed_mix
from intertwiner.symmetry._rules_shape import regroup
from intertwiner.symmetry._spaces import Info, ParamRef

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner

_BN = ("batch_norm", "_native_batch_norm_legit_no_training")


def bn_users(n: fx.Node) -> bool:
    """Is ``n`` read only by affine BatchNorms (which then absorb its scale: mode ``P``)?"""
    from intertwiner.symmetry._regions import op_name

    users = list(n.users)
    return bool(users) and all(
        u.op == "call_function" and op_name(u) in _BN and u.args[1] is not None for u in users
    )


@rule("embedding", always=True)
def embedding(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """A lookup table writes a fresh space: row i of the table is the feature vector of index i,
    so the element acts on the table's columns (``weight[:, j]``, axis 1)."""
    weight = r.pname(n.args[0])
    out = r.an.writer(r.module_path(n) or n.name, r.an.shape_of(weight)[1])
    r.an.act(out, weight, 1, "out")
    return out


@rule("linear", "addmm", "mm", "matmul", always=True)
def linear(r: AtenRunner, n: fx.Node, value: Any) -> Info | None:
    name = r.op(n)
    if name == "linear":
        x_node, w_node = n.args[0], n.args[1]
        b_node = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
        out_axis = 0
    elif name == "addmm":
        b_node, x_node, w_node = n.args[0], n.args[1], n.args[2]
        out_axis = 1
    else:
        x_node, w_node, b_node, out_axis = n.args[0], n.args[1], None, 1
    # A bias computed from parameters (EVA's ``cat(q_bias, 0, v_bias)``) cannot move: the output
    # is then a fixed tensor (x W^T is unchanged when W's input axis absorbs x's map), and the
    # input stream keeps its site instead of being frozen with the op.
    fixed_out = isinstance(b_node, fx.Node) and r.info(b_node) is None
    if fixed_out:
        b_node = None
    w_info = r.info(w_node)
    if isinstance(w_info, ParamRef) and w_info.transposed:  # x @ W.T: W's rows are outputs
        w_node, out_axis = None, 1 - out_axis
    if w_node is None:
        weight, bias = w_info.name, r.pname(b_node)
    elif not isinstance(w_info, ParamRef) and r.module_type(n) == "MultiheadAttention":
        raise Frozen(
            "nn.MultiheadAttention cross-attention (different query, key and value tensors) "
            "is not supported: its projections are slices of in_proj_weight"
        )
    elif not isinstance(w_info, ParamRef):
        mixed = _mix_positions(r, n) if name in ("matmul", "mm") else None
        if mixed is not None:
            return mixed
        if name in ("matmul", "mm") and contract_features(r, n):
            return None  # the scores: fixed (``Spaces.invariant``)
        mixed = fixed_mix(r, n) if name in ("matmul", "mm") else None
        if mixed is not None:
            return mixed
        mixed = _free_product(r, n) if name in ("matmul", "mm") else None
        if mixed is not None:
            return mixed
        raise Frozen(
            "a product whose weight is computed, not a parameter (parametrized: weight_norm "
            "or another parametrization; attention scores, ...)"
        )
    else:
        # an attention projection's bias is the block's (it may be a clone with a zeroed part)
        weight, bias = r.pname(w_node), None if n in r.owned else r.pname(b_node)
    shape = r.an.shape_of(weight)
    if len(shape) != 2:
        raise Frozen(f"a product with a {len(shape)}-d parameter")
    x = r.info(x_node)
    if isinstance(x, Info) and x.dim != -1 and name == "linear" and w_node is not None:
        return across_positions(r, n, x, weight, bias)
    return r.an.linear(
        x if isinstance(x, Info) else None,
        weight,
        bias,
        shape[out_axis],
        shape[1 - out_axis],
        Mode.P if bn_users(n) else Mode.A,
        where=r.module_path(n) or n.name,
        out_axis=out_axis,
        read_only=n in r.owned or fixed_out,
    )


@rule("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
      "conv_transpose3d", always=True)  # fmt: skip
def conv(r: AtenRunner, n: fx.Node, value: Any) -> Info | None:
    args, name = list(n.args), r.op(n)
    along = _along_features(r, n)
    if along is not None:
        return along
    std = standardised_weight(r, args[1])
    if std is not None:
        return _standardised_conv(r, n, std)
    x, weight = r.info(args[0]), r.pname(args[1])
    bias = r.pname(args[2]) if len(args) > 2 else None
    if name == "convolution":
        transposed, groups = bool(args[6]), int(args[8])
    else:
        transposed = name.startswith("conv_transpose")
        groups = int(args[6]) if len(args) > 6 else 1  # conv{k}d and conv_transpose{k}d
    shape = r.an.shape_of(weight)
    out_ch = shape[1] * groups if transposed else shape[0]
    ndim = r.val(args[0]).dim()
    if groups > 1 and not transposed and groups == out_ch and shape[1] == 1:
        return _depthwise(r, n, x, weight, bias, ndim)
    if groups > 1 and not transposed:
        return _grouped(r, n, x, weight, bias, groups, ndim)
    return r.an.conv(
        x if isinstance(x, Info) else None,
        weight,
        bias,
        out_ch,
        groups,
        ndim,
        Mode.P if bn_users(n) else Mode.A,
        where=r.module_path(n) or n.name,
        transposed=transposed,
        read_only=n in r.owned,
    )


def _conv_options(r: AtenRunner, n: fx.Node) -> tuple[str | None, list, Any, list, bool, int]:
    """``(bias, stride, padding, dilation, transposed, groups)`` of a convolution node, defaults
    filled in (``convolution``, ``conv{k}d`` and ``conv_transpose{k}d`` order their options
    differently; ``padding`` may be a list of ints or the string ``"same"`` / ``"valid"``)."""
    name, a = r.op(n), list(n.args)
    if name == "convolution":
        keys = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "_",
                "groups")  # fmt: skip
        defaults = {"stride": [1], "padding": [0], "dilation": [1], "transposed": False}
    elif name.startswith("conv_transpose"):
        keys = ("input", "weight", "bias", "stride", "padding", "_", "groups", "dilation")
        defaults = {"stride": [1], "padding": [0], "dilation": [1], "transposed": True}
    else:
        keys = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = {"stride": [1], "padding": [0], "dilation": [1], "transposed": False}
    got = {**defaults, "groups": 1, "bias": None, **dict(zip(keys, a, strict=False))}
    got.update(n.kwargs)
    bias = got["bias"]
    bias = r.pname(bias) if isinstance(bias, fx.Node) else None
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    pad = got["padding"] if isinstance(got["padding"], str) else as_list(got["padding"])
    return (bias, as_list(got["stride"]), pad, as_list(got["dilation"]),
            bool(got["transposed"]), int(got["groups"]))  # fmt: skip


def _along_features(r: AtenRunner, n: fx.Node) -> Info | None:
    """A convolution whose kernel slides along the feature axis (ECA's ``conv1d`` over the
    channels of a pooled ``(B, 1, C)`` tensor; CoaT's ``Conv1d(3, 1, 1)`` over three stacked
    class tokens ``(B, 3, C)``). None when the feature axis is the channel axis (a plain
    convolution, the other rules).

    With ``a`` the input (B, c_in, C), a stride-1 ``conv1d`` with kernel ``w`` (c_out, c_in, k),
    dilation d and zero padding p on both ends computes ``y[o, i] = b[o] + sum_{c, t} w[o, c, t]
    a[c, i + t d - p]``. Reversing the features, ``(J a)[c, i] = a[c, C - 1 - i]``, gives
    ``conv_w(J a) = J conv_flip(w)(a)`` exactly when ``2 p = d (k - 1)`` (the kernel's window is
    centred, so the output has C features too): the features may be reversed with the kernel
    flipped (``ActionKind.FLIP``), and no other permutation commutes with a kernel that mixes
    neighbours (the site is restricted to ``REVERSAL``). The bias adds one number to every
    feature of a channel, which reversal keeps. A kernel of one tap (``d (k - 1) = 0``) mixes
    no neighbours: it is a map over c_in applied to each feature alike, like a Linear over
    positions (``across_positions``): any matrix on the features commutes with it, only
    permutations when a bias adds the same number to every feature. Anything else (strides,
    uneven or one-sided padding, 2-d and 3-d kernels, transposed or grouped convolutions along
    the features) is refused: the fooling variants shift or drop features at the ends."""
    x, ndim = r.info(n.args[0]), r.ndim(n)
    if not isinstance(x, Info) or ndim is None or x.dim + ndim < 2:
        return None
    where = r.where(n)
    bias, stride, padding, dilation, transposed, groups = _conv_options(r, n)
    weight = r.pname(n.args[1])
    shape = r.an.shape_of(weight)
    why = f"{where}: a convolution along the feature axis"
    if ndim != 3 or x.dim != -1 or x.outer != 1 or x.inner != 1:
        raise Frozen(f"{why} that is not a conv1d over the last dim (2-d or 3-d kernels)")
    if transposed or groups != 1:
        raise Frozen(f"{why} that is transposed or grouped")
    k, d = shape[2], dilation[0]
    span = d * (k - 1)  # how far the kernel's window reaches
    if isinstance(padding, str):
        # "same" pads span // 2 on the left and the rest on the right: centred when span is even
        pad = {"valid": 0, "same": span // 2 if span % 2 == 0 else None}.get(padding)
    else:
        pad = padding[0]
    if stride[0] != 1 or pad is None or 2 * pad != span:
        raise Frozen(
            f"{why} (kernel {k}, dilation {d}, padding {padding}, stride {stride[0]}) whose "
            "window is not centred (2 * padding != dilation * (kernel - 1), or a stride): the "
            "features at the two ends are padded differently, so not even their reversal "
            "commutes with it; every feature stays"
        )
    parts = r.an.parts(x)
    if span == 0:
        if bias is not None:
            for part in parts:
                r.an.restrict_matrix(part, PERMUTATION, f"{why} with one tap: its bias adds the "
                                     "same value to every feature")  # fmt: skip
        return x
    if len(parts) != 1 or parts[0][2] is not None:
        reverse_blocks(r.an, parts, weight, k, why)  # a grouped convolution's blocks, or Frozen
        return x
    sid, mode, _ = parts[0]
    r.an.restrict_matrix(
        parts[0], REVERSAL,
        f"{why} (kernel {k}): it mixes neighbouring features; only reversing their order, with "
        "the kernel flipped, commutes with it",
    )  # fmt: skip
    if sid != 0:
        r.an.act_raw(sid, weight, 2, ActionKind.FLIP, k, buffer=weight not in r.an.params)
    return x


def _depthwise(r: AtenRunner, n, x: Any, weight: str, bias: str | None, ndim: int) -> Any:
    """A depthwise convolution filters each channel on its own: like a per-channel affine map it
    passes a monomial element through (filters permuted, the bias moved like the input)."""
    if not isinstance(x, Info):
        return None
    where = r.module_path(n) or n.name
    r.an.need_channels(x, ndim, where)
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, MONOMIAL, f"depthwise convolution {where!r}")
    r.an.act(x, weight, 0, ActionKind.P)
    if bias is not None:
        r.an.act(x, bias, 0, "out")
    return x


def _grouped(r: AtenRunner, n, x: Any, weight: str, bias: str | None, groups: int, ndim: int):
    """A grouped convolution: group j's outputs read only group j's inputs, so the input and the
    output spaces split into ``groups`` blocks, each with an element of its own (any element
    within a block; none across blocks)."""
    an, where = r.an, r.module_path(n) or n.name
    out_ch, per_group_in = an.shape_of(weight)[0], an.shape_of(weight)[1]
    per_group_out = out_ch // groups
    inputs: list[tuple[int, int, Any]] | None = None
    if isinstance(x, Info):
        an.need_channels(x, ndim, where)
        inputs = []
        for sid, mode, j, local in _input_groups(r, x, groups, where):
            inputs.append((j, sid, local))
            if sid == 0:
                continue
            an.act_raw(
                sid,
                weight,
                1,
                ActionKind.reading(mode),
                per_group_in,
                within=(0, j * per_group_out, per_group_out),
                channels=local,
            )
    out = an.writer(where, out_ch, Mode.P if bn_users(n) else Mode.A).moved(dim=1 - ndim)
    an.act(out, weight, 0, "out")
    if bias is not None:
        an.act(out, bias, 0, "out")
    # one whole site per group (else None): what a reversal across the blocks needs
    one = inputs is not None and [j for j, _, _ in inputs] == list(range(groups))
    one = one and all(local is None for _, _, local in inputs or [])
    sids = tuple(s for _, s, _ in inputs) if one and inputs else None
    an.grouped[out.parts[0][0]] = GroupedConv(weight, groups, sids, where)
    return an.split_blocks(out, groups, f"grouped convolution {where!r} (outputs)")


def _input_groups(r: AtenRunner, x: Info, groups: int, where: str) -> list[tuple]:
    """``(site, mode, group j, channels within group j)`` of a grouped convolution's input, cut
    into its groups by ``regroup`` (blocks already finer than the groups are kept: a finer
    block-diagonal element still never mixes groups)."""
    size = x.n // groups
    chunks = regroup(r, x, [size] * groups, f"grouped convolution {where!r}")
    out = []
    for j, chunk in enumerate(chunks):
        for sid, mode, ch in chunk.parts:
            out.append((sid, mode, j, None if ch in (None, tuple(range(size))) else ch))
    return out


# -- weight standardisation (NF-ResNet / NFNet: timm's StdConv2d, ScaledStdConv2d) ----------------
_VIEWS = ("view", "reshape", "_unsafe_view", "reshape_as", "view_as", "flatten")


def _through(n: Any, ops: tuple[str, ...]) -> Any:
    """Follow ``n`` back through ``ops`` (first argument) and products with plain numbers."""
    from intertwiner.symmetry._regions import IDENTITY, op_name

    while isinstance(n, fx.Node) and n.op == "call_function":
        name = op_name(n)
        numeric = name in ("mul", "div") and len(n.args) > 1
        numeric = (
            numeric and isinstance(n.args[1], (int, float)) and not isinstance(n.args[1], bool)
        )
        if name not in ops and name not in IDENTITY and not numeric:
            break
        n = n.args[0]
    return n


def _shape(n: Any) -> tuple[int, ...] | None:
    val = n.meta.get("val") if isinstance(n, fx.Node) else None
    return tuple(val.shape) if hasattr(val, "shape") else None


def standardised_weight(r: AtenRunner, w: Any) -> tuple[str, str | None, int] | None:
    """``(weight, gain, gain axis)`` when the convolution weight ``w`` is ``W`` standardised per
    output channel: ``batch_norm(W.reshape(1, O, -1), weight=gain, training=True)`` viewed back
    (timm's ``StdConv2d`` / ``ScaledStdConv2d``, optionally with a per-output-channel gain times
    a number); None for any other computed weight."""
    from intertwiner.symmetry._regions import op_name

    bn = _through(w, ("reshape_as", "view_as", "view", "reshape", "_unsafe_view"))
    if not isinstance(bn, fx.Node) or op_name(bn) != "batch_norm":
        return None
    a = list(bn.args) + [None] * 9
    src = _through(a[0], _VIEWS)
    if a[3] is not None or a[4] is not None or a[5] is not True or not isinstance(src, fx.Node):
        return None
    info = r.info(src)
    if not isinstance(info, ParamRef) or not info.plain or src.op != "get_attr":
        return None
    shape = r.an.shape_of(info.name)
    flat, back = _shape(a[0]), _shape(w)  # (the interpreter has freed the values by now)
    if (
        flat is None
        or len(flat) != 3
        or flat[:2] != (1, shape[0])
        or back != shape
        or a[2] is not None  # a per-channel shift after standardisation: not handled
    ):
        return None
    gain, axis = None, 0
    if a[1] is not None:
        g = _through(a[1], _VIEWS)
        g_info = r.info(g) if isinstance(g, fx.Node) else None
        if not isinstance(g_info, ParamRef) or not g_info.plain or g.op != "get_attr":
            return None
        g_shape = r.an.shape_of(g_info.name)
        big = [d for d, z in enumerate(g_shape) if z != 1]
        if len(big) != 1 or g_shape[big[0]] != shape[0]:
            return None
        gain, axis = g_info.name, big[0]
    return info.name, gain, axis


def _standardised_conv(r: AtenRunner, n: fx.Node, std: tuple[str, str | None, int]) -> Any:
    """A convolution with a standardised weight: each output channel's filter is normalised to
    zero mean and unit variance over its input channels and kernel positions, then scaled by its
    gain. Permuting output channels permutes the filters and gains; permuting input channels
    (within a group) permutes each filter's entries and leaves its mean and variance alone.
    Scalings of either side are normalised away: both spaces are restricted to permutations."""
    weight, gain, axis = std
    args, name, where = list(n.args), r.op(n), r.module_path(n) or n.name
    if (name == "convolution" and bool(args[6])) or name.startswith("conv_transpose"):
        raise Frozen("a transposed convolution with a standardised weight")
    groups = int(args[8]) if name == "convolution" else int(args[6]) if len(args) > 6 else 1
    x, ndim = r.info(args[0]), r.val(args[0]).dim()
    bias = r.pname(args[2]) if len(args) > 2 else None
    why = f"weight standardisation in {where!r}: the filter statistics undo scalings"
    if isinstance(x, Info):
        for part in r.an.parts(x):
            r.an.restrict_matrix(part, PERMUTATION, why)
    shape = r.an.shape_of(weight)
    if groups > 1 and groups == shape[0] and shape[1] == 1:
        out = _depthwise(r, n, x, weight, bias, ndim)
    elif groups > 1:
        out = _grouped(r, n, x, weight, bias, groups, ndim)
    else:
        x = x if isinstance(x, Info) else None
        out = r.an.conv(x, weight, bias, shape[0], 1, ndim, Mode.A, where=where)
    if isinstance(out, Info):
        for sid, _, _ in r.an.parts(out):
            r.an.restrict(sid, PERMUTATION, why)
        if gain is not None:
            r.an.act(out, gain, axis, ActionKind.P)
    return out


def _free_factors(r: AtenRunner, n: fx.Node) -> list[tuple[Info, Info]]:
    """``(x, w)`` for each way of reading the product ``a @ b`` as a factor ``x`` whose feature
    axis is a free index of the product (rows of the left factor, columns of the right one, or a
    batch dim where ``w`` is broadcast: one ``w`` for every feature) and a tracked other factor
    ``w`` (an untracked one may be a function of hidden spaces these rules cannot see)."""
    a, b = n.args[0], n.args[1]
    va, vb = r.val(a), r.val(b)
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)):
        return []
    if va.dim() < 2 or vb.dim() < 2:
        return []
    found = []
    for x_node, w_node, free in ((a, b, -2), (b, a, -1)):
        x, w, vw = r.info(x_node), r.info(w_node), r.val(w_node)
        contracted = -1 if free == -2 else -2
        if not isinstance(x, Info) or not isinstance(w, Info) or x.dim == contracted:
            continue
        if x.dim != free and not (vw.dim() < -x.dim or vw.shape[x.dim] == 1):
            continue  # a batch dim of features with a different w per feature
        found.append((x, w))
    return found


def _mix_positions(r: AtenRunner, n: fx.Node) -> Info | None:
    """``a @ b`` where one factor ``x`` has its feature axis off the contracted dim and the other,
    ``w``, is a tensor of one feature or none (GCNet's ``x.view(B, 1, C, HW) @ softmax(conv(x))
    .view(B, 1, HW, 1)``: attention pooling over positions with weights from a one-channel
    conv): each feature is mixed over positions by the same ``w``, so any matrix on the features
    commutes with the product when ``w`` stays fixed; ``w``'s spaces are frozen to keep it so.
    None when the product is not of this form (``_free_factors``)."""
    for x, w in _free_factors(r, n):
        if w.n == 1:
            r.an.unify(w, None, f"{r.where(n)}: the weights that mix positions")
            return x
    return None


@rule("einsum")
def einsum(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """``einsum(eq, [x, w, ...])`` with one hidden operand ``x`` whose feature letter is kept in
    the output and appears in no other operand, the others fixed (parameters or constants, none
    computed from the input: ``"bnc,nm->bmc"``, positions mixed by a parameter ``w``, the same
    for every feature). The output is linear in ``x`` and each
    feature's slice is mapped by the same ``w``, so every map of the features commutes with it:
    the feature axis passes on to the output letter's dim. Anything else is frozen with the
    equation named: two hidden operands (a product of computed tensors), a feature letter that
    is summed over or that another operand also carries (a weight per feature: a Linear written
    as an einsum, a per-head table), repeated letters or ``...``."""
    eq, operands = n.args[0], n.args[1]
    if not isinstance(eq, str) or "." in eq or eq.count("->") != 1 or n.kwargs:
        raise Frozen(f"einsum {eq!r}: only explicit equations ('ab,bc->ac') are read")
    ins, out = eq.replace(" ", "").split("->")
    letters = ins.split(",")
    if len(letters) != len(operands) or any(len(set(w)) != len(w) for w in (*letters, out)):
        raise Frozen(f"einsum {eq!r}: a repeated letter (a diagonal or trace) is not read")
    infos = [r.info(a) for a in operands]
    if any(x is not None and not isinstance(x, (Info, ParamRef)) for x in infos):
        raise Frozen(f"einsum {eq!r}: an operand that is a statistic of a hidden tensor")
    hidden = [i for i, x in enumerate(infos) if isinstance(x, Info)]
    if len(hidden) != 1 or len(r.nested(n)) != 1:
        raise Frozen(f"einsum {eq!r}: a product of computed tensors, not one hidden tensor "
                     "and fixed ones")  # fmt: skip
    (i,) = hidden
    for j, a in enumerate(operands):
        if j != i and isinstance(a, fx.Node) and any(m.op == "placeholder" for m in ancestors(a)):
            raise Frozen(f"einsum {eq!r}: a product of a hidden tensor with one computed from "
                         "the input (attention probabilities, ...), not a fixed tensor")  # fmt: skip
    x, xs = infos[i], letters[i]
    if -x.dim > len(xs):
        raise Frozen(f"einsum {eq!r}: the hidden operand has fewer dims than its letters")
    f = xs[x.dim]
    if f not in out:
        raise Frozen(f"einsum {eq!r} sums over the feature axis {f!r}: a weight per feature "
                     "(a Linear written as an einsum) is not read")  # fmt: skip
    if any(f in w for j, w in enumerate(letters) if j != i):
        raise Frozen(f"einsum {eq!r}: another operand varies along the feature axis {f!r}, so "
                     "moving the features would need it moved")  # fmt: skip
    return x.moved(dim=out.index(f) - len(out))


def _free_product(r: AtenRunner, n: fx.Node) -> Info | None:
    """``x @ w`` of two computed tensors where ``x``'s feature axis is a free index of the
    product and ``w`` is a hidden tensor of any width (EfficientViM's HSM-SSD: ``h = x @ (a *
    b)^T`` mixes the positions of the stream ``x`` into a hidden state, ``y = h @ c`` reads it
    back): with ``w`` held fixed, ``(M x) @ w = M (x @ w)`` for every matrix M on ``x``'s
    features, so the product moves like ``x``; ``w``'s spaces are frozen to hold it fixed (it is
    computed from the input through maps whose output rows then stay). Where both factors have
    their features on free axes, the factor whose site is older (the stream that the other was
    computed from comes first in the graph) keeps its site. None when neither factor is of this
    form (``_free_factors``)."""

    def age(x: Info) -> int:  # a frozen factor (site 0) has nothing to keep: it comes last
        return min(r.an.find(sid) or len(r.an.sites) for sid, _, _ in r.an.parts(x))

    found = _free_factors(r, n)
    if not found:
        return None
    x, w = min(found, key=lambda f: age(f[0]))
    if n in r.state_pairs and x is r.info(n.args[0]):
        return x  # ``c`` keeps the state site an earlier product tied to its own
    if x is r.info(n.args[0]) and _state_pair(r, n, w):
        return x
    r.an.unify(
        w, None,
        f"{r.where(n)}: the other factor of a product of two computed tensors, held fixed so "
        "that the features of the first pass through (its own axis is not contracted by a "
        "later product after ops that act alike on each of its indices, which would let one "
        "permutation move it)",
    )  # fmt: skip
    return x


def _state_pair(r: AtenRunner, n: fx.Node, w: Info) -> bool:
    """``h = x @ w`` with ``w``'s features (a state axis S) on its last dim, later contracted in
    ``y = h' @ c`` against ``c``'s features on its rows (EfficientViM's HSM-SSD: ``w = (a *
    b)^T``, ``h' = out_proj(gate(hz_proj(h)))``): one permutation P of S moving ``w``'s columns
    and ``c``'s rows gives ``h P^T``, then ``h' P^T`` (every op between acts alike on each
    state index), then ``h' P^T P c = y``. The ops from ``h`` to ``h'`` are read structurally
    (``_along_state``): convolutions with a one-tap kernel over S, splits and casts that keep
    S, elementwise ops with operands constant along S, transposes, LayerNorm over other dims,
    and reductions over S (the end of a branch: a mean over the states is the same for every
    order of them). Anything else, two readers ``h' @ c``, or S reaching the output keeps the
    state fixed (False, nothing recorded). Scalings of S are not claimed (a gate such as SiLU
    between the two products does not pass them), so ``w``'s and ``c``'s sites are tied and
    held to permutations."""
    s = w.n
    if w.dim != -1 or (w.outer, w.inner) != (1, 1) or s < 2:
        return False
    ends = _along_state(r, n)
    if ends is None or len(ends) != 1:
        return False
    (end,) = ends
    c = r.info(end.args[1])
    vc = _meta(end.args[1])
    if not isinstance(c, Info) or c.dim != -2 or (c.n, c.outer, c.inner) != (s, 1, 1):
        return False
    if not isinstance(vc, torch.Tensor) or vc.shape[-2] != s:
        return False
    why = (
        f"{r.where(n)} and {r.where(end)}: a state axis written by one product and contracted "
        "by the other, every op between acting alike on each state index: one permutation "
        "moves both factors (scalings do not pass the maps between)"
    )
    r.an.unify(w, c.moved(dim=w.dim), why)
    for part in r.an.parts(w):
        r.an.restrict_matrix(part, PERMUTATION, why)
    r.state_pairs.add(end)
    return True


_UNARY_STATE = ELEMENTWISE - {"add", "sub", "rsub", "mul", "div", "pow"}


def _meta(a: Any) -> Any:
    """A node's value as recorded at export (later nodes have not run yet), or ``a`` itself."""
    return a.meta.get("val") if isinstance(a, fx.Node) else a


def _along_state(r: AtenRunner, start: fx.Node) -> list[fx.Node] | None:
    """The products ``h' @ c`` that contract the state axis (the last dim of ``start``) after
    ops that each act alike on every state index; None when some reader of a tensor carrying
    the state does anything else (see ``_state_pair``). The graph is read in order, so both
    operands of a sum or product are known by then."""
    ends: list[fx.Node] = []
    tracked: dict[fx.Node, int] = {start: -1}
    after = False
    for u in r.graph.nodes:
        if u is start:
            after = True
            continue
        inputs = [a for a in u.all_input_nodes if a in tracked] if after else []
        if not inputs:
            continue
        if u.op != "call_function":
            return None  # the state reaches the output
        step = _state_step(u, inputs, tracked)
        if step is None:
            return None
        if step == "end":
            ends.append(u)
        elif step != "done":
            tracked[u] = step
    return ends


def _state_step(u: fx.Node, inputs: list[fx.Node], tracked: dict[fx.Node, int]) -> Any:
    """Where the state axis lies in ``u``, which reads the state-carrying ``inputs``: a dim
    (negative), ``"end"`` (a product contracting it), ``"done"`` (reduced away) or None."""
    name, val = op_name(u), _meta(u)
    node, sd = inputs[0], tracked[inputs[0]]
    binary = name in ("add", "sub", "mul", "div") and len(u.args) == 2 and not u.kwargs
    if name.startswith("_assert"):
        return "done"  # export's shape checks read nothing
    if not binary and (len(inputs) != 1 or u.args[0] is not node):
        return None  # the state in a position the step below does not read
    if u.target is operator.getitem:
        return sd
    if name in ("matmul", "bmm"):
        return "end" if sd == -1 else None
    if name in ("split", "split_with_sizes", "chunk"):
        dim = u.args[2] if len(u.args) > 2 else u.kwargs.get("dim", 0)
        nd = _meta(node).dim()
        return sd if dim % nd != sd % nd else None
    if not isinstance(val, torch.Tensor):
        return None
    if name in IDENTITY:
        return sd
    if name in ("conv1d", "convolution"):
        return sd if sd == -1 and _one_tap(u) else None
    if name in ("transpose", "permute"):
        nd = val.dim()
        order = list(range(nd))
        if name == "transpose":
            a, b = u.args[1] % nd, u.args[2] % nd
            order[a], order[b] = order[b], order[a]
        else:
            order = [d % nd for d in u.args[1]]
        return order.index(sd % nd) - nd
    if name == "layer_norm":
        return sd if sd < -len(u.args[1]) else None
    if name in ("mean", "sum"):
        nd = _meta(node).dim()
        dims = u.args[1] if len(u.args) > 1 else None
        dims = [d % nd for d in ([dims] if isinstance(dims, int) else dims or range(nd))]
        if sd % nd in dims:
            return "done"  # a reduction over the states: the same for every order of them
        keep = len(u.args) > 2 and u.args[2]
        return sd if keep else sd + sum(1 for d in dims if d > sd % nd)
    if name in _UNARY_STATE:
        others = (*u.args[1:], *u.kwargs.values())
        return None if any(isinstance(a, fx.Node) for a in others) else sd
    if binary:
        for a in u.args:
            va = _meta(a)
            if isinstance(a, fx.Node) and a in tracked:
                if tracked[a] != sd or va.shape != _meta(node).shape:
                    return None
                continue
            if isinstance(va, torch.Tensor) and va.dim() >= -sd and va.shape[sd] != 1:
                return None  # varies along the states without carrying them
        return sd
    return None


def _one_tap(u: fx.Node) -> bool:
    """A 1-d convolution whose kernel has one tap, stride 1 and no padding: a map over the
    channels applied to each position alike (``conv1d`` or ``convolution``)."""
    a = list(u.args) + [None] * 9
    w = _meta(a[1])
    if op_name(u) == "convolution":
        stride, padding, transposed = a[3], a[4], a[6]
    else:
        stride, padding, transposed = a[3] or [1], a[4] or [0], False
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    one = isinstance(w, torch.Tensor) and w.dim() == 3 and w.shape[-1] == 1
    flat = padding == "valid" or as_list(padding) == [0]
    return one and not transposed and as_list(stride) == [1] and flat


# -- Linear layers over positions (MLP-Mixer, ResMLP, gMLP token mixing) -------------------------
def across_positions(r: AtenRunner, n: fx.Node, x: Info, weight: str, bias: str | None) -> Info:
    """``x^T W^T + b`` where the last dim of ``x`` is not its feature axis (a token-mixing
    Linear over ``norm(x).transpose(1, 2)``): the map acts on positions, each feature alike, so
    it commutes with every matrix on the features, which keep their dim. Its bias adds the same
    value to every feature: with a bias only permutations of them pass. The hidden units of a
    token-mixing MLP are a site of their own (``_hidden_units``)."""
    where = r.where(n)
    if x.outer != 1 or x.inner != 1:
        raise Frozen("a Linear over positions of a flattened feature axis")
    if bias is not None:
        why = f"{where}: the bias of a Linear over positions adds the same value to every feature"
        for part in r.an.parts(x):
            r.an.restrict_matrix(part, PERMUTATION, why)
    _hidden_units(r, n, weight, bias)
    return x


def _hidden_units(r: AtenRunner, n: fx.Node, weight: str, bias: str | None) -> None:
    """``fc2(act(fc1(z)))`` over the last dim, where only elementwise ops (with plain numbers)
    and dropout lie between the two Linear layers and nothing else reads them: permuting fc1's
    rows (and bias) and fc2's columns alike keeps the function, whatever the elementwise
    function (scalings are not claimed). A site of width fc1's outputs, ``<mlp>.hidden``.

    A gated MLP (timm's ``GluMlp`` over tokens: ``a, b = fc1(z).chunk(2, -1)``, ``fc2(a *
    act(b))``) has hidden units of half fc1's width: one permutation P of both halves' rows
    (fc1's rows seen as (2, h)) and of fc2's columns keeps it, since ``(P a) * act(P b) = P (a
    * act(b))``. Without such a second layer the Linear's outputs are positions again: no site
    moves it, and the reason is recorded (``_positions_only``)."""
    width, outer = r.an.shape_of(weight)[0], 1
    prev, u = _follow(n)
    if u is not None and op_name(u) in ("split", "split_with_sizes", "chunk"):
        prev, u = _glu_product(u, width)
        width, outer = width // 2, 2
    if u is None or op_name(u) != "linear" or u.args[0] is not prev:
        return _positions_only(r, n, weight, bias)
    w2 = u.args[1]
    if not isinstance(w2, fx.Node) or w2.op != "get_attr" or str(w2.target) not in r.an.params:
        return _positions_only(r, n, weight, bias)
    if r.an.shape_of(str(w2.target))[1:] != (width,):
        return _positions_only(r, n, weight, bias)
    p1, p2 = (r.module_path(m).split(".") for m in (n, u))
    k = next((i for i, (a, b) in enumerate(zip(p1, p2, strict=False)) if a != b), len(p1))
    name = ".".join(p1[:k]) or r.module_path(n) or n.name  # the MLP holding both layers
    sid = r.an.new_site(width, name=f"{name}.hidden")
    r.an.sites[sid].family = PERMUTATION
    r.an.act_raw(sid, weight, 0, ActionKind.A, width, outer=outer)
    if bias is not None:
        r.an.act_raw(sid, bias, 0, ActionKind.A, width, outer=outer)
    r.an.act_raw(sid, str(w2.target), 1, ActionKind.A_INV_T, width)


def _follow(cur: fx.Node) -> tuple[fx.Node, fx.Node | None]:
    """Along a chain of single users through elementwise ops that read only ``cur`` (and plain
    numbers): the chain's last node and the one user after it (None: the chain branches)."""
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return cur, None
        u = users[0]
        others = (*u.args[1:], *u.kwargs.values())
        plain = not any(isinstance(a, fx.Node) for a in others)
        if u.args and u.args[0] is cur and op_name(u) in ELEMENTWISE | IDENTITY and plain:
            cur = u
            continue
        return cur, u


def _glu_product(split: fx.Node, width: int) -> tuple[fx.Node, fx.Node | None]:
    """A split of fc1's output into two equal halves along its last dim whose halves meet (through
    elementwise ops of one tensor each) in one product: ``_follow`` from that product. Else
    ``(split, None)``."""
    none = (split, None)
    src, val = split.args[0].meta.get("val"), split.meta.get("val")
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if src is None or not isinstance(val, (tuple, list)) or len(val) != 2 or width % 2:
        return none
    if dim % src.dim() != src.dim() - 1 or any(v.shape[-1] != width // 2 for v in val):
        return none
    items = list(split.users)
    if len(items) != 2 or any(op_name(g) != "getitem" for g in items):
        return none
    if sorted(g.args[1] for g in items) != [0, 1]:
        return none
    (a, pa), (b, pb) = (_follow(g) for g in items)
    if pa is None or pa is not pb or op_name(pa) != "mul" or a is b:
        return none
    if len(pa.args) != 2 or set(pa.args) != {a, b} or pa.kwargs:
        return none
    return _follow(pa)


def _positions_only(r: AtenRunner, n: fx.Node, weight: str, bias: str | None) -> None:
    """Record why a Linear over positions that no token-mixing MLP's hidden units follow stays:
    its outputs are the positions again (ResMLP's ``linear_tokens``, gMLP's spatial gate)."""
    reason = (
        f"{r.where(n)}: a Linear over token positions whose outputs are positions again (no "
        "second Linear over positions follows through elementwise ops alone): positions are "
        "fixed by the input's layout, so no element moves its rows or bias, and its columns "
        "read positions too"
    )
    names = (weight,) if bias is None else (weight, bias)
    if not any(names[0] in ps for _, _, ps in r.an.fixed_params):
        r.an.fixed_params.append((r.module_path(n) or n.name, reason, names))
