"""Rules for elementwise ops: sums (residual streams, biases, constants), products (scalars,
per-feature scales, gates, RMS normalisation) and activations (regions of elementwise ops, see
``_regions``, classified by the activation table or ``groups.discover``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from intertwiner.errors import IntertwinerError, UnsupportedGroupError
from intertwiner.groups import (
    IDENTITY_PHI,
    MONOMIAL,
    ORTHOGONAL,
    PERMUTATION,
    ActionKind,
    IntertwinerGroup,
    Mode,
    as_phi,
    discover,
    for_activation,
)
from intertwiner.groups import verify as verify_group
from intertwiner.symmetry._activation_calls import activation_group
from intertwiner.symmetry._regions import IDENTITY, ancestors_within, op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._rules_norms import RowStat, Square, normalise
from intertwiner.symmetry._spaces import Info, ParamRef, _SiteState

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner


def _operands(r: AtenRunner, n: fx.Node) -> tuple[Any, Any, Any, Any]:
    """Infos and values of a binary op's two operands (``other`` may be a keyword)."""
    a_node = n.args[0]
    b_node = n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
    return r.info(a_node), r.info(b_node), r.val(a_node), r.val(b_node)


@rule("add", "sub", "rsub")
def binary(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    where = r.where(n)
    a, b, va, vb = _operands(r, n)
    if isinstance(a, Info) and isinstance(b, Info):
        r.an.unify(a, b, f"residual addition in {where}")
        return a
    x, other, vo = (a, b, vb) if isinstance(a, Info) else (b, a, va)
    if not isinstance(x, Info):
        raise Frozen("a sum with a row statistic")
    if isinstance(other, RowStat) and other.family is PERMUTATION:
        if r.an.parts(other.x) == r.an.parts(x):  # x - mean(x): constant over the features
            return x
        raise Frozen("a statistic of one space added to another")
    if isinstance(other, ParamRef) and dataclasses.replace(other, at=None).plain:
        shared_scalar(r, other, x, where, scale=False)
        r.an.add_param(x, other, f"adding parameter {other.name} in {where}")
        return x
    if isinstance(other, ParamRef):
        raise Frozen("adding a transposed parameter or a function of one")
    if isinstance(vo, torch.Tensor) and vo.dim() > 0 and vo.numel() > 1:
        node = n.args[1] if x is a else n.args[0]
        if not (isinstance(node, fx.Node) and param_function(r, node, x, where)):
            r.an.unify(x, None, f"{where}: added to a tensor computed from the input")
        return x
    for part in r.an.parts(x):
        r.an.restrict_matrix(part, PERMUTATION, f"{where}: a constant is added to every feature")
    return x


def param_function(r: AtenRunner, node: fx.Node, x: Info, where: str) -> bool:
    """Move the one parameter ``p`` that ``node`` is computed from with ``x``'s site, when
    ``node = f(p)`` reads no input and commutes with permutations of one axis of ``p``:
    ``f(P p) = P f(p)`` along ``x``'s feature dim (timm's ``pos_embed`` resampled to the input's
    grid: slice, reshape, permute, ``interpolate``, ``cat``). Checked numerically on the
    parameter's value and a random one, with a cyclic shift and a swap of two features (they
    generate every permutation) and a random permutation; the site is then restricted to
    permutations (a scaling or a general matrix need not commute with ``f``; a ViT's residual
    stream is permutation-only anyway: its LayerNorms subtract the mean over the features, which
    only maps that fix the all-ones vector keep, and then scale each feature by its own weight,
    which leaves monomial maps; a scaling changes the variance the norm divides by, so of the
    monomial maps only permutations remain). False (nothing recorded) when it does not hold,
    when ``f`` reads the input, several parameters, or ``p`` (or a tensor made of it) is read
    anywhere else."""
    from intertwiner.symmetry._rules_attention import _ancestors

    an = r.an
    above = _ancestors(node)
    sources = [m for m in above if m.op == "get_attr" and str(m.target) in an.params]
    if any(m.op == "placeholder" for m in above) or len(sources) != 1:
        return False
    (src,) = sources
    chain = {m for m in above if src in _ancestors(m)}

    def reads(u: fx.Node) -> bool:  # export's ``_assert_tensor_metadata`` checks read nothing
        return u not in chain and not op_name(u).startswith("_assert")

    if any(reads(u) for m in chain - {node} for u in m.users) or len(node.users) != 1:
        return False  # p or a tensor made of it is read elsewhere too
    name, fx_val = str(src.target), node.meta.get("val")
    p = an.params[name]
    if name in an.called or x.outer != 1 or x.inner != 1 or not isinstance(fx_val, torch.Tensor):
        return False
    if fx_val.dim() < -x.dim or fx_val.shape[x.dim] != x.n or x.n < 2:
        return False
    axis = _commuting_axis(r, node, src, p, x)
    if axis is None:
        return False
    reason = f"{where}: {name} is added through a function of it that commutes with "
    for part in an.parts(x):
        an.restrict_matrix(part, PERMUTATION, reason + "permutations of its features")
    an.called.add(name)
    an.added_to[name] = (x, axis)
    an.act(x, name, axis, "out")
    return True


def _commuting_axis(r: AtenRunner, node: fx.Node, src: fx.Node, p: torch.Tensor, x: Info):
    """The first axis of parameter ``p`` (read by ``src``) along which ``node = f(p)`` commutes
    with permutations of ``x``'s features (``f(P p) = P f(p)``), or None: checked on ``p``'s value
    and a random one, with a cyclic shift and a swap of two features (they generate every
    permutation) and a random permutation."""
    from intertwiner.symmetry._rules_attention import _evaluate

    order = {m: i for i, m in enumerate(r.graph.nodes)}
    gen = torch.Generator().manual_seed(0)
    perms = [torch.arange(x.n).roll(1), torch.tensor([1, 0, *range(2, x.n)])]
    perms.append(torch.randperm(x.n, generator=gen))
    values = [p.detach(), torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)]
    tol = 64 * torch.finfo(p.dtype).eps if p.is_floating_point() else 0.0
    for axis in (a for a in range(p.dim()) if p.shape[a] == x.n):
        try:
            ok = True
            for v in values:
                fv = _evaluate(r, node, {src: v}, order)
                for perm in perms:
                    moved = _evaluate(r, node, {src: v.index_select(axis, perm)}, order)
                    want = fv.index_select(fv.dim() + x.dim, perm)
                    scale = float(want.abs().max()) or 1.0
                    if moved.shape != want.shape or float((moved - want).abs().max()) > tol * scale:
                        ok = False
        except (RuntimeError, IndexError, TypeError):
            continue
        if ok:
            return axis
    return None


@rule("mul", "div")
def product(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    where = r.where(n)
    a, b, va, vb = _operands(r, n)
    if isinstance(a, Info) and isinstance(b, Info):
        if _one_feature_map(r, a, b, vb, where):
            return a
        if op_name(n) == "div":
            raise Frozen("dividing by a hidden tensor")
        if _one_feature_map(r, b, a, va, where):
            return b
        return _gate(r, a, b, where)
    if isinstance(a, RowStat) or isinstance(b, RowStat):
        return normalise(r, a, b, where)
    x, other, vo = (a, b, vb) if isinstance(a, Info) else (b, a, va)
    if op_name(n) == "div" and not isinstance(a, Info):
        raise Frozen("dividing by a hidden tensor")
    if not isinstance(x, Info):
        raise Frozen("a product with a statistic of the features")
    node = n.args[1] if x is a else n.args[0]
    if not isinstance(vo, torch.Tensor) or vo.numel() == 1:
        if isinstance(other, ParamRef):
            if op_name(n) == "mul" and other.plain:
                moved = _scalar_multiplier(r, other, x, where)
                if moved is not None:
                    return moved
            shared_scalar(r, other, x, where, scale=True)
        elif isinstance(node, fx.Node) and not _untouched(r, node):
            # a number computed from something a site moves (a parameter's max) changes with it
            raise Frozen("a product with a number computed from tensors that the sites move")
        else:
            _number_of_params(r, node, where)
        return x  # a number: commutes with every matrix
    if isinstance(other, ParamRef) and not other.transposed:
        return _scale_by_param(r, x, other, where, n)
    broadcast = vo.dim() < -x.dim or vo.shape[x.dim] == 1
    if other is None and broadcast and isinstance(node, fx.Node) and _untouched(r, node):
        # A fixed tensor (computed from the input, or from statistics that the sites keep, such
        # as CSATv2's spatial attention map from the channel mean and max) broadcast over the
        # feature axis: one factor per position, the same for every feature, so every channel
        # matrix commutes with it: (M x) * s = M (x * s).
        return x
    if _param_multiplier(r, node, x, where):
        return x
    names = _param_sources(r, node)
    if names:  # a function of several parameters, or one that does not commute with permutations
        why = (
            f"a product with a tensor computed from parameter {', '.join(names)} (not the "
            "parameter itself, which would take the permutation part of a monomial element)"
        )
        if not any(names[0] in ps for _, _, ps in r.an.fixed_params):
            r.an.fixed_params.append((names[0], f"{where}: {why}", names))
        raise Frozen(why)
    raise Frozen("a product with a tensor computed from the input")


def _untouched(r: AtenRunner, node: fx.Node, params: list[str] | None = None) -> bool:
    """Is the untracked tensor ``node`` unchanged by every element of the spec? An untracked
    tensor need not be fixed (the attention sites move their projections' outputs, max
    pooling's indices move with the channels), so its ancestors are read back to tensors known
    to be fixed: the input, a frozen space, a statistic over the features of spaces held to
    permutations (a mean or max of the features is the same for every order of them), or a
    parameter that no site moves and no later node reads (their names are added to ``params``)."""
    sites = r.an.sites

    def root(sid: int) -> _SiteState:
        return sites[r.an.find(sid)]

    def frozen(x: Info) -> bool:
        return all(sid == 0 for sid, _, _ in r.an.parts(x))

    def kept(stat: RowStat) -> bool:
        return all(sid == 0 or root(sid).family <= PERMUTATION for sid, _, _ in r.an.parts(stat.x))

    def moved(name: str) -> bool:
        t = r.an.params.get(name, r.an.buffers.get(name))
        return any(
            r.an.find(s.id) != 0
            and any(r.an.params.get(a.name, r.an.buffers.get(a.name)) is t for a in s.actions)
            for s in sites[1:]
        )

    stack, seen = [node], set()
    while stack:
        m = stack.pop()
        if m in seen or m.op == "placeholder":
            continue
        seen.add(m)
        if m.op == "get_attr":
            if any(u not in r.infos for u in m.users) or moved(str(m.target)):
                return False
            if params is not None:
                params.append(str(m.target))
            continue
        if m in r.an.invariant:
            continue
        if m in r.blocks or m in r.owned or m not in r.infos:
            return False
        info = r.infos[m]
        infos = [i for i in (info if isinstance(info, tuple) else (info,)) if i is not None]
        if any(isinstance(i, Square) for i in infos):
            return False
        if any(isinstance(i, Info) and not frozen(i) for i in infos):
            return False
        if any(isinstance(i, RowStat) and not kept(i) for i in infos):
            return False
        if any(isinstance(i, (Info, RowStat)) for i in infos):
            continue  # fixed, whatever came before it
        stack.extend(m.all_input_nodes)
    return True


def contract_features(r: AtenRunner, n: fx.Node) -> bool:
    """``q @ k^T`` of two hidden tensors that meet on their feature axes (q's last dim, k^T's
    second-to-last; GCViT's global query, a residual stream, against its window keys, when no
    attention block claims them): the scores ``q^T k`` are unchanged when q and k are moved by
    one orthogonal matrix M (``q^T M^T M k``), so the two spaces are tied and held to orthogonal
    maps (permutations where a LayerNorm holds them already); the scores are then fixed
    (``Spaces.invariant``). False (nothing recorded) for any other product."""
    q, k = r.info(n.args[0]), r.info(n.args[1])
    if not (isinstance(q, Info) and isinstance(k, Info)) or q.dim != -1 or k.dim != -2:
        return False
    if (q.n, q.outer, q.inner) != (k.n, 1, 1) or (q.outer, q.inner) != (1, 1):
        return False
    where = r.where(n)
    r.an.unify(q, k.moved(dim=-1), f"{where}: q @ k^T of two hidden tensors")
    for part in r.an.parts(q):
        r.an.restrict_matrix(part, ORTHOGONAL, f"{where}: q^T k is kept by orthogonal maps only")
    r.an.invariant.add(n)
    return True


def fixed_mix(r: AtenRunner, n: fx.Node) -> Info | None:
    """``p @ v`` with ``p`` a fixed tensor (attention probabilities from scores that
    ``contract_features`` fixed) and ``v``'s feature axis on its last dim (or ``x @ p`` with
    ``x``'s on its rows): each feature is mixed over positions by the same ``p``, so the
    product moves like ``v`` (``x``). None when the other factor is not known to be fixed."""
    for x_node, p_node, dim in ((n.args[1], n.args[0], -1), (n.args[0], n.args[1], -2)):
        x, vx, vp = r.info(x_node), r.val(x_node), r.val(p_node)
        if not isinstance(x, Info) or x.dim != dim or r.info(p_node) is not None:
            continue
        if not isinstance(vp, torch.Tensor) or vp.dim() < 2 or vx.dim() < 2:
            continue
        params: list[str] = []
        if isinstance(p_node, fx.Node) and _untouched(r, p_node, params):
            _record_fixed(r, params, r.where(n))
            return x
    return None


def _record_fixed(r: AtenRunner, params: list[str], where: str) -> None:
    """Say why the parameters behind fixed mixing weights stay (GCViT's relative position
    table on the scores of a global query): coverage then lists the reason."""
    for name in dict.fromkeys(params):
        if name not in r.an.params or any(name in ps for _, _, ps in r.an.fixed_params):
            continue
        reason = (
            f"{name} in {where}: it shapes mixing weights that the sites keep fixed (scores "
            "of a query and key tied to one orthogonal map); moving it would need a "
            "permutation of the heads, and these sites keep the heads in place"
        )
        r.an.fixed_params.append((name, reason, (name,)))


def _one_feature_map(r: AtenRunner, x: Info, m: Info, vm: Any, where: str) -> bool:
    """``x * m`` with ``m`` a hidden tensor of one feature broadcast over ``x``'s features (a
    spatial attention map from a conv with one output channel, CBAM's and CSATv2's): ``m``'s
    space is frozen (its only elements scale that one feature, which the product would pass on
    to ``x``'s features), so ``m`` is a fixed factor per position, the same for every feature
    of ``x``: every channel matrix of ``x`` commutes with it. False (nothing recorded) when
    ``m`` has more than one feature or varies along ``x``'s feature dim."""
    one = m.dim == x.dim and m.n * m.outer * m.inner == 1
    if not one or not isinstance(vm, torch.Tensor) or vm.dim() < -x.dim or vm.shape[x.dim] != 1:
        return False
    r.an.unify(m, None, f"{where}: a one-feature map that scales every feature of a tensor")
    return True


def _gate(r: AtenRunner, a: Info, b: Info, where: str) -> Info:
    """A product of two hidden tensors: the one whose site has the smaller group is the gate
    (moved by its permutation only), the other the value (any monomial)."""
    an = r.an
    if [(s, ch) for s, _, ch in an.parts(a)] == [(s, ch) for s, _, ch in an.parts(b)]:
        return _square(r, a, b, where)
    fam = {id(i): an.sites[an.find(an.parts(i)[0][0])].family for i in (a, b)}
    gate, value = (a, b) if fam[id(a)] is PERMUTATION else (b, a)
    if len(an.parts(gate)) > 1 and len(an.parts(value)) == 1 and fam[id(value)] is PERMUTATION:
        # both permutation-only: the unsplit one is the gate (``Spaces.gate`` cuts it into the
        # value's blocks): squeeze-excitation after a grouped or mixed convolution
        gate, value = value, gate
    return an.gate(gate, value, f"gated product in {where}")


def _square(r: AtenRunner, a: Info, b: Info, where: str) -> Info:
    """``f(x) * g(x)`` of two tensors moved by one site (GLU halves cut along another axis, a
    token-mixing GLU): a permutation P moves both and their product alike (phi(P) = P for every
    phi), a scaling would be squared: permutations only."""
    if (a.dim, a.outer, a.inner) != (b.dim, b.outer, b.inner):
        raise Frozen("a product of two tensors of one space with different layouts")
    for part in r.an.parts(a):
        r.an.restrict_matrix(
            (part[0], "A", part[2]), PERMUTATION, f"{where}: a product of a space with itself"
        )
    return a


def _scale_by_param(
    r: AtenRunner, x: Info, p: ParamRef, where: str, n: fx.Node, *, fold: bool = True
) -> Info:
    """``h * w`` with a per-feature parameter ``w`` (layer scale, an RMSNorm weight): only
    monomial matrices commute with a diagonal map, and ``w`` takes their permutation part. When
    only Linear layers read the product, ``w`` may instead be folded into them (see
    ``spec.Fold``): the decision waits until the site's group is known (``_build``)."""
    an = r.an
    t = an.params.get(p.name, an.buffers.get(p.name))
    pd = p.axis_for(t.dim(), x.dim)
    full = x.n * x.outer * x.inner
    if pd < 0 or t.shape[pd] != full or t.numel() != full or x.outer != 1 or x.inner != 1:
        raise Frozen(f"a product with parameter {p.name} that is not one per feature")
    # folding into the readers' input axis needs the features last (a broadcast view of the
    # parameter on another dim would meet the readers' positions instead)
    into = _foldable_readers(r, n) if t.dim() == 1 and fold and x.dim == -1 else None
    parts = an.parts(x)
    if into and len(parts) == 1 and parts[0][2] is None and parts[0][0] != 0:
        reason = f"{where}: scaled by {p.name} per feature"
        fold = (p.name, pd, into, reason, *p.affine)
        an.sites[parts[0][0]].folds.append(fold)
        return x
    for part in parts:
        an.restrict_matrix(part, MONOMIAL, f"{where}: scaled by {p.name} per feature")
    an.act(x, p.name, pd, ActionKind.P, buffer=p.name not in an.params)
    return x


def _scalar_multiplier(r: AtenRunner, p: ParamRef, x: Info, where: str) -> Info | None:
    """``s * h`` with a one-number parameter ``s`` and ``h`` an activation output moved by
    ``phi(A)`` where phi is a power x^k, k != 1 (StarReLU's ``s * relu(x)^2``): with ``A = c P``,
    ``s -> s c^(1-k)`` makes the product move by ``A`` itself, so that a number added next moves
    too (``b -> c b``). None (nothing recorded) where ``h`` is not such an output."""
    parts = r.an.parts(x)
    if len(parts) != 1 or parts[0][1] != Mode.PHI or parts[0][0] == 0:
        return None
    phi = as_phi(r.an.sites[r.an.find(parts[0][0])].phi)
    if phi.exponents()[0] == 1.0:
        return None  # phi(c P) = c P: the product already moves like A, s has no factor to take

    def kind_of(mode: str) -> ActionKind | None:
        return ActionKind.SCALAR_A_OVER_PHI if mode == Mode.PHI else None

    if not r.an.scalar_moves(x, p.name, kind_of, f"scaled by {p.name} in {where}"):
        return None
    return x.moved(parts=((parts[0][0], Mode.A, None),))


def _ancestors_in_order(r: AtenRunner, node: Any) -> list[fx.Node]:
    from intertwiner.symmetry._rules_attention import _ancestors

    if not isinstance(node, fx.Node):
        return []
    order = {m: i for i, m in enumerate(r.graph.nodes)}
    return sorted(_ancestors(node), key=lambda m: order.get(m, -1))


def _param_sources(r: AtenRunner, node: Any) -> tuple[str, ...]:
    """The parameters a tensor is computed from when it reads no input (else ``()``)."""
    above = _ancestors_in_order(r, node)
    if any(m.op == "placeholder" for m in above):
        return ()
    return tuple(
        str(m.target) for m in above if m.op == "get_attr" and str(m.target) in r.an.params
    )


def _param_multiplier(r: AtenRunner, node: Any, x: Info, where: str) -> bool:
    """``f(p) * h`` with ``f(p)`` one factor per feature of ``h`` computed from one parameter
    ``p`` alone (EfficientViM's ``sigmoid(alpha).view(4, -1, 1, 1)[k] * branch``): when ``f``
    commutes with permutations of an axis of ``p`` (``f(P p) = P f(p)`` along ``h``'s features,
    checked numerically on ``p``'s value and a random one with a cyclic shift, a swap and a random
    permutation), the site takes monomial elements D P (a per-feature factor commutes with D) and
    ``p``'s axis moves by P. Every use of ``p`` records its own action: uses on one site agree,
    uses on different sites are tied or dropped like any shared tensor (``_shared``). False
    (nothing recorded) otherwise."""
    an = r.an
    names = _param_sources(r, node)
    parts = an.parts(x)
    if len(names) != 1 or len(parts) != 1 or parts[0][2] is not None or parts[0][0] == 0:
        return False
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if x.outer != 1 or x.inner != 1 or x.n < 2 or not isinstance(val, torch.Tensor):
        return False
    fd = val.dim() + x.dim  # the factor's dim that lines up with the features
    if fd < 0 or val.shape[fd] != x.n or val.numel() != x.n:
        return False
    (name,) = names
    src = next(m for m in _ancestors_in_order(r, node) if m.op == "get_attr")
    axis = _commuting_axis(r, node, src, an.params[name], x)
    if axis is None:
        return False
    an.restrict_matrix(parts[0], MONOMIAL, f"{where}: scaled per feature by a function of {name}")
    an.act(x, name, axis, ActionKind.P)
    return True


def _number_of_params(r: AtenRunner, node: Any, where: str) -> None:
    """Record why parameters that reach a product only as one number computed from them stay
    (EfficientViM's ``weights.softmax(-1)[i] * head_i(x)``): the number commutes with every
    element, and a function of a parameter does not take a common factor the way the parameter
    itself does (``shared_scalar``)."""
    names = _param_sources(r, node)
    if not names or any(names[0] in ps for _, _, ps in r.an.fixed_params):
        return
    ops = ", ".join(
        dict.fromkeys(op_name(m) for m in _ancestors_in_order(r, node) if m.op == "call_function")
    )
    reason = (
        f"{where}: one number computed from parameter {', '.join(names)} ({ops}) multiplies every "
        "feature: it commutes with every element and stays; a function of a parameter does not "
        "follow a common factor of the features the way a parameter itself would"
    )
    r.an.fixed_params.append((names[0], reason, names))


def shared_scalar(r: AtenRunner, p: ParamRef, x: Info, where: str, *, scale: bool) -> None:
    """Record why a one-number parameter that multiplies (``scale``) or is added to every
    feature of ``x`` may stay where it is (MetaFormer's StarReLU ``s * relu(x)^2 + b``, HGNetV2's
    ``LearnableAffineBlock``). Where a site moves it (``Rules.scalar_moves``: an added number takes
    the common factor c of ``A = c P``, a multiplier after a power x^k takes c^(1-k)), ``trace``
    drops this entry (``_build``); it stays where the site's group has no common factor (a
    permutation leaves the number unchanged) or nothing can move it."""
    t = r.an.params.get(p.name)
    if t is None or t.numel() != 1 or x.n * x.outer * x.inner < 2:
        return
    if any(p.name in names for _, _, names in r.an.fixed_params):
        return
    what = (
        "multiplying every feature: it commutes with every element, and taking a common factor "
        "c > 0 of the features (s -> s c^(1-k)) needs the map before it positively homogeneous "
        "of a degree k != 1 (a power of ReLU); after a map of degree 1 the factor would have to "
        "come from a second common scaling of the product, which no site holds"
        if scale
        else "added to every feature: only a common factor c > 0 of the features (c P) moves it "
        "(b -> c b); the site's group has none here (permutations only: a LayerNorm, an "
        "activation that is not positively homogeneous, a number used twice) or the features "
        "are split between sites"
    )
    reason = f"scalar parameter {p.name} in {where}: one number {what}"
    r.an.fixed_params.append((p.name, reason, (p.name,)))


@rule("addcmul")
def addcmul(r: AtenRunner, n: fx.Node, value: Any) -> Info:
    """``beta + value * alpha * x`` with per-feature parameters ``alpha`` and ``beta`` (ResMLP's
    ``Affine`` as ``torch.addcmul(beta, alpha, x)``): ``alpha`` takes the permutation part of a
    monomial element (never folded into the readers: ``beta`` is added after the scale) and
    ``beta`` moves like the output."""
    base, t1, t2 = n.args[:3]
    number = n.args[3] if len(n.args) > 3 else n.kwargs.get("value", 1)
    infos = [r.info(a) for a in (t1, t2)]
    x = next((i for i in infos if isinstance(i, Info)), None)
    p = next((i for i in infos if isinstance(i, ParamRef)), None)
    b = r.info(base)
    if x is None or p is None or p.transposed or not isinstance(number, (int, float)):
        raise Frozen("addcmul other than a per-feature parameter times a hidden tensor")
    if not isinstance(b, ParamRef) or not dataclasses.replace(b, at=None).plain:
        raise Frozen("addcmul whose added term is not a parameter")
    where = r.where(n)
    _scale_by_param(r, x, p, where, n, fold=False)
    r.an.add_param(x, b, f"adding parameter {b.name} in {where}")
    return x


def _foldable_readers(r: AtenRunner, n: fx.Node) -> tuple[tuple[str, int], ...] | None:
    """The (weight, input axis) of every Linear / Conv1D that reads ``n`` (through casts and
    views that keep the last dim), or None if anything else reads it or a weight is shared."""
    out: list[tuple[str, int]] = []
    stack = [n]
    while stack:
        cur = stack.pop()
        for u in cur.users:
            name = op_name(u)
            if name in IDENTITY or (
                name in ("view", "reshape", "_unsafe_view")
                and u.meta.get("val") is not None
                and u.meta["val"].shape[-1] == cur.meta["val"].shape[-1]
            ):
                stack.append(u)
                continue
            w = u.args[1] if name == "linear" else u.args[2] if name == "addmm" else None
            x = u.args[0] if name == "linear" else u.args[1] if name == "addmm" else None
            info = r.info(w) if isinstance(w, fx.Node) else None
            if x is not cur or not isinstance(info, ParamRef) or not info.plain:
                return None
            out.append((info.name, 1 if name == "linear" else 0))
    ids = [id(r.an.params[w]) for w, _ in out if w in r.an.params]
    shared = sum(1 for t in r.an.params.values() if id(t) in ids) != len(ids)
    return tuple(out) if out and not shared else None


# -- activations --------------------------------------------------------------------------------
@torch.library.custom_op("intertwiner::identity_activation", mutates_args=())
def identity_activation(x: torch.Tensor) -> torch.Tensor:
    """The identity as one op the graph keeps: ``trace`` puts it where a model names an
    ``nn.Identity`` as an activation site (the zoo's ``activation="identity"``), which export
    would otherwise leave no node for."""
    return x.clone()


@identity_activation.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@rule("identity_activation")
def marked_identity(r: AtenRunner, n: fx.Node, value: Any) -> Info | None:
    group = for_activation(torch.nn.Identity())
    return r.an.activation(r.module_path(n) or n.name, group, r.first(n))


def region(r: AtenRunner, n: fx.Node) -> Any:
    """The rule of every node of an elementwise region (``_regions``): an output of the region
    is one activation of the region's root (or the identity, or a scalar multiple)."""
    if r.regions.interior(n):
        return None
    reg = r.regions.region_of[n]
    x = r.info(reg.root)
    if isinstance(x, RowStat):
        return x  # a function of a row statistic is one too
    if isinstance(x, ParamRef):
        return _affine_of_param(x, reg.function(n))
    if not isinstance(x, Info):
        return None
    within = ancestors_within(n, set(reg.nodes))
    nodes = [m for m in reg.nodes if m in within]
    if all(op_name(m) in IDENTITY for m in nodes):
        return x
    try:
        group = _region_group(r, reg, n, nodes)
    except Frozen as e:  # the region's root is what the unknown function reads
        r.an.unify(x, None, f"{op_name(n)} in {r.where(n)}: {e}")
        return None
    for m in nodes:
        for a in m.args:
            p = r.info(a) if isinstance(a, fx.Node) else None
            if isinstance(p, ParamRef):
                shared_scalar(r, p, x, r.where(m), scale=op_name(m) in ("mul", "div"))
    if group.linear:
        return x  # a linear function (a scalar multiple): commutes with every matrix
    ops = [m for m in nodes if op_name(m) not in IDENTITY] or nodes
    return r.an.activation(_activation_name(r, ops[-1], ops), group, x)


def _region_group(r: AtenRunner, reg, n: fx.Node, nodes: list[fx.Node]) -> IntertwinerGroup:
    key = reg.signature(n)
    if key in r.groups:
        return r.groups[key]
    ops = [m for m in nodes if op_name(m) not in IDENTITY]
    group = None
    if len(ops) == 1 and ops[0].args and ops[0].args[0] is not None:
        fn = getattr(torch.nn.functional, op_name(ops[0]), None) or getattr(
            torch, op_name(ops[0]), None
        )
        if fn is not None and op_name(ops[0]) not in ("add", "sub", "mul", "div", "pow"):
            try:
                group = activation_group(
                    fn, ops[0].args[1:], ops[0].kwargs, r.where(n), method=False
                )
            except IntertwinerError:
                group = None
    if group is None:
        label = r.module_type(n) or op_name(n)
        fn = _named(reg.function(n), label)
        try:
            found = discover(fn)
            group = IntertwinerGroup(found.family, found.phi_kind, f"G_{label}", found.evidence)
        except UnsupportedGroupError:
            # Elementwise, with a group no family describes (2x + 1: {A : A 1 = 1}); every
            # elementwise function commutes with permutations, a subgroup of it.
            group = IntertwinerGroup(PERMUTATION, IDENTITY_PHI, f"G_{label}|permutation")
            if verify_group(group, fn) > 1e-9:  # pragma: no cover (elementwise => holds)
                raise Frozen(f"an elementwise function {label} without a group") from None
        except IntertwinerError as e:
            raise Frozen(f"an elementwise function without an intertwiner group ({e})") from e
    r.groups[key] = group
    return group


def _activation_name(r: AtenRunner, n: fx.Node, nodes: list[fx.Node]) -> str:
    """The activation module's name when the region's ops ran inside one parameter-free module
    (``h.0.mlp.act``), possibly with functional ops of its enclosing modules around it (``2 *
    self.act(h)`` is the site ``act``, as a hook on ``act`` sees it); else the graph node's name."""
    paths = {r.module_path(m) or "" for m in nodes}
    inner = [p for p in paths if p and _parameter_free(r, p)]
    if len(inner) == 1:
        path = inner[0]
        if all(q == path or q == "" or path.startswith(q + ".") for q in paths):
            return path
    return n.name


def _parameter_free(r: AtenRunner, path: str) -> bool:
    try:
        mod = r.model.get_submodule(path)
    except AttributeError:
        return False
    return not any(True for _ in mod.parameters())


def _affine_of_param(p: ParamRef, fn) -> ParamRef | None:
    """``fn(param)`` as a ParamRef when ``fn`` is affine (``1 + w``), else None (untracked)."""
    if p.transposed:
        return None
    probe = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    try:
        out = fn(probe)
    except Exception:  # noqa: BLE001 (an op that needs the parameter's own shape)
        return None
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        return None
    slope = float(out[3] - out[1]) / 2.0
    offset = float(out[1])
    if slope == 0.0 or not torch.allclose(out, slope * probe + offset, rtol=0, atol=1e-12):
        return None
    a, b = p.affine
    return dataclasses.replace(p, affine=(slope * a, slope * b + offset))


def _named(fn, name: str):
    fn.__name__ = name
    return fn
