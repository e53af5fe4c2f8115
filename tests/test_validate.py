"""The shared validation layer (``intertwiner._validate``): what it converts, refuses and re-raises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from intertwiner import _validate as v
from intertwiner.errors import (
    InvalidElementError,
    InvalidInputError,
    InvalidOptionError,
    ShapeError,
)


def run(model: nn.Module, x: torch.Tensor, call: str = "capture") -> None:
    with v.reraise_shape_errors(call, x, model):
        model(x)


@pytest.mark.parametrize(
    "model, x, fragment",
    [
        (nn.Linear(8, 3), torch.randn(4, 7), "(4, 7)"),
        (nn.Conv2d(3, 4, 3), torch.randn(2, 5, 8, 8), "(2, 5, 8, 8)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(2, 3, 3, 3), "(2, 3, 3, 3)"),
        (nn.LayerNorm(6), torch.randn(2, 5), "(2, 5)"),
        (nn.BatchNorm1d(6), torch.randn(4, 5), "(4, 5)"),
    ],
)
def test_model_shape_errors_become_shape_errors_naming_call_and_input(model, x, fragment):
    with pytest.raises(ShapeError, match="trace") as info:
        run(model, x, "trace")
    assert fragment in str(info.value) and "pass inputs of the shape" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's error is chained


def test_other_runtime_errors_pass_through_untouched():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("Expected all tensors to be on the same device, but got size 3")

    with pytest.raises(RuntimeError, match="same device") as info:
        run(Boom(), torch.randn(2, 3))
    assert not isinstance(info.value, ShapeError)
    with pytest.raises(ValueError, match="mine"):
        with v.reraise_shape_errors("capture", torch.randn(2)):
            raise ValueError("mine")


def test_expected_shape_of_zoo_models_is_named():
    from intertwiner.models import build

    model = build("myrtle_cnn", width=2, in_channels=1, input_size=8)
    with pytest.raises(ShapeError, match=r"expects \(N, 1, 8, 8\)"):
        run(model, torch.randn(2, 3, 8, 8), "stitch")


def test_real_tensor_converts_integers_and_refuses_complex():
    assert v.real_tensor(np.arange(3), "x").dtype == torch.float64
    assert v.real_tensor(torch.tensor([True]), "x").dtype == torch.float64
    assert v.real_tensor(torch.ones(2, dtype=torch.float32), "x").dtype == torch.float32
    with pytest.raises(InvalidInputError, match="complex"):
        v.real_tensor(torch.ones(2, dtype=torch.complex64), "x")
    with pytest.raises(TypeError):  # InvalidInputError is a TypeError for old callers
        v.real_tensor([1.0], "x")


def test_numbers_and_options():
    assert v.positive_int(np.int64(3), "n") == 3 and v.positive_int(4.0, "n") == 4
    for bad in (0, -1, 2.5, True, "3", None, math.nan):
        with pytest.raises(InvalidOptionError):
            v.positive_int(bad, "n")
    assert v.finite_number(0.5, "f", low=0.0, high=1.0, high_open=True) == 0.5
    for bad in (math.nan, math.inf, -1.0, 1.0, "x", True):
        with pytest.raises(InvalidOptionError):
            v.finite_number(bad, "f", low=0.0, high=1.0, high_open=True)
    with pytest.raises(InvalidOptionError, match="'a', 'b'"):
        v.choice("c", "thing", ("a", "b"))
    with pytest.raises(InvalidOptionError):
        v.choice([1], "thing", ("a", "b"))  # unhashable is simply not an option
    assert v.device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidOptionError, match="quantum"):
        v.device("quantum")


def test_permutations_and_scales():
    assert v.permutation([2, 0, 1]).tolist() == [2, 0, 1]
    assert v.permutation(torch.tensor([1.0, 0.0])).dtype == torch.long
    for bad in ([0, 0, 1], [0, 1, 3], [-1, 0], [0.5, 1.0]):
        with pytest.raises(InvalidElementError):
            v.permutation(bad)
    with pytest.raises(ShapeError):
        v.permutation(torch.zeros(2, 2, dtype=torch.long))
    for bad in ([1.0, 0.0], [math.inf, 1.0], [math.nan, 1.0]):
        with pytest.raises(InvalidElementError):
            v.scales(torch.tensor(bad))
