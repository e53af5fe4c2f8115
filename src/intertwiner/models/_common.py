"""Helpers shared by the architectures: activation factories and the activation-site registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.groups import activation_module, activation_name

# Attribute set on every model built here: the hidden activation sites, as ``named_modules()``
# names, in forward order. ``models.sites`` reads it.
SITES_ATTR = "intertwiner_sites"


def canonical_activation(activation: Any) -> Any:
    """The JSON-friendly name of ``activation`` when the name rebuilds the same module, else itself.

    A name such as ``"relu"`` or ``"power3"`` is stored in ``model.intertwiner_config`` so a
    checkpoint can rebuild the model; an instance with non-default arguments (``LeakyReLU(0.2)``)
    cannot be named losslessly and is kept as the object (checkpoints refuse such a model).
    """
    mod = activation_module(activation)
    name = activation_name(mod)
    try:
        again = activation_module(name)
    except Exception:  # noqa: BLE001 (a name that does not rebuild is simply not canonical)
        return activation
    if type(again) is type(mod) and again.extra_repr() == mod.extra_repr():
        return name
    return activation


def new_activation(activation: Any) -> nn.Module:
    """A fresh activation module: every site gets its own instance so a hook captures one site."""
    return activation_module(activation)


def spatial_after_pools(size: int, n_pools: int) -> int:
    """Spatial size after ``n_pools`` 2x2 max-pools (floor division, as nn.MaxPool2d(2) does)."""
    for _ in range(n_pools):
        size //= 2
    if size < 1:
        raise ShapeError(
            f"input too small: {n_pools} 2x2 poolings leave no pixels; "
            f"use input_size >= {2**n_pools}"
        )
    return size


def check_common(in_channels: int, input_size: int, num_classes: int) -> None:
    """Validate the config shared by every architecture."""
    if int(in_channels) < 1 or int(num_classes) < 1 or int(input_size) < 1:
        raise ShapeError(
            f"in_channels ({in_channels}), num_classes ({num_classes}) and input_size "
            f"({input_size}) must all be positive integers"
        )


def set_sites(model: nn.Module, names: list[str]) -> None:
    """Record the activation sites and check every name exists (guards against typos)."""
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:  # pragma: no cover (a bug in an architecture, not a user error)
        raise RuntimeError(f"activation sites {missing} are not modules of {type(model).__name__}")
    setattr(model, SITES_ATTR, list(names))
