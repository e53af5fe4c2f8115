"""Property test: random stacks of Linear, BatchNorm1d, LayerNorm, activations (mixed from the
paper's table) and residual connections keep their function under random elements of the traced
groups, and every hidden site is found."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from intertwiner.groups import PAPER_ROWS, activation_module
from intertwiner.symmetry import assert_function_preserved


class Block(nn.Module):
    """Linear -> [BatchNorm1d] -> act -> Linear back to the stream width, optionally residual."""

    def __init__(self, d: int, h: int, act: str, bn: bool, ln: bool, residual: bool):
        super().__init__()
        self.ln = nn.LayerNorm(d) if ln else nn.Identity()
        self.fc1 = nn.Linear(d, h)
        self.bn = nn.BatchNorm1d(h) if bn else nn.Identity()
        self.act = activation_module(act)
        self.fc2 = nn.Linear(h, d)
        self.residual = residual

    def forward(self, x):
        y = self.fc2(self.act(self.bn(self.fc1(self.ln(x)))))
        return x + y if self.residual else y


class Net(nn.Module):
    def __init__(self, blocks: list[tuple], d: int):
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.blocks = nn.Sequential(*[Block(d, *b) for b in blocks])
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


block = st.tuples(
    st.integers(2, 5),  # hidden width
    st.sampled_from(PAPER_ROWS),
    st.booleans(),  # BatchNorm1d before the activation
    st.booleans(),  # LayerNorm on the stream
    st.booleans(),  # residual
)


@settings(max_examples=30, deadline=None)
@given(blocks=st.lists(block, min_size=1, max_size=3), d=st.integers(2, 4), seed=st.integers(0, 99))
def test_random_residual_nets_keep_their_function(blocks, d, seed):
    torch.manual_seed(seed)
    model = Net(blocks, d).double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(5, 3, dtype=torch.float64)
    spec = assert_function_preserved(model, x, generator=torch.Generator().manual_seed(seed))
    moved = {a for s in spec.sites for a in s.activations}
    # nn.Identity outside the zoo is a pass-through: its site is a plain "linear" one (GL).
    acts = {f"blocks.{i}.act" for i, b in enumerate(blocks) if b[1] != "identity"}
    assert moved == acts
