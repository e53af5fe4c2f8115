"""Running a model for verification: inputs as a tuple, outputs flattened into one vector, eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from intertwiner._validate import reraise_shape_errors
from intertwiner.errors import InvalidInputError


def as_inputs(example_input: Any) -> tuple:
    """``example_input`` as a tuple of positional inputs. A Dataset or DataLoader of ``(x, y)``
    (e.g. ``splits.test``) gives its first batch of inputs (at most 8): a model takes tensors."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(example_input, Dataset):
        example_input = DataLoader(example_input, batch_size=8)
    if isinstance(example_input, DataLoader):
        batch = next(iter(example_input), None)
        if batch is None:
            raise InvalidInputError("the example data is empty; pass a batch the model accepts")
        example_input = batch[0] if isinstance(batch, (tuple, list)) else batch
    return example_input if isinstance(example_input, tuple) else (example_input,)


def flat_output(out: Any) -> torch.Tensor:
    """Every floating tensor of a model output (tensor, tuple, list, dict, Hugging Face
    ``ModelOutput``) concatenated into one 1-d float64 vector; other objects are skipped."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1).to(torch.float64) if out.is_floating_point() else out.new_zeros(0)
    if isinstance(out, (tuple, list)):
        parts = [flat_output(o) for o in out if o is not None]
    elif isinstance(out, dict):
        parts = [flat_output(o) for o in out.values() if o is not None]
    else:  # caches and other objects: not outputs of the function being compared
        return torch.zeros(0, dtype=torch.float64)
    parts = [p.to(torch.float64) for p in parts]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the duration; its previous mode is restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def is_tensor_cache(attr: str, value: Any) -> bool:
    """Is attribute ``attr`` of a module a cache of tensors: a dict named ``*cache`` holding only
    tensors (timm's ``attention_bias_cache``: LeViT, TinyViT, EfficientFormer and EfficientViT
    gather their per-head attention bias from the table on an eval-mode forward, store it there
    and read it on later forwards instead of the table)?"""
    return (
        not attr.startswith("_")
        and attr.endswith("cache")
        and isinstance(value, dict)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def clear_caches(model: nn.Module) -> None:
    """Empty every cache of tensors (``is_tensor_cache``) of ``model``'s modules, so that the
    next forward computes from the parameters. A cache filled before the parameters changed
    (a transformed copy, a site's element written in place, a checked element undone) would
    otherwise hide the change: every forward here (``run_flat``), every write of an element
    (``apply.transform_site``) and the export that ``trace`` reads clear them first."""
    for m in model.modules():
        for attr, value in vars(m).items():
            if is_tensor_cache(attr, value):
                value.clear()


def run_flat(model: nn.Module, example_input: Any, call: str = "check") -> torch.Tensor:
    """``model(*inputs)`` in eval mode without gradients, flattened by ``flat_output``; a shape
    error inside the model is re-raised as ``ShapeError`` naming ``call`` and the input shape.
    Caches of tensors are emptied first (``clear_caches``): the output is computed from the
    parameters as they are now."""
    inputs = as_inputs(example_input)
    clear_caches(model)
    with eval_mode(model), torch.no_grad(), reraise_shape_errors(call, inputs, model):
        return flat_output(model(*inputs))


def to_float64(example_input: Any) -> tuple:
    """The inputs with every floating tensor cast to float64 (integer inputs such as token ids
    are kept)."""
    return tuple(
        t.to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for t in as_inputs(example_input)
    )


def perturbed(inputs: tuple, generator: torch.Generator, size: float = 0.1) -> tuple:
    """A second probe input near the example: floating tensors get Gaussian noise of ``size``
    times their standard deviation; integer tensors (token ids, class labels) are redrawn in their
    observed range."""
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            scale = (
                float(t.double().std())
                if t.numel() > 1
                else float(t.abs().max())
                if t.numel()
                else 1.0
            )
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
            out.append(t + (size * (scale or 1.0) * noise).to(t.dtype))
        elif isinstance(t, torch.Tensor) and t.dtype in (torch.int32, torch.int64) and t.numel():
            lo, hi = int(t.min()), int(t.max())
            out.append(torch.randint(lo, hi + 1, t.shape, generator=generator, dtype=t.dtype))
        else:
            out.append(t)
    return tuple(out)
