"""Capture activations at named modules, in eval mode under no_grad, streamed over the data.

Layers are named as in ``model.named_modules()`` (``""`` is the whole model); ``"name#k"`` is the
k-th call of a module called several times in one forward, and the name of a functional call in
the model's exported ATen graph (``"relu_1"``, the graph ``symmetry.trace`` reads) captures its
output: every activation site name that ``symmetry.trace`` gives can be captured, on every model
it traces (Hugging Face models and data-dependent Python included). Captured layouts are the module outputs as
produced: (N, C) dense, (N, C, H, W) conv (channels are the neurons), (N, T, D) tokens.
``layout="matrix"`` converts each to (samples, neurons) with ``layouts.to_matrix``. A module that
returns a tuple contributes its first tensor; a module name alone means its first call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from intertwiner import _validate
from intertwiner._types import DataLike, SiteName
from intertwiner.errors import (
    IntertwinerError,
    InvalidInputError,
    InvalidOptionError,
    ShapeError,
    TooFewSamplesError,
    UnsupportedModuleError,
)
from intertwiner.layouts import to_matrix

__all__ = ["Capturer", "LayerNotFoundError", "capture", "iter_batches", "stream"]

LAYOUTS = (None, "matrix")


class LayerNotFoundError(IntertwinerError, KeyError):
    """A layer name that is not among ``model.named_modules()``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _StopForward(Exception):
    """Raised by the last needed hook: the rest of the forward pass is not needed."""


def _inputs_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]  # (x, y) pairs
    if isinstance(batch, dict) and isinstance(batch.get("x"), torch.Tensor):
        return batch["x"]
    raise InvalidInputError(
        f"cannot find the inputs in a batch of type {type(batch).__name__}; batches must be "
        "tensors, (x, y) tuples, or dicts with an 'x' entry"
    )


def iter_batches(data: DataLike, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Input batches from a DataLoader (or any iterable of batches), a Dataset, or a tensor."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise InvalidInputError(
            f"data must be a DataLoader, Dataset or tensor, got {type(data).__name__}"
        )
    for batch in data:
        yield _inputs_of(batch)


def _resolve(
    model: nn.Module, layers: str | Sequence[str]
) -> tuple[dict[str, tuple[nn.Module, int]], list[str]]:
    """Module targets ``{name: (module, call)}`` and names of graph nodes (functional calls).

    A name is a module (``named_modules()``), the k-th call of a module called several times in
    one forward (``"relu#2"``: the names ``symmetry.trace`` gives later calls), or the graph node of
    a functional call (``"relu_1"``, as ``trace`` names functional activation sites)."""
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise InvalidOptionError("no layers requested; name at least one module (see models.sites)")
    modules = dict(model.named_modules())
    targets: dict[str, tuple[nn.Module, int]] = {}
    nodes: list[str] = []
    for n in dict.fromkeys(names):
        site = SiteName.parse(n)
        if site.base in modules:
            targets[n] = (modules[site.base], site.k)
        else:
            nodes.append(n)
    return targets, nodes


class _NodeTap:
    """The outputs of named nodes of the model's ATen graph (functional calls that no hook can
    see): the graph ``symmetry.trace`` runs its rules on (``symmetry._graph.SiteGraph``), so
    every name ``trace`` gives a functional site is found the same way. The graph is exported on
    the first batch of each input shape (export fixes shapes) and run with the nodes' outputs
    recorded; models torch.fx cannot follow (Hugging Face, data-dependent Python) export too."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names = model, names
        self.graphs: dict[tuple, Any] = {}

    def _graph(self, x: torch.Tensor):
        from intertwiner.symmetry._graph import SiteGraph

        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self.graphs:
            try:
                graph = SiteGraph(self.model, (x,))
            except UnsupportedModuleError as e:
                raise LayerNotFoundError(
                    f"layer(s) {self.names} are not modules of {type(self.model).__name__}, and "
                    f"its forward cannot be exported to find them as functional calls ({e})"
                ) from e
            missing = [n for n in self.names if n not in graph.names]
            if missing:
                avail = ", ".join(repr(n) for n, _ in self.model.named_modules() if n) or "(none)"
                raise LayerNotFoundError(
                    f"layer(s) {missing} not found in {type(self.model).__name__}: neither a "
                    f"module, the k-th call of one ('name#2'), nor a functional call in its "
                    f"exported graph (the names symmetry.trace gives). Sites without an "
                    f"activation ('stream:...', 'linear:...', attention '.heads', '.qk0', '.vo0') "
                    f"name a space of the weights, no single tensor: capture the modules that "
                    f"write them (Site.writers); available module names: {avail}"
                )
            self.graphs[key] = graph
        return self.graphs[key]

    def run(self, x: torch.Tensor, store: dict[str, torch.Tensor]) -> None:
        graph = self._graph(x)
        graph.run((x,), {graph.names[n]: n for n in self.names}, store)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on ``model``'s device; floating inputs in its parameters' dtype, integer inputs
    (token ids) left integers."""
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(device=p.device, dtype=p.dtype) if x.is_floating_point() else x.to(p.device)


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for every submodule; each module's own train flag is restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise InvalidInputError(
        f"module output of type {type(out).__name__} holds no tensor to capture; capture a "
        "module that returns a tensor (or a tuple starting with one)"
    )


def _convert(t: torch.Tensor, layout: str | None) -> torch.Tensor:
    if layout is None:
        return t
    if t.dim() not in (2, 3, 4):
        raise ShapeError(f"cannot convert a {t.dim()}-d output to a matrix: {tuple(t.shape)}")
    return to_matrix(t)


class Capturer:
    """Forward hooks on the named modules of one model; ``run(x)`` returns their outputs.

    Use as a context manager (hooks removed and train/eval flags restored on exit). The forward
    stops early once every requested layer has produced its output. A shape error raised inside
    the model becomes ``ShapeError`` naming ``call`` and the input shape.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        *,
        device: torch.device | str | None = None,
        layout: str | None = None,
        call: str = "capture",
    ) -> None:
        _validate.choice(layout, "layout", LAYOUTS)
        self.model, self.layout, self.call = model, layout, call
        modules, nodes = _resolve(model, layers)
        self._modules = modules
        self._tap = _NodeTap(model, nodes) if nodes else None
        self.targets = [n for n in dict.fromkeys([layers] if isinstance(layers, str) else layers)]
        self._calls: dict[int, int] = {}
        self.device = _validate.device(device) if device is not None else _model_device(model)
        if device is not None:
            model.to(self.device)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._mode = None

    def _hook_for(self, module: nn.Module):
        wanted = {call: n for n, (m, call) in self._modules.items() if m is module}

        def hook(_module, _inputs, output):
            k = self._calls[id(module)] = self._calls.get(id(module), 0) + 1
            name = wanted.get(k)
            if name is not None and name not in self._captured:
                # Clone: a later in-place op (ReLU(inplace=True)) would otherwise overwrite it.
                self._captured[name] = _first_tensor(output).detach().clone()
                if all(n in self._captured for n in self._modules):
                    raise _StopForward

        return hook

    def _add_hooks(self) -> None:
        unique = {id(m): m for m, _ in self._modules.values()}
        self._handles = [m.register_forward_hook(self._hook_for(m)) for m in unique.values()]

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Capturer:
        self._add_hooks()
        self._mode = _eval_mode(self.model)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove_hooks()
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer: output}`` for one input batch (CPU, detached, converted to ``layout``)."""
        self._captured.clear()
        self._calls.clear()
        with torch.no_grad(), _validate.reraise_shape_errors(self.call, x, self.model):
            try:
                if self._tap is not None:
                    # without our hooks: the graph is exported from a copy, which would keep them
                    self._remove_hooks()
                    try:
                        self._tap.run(x.to(self.device), self._captured)
                    finally:
                        self._add_hooks()
                if self._modules:  # module outputs: forward hooks (the graph calls no module)
                    self.model(x.to(self.device))
            except _StopForward:
                pass
        missing = [n for n in self.targets if n not in self._captured]
        if missing:
            raise LayerNotFoundError(
                f"layer(s) {missing} exist but were not called during the forward pass"
            )
        return {n: _convert(self._captured[n].cpu(), self.layout) for n in self.targets}


def limited_batches(
    data: DataLike, batch_size: int, max_samples: int | None, progress: bool, desc: str = "features"
) -> Iterator[torch.Tensor]:
    """Input batches truncated to ``max_samples``, with an optional tqdm bar."""
    from tqdm.auto import tqdm

    batch_size = _validate.positive_int(batch_size, "batch_size")
    if max_samples is not None:
        max_samples = _validate.positive_int(max_samples, "max_samples", hint="or None for all")
    seen = 0
    bar = tqdm(disable=not progress, desc=desc, unit="sample", total=max_samples)
    try:
        for x in iter_batches(data, batch_size):
            if max_samples is not None:
                if seen >= max_samples:
                    break
                x = x[: max_samples - seen]
            seen += x.shape[0]
            bar.update(x.shape[0])
            yield x
    finally:
        bar.close()


def stream(
    model: nn.Module,
    data: DataLike,
    layers: str | Sequence[str],
    *,
    layout: str | None = None,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{layer: features of one batch}`` (on CPU, detached) batch by batch.

    ``data``: a DataLoader (or iterable of batches), a Dataset of (x, y) pairs, or a tensor of
    inputs. ``device``: where the model runs (default: where its parameters are). ``max_samples``
    truncates the data. The model's train/eval flags are restored afterwards.
    """
    with Capturer(model, layers, device=device, layout=layout) as cap:
        for x in limited_batches(data, batch_size, max_samples, progress):
            yield cap.run(x)


def capture(
    model: nn.Module,
    data: DataLike,
    layers: str | Sequence[str],
    *,
    layout: str | None = None,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{layer: features of all samples}``, batches concatenated along dim 0 (CPU tensors).

    Memory is N times the layer width; use ``stream`` with the streaming accumulators in
    ``intertwiner.metrics`` (or ``max_samples``) to bound it.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in stream(
        model,
        data,
        layers,
        layout=layout,
        device=device,
        max_samples=max_samples,
        batch_size=batch_size,
        progress=progress,
    ):
        for name, t in batch.items():
            parts.setdefault(name, []).append(t)
    if not parts:
        raise TooFewSamplesError(
            "no data: the data source yielded no batches; pass a non-empty tensor, Dataset or "
            "DataLoader"
        )
    return {n: torch.cat(ts) for n, ts in parts.items()}
