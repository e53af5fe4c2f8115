"""Model surgery for the privileged-basis experiments: a fixed map inserted before an activation.

``insert_transform(model, site, element, example)`` returns a copy of ``model`` computing
``act(M x)`` at ``site`` (M acting on the neuron axis: channels of (N, C, H, W) at every pixel, the
features of (N, C), the last axis of tokens), with every module up to and including M frozen
(``requires_grad=False``, and kept in eval mode by ``SanityModel`` so frozen BatchNorm statistics
do not move). ``site_width``, ``execution_order`` and ``next_parametric`` read a model's structure
from one forward pass (pre-hooks), so any ``nn.Module`` whose sites are modules works.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.groups import GroupElement, MonomialElement

__all__ = [
    "FixedTransform",
    "PreTransformed",
    "SanityModel",
    "execution_order",
    "insert_transform",
    "next_parametric",
    "parent_of",
    "site_width",
]


class FixedTransform(nn.Module):
    """A fixed (non-trainable) group element acting on the neuron axis: dim 1 for (N, C) and
    (N, C, H, W) inputs, the last dim for tokens (N, T, D). Stored as buffers, so it round-trips
    through ``state_dict``; a monomial element is applied as gather-and-scale (exact for identity).
    """

    def __init__(self, element: GroupElement, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.n = element.n
        if isinstance(element, MonomialElement):
            self.register_buffer("perm", element.perm.clone().long())
            self.register_buffer("scale", element.scale.to(dtype).clone())
            self.register_buffer("weight", None)
        else:
            self.register_buffer("perm", None)
            self.register_buffer("scale", None)
            self.register_buffer("weight", element.matrix().to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = 1 if x.ndim in (2, 4) else x.ndim - 1
        if x.shape[dim] != self.n:
            raise ShapeError(f"transform of size {self.n} on a tensor of shape {tuple(x.shape)}")
        if self.perm is not None:
            shape = [1] * x.ndim
            shape[dim] = self.n
            return x.index_select(dim, self.perm) * self.scale.to(x.dtype).view(shape)
        return (x.movedim(dim, -1) @ self.weight.to(x.dtype).T).movedim(-1, dim)


class PreTransformed(nn.Module):
    """``act(transform(x))``: the site's activation with a fixed map inserted before it."""

    def __init__(self, transform: FixedTransform, act: nn.Module):
        super().__init__()
        self.transform = transform
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``act(M x)``."""
        return self.act(self.transform(x))


class SanityModel(nn.Module):
    """Wraps the transformed model; the modules in ``frozen`` stay in eval mode whatever
    ``train()`` is called with (frozen BatchNorm must not update its running statistics).
    """

    def __init__(self, model: nn.Module, frozen: Sequence[str]):
        super().__init__()
        self.model = model
        self.frozen = list(frozen)

    def train(self, mode: bool = True) -> SanityModel:
        """Set ``mode`` everywhere except the frozen modules, which stay in eval mode."""
        super().train(mode)
        modules = dict(self.model.named_modules())
        for name in self.frozen:
            modules[name].eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output."""
        return self.model(x)


def _hooked_pass(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """One no-grad eval-mode forward pass; the hooks are removed and the mode restored after."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent module, attribute name)`` of the submodule ``name`` (dotted path)."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def site_width(model: nn.Module, site: str, example: torch.Tensor) -> int:
    """Number of neurons at ``site``: dim 1 of its (N, C) or (N, C, H, W) input, else the last."""
    seen: dict[str, torch.Tensor] = {}
    module = model.get_submodule(site)
    handle = module.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    _hooked_pass(model, example, [handle])
    if "x" not in seen:
        raise ShapeError(f"site {site!r} was not called in the forward pass")
    x = seen["x"]
    return int(x.shape[1] if x.ndim in (2, 4) else x.shape[-1])


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module names in the order of their first call (pre-hooks) during one forward pass."""
    order: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if name:
            handles.append(
                mod.register_forward_pre_hook(
                    lambda _m, _a, name=name: order.append(name) if name not in order else None
                )
            )
    _hooked_pass(model, example, handles)
    return order


def insert_transform(
    model: nn.Module, site: str, element: GroupElement, example: torch.Tensor
) -> SanityModel:
    """A copy of ``model`` with ``element`` inserted before the activation ``site``, everything up
    to and including it frozen (``requires_grad=False``, eval mode), wrapped in ``SanityModel``.
    """
    names = dict(model.named_modules())
    if site not in names:
        raise ShapeError(f"site {site!r} is not a module of {type(model).__name__}")
    model = copy.deepcopy(model)
    act = model.get_submodule(site)
    parent, child = parent_of(model, site)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    transform = FixedTransform(element, dtype=dtype).to(p.device if p is not None else "cpu")
    setattr(parent, child, PreTransformed(transform, act))
    order = execution_order(model, example)
    cut = order.index(f"{site}.transform")
    frozen = []
    for name in order[: cut + 1]:
        mod = model.get_submodule(name)
        own = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        if own:
            frozen.append(name)
            for p in mod.parameters(recurse=False):
                p.requires_grad_(False)
    wrapped = SanityModel(model, frozen)
    wrapped.eval()
    return wrapped


def next_parametric(model: nn.Module, site: str, example: torch.Tensor) -> str:
    """The first module called after ``site`` in the forward pass that has a ``weight`` of its own
    (the layer that reads the activation's output, e.g. the next conv); ShapeError when none."""
    order = execution_order(model, example)
    if site not in order:
        raise ShapeError(f"site {site!r} was not called in the forward pass")
    for name in order[order.index(site) + 1 :]:
        if name.startswith(f"{site}."):
            continue
        if isinstance(getattr(model.get_submodule(name), "weight", None), torch.Tensor):
            return name
    raise ShapeError(f"no layer with a weight after {site!r}")
