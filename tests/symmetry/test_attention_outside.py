"""Tensors from outside the projections on the way to q, k or v, and parameter copies written in
place: rules that would move the heads (or a Linear's outputs) past them must refuse.

- ``q * g`` with ``g`` a parameter that differs between heads: a head permutation would need
  ``g`` permuted too (it is not), so no block is read; ``g`` the same for every head (rotary's
  cos/sin are) keeps the heads; ``v * g``: no v map leaves ``g`` in place, so no block either.
- ``b = fc.bias.clone(); b[:4].zero_()`` on a plain Linear: the bias the product reads is not the
  parameter, so no site may move ``fc``'s outputs with the parameter's entries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import assert_function_preserved, trace

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Scaled(nn.Module):
    """``where``: "q" or "v" is multiplied by ``g``; ``per_head``: ``g`` is (H, 1, D), else
    (1, 1, D)."""

    def __init__(self, where="q", per_head=True):
        super().__init__()
        self.where, self.qkv, self.proj = where, nn.Linear(8, 24), nn.Linear(8, 8)
        self.g = nn.Parameter(torch.rand(2 if per_head else 1, 1, 4, generator=_gen(3)) + 0.5)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.g if self.where == "q" else q
        v = v * self.g if self.where == "v" else v
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize(
    "where, per_head, found",
    [
        ("q", True, set()),
        ("q", False, {"1.heads", "1.vo0", "1.vo1"}),  # like rotary: no qk map, heads and vo stay
        ("v", False, set()),
    ],
)
def test_a_tensor_from_outside_on_q_or_v(where, per_head, found):
    model = nn.Sequential(nn.Linear(3, 8), Scaled(where, per_head), nn.ReLU(), nn.Linear(8, 2))
    model = model.double()
    x = torch.randn(2, 4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(1))
    assert {s for s in spec.names if s.startswith("1.")} == found
    assert not spec.dropped  # refused by the rules, not by verification


class ZeroedBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        b = self.fc.bias.clone()
        b[:4].zero_()
        return self.out(torch.relu(F.linear(x, self.fc.weight, b)))


def test_a_bias_copy_written_in_place_is_not_the_parameter():
    model = ZeroedBias().double()
    x = torch.randn(5, 8, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(2))
    assert not spec.dropped  # not proposed: the rules see the write
    assert not [a for s in spec.sites for a in s.actions if a.name == "fc.bias"]
    assert trace(model, x, verify=False).names == spec.names
