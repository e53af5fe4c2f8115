"""Layer scale seen through a view (timm's ``LayerScale2d``, MetaFormer's ``Scale``: ``x *
gamma.view(1, -1, 1, 1)`` on a (B, C, H, W) residual branch): a diagonal per channel, which the
channel permutations (and positive scalings, absorbed by the ReLU around) move along with gamma.
A gamma viewed along a position axis instead is not one per channel and must not be moved."""

from __future__ import annotations

import torch
from torch import nn

from intertwiner.symmetry import assert_function_preserved

F64 = torch.float64


class ScaledBranch(nn.Module):
    def __init__(self, along: str = "channels"):
        super().__init__()
        self.along = along
        self.embed, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 1)
        self.gamma = nn.Parameter(torch.rand(6, generator=torch.Generator().manual_seed(0)) + 0.5)
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # (B, 3, 6, 6)
        h = torch.relu(self.embed(x))
        shape = (1, -1, 1, 1) if self.along == "channels" else (1, 1, -1, 1)
        h = h + self.fc(h) * self.gamma.view(shape)
        return self.head(h.mean((2, 3)))


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))


def test_a_viewed_layer_scale_moves_with_its_channels():
    model = ScaledBranch().double()
    spec = assert_function_preserved(model, _x(), generator=torch.Generator().manual_seed(2))
    (site,) = spec.sites
    (g,) = [a for a in site.actions if a.name == "gamma"]
    assert g.axis == 0 and g.kind == "P"  # the permutation part of the site's monomial element
    assert spec.coverage(model, _x()).interior_tensors == 1.0


def test_a_scale_along_positions_is_not_a_layer_scale():
    model = ScaledBranch("positions").double()
    spec = assert_function_preserved(model, _x(), generator=torch.Generator().manual_seed(3))
    assert not [a for s in spec.sites for a in s.actions if a.name == "gamma"]


class LinearNorm(nn.Module):
    """LeViT's ``LinearNorm``: Linear, then BatchNorm1d over the flattened tokens, then
    ``reshape_as`` back to (B, N, C)."""

    def __init__(self, a: int, b: int):
        super().__init__()
        self.linear, self.bn = nn.Linear(a, b, bias=False), nn.BatchNorm1d(b)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class LeViTStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = LinearNorm(3, 6), LinearNorm(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(h + self.b(h))


def test_reshape_as_keeps_the_feature_axis():
    model = LeViTStyle().double().eval()
    g = torch.Generator().manual_seed(4)
    for bn in (model.a.bn, model.b.bn):
        bn.running_mean.copy_(torch.randn(6, generator=g))
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    x = torch.randn(2, 5, 3, dtype=F64, generator=g)
    spec = assert_function_preserved(model, x, generator=torch.Generator().manual_seed(5))
    assert spec.coverage(model, x).interior_tensors == 1.0


class ClassToken(nn.Module):
    """CaiT's class token: joined to the patch tokens (``cat`` along tokens) and also the residual
    stream of a class-attention-like block (``cls + f(cat(cls, x))``); one parameter added to two
    tensors ties them to one site."""

    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.cls_token = nn.Parameter(
            torch.randn(1, 1, 6, generator=torch.Generator().manual_seed(6))
        )

    def forward(self, x):  # (B, N, 3)
        h = self.embed(x)
        cls = self.cls_token.expand(h.shape[0], -1, -1)
        u = torch.cat((cls, h), dim=1)
        cls = cls + self.mix(torch.relu(u)).mean(1, keepdim=True)
        return self.head(torch.cat((cls, h), dim=1)[:, 0])


def test_a_class_token_added_twice_ties_its_two_streams():
    model = ClassToken().double()
    x = torch.randn(2, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(7))
    spec = assert_function_preserved(model, x, generator=torch.Generator().manual_seed(8))
    assert [a for s in spec.sites for a in s.actions if a.name == "cls_token"]
    assert spec.coverage(model, x).interior_tensors == 1.0
