"""The one graph that ``trace``, ``features.capture`` and stitching's splice share.

``lower`` prepares a (copied) model the way ``trace`` sees it: a Hugging Face key/value cache is
switched off, an activation kept as a plain function attribute (``TransformerEncoderLayer.
activation = F.relu``) becomes a parameter-free module named after the attribute, and an
``nn.Identity`` that a model names as an activation site becomes one custom op. A bare layer
(one torch.nn layer, one activation module) is wrapped in ``_Root1``/``_Root3`` so its names come
out un-prefixed. ``export_graph`` then captures the ATen graph with ``torch.export``
(``strict=False``): it runs the model's Python once, so data-dependent Python and models that
torch.fx cannot follow (Hugging Face models) are captured as the ops they ran.

``SiteGraph`` is that graph for one model and one input shape, with the map from site names
(``_types.SiteName``: ``name#k``, graph node names) to its nodes: a graph node's own name
(``relu_1``, as ``trace`` names functional activation sites); a module of the lowered copy that
the model itself does not have (``layers.0.activation``), with ``#k`` for its k-th call; and
``{module path or node}.{op}`` (``layer2.0.shortcut.pad``, the zero-padded channels' site),
with ``#k`` for the k-th such op in that module.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from intertwiner._types import SiteName
from intertwiner.errors import IntertwinerError, UnsupportedModuleError
from intertwiner.groups import RBF, Abs, Elementwise, Power, for_activation
from intertwiner.symmetry._regions import op_name
from intertwiner.symmetry._rules_elementwise import identity_activation

ROOT = "root"


class _Call(nn.Module):
    """An activation function kept as a plain attribute (``TransformerEncoderLayer.activation =
    F.relu``), made a parameter-free module on the traced copy so that its calls are named after
    the attribute (``layers.0.activation``) like any activation module's."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class _IdentitySite(nn.Module):
    """An ``nn.Identity`` that the model names as an activation site, as one graph op."""

    def forward(self, x):
        return identity_activation(x)


def lower(model: nn.Module) -> None:
    """Lower ``model`` (a copy: it is changed in place) to what ``trace`` sees (module doc)."""
    _disable_kv_cache(model)
    _name_activation_attributes(model)
    _mark_identity_sites(model)


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


def is_bare_leaf(model: nn.Module) -> bool:
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


def wrap_bare(model: nn.Module, n_inputs: int) -> nn.Module:
    """``model`` inside ``_Root1``/``_Root3`` (by the number of inputs) when it is a bare leaf."""
    if not is_bare_leaf(model):
        return model
    if n_inputs not in (1, 3):
        raise UnsupportedModuleError(
            f"a bare {type(model).__name__} must take 1 (or 3: query, key, value) inputs"
        )
    return (_Root1 if n_inputs == 1 else _Root3)(model)


def strip_root(name: str) -> str:
    """A name of the wrapped model as the bare layer's own (``root.x`` -> ``x``)."""
    if name == ROOT:
        return ""
    return name[len(ROOT) + 1 :] if name.startswith(ROOT + ".") else name


def export_graph(model: nn.Module, inputs: tuple, dynamic_shapes: Any = None) -> fx.GraphModule:
    """``torch.export``'s ATen graph of ``model`` on ``inputs`` (as a runnable GraphModule)."""
    try:
        exported = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # noqa: BLE001 (export raises many types; report one)
        raise UnsupportedModuleError(
            f"torch.export could not capture {type(model).__name__}: {type(e).__name__}: "
            f"{str(e)[:500]}. Pass example inputs the forward accepts as positional "
            "tensors; wrap models that need keyword arguments (e.g. use_cache=False) or return "
            "non-tensor objects in a module whose forward returns the logits."
        ) from e
    return exported.module()


def module_path(n: fx.Node) -> str:
    """The innermost module a graph node ran in (``""`` for the model's own forward)."""
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class SiteGraph:
    """The lowered ATen graph of ``model`` on inputs of one shape (module docstring).

    ``model`` itself is never changed: a deep copy is lowered and exported (its parameters hold
    the same values). ``names`` maps every addressable site name to its node's name."""

    def __init__(self, model: nn.Module, inputs: tuple, *, dynamic_batch: bool = False):
        work = copy.deepcopy(model)
        lower(work)
        work = wrap_bare(work, len(inputs))
        self.wrapped = work is not model and isinstance(work, _Root1)
        dynamic = None
        if dynamic_batch:  # the first dim of every input varies (stitching's batches)
            dynamic = tuple({0: torch.export.Dim.AUTO} for _ in inputs)
        with torch.enable_grad():  # as trace exports it (the same node names)
            self.gm = export_graph(work, inputs, dynamic)
        own = {n for n, _ in model.named_modules()}
        self.names = self._site_names(own)
        self.modules = self._module_outputs(own)

    def _module_outputs(self, own: set[str]) -> dict[str, str | None]:
        """``{"path#k": node name}``: the output of the k-th call of each module of the model,
        the one node of that call's run of nodes that is read after it (None when the call
        leaves several: a module returning a tuple)."""
        runs: dict[str, list[list[fx.Node]]] = {}
        prev: set[str] = set()
        for n in self.gm.graph.nodes:
            if n.op != "call_function":
                continue
            stack = n.meta.get("nn_module_stack") or {}
            here = set()
            for path, _ in stack.values():
                path = strip_root(path) if self.wrapped else path
                if path in own:
                    here.add(path)
            for path in here:
                if path in prev:
                    runs[path][-1].append(n)
                else:
                    runs.setdefault(path, []).append([n])
            prev = here
        out: dict[str, str | None] = {}
        for path, calls in runs.items():
            for k, run in enumerate(calls, start=1):
                inside = set(run)
                read = [m for m in run if any(u not in inside for u in m.users)]
                out[str(SiteName(path, k))] = read[0].name if len(read) == 1 else None
        return out

    def _path(self, n: fx.Node) -> str:
        path = module_path(n)
        return strip_root(path) if self.wrapped else path

    def _site_names(self, own: set[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        calls: dict[str, int] = {}
        last: dict[str, fx.Node] = {}  # the latest run of nodes of each added module
        prev_path = None
        for n in self.gm.graph.nodes:
            if n.op != "call_function":
                continue
            names.setdefault(n.name, n.name)
            path = self._path(n)
            # A module the lowered copy added (an activation attribute): its k-th run of nodes.
            if path and path not in own:
                if path != prev_path:
                    calls[path] = calls.get(path, 0) + 1
                last[str(SiteName(path, calls[path]))] = n
            prev_path = path
            alias = f"{path or n.name}.{op_name(n)}"
            k = 1
            while str(SiteName(alias, k)) in names:
                k += 1
            names.setdefault(str(SiteName(alias, k)), n.name)
        for name, n in last.items():
            names.setdefault(name, n.name)
        return names

    def node(self, name: str) -> fx.Node | None:
        """The node a site name stands for (None when it names none)."""
        target = self.names.get(name)
        if target is None:
            return None
        return next(n for n in self.gm.graph.nodes if n.name == target)

    def run(self, inputs: tuple, want: dict[str, str], store: dict[str, torch.Tensor]) -> Any:
        """Run the graph on ``inputs``; ``store[caller's name]`` gets a detached copy of the
        output of each node in ``want`` (node name -> caller's name)."""

        class _Tap(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in want:
                    t = out[0] if isinstance(out, (list, tuple)) else out
                    # clone: a later in-place op (relu_) would otherwise overwrite it
                    store[want[n.name]] = t.detach().clone()
                return out

        return _Tap(self.gm).run(*inputs)
