"""What ``align`` returns: the ``Alignment`` with its per-site reports, and the weight distances
they are measured in."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from intertwiner.alignment._extent import Extent
from intertwiner.alignment._select import Selection
from intertwiner.errors import ShapeError
from intertwiner.groups import GroupElement
from intertwiner.symmetry import Site, SymmetrySpec


@dataclass
class SiteReport:
    """How far B moved toward A at one site: relative weight distance over the parameters the
    site's element touches, before and after alignment."""

    name: str
    kind: str
    group: str
    width: int
    before: float
    after: float


@dataclass(repr=False)
class Alignment:
    """Result of ``align``. Unpacks as ``model, elements = align(...)``.

    ``model``: B transformed by ``elements`` (B itself is untouched). ``history``: total squared
    weight distance D before alignment and after each sweep (weight matching; non-increasing),
    between the scale representatives of A and B when ``scales`` chose them (with a
    ``selection``: the chosen candidate's). ``selection``: see ``align(select=...)``.
    """

    model: nn.Module
    elements: dict[str, GroupElement]
    spec: SymmetrySpec
    method: str
    group: str
    history: list[float] = field(default_factory=list)
    sites: list[SiteReport] = field(default_factory=list)
    seconds: float = 0.0
    sweeps: int = 0
    #: ``align(select="midpoint")``'s choice among candidate elements and their midpoint losses;
    #: None when no selection ran.
    selection: Selection | None = None

    def __iter__(self):
        yield self.model
        yield self.elements

    def __repr__(self) -> str:
        # The model, spec and elements would print thousands of characters: summarise them.
        moved = ""
        if self.history:
            moved = f", distance^2 {self.history[0]:.4g} -> {self.history[-1]:.4g}"
        if self.selection is not None:
            moved += f", selected {self.selection.chosen!r}"
        return (
            f"Alignment(method={self.method!r}, group={self.group!r}, sites={len(self.sites)}, "
            f"sweeps={self.sweeps}{moved}, seconds={self.seconds:.2f}; .model, .elements, "
            ".table())"
        )

    def table(self) -> str:
        """Per site: relative weight distance to A before and after alignment."""
        head = ["site", "kind", "group", "width", "before", "after"]
        rows = [
            [s.name, s.kind, s.group, str(s.width), f"{s.before:.4f}", f"{s.after:.4f}"]
            for s in self.sites
        ]
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(line.rstrip() for line in out)


# -- weight distances ---------------------------------------------------------------------------
def weight_distance(model_a: nn.Module, model_b: nn.Module, *, relative: bool = True) -> float:
    """``||theta_A - theta_B|| / ||theta_A||`` over all parameters (``relative=False``: the squared
    distance D itself). Buffers are not counted."""
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    _check_same(pa, pb)
    d = sum(_sq_diff(pa[k], pb[k]) for k in pa)
    if not relative:
        return d
    n = sum(_sq_diff(pa[k], None) for k in pa)
    return (d / n) ** 0.5 if n > 0 else 0.0


#: Elements per chunk of a float64 reduction: a 124M-parameter model is never copied whole.
_CHUNK = 1 << 22


def _sq_diff(x: torch.Tensor, y: torch.Tensor | None) -> float:
    """``sum((x - y)^2)`` (``y=None``: ``sum(x^2)``) chunk by chunk, the chunk sums added in
    float64. Two float32 tensors are subtracted and squared in float32 (relative error ~1e-7:
    a ``LARGE`` model's search runs in float32 anyway), anything else in float64."""
    xf = x.detach().reshape(-1)
    yf = None if y is None else y.detach().reshape(-1)
    single = xf.dtype == torch.float32 and (yf is None or yf.dtype == torch.float32)
    dt = torch.float32 if single else torch.float64
    total = 0.0
    for start in range(0, xf.numel(), _CHUNK):
        d = xf[start : start + _CHUNK].to(dt)
        if yf is not None:
            d = d - yf[start : start + _CHUNK].to(dt)
        total += float(torch.dot(d, d))
    return total


def _check_same(pa: dict, pb: dict) -> None:
    if pa.keys() != pb.keys():
        raise ShapeError(
            "models A and B have different parameters; alignment needs two models of one "
            f"architecture (only in A: {sorted(set(pa) - set(pb))[:5]}, only in B: "
            f"{sorted(set(pb) - set(pa))[:5]})"
        )
    bad = [k for k in pa if pa[k].shape != pb[k].shape]
    if bad:
        raise ShapeError(
            f"models A and B differ in shape at {bad[:5]}; alignment needs equal architectures"
        )


def _param_names(sites: list[Site]) -> list[str]:
    names: list[str] = []
    for s in sites:
        for a in s.actions:
            if not a.buffer and a.name not in names:
                names.append(a.name)
    return names


def _partial_distance(a: nn.Module, b: nn.Module, names: list[str]) -> float:
    return sum(_sq_diff(a.get_parameter(n), b.get_parameter(n)) for n in names)


def _site_reports(
    spec: SymmetrySpec, model_a: nn.Module, model_b: nn.Module, aligned: nn.Module, extent: Extent
) -> list[SiteReport]:
    """Per site: the relative distance of the parameters it touches, before and after."""
    reports = []
    for s in spec.sites:
        names = _param_names([s])
        norm = sum(_sq_diff(model_a.get_parameter(n), None) for n in names)
        norm = max(norm, 1e-300)
        reports.append(
            SiteReport(
                s.name,
                s.kind,
                extent.label(s),
                s.width,
                (_partial_distance(model_a, model_b, names) / norm) ** 0.5,
                (_partial_distance(model_a, aligned, names) / norm) ** 0.5,
            )
        )
    return reports
