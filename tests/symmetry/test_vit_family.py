"""Plain ViT patterns (issue 24): the residual stream of a ViT is one permutation site that moves
the patch embedding, ``pos_embed`` (also when it is resampled to the input's grid, as timm does
with ``dynamic_img_size``), the class token joined with ``cat`` + ``expand``, every LayerNorm's
weight and bias and every residual writer and reader. Each pattern has a small model that uses it
(found, and the function kept under sampled elements) and one written to fool the rule (it must
be refused: the parameter stays in place and no site moves the stream through it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from torch import nn

F64 = torch.float64


def _moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions}


def _site_of(spec, pname: str):
    return next(s for s in spec.sites if any(a.name == pname for a in s.actions))


class Block(nn.Module):
    """Pre-norm transformer block, timm's packed ``qkv`` reshaped to (B, N, 3, H, D)."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.h = heads
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Patch embedding, class token (``cat`` of ``cls.expand``), ``pos_embed`` for a 4 x 4 grid
    resampled (bicubic) to the input's grid, two blocks, final norm, head on the class token.

    ``fool``: "index" reads ``pos_embed[..., idx]`` with a fixed shuffle of the features, "offset"
    adds a fixed per-feature buffer to it before resampling; both break ``f(P p) = P f(p)``."""

    def __init__(self, c: int = 8, heads: int = 2, fool: str | None = None):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, c))
        self.register_buffer("idx", torch.randperm(c, generator=_gen(5)))
        self.register_buffer("offset", torch.randn(c, generator=_gen(6)))
        self.blocks = nn.Sequential(Block(c, heads), Block(c, heads))
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 3)
        self.fool = fool

    def pos(self, grid: tuple[int, int]) -> torch.Tensor:
        p = self.pos_embed
        if self.fool == "index":
            p = p[..., self.idx]
        elif self.fool == "offset":
            p = p + self.offset
        p = p.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        p = F.interpolate(p, size=grid, mode="bicubic", align_corners=False)
        return p.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)

    def forward(self, x):
        x = self.patch(x)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.pos(grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_resampled_pos_embed_and_cls_token_move_with_the_stream(dtype):
    x = torch.randn(2, 3, 6, 6, generator=_gen())  # a 3 x 3 grid: pos_embed is resampled
    model, spec = traced(TinyViT(), x, dtype)
    stream = _site_of(spec, "pos_embed")
    names = {a.name for a in stream.actions}
    assert {"cls_token", "patch.weight", "patch.bias", "norm.weight", "norm.bias"} <= names
    assert {"blocks.0.norm1.weight", "blocks.1.proj.bias", "blocks.1.fc2.weight"} <= names
    assert "head.weight" in names and stream.width == 8
    # LayerNorm (mean subtraction, per-feature weight) leaves the permutations of the features
    assert stream.group.family.name == "permutation"
    assert sum(s.kind == "attention_heads" for s in spec.sites) == 2
    assert spec.dropped == []


@pytest.mark.parametrize("fool", ["index", "offset"])
def test_pos_embed_read_per_feature_differently_is_refused(fool):
    x = torch.randn(2, 3, 6, 6, generator=_gen())
    model, spec = traced(TinyViT(fool=fool), x)
    assert "pos_embed" not in _moved(spec)
    assert spec.dropped == []  # refused by the rule, not left for verification to catch
    # the stream it is added to cannot move: no site acts on the patch embedding's outputs
    assert not any(a.name == "patch.weight" and a.axis == 0 for s in spec.sites for a in s.actions)


def test_pos_embed_read_twice_is_refused():
    """Fool: the resampled ``pos_embed`` is added, and ``pos_embed`` is also read by a second,
    unrelated path (a bias on the head): moving it for the stream would change that path."""

    class Twice(TinyViT):
        def forward(self, x):
            return super().forward(x) + self.pos_embed.sum()

    model, spec = traced(Twice(), torch.randn(2, 3, 6, 6, generator=_gen()))
    assert "pos_embed" not in _moved(spec) and spec.dropped == []
