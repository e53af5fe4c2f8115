"""Verify a SymmetrySpec: the transformed copy computes the same function, hidden states move by phi(g)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from intertwiner._types import ExampleInput, SiteName
from intertwiner.errors import NonFiniteError
from intertwiner.groups import GroupElement
from intertwiner.symmetry._forward import as_inputs, eval_mode, flat_output, run_flat
from intertwiner.symmetry.apply import apply, random_elements
from intertwiner.symmetry.spec import SymmetrySpec
from intertwiner.symmetry.trace import trace

_inputs = as_inputs
_flat = flat_output
_eval = eval_mode
_run = run_flat


def check(
    model: nn.Module,
    spec: SymmetrySpec,
    example_input: ExampleInput,
    elements: dict[str, GroupElement] | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Max abs output difference (eval mode) between ``model`` and its transformed copy."""
    if elements is None:
        elements = random_elements(spec, generator=generator)
    new = apply(model, spec, elements)
    return float((_run(model, example_input) - _run(new, example_input)).abs().max())


def site_errors(
    model: nn.Module,
    spec: SymmetrySpec,
    example_input: ExampleInput,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Per site: relative max output change when only that site's random element is applied
    (``max |f - f_g| / max |f|``)."""
    ref = _run(model, example_input)
    scale = float(ref.abs().max()) or 1.0
    out = {}
    for s in spec.sites:
        g = s.group.sample(s.width, generator=generator)
        new = apply(model, spec, {s.name: g})
        out[s.name] = float((_run(new, example_input) - ref).abs().max()) / scale
    return out


def capture(
    model: nn.Module, names: list[str], example_input: ExampleInput
) -> dict[str, torch.Tensor]:
    """Outputs of the modules ``names`` (eval mode) on ``example_input``."""
    mods = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_m, _i, o, name=name):
            store[name] = o.detach().clone()

        handles.append(mods[name].register_forward_hook(hook))
    try:
        _run(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return store


def hidden_errors(
    model: nn.Module,
    new: nn.Module,
    spec: SymmetrySpec,
    elements: dict[str, GroupElement],
    example_input: ExampleInput,
) -> dict[str, float]:
    """Per activation module: relative max |h_new - phi(g) h| (all sites' elements applied).

    Activations without a module (functional ones) and modules called more than once (their
    later calls are named ``name#2``, ...; a hook cannot tell the calls apart) are skipped."""
    modules = dict(model.named_modules())
    every = [a for s in spec.sites for a in s.activations]
    reused = {SiteName.parse(a).base for a in every if SiteName.parse(a).k > 1}
    acts = list(dict.fromkeys(a for a in every if a in modules and a not in reused))
    h_old = capture(model, acts, example_input)
    h_new = capture(new, acts, example_input)
    out = {}
    for a in acts:
        if not bool(torch.isfinite(h_old[a]).all()):
            raise NonFiniteError(f"activation {a!r} is not finite on the example input")
        expected = h_old[a]
        for s in spec.sites_for(a):
            expected = s.move(a, expected, elements[s.name])
        scale = float(expected.abs().max()) or 1.0
        out[a] = float((h_new[a] - expected).abs().max()) / scale
    return out


def assert_function_preserved(
    model: nn.Module,
    example_input: ExampleInput,
    *,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
    atol: float = 0.0,
    generator: torch.Generator | None = None,
    check_hidden: bool = True,
) -> SymmetrySpec:
    """Trace ``model`` (a copy cast to ``dtype``), apply a random element at every site, and assert
    ``max |f - f_g| <= atol + rtol * max |f|`` (default rtol: 1e-9 in float64, 1e-4 otherwise),
    and (``check_hidden``) that every activation module's output moved by exactly phi(g), to the
    same relative tolerance. Returns the spec."""
    if rtol is None:
        rtol = 1e-9 if dtype == torch.float64 else 1e-4
    work = copy.deepcopy(model).to(dtype)
    inputs = tuple(t.to(dtype) if torch.is_floating_point(t) else t for t in _inputs(example_input))
    spec = trace(work, inputs)
    elements = random_elements(spec, generator=generator, dtype=torch.float64)
    new = apply(work, spec, elements)
    ref, got = _run(work, inputs), _run(new, inputs)
    if not bool(torch.isfinite(ref).all()):
        raise NonFiniteError(
            f"{type(model).__name__} gives non-finite outputs on the example input, so nothing "
            "can be verified; use smaller inputs or weights (x^d activations grow fast)"
        )
    err = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if err > atol + rtol * scale:
        raise AssertionError(
            f"{type(model).__name__}: the transformed model differs by {err:.3e} (max |f| = "
            f"{scale:.3e}, tolerance {atol} + {rtol} * max|f|); sites: {spec.names}"
        )
    if check_hidden:
        bad = {
            k: v
            for k, v in hidden_errors(work, new, spec, elements, inputs).items()
            if v > max(rtol, atol)
        }
        if bad:
            raise AssertionError(f"hidden representations did not move by phi(g): {bad}")
    return spec
