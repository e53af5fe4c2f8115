"""Token-mixing MLPs (issue 24): Linear layers over positions (MLP-Mixer, ResMLP with its
``addcmul`` Affine, gMLP's spatial gating, a token-mixing GLU). The channel sites pass through
them; the hidden units of a token-mixing MLP are a permutation site of their own. Each rule has a
model written to fool it; every returned spec must keep the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

F64 = torch.float64


def _traced(model, x, dtype=F64):
    return traced(model, x, dtype, shift=0.2)


def _movers(spec, name: str, axis: int):
    return [s for s in spec.sites if any((a.name, a.axis) == (name, axis) for a in s.actions)]


class Mixer(nn.Module):
    """One MLP-Mixer block on (B, N, C): token MLP over N on ``norm(x)^T``, channel MLP over C.
    ``fool``: the token hidden units are rolled between fc1 and fc2 (not elementwise)."""

    def __init__(self, n: int = 5, c: int = 6, h: int = 7, fool: bool = False):
        super().__init__()
        self.inp = nn.Linear(3, c)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.tok1, self.tok2 = nn.Linear(n, h), nn.Linear(h, n)
        self.ch1, self.ch2 = nn.Linear(c, 8), nn.Linear(8, c)
        self.head = nn.Linear(c, 2)
        self.fool = fool

    def forward(self, x):
        x = self.inp(x)
        t = F.gelu(self.tok1(self.norm1(x).transpose(1, 2)))
        if self.fool:
            t = t.roll(1, -1)
        x = x + self.tok2(t).transpose(1, 2)
        x = x + self.ch2(torch.relu(self.ch1(self.norm2(x))))
        return self.head(x.mean(1))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_mixer_token_hidden_units_and_channels_permute(dtype):
    model, spec = _traced(Mixer(), torch.randn(2, 5, 3, generator=_gen()), dtype)
    assert spec.dropped == []
    (hidden,) = _movers(spec, "tok1.weight", 0)
    assert hidden.width == 7 and hidden.group.family.name == "permutation"
    assert {(a.name, a.axis) for a in hidden.actions} == {
        ("tok1.weight", 0), ("tok1.bias", 0), ("tok2.weight", 1),
    }  # fmt: skip
    (stream,) = _movers(spec, "inp.weight", 0)  # the channels pass the token MLP
    assert stream.width == 6 and _movers(spec, "norm1.weight", 0) == [stream]
    assert _movers(spec, "ch1.weight", 0)[0].group.family.name == "positive_monomial"


def test_rolled_token_hidden_units_get_no_site():
    """Fool: a roll over the hidden units between the two token Linear layers breaks their
    permutations."""
    model, spec = _traced(Mixer(fool=True), torch.randn(2, 5, 3, generator=_gen()))
    assert _movers(spec, "tok1.weight", 0) == [] and _movers(spec, "tok2.weight", 1) == []


class NoNormTokenMix(nn.Module):
    """A token Linear with a bias on a channel space that is otherwise free to scale: the bias
    adds one value to every channel, so only permutations may remain (the fool for a rule that
    would let the scalings through)."""

    def __init__(self, n: int = 5, c: int = 6):
        super().__init__()
        self.inp = nn.Linear(3, c)
        self.tok = nn.Linear(n, n)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(torch.relu(self.tok(h.transpose(1, 2)).transpose(1, 2)))


def test_token_linear_bias_leaves_permutations_only():
    model, spec = _traced(NoNormTokenMix(), torch.randn(2, 5, 3, generator=_gen()))
    (site,) = _movers(spec, "inp.weight", 0)
    assert site.group.family.name == "permutation"
    assert _movers(spec, "tok.weight", 0) == [] and _movers(spec, "tok.weight", 1) == []


class ResMLPBlock(nn.Module):
    """ResMLP: ``Affine`` as ``addcmul(beta, alpha, x)``, a square token Linear, layer scale."""

    def __init__(self, n: int = 5, c: int = 6):
        super().__init__()
        self.inp = nn.Linear(3, c)
        self.alpha, self.beta = (
            nn.Parameter(torch.ones(1, 1, c)),
            nn.Parameter(torch.zeros(1, 1, c)),
        )
        self.tok = nn.Linear(n, n)
        self.ls = nn.Parameter(torch.ones(c))
        self.fc1, self.fc2 = nn.Linear(c, 8), nn.Linear(8, c)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.inp(x)
        y = torch.addcmul(self.beta, self.alpha, x)
        x = x + self.ls * self.tok(y.transpose(1, 2)).transpose(1, 2)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


def test_resmlp_affine_moves_with_the_stream():
    model, spec = _traced(ResMLPBlock(), torch.randn(2, 5, 3, generator=_gen()))
    (stream,) = _movers(spec, "inp.weight", 0)
    assert _movers(spec, "alpha", 2) == [stream] and _movers(spec, "beta", 2) == [stream]
    assert _movers(spec, "ls", 0) == [stream]
    assert spec.dropped == []


class TokenGLU(nn.Module):
    """gMixer's token GLU: fc1 over positions, halves cut along the positions, ``a * silu(b)``:
    a product of two tensors of one channel space (permutations only: a scaling is squared)."""

    def __init__(self, n: int = 4, c: int = 6):
        super().__init__()
        self.inp = nn.Linear(3, c)
        self.fc1, self.fc2 = nn.Linear(n, 2 * n), nn.Linear(n, n)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        a, b = self.fc1(h.transpose(1, 2)).chunk(2, dim=-1)
        return self.head((h + self.fc2(a * F.silu(b)).transpose(1, 2)).mean(1))


def test_product_of_one_space_with_itself_keeps_permutations():
    model, spec = _traced(TokenGLU(), torch.randn(2, 4, 3, generator=_gen()))
    (site,) = _movers(spec, "inp.weight", 0)
    assert site.group.family.name == "permutation" and site.width == 6


class ScaledTokenMix(nn.Module):
    """A per-channel scale viewed as (C, 1) on (B, C, N) right before a Linear over positions,
    with N == C: folding the scale into that Linear would scale positions, not channels."""

    def __init__(self, c: int = 5):
        super().__init__()
        self.inp = nn.Linear(3, c)
        self.gamma = nn.Parameter(torch.ones(c))
        self.tok = nn.Linear(c, c, bias=False)
        self.head = nn.Linear(c, 2)

    def forward(self, x):  # x: (B, N=5, 3)
        h = self.inp(x).transpose(1, 2)  # no activation: a GL site, where a fold is tempting
        return self.head(self.tok(h * self.gamma.view(-1, 1)).transpose(1, 2))


def test_a_scale_before_a_linear_over_positions_is_not_folded_into_it():
    model, spec = _traced(ScaledTokenMix(), torch.randn(2, 5, 3, generator=_gen()))
    assert spec.dropped == []
    (site,) = _movers(spec, "inp.weight", 0)
    assert _movers(spec, "gamma", 0) == [site] and not site.folds
