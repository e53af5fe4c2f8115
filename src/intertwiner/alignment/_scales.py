"""The continuous scales of a merge: representatives of each model's scaling orbit.

A ReLU unit can be rescaled (incoming rows times ``s > 0``, outgoing columns divided by ``s``)
without changing the function, so the scales of B relative to A are not determined by the
function, and the rule that fixes them decides what the merge averages. ``align`` fixes them by
putting both models in a representative of their scaling orbit first and searching only the
discrete part (permutations, signs) between the representatives:

- ``"balanced"`` (the default): the least-norm point of the orbit, ``min_s sum ||theta||^2`` over
  every site's positive scales; per unit this balances the energy of the rows its scale multiplies
  against the rows it divides (ReLU: ``||w_in||^2 = ||w_out||^2``), the point that training with
  weight decay converges to. The objective is convex in the log-scales; it is minimised exactly per
  site and swept to a fixed point, so two models of one orbit land on the same point up to a
  permutation (up to ``tol``).
  A unit behind a normalisation (BatchNorm: its incoming weights are only permuted, its scale
  multiplies the norm's affine) gets instead an affine of norm 1 (as ``"unit_norm"``): the rows
  its scale divides feed the next normalised layer, whose incoming scale is arbitrary (not a
  traced symmetry: BN's epsilon breaks it), so balancing against them is no canonical choice; on
  the benchmark's BN CNN it also merged worse (README).
- ``"unit_norm"``: ``symmetry.canonicalize``, whose key rows (the incoming weights, or a norm's
  affine) get norm 1.

Units with no energy on one side (a dead unit) keep their scale: the least norm is not attained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from intertwiner.alignment._views import axis_rows, tensor_of
from intertwiner.groups import GroupElement, MonomialElement, exponents, family
from intertwiner.symmetry import SymmetrySpec, canonicalize
from intertwiner.symmetry.apply import transform_site

#: Newton steps per site step (the 1-d problems are convex and smooth: a few suffice).
_NEWTON = 30


def _energies(model: nn.Module, site, phi_kind) -> dict[float, torch.Tensor]:
    """Per exponent p != 0: the (width,) energy of the rows the unit's scale multiplies by s^p."""
    out: dict[float, torch.Tensor] = {}
    for ax in site.actions:
        if ax.buffer or ax.scalar:  # running statistics / one number: no norm per unit
            continue
        p, _ = exponents(ax.kind, phi_kind)
        if p == 0:
            continue
        rows = axis_rows(tensor_of(model, ax).detach(), ax).double()
        e = (rows * rows).sum(1)
        out[p] = out[p] + e if p in out else e
    return out


def normalised(site, model: nn.Module) -> bool:
    """A unit behind a normalisation: some weight matrix feeding it is only permuted (kind
    ``"P"``) and every row its scale multiplies is a vector (the norm's affine); a gated unit,
    whose gate rows are only permuted but whose up-projection rows are scaled, is not one."""
    params = [ax for ax in site.actions if not ax.buffer and not ax.scalar]
    permuted = any(ax.kind == "P" and tensor_of(model, ax).dim() >= 2 for ax in params)
    scaled = [ax for ax in params if exponents(ax.kind, site.group.phi_kind)[0] > 0]
    return permuted and bool(scaled) and all(tensor_of(model, ax).dim() == 1 for ax in scaled)


def _unit_log_scale(energies: dict[float, torch.Tensor], width: int) -> torch.Tensor:
    """Per unit, the log-scale giving the rows of the smallest positive exponent (a norm's
    affine) energy 1; 0 where they have none."""
    ps = sorted(p for p in energies if p > 0)
    if not ps:
        return torch.zeros(width, dtype=torch.float64)
    p, g = ps[0], energies[ps[0]]
    return torch.where(g > 0, -torch.log(torch.where(g > 0, g, 1.0)) / (2.0 * p), 0.0)


def _least_norm_log_scale(energies: dict[float, torch.Tensor], width: int) -> torch.Tensor:
    """Per unit, ``argmin_u sum_p g_p exp(2 p u)`` (convex); 0 where a side has no energy."""
    u = torch.zeros(width, dtype=torch.float64)
    pos = sum((g for p, g in energies.items() if p > 0), torch.zeros(width, dtype=torch.float64))
    neg = sum((g for p, g in energies.items() if p < 0), torch.zeros(width, dtype=torch.float64))
    ok = (pos > 0) & (neg > 0)
    if not bool(ok.any()):
        return u
    if set(energies) <= {1.0, -1.0}:  # the common case: a e^{2u} + c e^{-2u}, closed form
        return torch.where(ok, 0.25 * torch.log(neg / torch.where(ok, pos, 1.0)), u)
    for _ in range(_NEWTON):
        d1 = sum(2 * p * g * torch.exp(2 * p * u) for p, g in energies.items())
        d2 = sum(4 * p * p * g * torch.exp(2 * p * u) for p, g in energies.items())
        step = torch.where(ok, d1 / d2.clamp_min(1e-300), 0.0).clamp(-2.0, 2.0)
        u = u - step
    return u


def balance(
    model: nn.Module, spec: SymmetrySpec, *, tol: float = 1e-12, max_sweeps: int = 2000
) -> tuple[nn.Module, dict[str, GroupElement]]:
    """``(balanced copy, element applied per free-scale site)``: the least-norm point
    of ``model``'s orbit under the continuous scales of its sites (module docstring)."""
    work = copy.deepcopy(model).double().eval()
    sites = [s for s in spec.sites if family(s.group.family).free_scales]
    behind_norm = {s.name for s in sites if normalised(s, work)}
    total = {s.name: torch.zeros(s.width, dtype=torch.float64) for s in sites}
    for _ in range(max_sweeps):
        moved = 0.0
        for s in sites:
            energies = _energies(work, s, s.group.phi_kind)
            if s.name in behind_norm:
                u = _unit_log_scale(energies, s.width)
            else:
                u = _least_norm_log_scale(energies, s.width)
            if not bool(u.abs().max() > 0):
                continue
            el = MonomialElement(torch.arange(s.width), torch.exp(u))
            transform_site(work, s, el)
            total[s.name] += u
            moved = max(moved, float(u.abs().max()))
        if moved <= tol:
            break
    elements = {n: MonomialElement(torch.arange(len(u)), torch.exp(u)) for n, u in total.items()}
    out = copy.deepcopy(model)
    out.load_state_dict(work.state_dict())  # the input's dtypes
    return out, elements


def representatives(
    model_a: nn.Module, model_b: nn.Module, spec: SymmetrySpec, rule: str
) -> tuple[nn.Module, nn.Module, dict[str, GroupElement], dict[str, GroupElement]]:
    """``(rep A, rep B, elements to A's rep, elements to B's rep)`` under ``rule``."""
    if rule == "balanced":
        (ra, ea), (rb, eb) = balance(model_a, spec), balance(model_b, spec)
        return ra, rb, ea, eb
    ca, cb = canonicalize(model_a, spec), canonicalize(model_b, spec)
    return ca.model, cb.model, ca.elements, cb.elements
