"""The reversal across the blocks of a grouped convolution (issue 24: ECA after ResNeXt's grouped
convolutions).

ECA's ``conv1d`` over the channels admits the order reversal J with its kernel flipped
(``_rules_linear._along_features``). After a grouped convolution ``y = conv_W(x)`` (G groups,
weight ``(C_out, C_in / G, k, k)``: group g's outputs read only group g's inputs) the channels of
``y`` are cut into G blocks, each a site of its own (block-diagonal elements), and J maps block g
onto block G - 1 - g, reversed inside. Let ``B`` reverse the order of x's G blocks, keeping the
order inside each. Row ``g c + o`` of ``J W`` is row ``(G-1-g) c + (c-1-o)`` of ``W``, which reads
input block G - 1 - g, which is block g of ``B x``::

    J conv_W(x) = conv_{J W}(B x)      (and J b for the bias)

with the weight's input axis (within a group) unchanged. So J is a symmetry when every place the
input space ``x`` meets a parameter takes ``B`` too: the ECA'd space is one site of width C_out
with the reversal family {I, J} (``BlockReversal.site``) whose element J moves

- everything the G output blocks' sites move, joined in block order (the blocks' own sites are
  left out of the spec: a block-diagonal element other than I changes the pooled channels that
  ECA's kernel mixes),
- the flip of ECA's kernel,
- and, as ``B``, every parameter axis the G input blocks' sites move except the grouped
  convolution's input axis: a ``FLIP`` of the axis viewed as ``(outer, G, C_in / G * inner)``.

The input blocks keep their own sites: composed with ``B`` (when the ECA site takes J) their
block-diagonal elements give every element that maps input block g onto block G - 1 - g, which
is the whole of what survives. Anything that breaks the pattern (an input that is not one site
per group, blocks whose parameters differ from block to block, input channels out of block order
after a channel shuffle, a site shared by two such reversals) leaves the ECA'd space without a
site and says why on ``spec.frozen`` under the ECA node's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from intertwiner.groups import PERMUTATION, REVERSAL, ActionKind
from intertwiner.symmetry._registry import Frozen
from intertwiner.symmetry._spaces import Part, Spaces
from intertwiner.symmetry.spec import ParamAxis

Leaves = dict[int, dict[str, list]]
#: ``(label, reason, parameters)`` as ``SymmetrySpec.frozen`` and ``frozen_params`` take them.
Refusal = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class GroupedConv:
    """A grouped convolution's output blocks: the parent site its output was cut from."""

    weight: str
    groups: int
    #: The input's site of each group, in group order; None: not one whole site per group.
    inputs: tuple[int, ...] | None
    where: str


@dataclass(frozen=True)
class BlockReversal:
    """The reversal site of an ECA over a grouped convolution's output blocks."""

    site: int
    #: The output blocks' sites (the children of the split output), in block order.
    blocks: tuple[int, ...]
    conv: GroupedConv
    where: str


def reverse_blocks(an: Spaces, parts: list[Part], weight: str, k: int, why: str) -> None:
    """ECA's kernel over ``parts``, the blocks of a grouped convolution's output: a new site of
    the whole width with family {I, J}, the kernel flipped by its J; the blocks' actions and the
    input's block reversal join it when the spec is built (``resolve``). Raises ``Frozen`` when
    the parts are not exactly one grouped convolution's output blocks in channel order."""
    want = [(s, ch) for s, _, ch in parts]
    found = [
        (p, conv)
        for p, conv in an.grouped.items()
        if [(an.find(c), ch) for c, ch in an.sites[p].split or []] == want
    ]
    if not found:
        raise Frozen(
            f"{why} over features split between sites that are not the output blocks of one "
            "grouped convolution (reversal mixes the blocks)"
        )
    parent, conv = found[0]
    kids = an.sites[parent].split or []
    sid = an.new_site(sum(len(ch) for _, ch in kids))
    an.restrict(
        sid,
        REVERSAL,
        f"{why} (kernel {k}) over the {conv.groups} blocks of grouped convolution "
        f"{conv.where!r}: only reversing the order, with the kernel flipped and the blocks of "
        "the convolution's input reversed, commutes with it",
    )
    an.act_raw(sid, weight, 2, ActionKind.FLIP, k, buffer=weight not in an.params)
    an.block_reversals.append(BlockReversal(sid, tuple(c for c, _ in kids), conv, why))


def resolve(an: Spaces, leaves: Leaves) -> tuple[set[int], list[Refusal]]:
    """Give each block reversal's site its actions in ``leaves`` (or drop it, saying why). Returns
    the root sites to leave out of the spec (the output blocks' and refused reversals') and the
    refusals for ``spec.frozen``."""
    roots = [tuple(an.find(c) for c in br.blocks) for br in an.block_reversals]
    claimed: dict[int, int] = {}
    for rs in roots:
        for r in rs:
            claimed[r] = claimed.get(r, 0) + 1
    left_out: set[int] = set()
    refused: list[Refusal] = []
    for br, rs in zip(an.block_reversals, roots, strict=True):
        left_out |= set(rs)
        why = _join(an, leaves, br, rs, claimed)
        if why is not None:
            left_out.add(an.find(br.site))
            moved = [a.name for r in rs for a, _ in leaves.get(r, {}).get("actions", [])]
            refused.append((br.where, f"{br.where}: {why}", tuple(dict.fromkeys(moved))))
    left_out.discard(0)
    return left_out, refused


def _join(
    an: Spaces, leaves: Leaves, br: BlockReversal, rs: tuple[int, ...], claimed: dict[int, int]
) -> str | None:
    """Move the blocks' actions and the input's block reversal onto ``br.site``; the reason it
    cannot be done (nothing moved) or None."""
    conv, g = br.conv, br.conv.groups
    if conv.inputs is None:
        return (
            f"the input of grouped convolution {conv.where!r} is not one site per group, so no "
            "site carries the reversal of its blocks"
        )
    ss = tuple(an.find(s) for s in conv.inputs)
    bad = _bad_roots(an, leaves, rs, "output") or _bad_roots(an, leaves, ss, "input")
    if bad is None and any(claimed[r] > 1 for r in rs):
        bad = "its blocks are the blocks of another such reversal too"
    if bad is None and any(s in claimed for s in ss):
        # those blocks move by J of a reversal site (another's, or this one's through a residual
        # addition), with which B does not commute
        bad = "the input blocks are the output blocks of such a reversal"
    # a grouped convolution's output rows read only their own group's inputs: B (or J) on them
    # would need that convolution's input blocks reversed as well, which nothing here does
    bound = _grouped_outputs(an, but=br.conv)
    if bad is None and (any(r in bound for r in rs) or any(s in bound for s in ss)):
        bad = (
            "its blocks are tied to the output blocks of another grouped convolution (in a row, "
            "or added), whose input blocks would have to be reversed too"
        )
    # a cut of the axis that follows the blocks records nothing but this count: beyond the
    # convolution's own cut of its input, one may have sent blocks different ways
    cuts = _cuts(an)
    if bad is None and (any(cuts.get(r, 0) for r in rs) or any(cuts.get(s, 0) > 1 for s in ss)):
        bad = (
            "a split, chunk or group norm cuts the blocks' channels (other than the grouped "
            "convolution's own), so an op may treat one block unlike another"
        )
    if bad is not None:
        return bad
    out_actions = _coalesce([_actions(leaves, r) for r in rs])
    acts = _coalesce([_activations(leaves, r) for r in rs])
    ins = [[x for x in _actions(leaves, s) if not _reads(x[1], conv)] for s in ss]
    in_actions = _coalesce(ins)
    # (the input's activations are not the ECA site's to list, but must match block by block)
    in_acts = _coalesce([_activations(leaves, s) for s in ss])
    if None in (out_actions, acts, in_actions, in_acts):
        return (
            f"the blocks of grouped convolution {conv.where!r} do not move the same parameters "
            "block by block (other weights, other layers), so no action on parameter axes reverses "
            "their order"
        )
    flips = []
    for a, ch in in_actions:
        if ActionKind(a.kind).scalar:
            continue  # a one-number parameter: a permutation leaves it
        if ch != tuple(range(a.n_total)) or a.n_total % g:
            return (
                f"the input channels of grouped convolution {conv.where!r} are not in block order "
                f"in {a.name} (a channel shuffle or slice between): the reversal of the blocks "
                "is not one of the axis"
            )
        inner = a.n_total // g * a.inner
        flips.append((ParamAxis(a.name, a.axis, ActionKind.FLIP, g, a.outer, inner, None,
                                a.buffer, a.use, a.within), None))  # fmt: skip
    site = an.find(br.site)  # a shared ECA conv may have tied two such sites into one
    slot = leaves.setdefault(site, {"actions": [], "activations": [], "writers": [], "folds": []})
    slot["actions"] += [(a, ch) for a, ch in out_actions] + flips
    slot["activations"] += [(o, name, ax, grp, ch) for (o, name, ax, grp), ch in acts]
    slot["writers"] += [w for r in rs for w in leaves.get(r, {}).get("writers", [])]
    an.sites[site].phi = an.sites[rs[0]].phi
    return None


def _bad_roots(an: Spaces, leaves: Leaves, roots: tuple[int, ...], side: str) -> str | None:
    if 0 in roots:
        return f"an {side} block of the grouped convolution is frozen (or is the model's input)"
    if len(set(roots)) != len(roots):
        return f"two {side} blocks of the grouped convolution share a site"
    for r in roots:
        s = an.sites[r]
        # an attention site (heads, per-head maps) ties its channels to per-head scores that no
        # parameter axis records: not a space whose blocks may trade places
        odd = s.kind is not None or leaves.get(r, {}).get("folds")
        if odd or s.split is not None or not PERMUTATION <= s.family:
            return (
                f"an {side} block of the grouped convolution is restricted to "
                f"{s.family.description}, cut further or an attention site, so its blocks "
                "cannot trade places"
            )
    return None


def _grouped_outputs(an: Spaces, but: GroupedConv) -> set[int]:
    """The root sites holding an output block of a grouped convolution other than ``but``."""
    return {
        an.find(c)
        for p, conv in an.grouped.items()
        if conv is not but
        for c, _ in an.sites[p].split or []
    }


def _cuts(an: Spaces) -> dict[int, int]:
    """Each root site's ``chunked`` count, summed over the sites merged into it."""
    out: dict[int, int] = {}
    for s in an.sites[1:]:
        if s.chunked:
            r = an.find(s.id)
            out[r] = out.get(r, 0) + s.chunked
    return out


def _reads(a: ParamAxis, conv: GroupedConv) -> bool:
    """The grouped convolution's input axis (within one group's rows): B and J cancel there."""
    return a.name == conv.weight and a.axis == 1 and a.within is not None


def _actions(leaves: Leaves, r: int) -> list[tuple[Any, tuple[int, ...] | None]]:
    """``(key, item, channels)`` of each action of root ``r``: actions of one key in two blocks
    differ only in their channels."""
    out = []
    for a, ch in leaves.get(r, {}).get("actions", []):
        key = (a.name, a.axis, a.kind, a.n_total, a.outer, a.inner, a.buffer, a.within, a.use)
        out.append((key, dataclasses.replace(a, channels=None), _full(ch, a.n_total)))
    return out


def _activations(leaves: Leaves, r: int) -> list[tuple[Any, Any, tuple[int, ...] | None]]:
    out = []
    for order, name, ax, grp, ch in leaves.get(r, {}).get("activations", []):
        key = (name, ax.dim, ax.n_total, ax.outer, ax.inner, ax.kind)
        item = (order, name, dataclasses.replace(ax, channels=None), grp)
        out.append((key, item, _full(ch, ax.n_total)))
    return out


def _full(ch: tuple[int, ...] | None, n: int) -> tuple[int, ...]:
    return tuple(range(n)) if ch is None else tuple(ch)


def _coalesce(blocks: list[list[tuple]]) -> list[tuple[Any, tuple[int, ...]]] | None:
    """One entry per entry of the first block with the channels of every block joined in block
    order (the whole space's element frame), or None when the blocks do not hold the same keys
    the same number of times, or the joined channels repeat one."""
    if not blocks:
        return []
    by_key: list[dict[Any, list]] = []
    for b in blocks:
        d: dict[Any, list] = {}
        for key, item, ch in b:
            d.setdefault(key, []).append((item, ch))
        by_key.append(d)
    first = by_key[0]
    if any(set(d) != set(first) or any(len(d[k]) != len(first[k]) for k in d) for d in by_key):
        return None
    out = []
    for key, items in first.items():
        for i, (item, _) in enumerate(items):
            joined = tuple(c for d in by_key for c in d[key][i][1])
            if len(set(joined)) != len(joined):
                return None
            out.append((item, joined))
    return out
