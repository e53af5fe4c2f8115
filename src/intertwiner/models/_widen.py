"""Built models with some ``Linear`` / ``Conv`` layers widened.

A partially zipped model (``alignment.zip_models(k=...)``) keeps the layers after its zipped
sites side by side, so those layers are wider than the architecture's config builds. It records
``model.intertwiner_widened = {"config": <the build config>, "layers": {name: weight shape}}``
instead of ``intertwiner_config``; ``checkpoints`` saves that record and ``load`` rebuilds the
architecture and widens the same layers, so such a model round-trips like any built one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from intertwiner.errors import UnsupportedModuleError

WIDENED_ATTR = "intertwiner_widened"


def widened_layer(old: nn.Module, shape: Sequence[int]) -> nn.Module:
    """A fresh ``nn.Linear`` / ``nn.ConvNd`` like ``old`` (bias, stride, padding, ...) whose weight
    has ``shape`` ((out, in) or (out, in, *kernel)); the kernel size must stay the same."""
    bias = getattr(old, "bias", None) is not None
    if isinstance(old, nn.Linear) and len(shape) == 2:
        new: nn.Module = nn.Linear(int(shape[1]), int(shape[0]), bias=bias)
    elif isinstance(old, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not old.transposed:
        if old.groups != 1:
            raise UnsupportedModuleError(
                f"a grouped {type(old).__name__} cannot be widened (its groups would change); "
                "zip every site (k=None)"
            )
        if tuple(shape[2:]) != tuple(old.weight.shape[2:]):
            raise UnsupportedModuleError(
                f"widening {type(old).__name__} to weight shape {tuple(shape)} would change its "
                f"kernel {tuple(old.weight.shape[2:])}"
            )
        new = type(old)(
            int(shape[1]), int(shape[0]), old.kernel_size, stride=old.stride,
            padding=old.padding, dilation=old.dilation, bias=bias, padding_mode=old.padding_mode,
        )  # fmt: skip
    else:
        raise UnsupportedModuleError(
            f"only nn.Linear and (non-transposed) nn.Conv1d/2d/3d layers can be widened, not "
            f"{type(old).__name__} to weight shape {tuple(shape)}"
        )
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def widen(model: nn.Module, layers: Mapping[str, Sequence[int]]) -> nn.Module:
    """Replace each named layer of ``model`` (in place) by ``widened_layer`` of the given weight
    shape; returns ``model``. Names are ``named_modules()`` paths."""
    for name, shape in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise UnsupportedModuleError(
                f"cannot widen {name!r}: the model has no such layer"
            ) from e
        if tuple(old.weight.shape) == tuple(shape):
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, widened_layer(old, shape))
    return model
