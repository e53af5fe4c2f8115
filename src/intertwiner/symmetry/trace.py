"""``trace``: a model and an example input -> a verified SymmetrySpec.

One graph form: every model is captured by ``torch.export`` (``strict=False``) as an ATen graph,
and one interpreter (``_aten``) runs the rules registered per ATen op (``_registry``, rules by
topic in ``_rules_*``) over it, filling the bookkeeping of ``_spaces`` / ``_rules``. What export
alone would not show is lowered to the same form on the traced copy first: a bare layer is wrapped
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
from intertwiner._validate import reraise_shape_errors
from intertwiner.errors import IntertwinerError, InvalidOptionError, UnsupportedModuleError
from intertwiner.groups import RBF, Abs, Elementwise, Power, for_activation
from intertwiner.symmetry._aten import AtenRunner
from intertwiner.symmetry._build import build_spec
from intertwiner.symmetry._forward import to_float64
from intertwiner.symmetry._rules import Rules
from intertwiner.symmetry._rules_elementwise import identity_activation
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

    ``frontend`` (kept for compatibility; every value uses the one ATen graph): ``"auto"`` or
    ``"export"``: an op without a rule freezes only the spaces it reads (listed with the reason
    on ``spec.frozen``); ``"fx"``: such an op, or a parameter that one element cannot serve at all
    its uses, raises ``UnsupportedModuleError`` instead (what the former torch.fx front end did).
    """
    if frontend not in ("auto", "fx", "export"):
        raise InvalidOptionError(f"frontend must be 'auto', 'fx' or 'export', got {frontend!r}")
    work, inputs = _float64_copy(model, example_input)
    wrapped = _is_bare_leaf(work)
    if wrapped:
        if len(inputs) not in (1, 3):
            raise UnsupportedModuleError(
                f"a bare {type(model).__name__} must take 1 (or 3: query, key, value) inputs"
            )
        work = (_Root1 if len(inputs) == 1 else _Root3)(work)
    an = _export_rules(work, inputs, refuse=frontend == "fx")
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
            verify_spec(work, spec, inputs, rtol=rtol, strict=strict, generator=generator)
    return spec


def _float64_copy(model: nn.Module, example_input: ExampleInput) -> tuple[nn.Module, tuple]:
    """A float64 eval-mode copy of ``model`` and the inputs, run once. Rules and verification use
    it: casts the model makes inside its forward (LLaMA's RMSNorm computes in float32) then show in
    the graph as what they are, and a wrong input fails here, named, before any graph is built."""
    work = copy.deepcopy(model).double().eval()
    _disable_kv_cache(work)
    _name_activation_attributes(work)
    _mark_identity_sites(work)
    inputs = to_float64(example_input)
    with torch.no_grad(), reraise_shape_errors("trace", inputs, model):
        work(*inputs)
    return work, inputs


class _Call(nn.Module):
    """An activation function kept as a plain attribute (``TransformerEncoderLayer.activation =
    F.relu``), made a parameter-free module on the traced copy so that its calls are named after
    the attribute (``layers.0.activation``) like any activation module's."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _name_activation_attributes(model: nn.Module) -> None:
    for m in list(model.modules()):
        if not any(True for _ in m.parameters()):
            continue  # a parameter-free module already names the activations it calls
        for attr, value in list(vars(m).items()):
            if attr.startswith("_") or isinstance(value, (nn.Module, type)) or not callable(value):
                continue
            try:
                for_activation(value)
            except IntertwinerError:
                continue
            setattr(m, attr, _Call(value))


class _IdentitySite(nn.Module):
    """An ``nn.Identity`` that the model names as an activation site, as one graph op."""

    def forward(self, x):
        return identity_activation(x)


def _mark_identity_sites(model: nn.Module) -> None:
    for name in getattr(model, "intertwiner_sites", None) or []:
        parent, _, attr = name.rpartition(".")
        try:
            holder = model.get_submodule(parent)
        except AttributeError:
            continue
        if isinstance(getattr(holder, attr, None), nn.Identity):
            setattr(holder, attr, _IdentitySite())


def _disable_kv_cache(model: nn.Module) -> None:
    """Hugging Face models return a key/value cache object by default; the traced copy computes
    the same outputs without it (``config.use_cache = False``)."""
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and getattr(config, "use_cache", None):
            config.use_cache = False


def _export_rules(work: nn.Module, inputs: tuple, *, refuse: bool) -> Rules:
    """Run the rules over ``torch.export``'s ATen graph of ``work`` (``refuse``: an op without a
    rule raises instead of freezing the spaces it reads)."""
    try:
        exported = torch.export.export(work, inputs, strict=False)
    except Exception as e:  # noqa: BLE001 (export raises many types; report one)
        raise UnsupportedModuleError(
            f"torch.export could not capture {type(work).__name__}: {type(e).__name__}: "
            f"{str(e)[:500]}. Pass example inputs the forward accepts as positional "
            "tensors; wrap models that need keyword arguments (e.g. use_cache=False) or return "
            "non-tensor objects in a module whose forward returns the logits."
        ) from e
    an = Rules(work)
    runner = AtenRunner(exported.module(), an, work, refuse=refuse)
    try:
        with torch.no_grad():
            runner.run(*inputs)
    except UnsupportedModuleError:
        if runner.error is None:
            raise
        raise UnsupportedModuleError(runner.error) from None
    return an


def _is_bare_leaf(model: nn.Module) -> bool:
    """A model that is one torch.nn layer or one activation module (no container of its own):
    traced inside ``_Root1``/``_Root3`` so that its names come out un-prefixed like any other
    model's submodules."""
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    torch_layer = type(model).__module__.startswith(("torch.nn", "torch.ao.nn"))
    return torch_layer or isinstance(model, (RBF, Power, Abs, Elementwise, *_zoo_leaves()))


def _zoo_leaves() -> tuple[type, ...]:
    try:
        from intertwiner.models.vit import Attention
    except Exception:  # noqa: BLE001 (the zoo is optional for tracing)
        return ()
    return (Attention,)


class _Root1(nn.Module):
    """Holds a bare layer (e.g. one nn.TransformerEncoderLayer) as ``root``; names are
    un-prefixed after tracing."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root

    def forward(self, x):
        return self.root(x)


class _Root3(_Root1):
    def forward(self, q, k, v):
        return self.root(q, k, v)


def _strip(name: str) -> str:
    if name == "root":
        return ""
    return name[5:] if name.startswith("root.") else name


def _unwrap(spec: SymmetrySpec) -> SymmetrySpec:
    for s in spec.sites:
        s.name = _strip(s.name)
        s.actions = [dataclasses.replace(a, name=_strip(a.name)) for a in s.actions]
        s.activation_axes = {_strip(k): v for k, v in s.activation_axes.items()}
        s.activations = [_strip(a) for a in s.activations]
        s.writers = [_strip(w) for w in s.writers]
    spec.frozen = [(_strip(a), b) for a, b in spec.frozen]
    return spec


__all__ = ["SUPPORTED", "trace"]
