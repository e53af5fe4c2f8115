"""``trace``: a model and an example input -> a verified SymmetrySpec.

One graph form: every model is captured by ``torch.export`` (``strict=False``) as an ATen graph,
and one interpreter (``_aten``) runs the rules registered per ATen op (``_registry``, rules by
topic in ``_rules_*``) over it, filling the bookkeeping of ``_spaces`` / ``_rules``. What export
alone would not show is lowered to the same form on the traced copy first (``_graph``, which
features.capture and stitching share): a bare layer is wrapped
in a module (names come out un-prefixed), an activation kept as a plain function attribute
(``TransformerEncoderLayer.activation``) becomes a parameter-free module named after it, and an
``nn.Identity`` that a model names as an activation site becomes one custom op
(``intertwiner::identity_activation``). The spec is then assembled (``_build``), shared
parameters are reconciled (``_shared``) and every site is verified numerically on a float64 copy
(``_verify``).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from intertwiner._types import ExampleInput
from intertwiner.errors import InvalidOptionError, UnsupportedModuleError
from intertwiner.symmetry._aten import AtenRunner
from intertwiner.symmetry._build import build_spec
from intertwiner.symmetry._forward import clear_caches, run_flat, to_float64
from intertwiner.symmetry._graph import (
    export_graph,
    is_bare_leaf,
    lower,
    strip_root,
    wrap_bare,
)
from intertwiner.symmetry._rules import Rules
from intertwiner.symmetry._shared import drop_shared_parameters, tie_shared_uses
from intertwiner.symmetry._spaces import SUPPORTED
from intertwiner.symmetry._verify import RTOL, verify_spec
from intertwiner.symmetry.spec import SymmetrySpec


def trace(
    model: nn.Module,
    example_input: ExampleInput,
    *,
    strict: bool = False,
    verify: bool = True,
    rtol: float = RTOL,
    generator: torch.Generator | None = None,
    frontend: str = "auto",
) -> SymmetrySpec:
    """The hidden symmetry sites of ``model`` (see the module docstring for the rules).

    ``example_input``: one batch the model accepts (a tensor, or a tuple of positional inputs). The
    model is traced and run on a float64 deep copy in eval mode, so ``model`` is never modified.

    Every returned site is verified numerically (``verify=True``, the default): random elements of
    its group are applied to a float64 copy and must leave the outputs on the example input and on a
    perturbed one unchanged to ``rtol`` (relative to ``max |f|``; for a model that amplifies
    round-off, scaled by its measured round-off up to a hard ceiling of 1e-5, recorded on
    ``spec.verified_roundoff`` and ``spec.verified_tolerance``: ``_verify``). Sites that fail,
    and sites whose parameters are shared in a way one element cannot satisfy, are left out and listed with the
    reason on ``spec.dropped``; with ``strict=True`` they raise ``UnverifiedSymmetryError``.
    ``generator`` seeds the sampled elements (default: seed 0).

    ``frontend`` (kept for compatibility; every value uses the one ATen graph): ``"auto"`` or
    ``"export"``: an op without a rule freezes only the spaces it reads (listed with the reason
    on ``spec.frozen``); ``"fx"``: such an op, or a parameter that one element cannot serve at all
    its uses, raises ``UnsupportedModuleError`` instead (what the former torch.fx front end did).
    """
    if frontend not in ("auto", "fx", "export"):
        raise InvalidOptionError(f"frontend must be 'auto', 'fx' or 'export', got {frontend!r}")
    work, inputs, reference = _float64_copy(model, example_input)
    wrapped = is_bare_leaf(work)
    work = wrap_bare(work, len(inputs))
    an = _export_rules(work, inputs, refuse=frontend == "fx")
    tie_shared_uses(an, work)
    spec = build_spec(an, type(model).__name__)
    if wrapped:
        spec = _unwrap(spec)
        work = work.root
    drop_shared_parameters(work, spec, strict=strict)
    if frontend == "fx" and spec.dropped:
        name, reason = spec.dropped[0]
        raise UnsupportedModuleError(f"{name}: {reason}; supported: {SUPPORTED}")
    if an.cast_to is not None and torch.finfo(an.cast_to).eps > torch.finfo(torch.float64).eps:
        # The model computes part of its forward in a lower precision whatever its own dtype,
        # so the float64 check can only resolve that dtype's round-off.
        rtol = max(rtol, 64 * torch.finfo(an.cast_to).eps)
    spec.verified_tolerance = rtol if verify else None
    if verify:
        with torch.no_grad():
            verify_spec(
                work,
                spec,
                inputs,
                rtol=rtol,
                strict=strict,
                generator=generator,
                reference=reference,
            )
    return spec


def _float64_copy(
    model: nn.Module, example_input: ExampleInput
) -> tuple[nn.Module, tuple, torch.Tensor]:
    """A float64 eval-mode copy of ``model``, the inputs, and its flattened output on them (the
    reference verification compares with: the rules and export do not change the copy). Rules and
    verification use the copy: casts the model makes inside its forward (LLaMA's RMSNorm computes
    in float32) then show in the graph as what they are, and a wrong input fails here, named,
    before any graph is built."""
    work = copy.deepcopy(model).double().eval()
    lower(work)
    inputs = to_float64(example_input)
    reference = run_flat(work, inputs, "trace")  # shape errors re-raised naming the model
    return work, inputs, reference


def _export_rules(work: nn.Module, inputs: tuple, *, refuse: bool) -> Rules:
    """Run the rules over ``torch.export``'s ATen graph of ``work`` (``refuse``: an op without a
    rule raises instead of freezing the spaces it reads)."""
    clear_caches(work)  # the graph then reads the parameters, not a bias an earlier forward cached
    gm = export_graph(work, inputs)
    clear_caches(work)  # (export's forward may have cached a tensor of its own)
    an = Rules(work)
    runner = AtenRunner(gm, an, work, refuse=refuse)
    try:
        with torch.no_grad():
            runner.run(*inputs)
    except UnsupportedModuleError:
        if runner.error is None:
            raise
        raise UnsupportedModuleError(runner.error) from None
    return an


def _unwrap(spec: SymmetrySpec) -> SymmetrySpec:
    for s in spec.sites:
        s.name = strip_root(s.name)
        s.actions = [dataclasses.replace(a, name=strip_root(a.name)) for a in s.actions]
        s.activation_axes = {strip_root(k): v for k, v in s.activation_axes.items()}
        s.activations = [strip_root(a) for a in s.activations]
        s.writers = [strip_root(w) for w in s.writers]
    spec.frozen = [(strip_root(a), b) for a, b in spec.frozen]
    return spec


__all__ = ["SUPPORTED", "trace"]
