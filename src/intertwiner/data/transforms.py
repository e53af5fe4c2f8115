"""Normalisation and augmentation (horizontal flip, translation), in torch, on single images or batches.

Images are ``(C, H, W)`` or batches ``(N, C, H, W)``. Translation pads by ``pad`` pixels with zeros and
crops back at a random offset; applied after normalisation, zero is the channel mean, as the
reference code's ``RandomTranslate(fill=mean)``.
"""

from __future__ import annotations

import torch


def channel_stats(images: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``images * scale`` (``(N, C, H, W)``; per feature for tabular
    ``(N, D)``), accumulated in float64."""
    x = images.to(torch.float64) * scale
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    mean = x.mean(dim=dims)
    std = x.std(dim=dims).clamp_min(1e-8)
    return mean.float(), std.float()


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``x`` is ``(C, H, W)`` or ``(N, C, H, W)``, or per feature
    for tabular rows ``(D,)`` / ``(N, D)``."""
    shape = (-1,) if x.dim() <= 2 else (-1, 1, 1)
    return (x - mean.view(shape)) / std.view(shape)


def augment_batch(
    x: torch.Tensor, *, flip: bool, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random horizontal flip (p = 1/2, if ``flip``) and translation by up to ``pad`` pixels.

    ``x``: ``(N, C, H, W)``; every image gets its own draw from ``generator``.
    """
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(-1), x)
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch = torch.arange(n).view(n, 1, 1, 1)
        chans = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        x = padded[batch, chans, rows, cols]
    return x
