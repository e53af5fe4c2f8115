"""Products of two computed tensors (issue 24, EfficientViM's HSM-SSD): ``h = x @ (a * b)^T``
mixes the positions of a stream ``x`` into a hidden state and ``y = h @ c`` reads it back. With
the other factor held fixed, every matrix on a factor's free feature axis passes through the
product, and the state axis written by one product and contracted by the other permutes when
every op between acts alike on each state index. Fools (mixing weights that differ per feature,
a map that mixes states, states that reach the output) are refused by the rules, and elements a
wider rule would claim change the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen, traced
from torch import nn

F64 = torch.float64


class StateMixer(nn.Module):
    """A small HSM-SSD: B, C and dt projections of the stream (one conv, a depthwise conv), a
    softmax over positions, ``h = x @ (a b)^T`` (B, C, S), a gated map of the hidden state's
    channels, ``y = h @ c``. ``per_feature``: each channel i of the stream is mixed by its own
    computed weights ``v_i`` (``x_i . v_i``, the channels on a batch dim of the product);
    ``kernel=3``: the hidden map mixes neighbouring states; ``state_out``: the hidden state
    reaches the output flattened (its order matters there)."""

    def __init__(
        self, c: int = 6, s: int = 4, per_feature: bool = False, kernel: int = 1,
        state_out: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.s, self.per_feature, self.state_out = s, per_feature, state_out
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.proj = nn.Conv1d(c, 3 * s, 1, bias=False)
        self.dw = nn.Conv2d(3 * s, 3 * s, 3, padding=1, groups=3 * s, bias=False)
        self.A = nn.Parameter(torch.zeros(s))
        self.hz = nn.Conv1d(c, 2 * c, kernel, padding=kernel // 2, bias=False)
        self.out = nn.Conv1d(c, c, 1, bias=False)
        self.v = nn.Conv1d(c, c, 1)
        self.head = nn.Linear(c, 2)
        self.state_head = nn.Linear(c * s, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        bsz, ch, hh, ww = x.shape
        t = x.flatten(2)
        bcdt = self.dw(self.proj(t).reshape(bsz, -1, hh, ww)).flatten(2)
        b, c, dt = torch.split(bcdt, [self.s] * 3, dim=1)
        a = (dt + self.A.view(1, -1, 1)).softmax(-1)
        h = t @ (a * b).transpose(-2, -1)  # (B, C, S)
        if self.per_feature:  # (B, C, 1, L) @ (B, C, L, 1): channel i meets its own v_i
            h = h + (t.unsqueeze(2) @ self.v(t).unsqueeze(-1))[..., 0]
        h, z = torch.split(self.hz(h), [ch, ch], dim=1)
        h = self.out(h * F.silu(z) + h)
        y = (h @ c).reshape(bsz, -1, hh, ww)  # (B, C, L)
        out = self.head((x + y).mean((2, 3)))
        return out + self.state_head(h.flatten(1)) if self.state_out else out


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=gen())


def _unmoved(spec, model) -> list[str]:
    cov = spec.coverage(model)
    return sorted(t for f in cov.frozen if not f.output_side for t in f.tensors)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_the_stream_and_the_state_channels_pass_through_the_products(dtype):
    model, spec = traced(StateMixer(), _x(), dtype)  # three sampled elements keep the function
    assert spec.dropped == []
    # every used tensor moves (v and state_head are not used here)
    assert _unmoved(spec, model) == ["state_head.bias", "state_head.weight", "v.bias", "v.weight"]
    state = next(s for s in spec.sites if ("A", 0) in {(a.name, a.axis) for a in s.actions})
    assert state.group.family.name == "permutation"
    assert {("proj.weight", 0), ("dw.weight", 0)} <= {(a.name, a.axis) for a in state.actions}
    stream = next(
        s for s in spec.sites if ("stem.weight", 0) in {(a.name, a.axis) for a in s.actions}
    )
    names = {(a.name, a.axis) for a in stream.actions}
    assert {("proj.weight", 1), ("hz.weight", 1), ("out.weight", 0), ("head.weight", 1)} <= names
    assert stream.group.family.name == "positive_monomial"
    gated = next(s for s in spec.sites if ("hz.weight", 0) in {(a.name, a.axis) for a in s.actions})
    assert ("out.weight", 1) in {(a.name, a.axis) for a in gated.actions}


@pytest.mark.parametrize("fool", [{"kernel": 3}, {"state_out": True}])
def test_states_mixed_or_read_in_order_stay(fool):
    model, spec = traced(StateMixer(**fool), _x())
    assert spec.dropped == []  # refused by the rule, not caught later by the verification
    assert {"A", "dw.weight"} <= set(_unmoved(spec, model))


def test_mixing_weights_that_differ_per_feature_freeze_the_stream():
    model, spec = traced(StateMixer(per_feature=True), _x())
    assert spec.dropped == []  # refused by the rule, not caught later by the verification
    assert not any((a.name, a.axis) == ("stem.weight", 0) for s in spec.sites for a in s.actions)


def _state_move(model: nn.Module, perm: torch.Tensor, scale: torch.Tensor) -> None:
    """Move the state axis: b's rows by ``scale`` then ``perm``, c's rows by 1 / scale, dt and
    A by ``perm`` (the element a rule for the state axis would claim)."""
    s = model.s
    with torch.no_grad():
        rows = torch.cat([perm, perm + s, perm + 2 * s])
        factor = torch.cat([scale, 1 / scale, torch.ones(s, dtype=scale.dtype)])[rows]
        for t in (model.proj.weight, model.dw.weight):
            t.copy_(t[rows])
        model.dw.weight.mul_(factor.view(-1, 1, 1, 1))
        model.A.copy_(model.A[perm])


def _changed(perm: torch.Tensor, scale: torch.Tensor) -> float:
    model, _ = traced(StateMixer(), _x())
    x = _x().to(F64)
    with torch.no_grad():
        ref = model(x)
        _state_move(model, perm, scale)
        return float((model(x) - ref).abs().max() / ref.abs().max())


def test_the_state_axis_permutes_but_does_not_scale():
    """The state element by hand: one permutation of the state (the rows of b, c and dt, the
    depthwise filters, A) keeps the function (the state is contracted between ``h`` and ``c``
    after maps that treat each state index alike). Non-invariance: scaling the state (b by D,
    c by D^-1), which the rule does not claim, changes it: h passes through the SiLU gate."""
    perm = torch.tensor([2, 0, 3, 1])
    ones = torch.ones(4, dtype=F64)
    assert _changed(perm, ones) < 1e-12
    assert _changed(torch.arange(4), torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=F64)) > 1e-4
