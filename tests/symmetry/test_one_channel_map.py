"""CSATv2's spatial attention (issue 24): a one-channel map, computed from the channel mean and
max of a branch by a conv and a transformer over positions with one-feature q, k, v and two
LayerNorms over that one feature, multiplies the branch. Every space in the map has one feature,
so no permutation moves it; what remains is a positive common factor shared by the map and the
branch (an element on no single site): the spec does not claim it, keeps the function, and says
why the map's tensors stay. The tests show those elements exist (the coverage
bound quoted in the README) and that the larger ones a looser rule might claim do not."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from tests._support.traced import gen, traced
from torch import nn

F64 = torch.float64


class SpatialBlock(nn.Module):
    """``y * map(y)`` added to the stream ``x``, map as in timm's ``SpatialAttention``."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.stem, self.pw = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 1)
        self.conv = nn.Conv2d(2, 1, 3, padding=1)
        self.norm1, self.norm2 = nn.LayerNorm(1), nn.LayerNorm(1)
        self.pos = nn.Conv2d(1, 1, 3, padding=1)  # zero padding: the borders differ
        self.qkv = nn.Linear(1, 3, bias=False)
        self.fc1, self.fc2 = nn.Linear(1, 4), nn.Linear(4, 1)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.pw(x)
        m = self.conv(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1))
        b, c, h, w = m.shape
        t = self.norm1(m.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        q, k, v = self.qkv((t + self.pos(t)).flatten(2).transpose(1, 2)).unbind(-1)
        a = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).unsqueeze(-1)
        m = m + a.transpose(1, 2).reshape(b, c, h, w)
        t = self.fc2(F.gelu(self.fc1(self.norm2(m.flatten(2).transpose(1, 2)))))
        m = m + t.transpose(1, 2).reshape(b, c, h, w)
        return self.head((x + y * m).mean((2, 3)))


def _model_and_input() -> tuple[nn.Module, torch.Tensor]:
    model = SpatialBlock().to(F64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(1), dtype=F64) * 0.5 + 0.3)
    return model, torch.randn(2, 3, 5, 5, generator=gen(), dtype=F64)


def _change(model: nn.Module, x: torch.Tensor, c: float, conv_power: float = 2.0) -> float:
    """Relative change when the map is scaled by c and the branch by 1/c: the conv reads the
    branch's mean and max (scaled by 1/c), so its weight takes c^2 and its bias c; the map's
    two residual terms take c through v's row of qkv and fc2 (LayerNorm over one feature
    outputs its bias whatever the input)."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        ref = model(x)
        moved.pw.weight.div_(c), moved.pw.bias.div_(c)
        moved.conv.weight.mul_(c**conv_power), moved.conv.bias.mul_(c)
        moved.qkv.weight[2].mul_(c)
        moved.fc2.weight.mul_(c), moved.fc2.bias.mul_(c)
        return float((moved(x) - ref).abs().max() / ref.abs().max())


def test_the_map_tensors_stay_with_a_reason():
    x = torch.randn(2, 3, 5, 5, generator=gen())
    model, spec = traced(SpatialBlock(), x)  # the spec keeps the function (three sampled elements)
    cov = spec.coverage(model)
    frozen = {t: f.reason for f in cov.frozen if not f.output_side for t in f.tensors}
    assert {"conv.weight", "conv.bias", "qkv.weight", "norm1.weight"} <= set(frozen)
    assert all(frozen[t] for t in ("conv.weight", "qkv.weight"))
    # LayerNorm over one element outputs its bias whatever the input: fixed, with that reason
    assert (
        "outputs its bias" in frozen["norm1.weight"] and "outputs its bias" in frozen["norm2.bias"]
    )


def test_a_common_positive_scale_of_map_and_branch_exists_but_no_negative_one():
    """The element the spec does not claim (the coverage bound): c > 0 keeps the function; a
    negative c swaps the channel max for a min, and c on the conv weight instead of c^2 misses
    the branch's 1/c: both change the function."""
    model, x = _model_and_input()
    assert _change(model, x, 2.5) < 1e-12 and _change(model, x, 0.3) < 1e-12
    assert _change(model, x, -0.7) > 1e-4
    assert _change(model, x, 2.5, conv_power=1.0) > 1e-4
