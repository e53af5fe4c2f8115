"""The model zoo: mlp, myrtle_cnn, plain_cnn, resnet20, resnet18 and vit, each with ``activation=``.

``build(name, **config)`` returns a fresh ``nn.Module`` and records
``model.intertwiner_config = {"arch": name, **resolved_config}`` (JSON-serialisable; the
activation is stored by its canonical name, e.g. ``"relu"``, ``"power3"``) so
checkpoints can rebuild it.
``sites(model)`` lists the hidden activation sites in forward order as ``named_modules()`` names.

Every activation site is its own module instance, so a forward hook at a site name captures exactly
that site. Models use plain ``nn.Linear/Conv2d/BatchNorm2d/LayerNorm/MaxPool2d/AdaptiveAvgPool2d/
Flatten`` modules (plus the parameter-free ``OptionAShortcut`` and the ViT's ``PositionEmbedding``)
and are ``torch.fx.symbolic_trace``-able. Module names are documented in each architecture's module.

Common config: ``activation`` (anything ``groups.activation_module`` accepts; default ``"relu"``,
``"gelu"`` for the ViT), ``num_classes=10``, ``in_channels=3`` and ``input_size=32``
(any size works, e.g. 1 and 28 for MNIST). Per architecture: mlp ``widths=(256, 128)``; myrtle_cnn
``width=64, batchnorm=True``; plain_cnn ``width=16, depth=10, strided=(1, 6),
batchnorm=True``; resnet20 ``width=16, blocks_per_stage=3``; resnet18 ``width=64``;
vit ``patch_size=4, dim=64, depth=4, heads=4, mlp_ratio=2``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from intertwiner.errors import IntertwinerError
from intertwiner.groups import activation_module, activation_name
from intertwiner.models._common import SITES_ATTR, canonical_activation
from intertwiner.models._resnet import BasicBlock, OptionAShortcut
from intertwiner.models._widen import WIDENED_ATTR, widen, widened_layer
from intertwiner.models.mlp import MLP
from intertwiner.models.myrtle_cnn import MyrtleCNN
from intertwiner.models.plain_cnn import PlainCNN
from intertwiner.models.resnet18 import ResNet18
from intertwiner.models.resnet20 import ResNet20
from intertwiner.models.vit import PositionEmbedding, ViT


class UnknownArchitectureError(IntertwinerError, KeyError):
    """An architecture name that ``models.build`` does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelConfigError(IntertwinerError, TypeError):
    """A config key that the chosen architecture does not take."""


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "myrtle_cnn": MyrtleCNN,
    "plain_cnn": PlainCNN,
    "resnet20": ResNet20,
    "resnet18": ResNet18,
    "vit": ViT,
}


def defaults(name: str) -> dict[str, Any]:
    """The default config of architecture ``name`` (every key ``build`` accepts)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def _lookup(name: str) -> Callable[..., nn.Module]:
    key = str(name).strip().lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def build(name: str, *, seed: int | None = None, **config: Any) -> nn.Module:
    """A fresh model ``name`` with ``config`` (see the module docstring for keys and defaults).

    ``seed``: when given, the initial weights are drawn from ``torch.manual_seed(seed)`` inside a
    forked RNG, so the same seed gives the same weights and the global RNG is left untouched.
    Unknown names raise ``UnknownArchitectureError``; unknown keys ``ModelConfigError``.
    """
    cls = _lookup(name)
    resolved = defaults(name)
    unknown = sorted(set(config) - set(resolved))
    if unknown:
        raise ModelConfigError(
            f"{name} does not take {unknown}; its config keys are {sorted(resolved)}"
        )
    resolved.update(config)
    resolved["activation"] = canonical_activation(resolved["activation"])
    if seed is None:
        model = cls(**resolved)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = cls(**resolved)
    act = resolved["activation"]
    record = {k: _jsonable(v) for k, v in resolved.items()}
    record["activation"] = act if isinstance(act, str) else activation_name(act)
    model.intertwiner_config = {"arch": cls_name(cls), **record}
    return model


def cls_name(cls: Callable[..., nn.Module]) -> str:
    """The registry name of an architecture class."""
    return next(k for k, v in ARCHITECTURES.items() if v is cls)


def sites(model: nn.Module) -> list[str]:
    """Hidden activation sites of ``model`` in forward order, as ``named_modules()`` names.

    Models from ``build`` know their sites. For any other model, every leaf module that is a known
    elementwise activation (``nn.Identity`` excluded) counts, in registration order.
    """
    known = getattr(model, SITES_ATTR, None)
    if known is not None:
        return list(known)
    found = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()) and not isinstance(mod, nn.Identity):
            try:
                same = type(activation_module(activation_name(mod))) is type(mod)
            except Exception:  # noqa: BLE001 (not an activation)
                same = False
            if same:
                found.append(name)
    return found


def example_input(model: nn.Module, batch: int = 4, seed: int = 0) -> torch.Tensor | None:
    """A random batch ``model`` takes, when its input can be told without data: a zoo model's
    ``(batch, in_channels, input_size, input_size)``, or ``(batch, in_features)`` for a model
    whose first layer is ``nn.Linear`` (used only if the model runs on it). None otherwise."""
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    cfg = getattr(model, "intertwiner_config", None)
    if isinstance(cfg, dict) and "in_channels" in cfg and "input_size" in cfg:
        s = int(cfg["input_size"])
        return torch.randn(batch, int(cfg["in_channels"]), s, s, generator=gen).to(dtype)
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)), None)
    if not isinstance(first, nn.Linear):
        return None  # a conv's spatial size cannot be told from its weights
    x = torch.randn(batch, first.in_features, generator=gen).to(dtype)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError):
        return None
    return x


__all__ = [
    "example_input",
    "ARCHITECTURES",
    "BasicBlock",
    "MLP",
    "ModelConfigError",
    "MyrtleCNN",
    "PlainCNN",
    "OptionAShortcut",
    "PositionEmbedding",
    "ResNet18",
    "ResNet20",
    "UnknownArchitectureError",
    "ViT",
    "WIDENED_ATTR",
    "build",
    "defaults",
    "sites",
    "widen",
    "widened_layer",
]
