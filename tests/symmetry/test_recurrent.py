"""LSTM / GRU / RNN hidden units (issue 24): each layer and direction is a permutation site whose
element moves every gate block of its weights together. Models written to fool the rule (a
non-zero initial state, final states of several layers read, projections) stay frozen."""

from __future__ import annotations

import pytest
import torch
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

F64 = torch.float64


def _traced(model, x, dtype=F64):
    return traced(model, x, dtype, shift=0.0)


class Seq(nn.Module):
    def __init__(self, kind: str = "lstm", layers: int = 1, bidirectional: bool = False,
                 read_state: bool = False, state_from_input: bool = False, **kw):  # fmt: skip
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.inp = nn.Linear(3, 4)
        self.rnn = cls(4, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True,
                       **kw)  # fmt: skip
        out = self.rnn.proj_size if kw.get("proj_size") else 5
        self.head = nn.Linear(out * (2 if bidirectional else 1), 2)
        self.h0 = nn.Linear(3, 5) if state_from_input else None
        self.kind, self.read_state = kind, read_state

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.h0 is not None:
            h0 = self.h0(x.mean(1)).unsqueeze(0)
            y, state = self.rnn(h, (h0, torch.zeros_like(h0)) if self.kind == "lstm" else h0)
        else:
            y, state = self.rnn(h)
        if self.read_state:
            s = state[0] if self.kind == "lstm" else state
            return self.head(y[:, -1, : s.shape[-1]] + s[-1])
        return self.head(y[:, -1])


def _sites(spec):
    return {s.name: s for s in spec.sites if ".hidden_l" in s.name}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_hidden_units_of_each_gate_permute_together(kind, dtype):
    model, spec = _traced(Seq(kind), torch.randn(2, 6, 3, generator=_gen()), dtype)
    (site,) = _sites(spec).values()
    assert site.width == 5 and site.group.family.name == "permutation"
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rows = {a.name: a.outer for a in site.actions if a.axis == 0}
    assert rows == dict.fromkeys(["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                                  "rnn.bias_hh_l0"], gates)  # fmt: skip
    assert any((a.name, a.axis) == ("rnn.weight_hh_l0", 1) for a in site.actions)
    relu = spec.site("relu")  # the input space is read by weight_ih like a Linear reads it
    assert relu.group.family.name == "positive_monomial"
    assert any((a.name, a.axis) == ("rnn.weight_ih_l0", 1) for a in relu.actions)
    assert spec.dropped == []


def test_stacked_bidirectional_lstm_has_a_site_per_layer_and_direction():
    model, spec = _traced(Seq("lstm", layers=2, bidirectional=True),
                          torch.randn(2, 6, 3, generator=_gen()))  # fmt: skip
    assert sorted(_sites(spec)) == [
        "rnn.hidden_l0", "rnn.hidden_l0_reverse", "rnn.hidden_l1", "rnn.hidden_l1_reverse",
    ]  # fmt: skip
    l0 = _sites(spec)["rnn.hidden_l0_reverse"]  # layer 1 reads both directions of layer 0
    reads = [a for a in l0.actions if (a.name, a.axis) == ("rnn.weight_ih_l1", 1)]
    assert reads and reads[0].channels == tuple(range(5, 10))


def test_final_state_of_one_layer_moves_with_the_output():
    model, spec = _traced(Seq("gru", read_state=True), torch.randn(2, 6, 3, generator=_gen()))
    assert len(_sites(spec)) == 1


@pytest.mark.parametrize(
    "model, why",
    [
        (Seq("lstm", state_from_input=True), "initial state"),
        (Seq("gru", layers=2, read_state=True), "final states"),
        (Seq("lstm", proj_size=3), "proj_size"),
    ],
)
def test_recurrent_patterns_that_would_move_a_fixed_tensor_are_frozen(model, why):
    model, spec = _traced(model, torch.randn(2, 6, 3, generator=_gen()))
    assert _sites(spec) == {}
    assert any(why in reason for _, reason in spec.frozen)
