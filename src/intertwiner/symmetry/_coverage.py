"""How much of a model's parameters a SymmetrySpec moves (``SymmetrySpec.coverage``).

A parameter scalar is *moved* when some site of the spec acts on it (a ``ParamAxis`` that is not a
buffer covers it: its axis, channel subset and ``within`` slice); a tensor is moved when some of its
scalars are. A random element of the spec then changes it (almost surely). Tied tensors (one
tensor under several names) count once.

The model's outermost sides are fixed by definition: the input is given and the output is what
the function returns, so no symmetry acts there. Only tensors with one axis (biases, per-feature
scales) can lie wholly on a side. On the input side this never leaves a whole
tensor unmoved when the first layer is linear (its weight moves along its output axis and counts
as moved), so nothing is excluded there. On the output side it leaves the head's bias (and any
per-feature parameter written straight to the output) unmoved: ``trace`` records those spaces on
``spec.frozen`` with the reason ``"the model output"`` (a head's weight that no site moves reads
a frozen space: it counts as interior). Parameters the forward does not use (GoogLeNet's auxiliary
classifiers in eval mode) have no symmetry to find; given the example input, ``coverage`` finds
them (no gradient path to the output) and lists them as such. ``tensors`` / ``scalars`` count every
parameter; ``interior_tensors`` / ``interior_scalars`` leave out the output side and the unused
parameters, and reach 1.0 when every other parameter moves.

Unmoved tensors are listed per module with the reason ``trace`` recorded for them: the frozen space
that would have moved the tensor (``spec.frozen`` with ``spec.frozen_params``), else the nearest
entry by name (``spec.dropped``: a site that failed verification or sharing; the entry named after
the module or one of its ancestors, else after a sibling: ``blocks.0.mlp.act`` explains
``blocks.0.mlp.fc1``); ``where`` says which entry it was. A tensor with no such entry says so
instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from intertwiner._types import SiteName
from intertwiner.errors import InvalidInputError

if TYPE_CHECKING:
    from intertwiner.symmetry.spec import SymmetrySpec

#: The reason ``trace`` records for a space that is the model's output.
OUTPUT = "the model output"
NO_REASON = "no site acts on it and trace recorded no reason for this module"
UNUSED = "not used by the forward on the example input"
READS_FIXED = "writes the model output and reads a space no site moves (frozen, or the input)"

__all__ = ["Coverage", "FrozenModule", "coverage"]


@dataclass(frozen=True)
class FrozenModule:
    """Parameter tensors of one module that no site moves, and why."""

    module: str
    tensors: tuple[str, ...]
    scalars: int
    #: ``"frozen: ..."`` / ``"dropped: ..."`` with the reason trace recorded, ``"the model output"``
    #: for the outermost output side, or ``NO_REASON``.
    reason: str
    #: The ``spec.frozen`` space or ``spec.dropped`` site the reason was recorded at ("" if none).
    where: str = ""
    #: True for the model's outermost output side (not counted in the ``interior_*`` shares).
    output_side: bool = False


@dataclass(frozen=True)
class Coverage:
    """Shares of parameter tensors and scalars that some site moves (see module docstring)."""

    n_tensors: int
    moved_tensors: int
    n_scalars: int
    moved_scalars: int
    #: Unmoved tensors and scalars left out of the ``interior_*`` shares: the model's outermost
    #: output side, and parameters the forward does not use (known with an example input).
    outside_tensors: int
    outside_scalars: int
    frozen: tuple[FrozenModule, ...]

    @property
    def tensors(self) -> float:
        return _share(self.moved_tensors, self.n_tensors)

    @property
    def scalars(self) -> float:
        return _share(self.moved_scalars, self.n_scalars)

    @property
    def interior_tensors(self) -> float:
        return _share(self.moved_tensors, self.n_tensors - self.outside_tensors)

    @property
    def interior_scalars(self) -> float:
        return _share(self.moved_scalars, self.n_scalars - self.outside_scalars)

    def reasons(self) -> list[tuple[str, int]]:
        """Distinct reasons of the interior frozen modules with the scalars each leaves unmoved,
        most first."""
        count: dict[str, int] = {}
        for f in self.frozen:
            if not f.output_side and f.reason != UNUSED:
                count[f.reason] = count.get(f.reason, 0) + f.scalars
        return sorted(count.items(), key=lambda kv: -kv[1])

    def summary(self, limit: int = 8) -> str:
        """A few lines: the shares, then up to ``limit`` frozen modules (interior ones first)."""
        out = [
            f"coverage: tensors {self.tensors:.3f} ({self.moved_tensors}/{self.n_tensors}), "
            f"scalars {self.scalars:.3f}; interior (without the output side and unused parameters): "
            f"tensors "
            f"{self.interior_tensors:.3f}, scalars {self.interior_scalars:.3f}"
        ]
        rows = sorted(self.frozen, key=lambda f: f.output_side or f.reason == UNUSED)
        if rows:
            out.append("not moved by any site:")
        for f in rows[:limit]:
            names = ", ".join(t.rsplit(".", 1)[-1] for t in f.tensors)
            out.append(f"  {f.module or '<root>'} ({names}): {_clip(f.reason, 110)}")
        if len(rows) > limit:
            out.append(f"  ... and {len(rows) - limit} more modules")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {
            "tensors": self.tensors,
            "scalars": self.scalars,
            "interior_tensors": self.interior_tensors,
            "interior_scalars": self.interior_scalars,
            "n_tensors": self.n_tensors,
            "moved_tensors": self.moved_tensors,
            "n_scalars": self.n_scalars,
            "moved_scalars": self.moved_scalars,
            "frozen": [
                {
                    "module": f.module,
                    "tensors": list(f.tensors),
                    "scalars": f.scalars,
                    "reason": f.reason,
                    "where": f.where,
                    "output_side": f.output_side,
                }
                for f in self.frozen
            ],
        }


def coverage(spec: SymmetrySpec, model: nn.Module, example_input=None) -> Coverage:
    """The coverage of ``spec`` on ``model`` (the model ``spec`` was traced from); with
    ``example_input``, parameters the forward does not use are told apart (see ``unused``)."""
    unused = set() if example_input is None else unused_parameters(model, example_input)
    aliases = dict(model.named_parameters(remove_duplicate=False))
    canonical: dict[int, str] = {}  # id(tensor) -> first name
    for name, p in aliases.items():
        canonical.setdefault(id(p), name)
    names_of: dict[str, set[str]] = {}  # first name -> every alias
    for name, p in aliases.items():
        names_of.setdefault(canonical[id(p)], set()).add(name)
    masks = {
        name: torch.zeros(aliases[name].shape, dtype=torch.bool) for name in canonical.values()
    }
    for site in spec.sites:
        for a in site.actions:
            if a.buffer:
                continue
            if a.name not in aliases:
                raise InvalidInputError(
                    f"site {site.name!r} acts on parameter {a.name!r}, which the model has not: "
                    "pass the model the spec was traced from"
                )
            mask = masks[canonical[id(aliases[a.name])]]
            if a.scalar and mask.numel() == 1:  # one number moved by a power of c (A = c P)
                mask.fill_(True)
                continue
            if a.axis >= mask.dim() or mask.shape[a.axis] != a.outer * a.n_total * a.inner:
                raise InvalidInputError(
                    f"site {site.name!r} acts on axis {a.axis} of {a.name!r} as "
                    f"{a.outer * a.n_total * a.inner} entries, but the model's {a.name!r} has shape "
                    f"{tuple(mask.shape)}: pass the model the spec was traced from"
                )
            _mark(mask, a)
    entries = [(n, OUTPUT if r == OUTPUT else f"frozen: {r}", r == OUTPUT) for n, r in spec.frozen]
    entries += [(n, f"dropped: {r}", False) for n, r in spec.dropped]
    # An entry labelled by the parameters it lists (a one-number parameter that stays) explains
    # those alone (``_recorded``), not the other tensors of its module's neighbours.
    nearby = [e for e in entries if e[0] not in spec.frozen_params.get(e[0], ())]
    groups: dict[tuple[str, str, str, bool], list[str]] = {}
    moved_t = moved_s = n_s = 0
    for name, m in masks.items():
        n_s += m.numel()
        k = int(m.sum())
        moved_s += k
        if k:
            moved_t += 1
            continue
        module = name.rpartition(".")[0]
        where, reason, output = _recorded(names_of[name], spec, entries) or _reason(module, nearby)
        if name in unused:
            where, reason, output = "", UNUSED, False
        elif output and m.dim() > 1:
            # A weight of a module that writes the output still has an input side: unmoved, it
            # reads a space no site moves (frozen, or the model input itself).
            where, reason, output = where, READS_FIXED, False
        groups.setdefault((module, reason, where, output), []).append(name)
    frozen = []
    out_t = out_s = 0
    for (module, reason, where, output), names in groups.items():
        scalars = sum(masks[n].numel() for n in names)
        if output or reason == UNUSED:
            out_t, out_s = out_t + len(names), out_s + scalars
        frozen.append(FrozenModule(module, tuple(names), scalars, reason, where, output))
    return Coverage(len(masks), moved_t, n_s, moved_s, out_t, out_s, tuple(frozen))


def unused_parameters(model: nn.Module, example_input) -> set[str]:
    """Names of the parameters that the forward on ``example_input`` does not use (no gradient
    path to any floating output): GoogLeNet's auxiliary classifiers in eval mode, ... The model
    runs once in eval mode; its modes and ``requires_grad`` flags are restored."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    named = dict(model.named_parameters())
    modes = {m: m.training for m in model.modules()}
    flags = {n: p.requires_grad for n, p in named.items()}
    try:
        model.eval()
        for p in named.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            outs = [
                t for t in _tensors(model(*inputs)) if t.is_floating_point() and t.requires_grad
            ]
            if not outs:
                return set(named)
            grads = torch.autograd.grad(
                sum(t.sum() for t in outs), list(named.values()), allow_unused=True
            )
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for n, p in named.items():
            p.requires_grad_(flags[n])
    return {n for n, g in zip(named, grads) if g is None}


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, tuple, list, dict or Hugging Face ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _mark(mask: torch.Tensor, a) -> None:
    """Set the scalars of ``mask`` that the action ``a`` (a ParamAxis) moves."""
    m = mask.narrow(*a.within) if a.within is not None else mask
    shape = list(m.shape)
    v = m.view(*shape[: a.axis], a.outer, a.n_total, a.inner, *shape[a.axis + 1 :])
    if a.channels is None:
        v.fill_(True)
    else:
        v.index_fill_(a.axis + 1, torch.as_tensor(a.channels, dtype=torch.long), True)


def _recorded(
    names: set[str], spec: SymmetrySpec, entries: list[tuple[str, str, bool]]
) -> tuple[str, str, bool] | None:
    """The first frozen space whose recorded parameters include the tensor (any alias)."""
    for label, reason, output in entries:
        recorded = spec.frozen_params.get(label, ())
        if any(n in names or n.removeprefix("root.") in names for n in recorded):
            return label, reason, output
    return None


def _reason(module: str, entries: list[tuple[str, str, bool]]) -> tuple[str, str, bool]:
    """(where, reason, output side) for an unmoved module: the entry named after the module or its
    nearest ancestor, else after a sibling (same parent), else the entry whose op ran in such a
    module (``"cumsum in blocks.0 (cumsum): ..."``; a space labelled by a functional node), else
    none."""
    best, best_len = None, -1
    for label, reason, output in entries:
        base = _module_of(label)
        if (module == base or module.startswith(base + ".")) and len(base) > best_len:
            best, best_len = (label, reason, output), len(base)
    if best is not None:
        return best
    parent = module.rpartition(".")[0]
    for labels in (
        [_module_of(label) for label, _, _ in entries],
        [_op_module(r) for _, r, _ in entries],
    ):
        for base, (label, reason, output) in zip(labels, entries):
            if output:  # the output side explains only its own module's tensors
                continue
            up = base.rpartition(".")[0]
            if base and (module == base or module.startswith(base + ".")):
                return label, reason, False
            if up and (parent == up or parent.startswith(up + ".")):
                return label, reason, False
    return "", NO_REASON, False


def _op_module(reason: str) -> str:
    """The module an op ran in, from a reason ``"<op> in <module> (<node>) ..."`` ("" if none)."""
    words = reason.split(" ", 4)
    if len(words) > 3 and words[2] == "in" and words[3] != "<model>":
        return words[3]
    return ""


def _module_of(label: str) -> str:
    """The module path in a frozen/dropped label: ``stream:blocks.0`` -> ``blocks.0``, ``fc1#2``
    -> ``fc1``; a space labelled by number names no module (never matches)."""
    label = label.split(":", 1)[1] if ":" in label and not label.startswith("space ") else label
    if label.startswith("space "):
        return "\0"
    return SiteName.parse(label.strip()).base


def _share(k: int, n: int) -> float:
    return 1.0 if n == 0 else k / n


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
