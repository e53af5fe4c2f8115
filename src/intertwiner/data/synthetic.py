"""A seeded synthetic image task: each class is a Gaussian blob at its own place, plus noise.

Fast, offline and learnable, for tests and smoke runs. Same ``data_seed``, same images.
"""

from __future__ import annotations

import torch

from intertwiner.data.splits import DataSplits, make_splits
from intertwiner.errors import ShapeError


def render_blobs(
    n: int,
    *,
    num_classes: int,
    input_size: int,
    in_channels: int,
    noise: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(C, S, S)`` with labels; class ``k`` centres its blob at its own point.

    Class centres are evenly spaced on a circle of radius 0.3 (in units of the side) turned by a
    random angle, so classes are separable; per-channel colours come next from ``generator``, then
    per-image jitter (std 0.04), blob width and Gaussian pixel noise of std ``noise``.
    """
    s, c = input_size, in_channels
    angle = (
        2
        * torch.pi
        * (torch.arange(num_classes) / num_classes + torch.rand(1, generator=generator))
    )
    centres = 0.5 + 0.3 * torch.stack([angle.sin(), angle.cos()], dim=1)
    colours = 0.5 + 0.5 * torch.rand(num_classes, c, generator=generator)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    centre = centres[labels] + 0.04 * torch.randn(n, 2, generator=generator)
    width = 0.12 + 0.04 * torch.rand(n, 1, 1, generator=generator)
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    dy = grid.view(1, s, 1) - centre[:, 0].view(n, 1, 1)
    dx = grid.view(1, 1, s) - centre[:, 1].view(n, 1, 1)
    blob = torch.exp(-(dx**2 + dy**2) / (2 * width**2))
    images = colours[labels].view(n, c, 1, 1) * blob.unsqueeze(1)
    images = images + noise * torch.randn(n, c, s, s, generator=generator)
    return images, labels


def load_synthetic(
    *,
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
    input_size: int = 16,
    in_channels: int = 1,
    noise: float = 0.1,
    data_seed: int = 0,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
) -> DataSplits:
    """Gaussian class blobs; ``data_seed`` draws the images, ``seed`` the validation split."""
    if min(n_train, n_test, num_classes, input_size, in_channels) < 1:
        raise ShapeError("n_train, n_test, num_classes, input_size, in_channels must be >= 1")
    g = torch.Generator().manual_seed(int(data_seed))
    kw = dict(num_classes=num_classes, input_size=input_size, in_channels=in_channels, noise=noise)
    images, labels = render_blobs(n_train + n_test, generator=g, **kw)
    return make_splits(
        images[:n_train],
        labels[:n_train],
        images[n_train:],
        labels[n_train:],
        name="synthetic",
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        num_classes=num_classes,
        extra_meta={
            "data_seed": int(data_seed),
            "noise": float(noise),
            "generator": {"n_train": int(n_train), "n_test": int(n_test)},
        },
    )
