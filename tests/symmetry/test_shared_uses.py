"""A module called on several branches (CoaT applies one MLP to three): its hidden units are one
site across the calls (one element serves every use), and the tie is refused where the uses ask
for different matrices."""

from __future__ import annotations

import torch
from torch import nn

from intertwiner.symmetry import check, random_elements, trace

F64 = torch.float64


class SharedMLP(nn.Module):
    """One Linear-act-Linear MLP applied to two branches of different widths-in, summed."""

    def __init__(self, act: str = "relu"):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 6)
        self.act = act
        self.out = nn.Linear(6, 3)

    def mlp(self, h: torch.Tensor, act: str) -> torch.Tensor:
        z = self.fc1(h)
        return self.fc2(torch.relu(z) if act == "relu" else torch.tanh(z))

    def forward(self, x):
        second = "relu" if self.act == "relu" else "tanh"
        return self.out(
            self.mlp(torch.relu(self.a(x)), "relu") + self.mlp(torch.relu(self.b(x)), second)
        )


class SharedOnShiftedInput(nn.Module):
    """The shared MLP's second call reads its input with the features rolled: fc1's columns then
    serve two different orders of the same space."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        mlp = lambda t: self.fc2(torch.relu(self.fc1(t)))  # noqa: E731
        return self.out(mlp(h) + mlp(h.roll(1, -1)))


def _model(cls, *args):
    torch.manual_seed(0)
    return cls(*args).to(F64).eval()


def _hidden_site(spec):
    return [s for s in spec.sites if any(a.name == "fc1.weight" and a.axis == 0 for a in s.actions)]


def test_a_module_called_on_two_branches_has_one_hidden_site():
    model, x = _model(SharedMLP), torch.randn(7, 4, dtype=F64)
    spec = trace(model, x)
    assert not spec.dropped
    (site,) = _hidden_site(spec)
    assert site.group.name == "G_ReLU"
    assert sum(a.name == "fc1.weight" and a.axis == 0 for a in site.actions) == 1  # applied once
    for seed in range(3):
        els = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        assert check(model, spec, x, elements=els) < 1e-12
        # float32 too
        m32 = model.float()
        assert check(m32, spec, x.float(), elements=els) < 1e-5
        model = model.double()


def test_a_tie_of_two_activations_keeps_their_common_group():
    model, x = _model(SharedMLP, "mixed"), torch.randn(7, 4, dtype=F64)
    spec = trace(model, x)
    (site,) = _hidden_site(spec)
    assert site.group.family.name == "permutation"  # G_ReLU and G_tanh intersect
    els = random_elements(spec, generator=torch.Generator().manual_seed(1))
    assert check(model, spec, x, elements=els) < 1e-12


def test_separate_hidden_permutations_per_call_change_the_function():
    """Non-invariance: permuting the hidden units of one call but not the other is not a symmetry
    (what a tie-free spec with two hidden sites would have claimed)."""
    model, x = _model(SharedMLP), torch.randn(7, 4, dtype=F64)
    ref = model(x)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    h1 = torch.relu(model.a(x))
    h2 = torch.relu(model.b(x))
    z1 = model.fc2.weight[:, perm] @ torch.relu(model.fc1(h1)[:, perm]).T  # consistent in call 1
    z1 = z1.T + model.fc2.bias
    z2 = model.fc2(torch.relu(model.fc1(h2)))
    same = model.out(z1 + z2)
    assert torch.allclose(same, ref)  # one call permuted consistently within itself: unchanged
    w1 = model.fc1.weight[perm]  # permuting fc1 (shared) without permuting fc2 for call 2
    z2_bad = model.fc2(torch.relu(h2 @ w1.T + model.fc1.bias[perm]))
    assert not torch.allclose(model.out(z1 + z2_bad), ref)


def test_a_use_that_reads_another_order_is_not_tied_and_stays_sound():
    model, x = _model(SharedOnShiftedInput), torch.randn(7, 4, dtype=F64)
    spec = trace(model, x)
    for seed in range(3):
        els = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        assert check(model, spec, x, elements=els) < 1e-12


class OwnOutput(nn.Module):
    """One Linear applied to its own output: its bias asks both calls' spaces for the same matrix,
    but its weight reads the input in the first call and the first call's space in the second."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.a(torch.relu(self.a(x)))))


def test_a_module_on_its_own_output_is_not_tied_but_dropped_with_the_reason():
    model, x = _model(OwnOutput), torch.randn(7, 4, dtype=F64)
    spec = trace(model, x)
    reasons = dict(spec.dropped)
    assert reasons and all("shared" in r for r in reasons.values())  # not a verification failure
    for seed in range(2):
        els = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        assert check(model, spec, x, elements=els) < 1e-12
