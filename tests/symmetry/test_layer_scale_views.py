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
