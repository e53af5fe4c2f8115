"""A small pre-LayerNorm vision transformer with explicit q/k/v projections.

Module names, in forward order::

    patch_embed          Conv2d(C -> dim, kernel = stride = patch_size): tokens (N, T, dim)
    pos_embed            PositionEmbedding: adds a learned (T, dim) table (parameter ``weight``)
    blocks.{i}.norm1     LayerNorm(dim)
    blocks.{i}.attn.q    Linear(dim -> dim)   (head h owns output features h*dh .. (h+1)*dh - 1)
    blocks.{i}.attn.k    Linear(dim -> dim)
    blocks.{i}.attn.v    Linear(dim -> dim)
    blocks.{i}.attn.out  Linear(dim -> dim)
    blocks.{i}.norm2     LayerNorm(dim)
    blocks.{i}.fc1       Linear(dim -> mlp_ratio*dim)
    blocks.{i}.act       activation (GELU by default)
    blocks.{i}.fc2       Linear(mlp_ratio*dim -> dim)
    norm                 final LayerNorm(dim)
    head                 Linear(dim -> num_classes) on the mean over tokens

Block: ``x = x + attn(norm1(x)); x = x + fc2(act(fc1(norm2(x))))``. Attention is
``softmax(q k^T / sqrt(dh)) v`` per head, heads concatenated then ``out``. No class token (mean
pooling), no dropout. Activation sites: ``blocks.{i}.act`` (layout ``(N, T, mlp_ratio*dim)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.models._common import check_common, new_activation, set_sites


class PositionEmbedding(nn.Module):
    """Adds a learned table ``weight`` of shape (T, dim) to tokens (N, T, dim)."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``out`` Linear layers."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ShapeError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (N, T, dim) -> (N, heads, T, head_dim)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: Any):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = new_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Small ViT: patchify, add positions, ``depth`` pre-LN blocks, LayerNorm, mean-pool, head."""

    def __init__(
        self,
        *,
        activation: Any = "gelu",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        check_common(in_channels, input_size, num_classes)
        if input_size % patch_size:
            raise ShapeError(
                f"input_size ({input_size}) must be divisible by patch_size ({patch_size}); "
                "for 28x28 images use patch_size 4, 7 or 14"
            )
        if min(dim, depth, heads, mlp_ratio) < 1:
            raise ShapeError("dim, depth, heads and mlp_ratio must be positive ints")
        tokens = (input_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = PositionEmbedding(tokens, dim)
        self.blocks = nn.Sequential(
            *[Block(dim, heads, int(mlp_ratio * dim), activation) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():  # the usual ViT init: small weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        set_sites(self, [f"blocks.{i}.act" for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, C, H, W) -> logits (N, num_classes)."""
        x = self.pos_embed(self.patch_embed(x).flatten(2).transpose(1, 2))
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))
