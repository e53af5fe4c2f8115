"""Attention heads for weight matching: each heads site found with its per-head sites, so that
a permutation of heads is solved jointly with the per-head maps (``_weights._Problem.step_heads``)."""

from __future__ import annotations

from dataclasses import dataclass

from intertwiner.groups import family
from intertwiner.symmetry import Site, SymmetrySpec


@dataclass
class _HeadsBlock:
    heads: Site
    #: subs[h] = the per-head sites at head position h, in spec order (qk, vo, ...)
    subs: list[list[Site]]
    inner: dict[tuple[str, int], int]  # (param, axis) -> channels per head in the sub-site view
    uncovered: list[int]  # indices of heads actions no per-head site touches


def _heads_blocks(spec: SymmetrySpec) -> tuple[list[_HeadsBlock], set[str]]:
    """Attention-heads sites with their per-head sites (found structurally: a site whose every
    action lies inside one head's block of a heads action)."""
    blocks, used = [], set()
    for hs in spec.sites:
        if hs.kind != "attention_heads" or not family(hs.group.family).monomial:
            continue
        # A packed q|k|v projection gives the heads site several actions on one tensor axis,
        # one per slot (channel blocks); a per-head action belongs to the slot holding its block.
        views: dict[tuple[str, int], list] = {}
        for a in hs.actions:
            views.setdefault((a.name, a.axis), []).append(a)
        subs: list[list[Site]] = [[] for _ in range(hs.width)]
        inner: dict[tuple[str, int], int] = {}
        covered: set[tuple[str, int]] = set()
        for s in spec.sites:
            if s is hs or s.name in used:
                continue
            pos = set()
            ok = bool(s.actions)
            for a in s.actions:
                h = _slot_of(a, views.get((a.name, a.axis), []))
                if h is None:
                    ok = False
                    break
                slots = list(h.channels) if h.channels is not None else list(range(h.n_total))
                pos |= {slots.index(c // h.inner) for c in a.channels}
                inner[(a.name, a.axis)] = h.inner
            if not ok or len(pos) != 1:
                continue
            p = pos.pop()
            subs[p].append(s)
            covered.update((a.name, a.axis) for a in s.actions)
        if not any(subs) or len({len(x) for x in subs}) != 1:
            continue
        for x in subs:
            used.update(s.name for s in x)
        uncovered = [k for k, a in enumerate(hs.actions) if (a.name, a.axis) not in covered]
        blocks.append(_HeadsBlock(hs, subs, inner, uncovered))
    return blocks, used


def _slot_of(a, candidates: list):
    """The heads action (of ``candidates``, on ``a``'s tensor axis) whose head blocks hold every
    channel of the per-head action ``a``; None if there is none."""
    if a.channels is None or a.inner != 1:
        return None
    for h in candidates:
        slots = set(h.channels) if h.channels is not None else set(range(h.n_total))
        fits = a.outer == h.outer and a.n_total == h.n_total * h.inner
        if fits and {c // h.inner for c in a.channels} <= slots:
            return h
    return None


def _shifted(sub: Site, block: _HeadsBlock, i: int, j: int) -> dict[int, tuple[int, ...]]:
    out = {}
    for k, a in enumerate(sub.actions):
        step = block.inner[(a.name, a.axis)]
        out[k] = tuple(c + (j - i) * step for c in a.channels)
    return out
