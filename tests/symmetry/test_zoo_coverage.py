"""``SymmetrySpec.coverage``: shares of parameter tensors and scalars that some site moves, checked
against counts by hand, and the per-module reasons for what no site moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.errors import InvalidInputError
from intertwiner.symmetry import trace


def _mlp(widths: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed", range(6))
def test_mlp_interior_coverage_is_one(seed):
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(2, 5, (1,), generator=g))
    widths = [int(w) for w in torch.randint(2, 9, (depth + 1,), generator=g)]
    act = [nn.ReLU, nn.Tanh, nn.GELU][seed % 3]
    model = _mlp(widths, act)
    spec = trace(model, torch.randn(5, widths[0], generator=g))
    cov = spec.coverage(model)
    # Every tensor moves but the last bias, which lies wholly on the output side.
    n_scalars = sum(p.numel() for p in model.parameters())
    assert (cov.n_tensors, cov.moved_tensors) == (2 * depth, 2 * depth - 1)
    assert (cov.n_scalars, cov.moved_scalars) == (n_scalars, n_scalars - widths[-1])
    assert cov.tensors == pytest.approx((2 * depth - 1) / (2 * depth))
    assert cov.interior_tensors == 1.0 and cov.interior_scalars == 1.0
    last = str(len(model) - 1)
    assert [(f.module, f.tensors, f.output_side) for f in cov.frozen] == [
        (last, (f"{last}.bias",), True)
    ]


class _Cumsum(nn.Module):
    """l1 -> relu -> l2 -> relu -> cumsum over features -> l3: no rule for cumsum, so the second
    hidden space is frozen, and l3 reads a fixed space."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))).cumsum(-1))


def test_frozen_op_gives_the_share_counted_by_hand():
    model = _Cumsum()
    spec = trace(model, torch.randn(5, 4))
    cov = spec.coverage(model)
    # Moved: l1.weight (32), l1.bias (8), l2.weight (48, its input axis). Unmoved: l2.bias (6,
    # the frozen space), l3.weight (18, reads it), l3.bias (3, output side).
    assert (cov.n_tensors, cov.moved_tensors, cov.n_scalars, cov.moved_scalars) == (6, 3, 115, 88)
    assert cov.tensors == 0.5 and cov.interior_tensors == 3 / 5
    assert cov.scalars == 88 / 115 and cov.interior_scalars == 88 / 112
    why = {t: f for f in cov.frozen for t in f.tensors}
    assert set(why) == {"l2.bias", "l3.weight", "l3.bias"}
    assert "cumsum" in why["l2.bias"].reason and not why["l2.bias"].output_side
    assert not why["l3.weight"].output_side and why["l3.bias"].output_side
    assert cov.reasons()[0][1] == 18  # l3.weight's reason leaves most scalars unmoved
    assert "l2 (bias)" in cov.summary()


class _Concat(nn.Module):
    """Two branches concatenated: each branch's site moves its block of ``out``'s input axis."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 5), nn.Linear(9, 2)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1))


def test_partial_channels_count_only_the_scalars_moved():
    """Sites that move only some channels of a tensor: its scalars count by the channels the
    sites cover, each once."""
    torch.manual_seed(0)
    model = _Concat()
    spec = trace(model, torch.randn(4, 3))
    cov = spec.coverage(model)
    assert any(a.channels is not None for s in spec.sites for a in s.actions)
    # Recount from the spec's own actions, scalar by scalar (independent of the masks' views).
    moved = set()
    for s in spec.sites:
        for a in s.actions:
            p = dict(model.named_parameters())[a.name]
            idx = torch.arange(p.numel()).reshape(p.shape)
            rows = idx.movedim(a.axis, 0).reshape(a.n_total, -1)
            chans = range(a.n_total) if a.channels is None else a.channels
            moved |= {(a.name, int(i)) for c in chans for i in rows[c]}
    assert cov.moved_scalars == len(moved)


def test_tied_tensors_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)
            self.fc = nn.Linear(4, 6)
            self.out = nn.Linear(6, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.out(torch.relu(self.fc(self.emb(ids)))))

    model = Tied()
    spec = trace(model, torch.randint(0, 7, (2, 3)))
    cov = spec.coverage(model)
    assert cov.n_tensors == len(list(model.parameters())) == 5


def test_wrong_model_is_refused():
    model = _mlp([3, 4, 2], nn.ReLU)
    spec = trace(model, torch.randn(4, 3))
    with pytest.raises(InvalidInputError, match="pass the model the spec was traced from"):
        spec.coverage(nn.Sequential(nn.Linear(3, 2)))


class _Aux(nn.Module):
    """An auxiliary head the forward never calls (GoogLeNet's in eval mode)."""

    def __init__(self):
        super().__init__()
        self.body, self.head, self.aux = nn.Linear(3, 6), nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_unused_parameters_are_named_and_left_out_of_the_interior():
    model = _Aux().train()
    x = torch.randn(4, 3)
    spec = trace(model, x)
    plain, told = spec.coverage(model), spec.coverage(model, x)
    # Without the input nothing tells aux from a frozen module; with it, aux is unused.
    assert plain.interior_tensors == 3 / 5 and told.interior_tensors == 1.0
    assert (told.moved_tensors, told.n_tensors) == (plain.moved_tensors, plain.n_tensors) == (3, 6)
    aux = [f for f in told.frozen if f.module == "aux"]
    assert len(aux) == 1 and aux[0].reason.startswith("not used by the forward")
    assert model.training and all(p.requires_grad for p in model.parameters())
