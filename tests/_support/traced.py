"""Trace a small hand-written model with random parameters and check that the returned spec keeps
its function (the shared start of the rule tests in tests/symmetry/test_{conv_families,
token_mixing,recurrent}.py)."""

from __future__ import annotations

import torch
from torch import nn

from intertwiner.symmetry import SymmetrySpec, check, trace


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def traced(
    model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float64, *, scale: float = 0.5,
    shift: float = 0.3,
) -> tuple[nn.Module, SymmetrySpec]:  # fmt: skip
    """``model`` in ``dtype`` with every parameter ``N(shift, scale^2)`` (ones and zeros would
    hide a broken scale or shift), its spec, checked under three sampled elements."""
    g = gen(0)
    model = model.to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * scale + shift)
        x = x.to(dtype)
        ref = float(model(x).abs().max())
    spec = trace(model, x)
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    for seed in (1, 2, 3):
        assert check(model, spec, x, generator=gen(seed)) <= tol * ref
    return model, spec
