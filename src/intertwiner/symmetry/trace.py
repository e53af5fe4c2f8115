"""``trace``: a model and an example input -> a verified SymmetrySpec.

Two front ends fill the same bookkeeping (``_spaces``) with the same rules (``_rules``): torch.fx
symbolic tracing (``_fx``; exact names, an unsupported op raises) and torch.export ATen graphs
(``_aten``; Hugging Face models, ``**kwargs``; an unsupported op freezes only the spaces it reads).
The spec is then assembled (``_build``), shared parameters are reconciled (``_shared``) and every
site is verified numerically on a float64 copy (``_verify``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from intertwiner._types import ExampleInput
from intertwiner._validate import reraise_shape_errors
from intertwiner.errors import InvalidOptionError, UnsupportedModuleError
from intertwiner.groups import RBF, Abs, Elementwise, Power
from intertwiner.symmetry._build import build_spec
from intertwiner.symmetry._forward import to_float64
from intertwiner.symmetry._fx import _Root1, _Root3, _Tracer, _unwrap, _zoo_attention, fx_rules
from intertwiner.symmetry._rules import Rules
from intertwiner.symmetry._shared import drop_shared_parameters
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
    perturbed one unchanged to ``rtol`` (relative to ``max |f|``). Sites that fail, and sites whose
    parameters are shared in a way one element cannot satisfy, are left out and listed with the
    reason on ``spec.dropped``; with ``strict=True`` they raise ``UnverifiedSymmetryError``.
    ``generator`` seeds the sampled elements (default: seed 0).

    ``frontend``: ``"fx"`` (torch.fx symbolic tracing; an unsupported op raises), ``"export"``
    (``torch.export`` ATen graphs; an unsupported op freezes the spaces it reads, listed on
    ``spec.frozen``) or ``"auto"``: fx, and export where fx cannot trace the model (Hugging Face
    ``transformers`` models, ``**kwargs`` forwards, Python control flow) or its rules refuse an
    op (then only the spaces that op reads lose their symmetry).
    """
    if frontend not in ("auto", "fx", "export"):
        raise InvalidOptionError(f"frontend must be 'auto', 'fx' or 'export', got {frontend!r}")
    work, inputs = _float64_copy(model, example_input)
    zoo = _zoo_attention()
    tracer = _Tracer(((zoo,) if zoo is not None else ()) + (RBF, Power, Abs, Elementwise))
    wrapped = tracer.is_leaf_module(work, "")
    if wrapped:  # a bare leaf (an attention or activation module): trace it inside a wrapper
        if len(inputs) not in (1, 3):
            raise UnsupportedModuleError(
                f"a bare {type(model).__name__} must take 1 (or 3: query, key, value) inputs"
            )
        work = (_Root1 if len(inputs) == 1 else _Root3)(work)
    an = _run_rules(work, inputs, tracer, zoo, frontend, wrapped)
    spec = build_spec(an, type(model).__name__)
    if wrapped:
        spec = _unwrap(spec)
        work = work.root
    drop_shared_parameters(work, spec, strict=strict)
    if an.cast_to is not None and torch.finfo(an.cast_to).eps > torch.finfo(torch.float64).eps:
        # The model computes part of its forward in a lower precision whatever its own dtype,
        # so the float64 check can only resolve that dtype's round-off.
        rtol = max(rtol, 64 * torch.finfo(an.cast_to).eps)
    spec.verified_tolerance = rtol if verify else None
    if verify:
        with torch.no_grad():
            verify_spec(work, spec, inputs, rtol=rtol, strict=strict, generator=generator)
    return spec


def _float64_copy(model: nn.Module, example_input: ExampleInput) -> tuple[nn.Module, tuple]:
    """A float64 eval-mode copy of ``model`` and the inputs, run once. Rules and verification use
    it: casts the model makes inside its forward (LLaMA's RMSNorm computes in float32) then show in
    the graph as what they are, and a wrong input fails here, named, before any graph is built."""
    work = copy.deepcopy(model).double().eval()
    _disable_kv_cache(work)
    inputs = to_float64(example_input)
    with torch.no_grad(), reraise_shape_errors("trace", inputs, model):
        work(*inputs)
    return work, inputs


def _run_rules(
    work: nn.Module, inputs: tuple, tracer: _Tracer, zoo: type | None, frontend: str, wrapped: bool
) -> Rules:
    """The rules run by the chosen front end (``trace``'s ``frontend``)."""
    graph, fx_error = None, None
    if frontend != "export":
        try:
            graph = tracer.trace(work)
        except Exception as e:  # noqa: BLE001 (fx raises many types; report one)
            fx_error = e
            if frontend == "fx":
                raise UnsupportedModuleError(
                    f"torch.fx could not trace {type(work).__name__}: {e}. Use "
                    "frontend='export' (or 'auto') for models fx cannot follow."
                ) from e
    if graph is None:
        if wrapped:
            raise UnsupportedModuleError(
                f"a bare {type(work).__name__} is traced with torch.fx only; wrap it in a module"
            ) from fx_error
        return _export_rules(work, inputs, fx_error)
    try:
        return fx_rules(work, graph, inputs, zoo)
    except UnsupportedModuleError as e:
        if frontend == "fx" or wrapped:
            raise
        # The fx rules refuse the whole model at the first op they do not know; the export
        # rules freeze only the spaces such an op reads.
        try:
            return _export_rules(work, inputs, e)
        except UnsupportedModuleError:
            raise e from None


def _disable_kv_cache(model: nn.Module) -> None:
    """Hugging Face models return a key/value cache object by default; the traced copy computes
    the same outputs without it (``config.use_cache = False``)."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and getattr(config, "use_cache", None):
            config.use_cache = False


def _export_rules(work: nn.Module, inputs: tuple, fx_error: Exception | None) -> Rules:
    """Run the ATen rules over ``torch.export``'s graph of ``work``."""
    from intertwiner.symmetry._aten import AtenRunner

    try:
        exported = torch.export.export(work, inputs, strict=False)
    except Exception as e:  # noqa: BLE001 (export raises many types; report one)
        fx_note = f" (torch.fx also failed: {fx_error})" if fx_error is not None else ""
        raise UnsupportedModuleError(
            f"torch.export could not capture {type(work).__name__}: {type(e).__name__}: "
            f"{str(e)[:500]}{fx_note}. Pass example inputs the forward accepts as positional "
            "tensors; wrap models that need keyword arguments (e.g. use_cache=False) or return "
            "non-tensor objects in a module whose forward returns the logits."
        ) from e
    an = Rules(work)
    with torch.no_grad():
        AtenRunner(exported.module(), an, work).run(*inputs)
    return an


__all__ = ["SUPPORTED", "trace"]
