"""Procedurally generated concept scenes with a pixel mask for every concept (for dissection).

Each RGB image (``size`` x ``size``, default 32) shows 1 to ``max_objects`` objects on a uniform
gray background. An object has a **shape** (circle, square, triangle, cross, diamond), a **colour**
(red, green, blue, yellow, magenta, cyan) and a **texture** (solid, stripes, dots); later objects
occlude earlier ones. Every visible object pixel carries exactly one concept of each category, so
a scene is described by three integer maps (``-1`` = background), from which the boolean concept
masks are derived (``masks``). The class label is the shape of the object with the largest visible
area (ties: the earlier object), so ``num_classes == 5``.

Pixel values (before the optional noise): background ``(g, g, g)`` with ``g`` in [0.15, 0.55];
object pixels ``b * colour`` ("bright", ``b`` in [0.7, 1]) or ``0.45 * b * colour`` ("dark", the
off-phase of stripes and dots), so an object pixel's colour can be read back from its RGB direction
and its texture phase from its brightness. Images are stored as uint8 (``/ 255`` at load time).
Everything is drawn from one ``torch.Generator`` (``data_seed``): same seed, same scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from intertwiner._types import Indices
from intertwiner.data.splits import ArrayDataset, DataSplits, make_splits, stratified_split
from intertwiner.errors import InvalidInputError, InvalidOptionError, ShapeError

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
TEXTURES = ("solid", "stripes", "dots")
CATEGORIES = ("shape", "colour", "texture")
# One flat concept list: index k of masks(...)[:, k]; CONCEPT_CATEGORY[k] names its category.
CONCEPTS = SHAPES + COLOURS + TEXTURES
CONCEPT_CATEGORY = (
    ("shape",) * len(SHAPES) + ("colour",) * len(COLOURS) + ("texture",) * len(TEXTURES)
)
COLOUR_RGB = torch.tensor(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float32
)
DARK = 0.45  # brightness of the off-phase of a texture, relative to the object's bright pixels


@dataclass
class Scenes:
    """Rendered scenes: ``images`` (N, 3, S, S) float32 in [0, 1] (before noise), ``labels`` (N,),
    ``maps`` (N, 3, S, S) int8 (shape / colour / texture index per pixel, -1 on background) and
    ``objects``: per-object parameters (N, max_objects) tensors, ``present`` False for unused slots.
    """

    images: torch.Tensor
    labels: torch.Tensor
    maps: torch.Tensor
    objects: dict[str, torch.Tensor]


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inside-tests of every shape: (n_shapes, N, S, S) bool for offsets ``dx, dy`` (N, S, S)."""
    ax, ay = dx.abs(), dy.abs()
    circle = dx**2 + dy**2 <= r**2
    square = torch.maximum(ax, ay) <= 0.8 * r
    # Upward isosceles triangle: apex at dy = -1.1 r, base at dy = 0.9 r with half-width 1.2 r.
    triangle = (dy <= 0.9 * r) & (ax <= (dy + 1.1 * r) * 0.6)
    cross = ((ax <= 0.35 * r) & (ay <= r)) | ((ay <= 0.35 * r) & (ax <= r))
    diamond = ax + ay <= 1.1 * r
    return torch.stack([circle, square, triangle, cross, diamond])


def _texture_bright(
    rows: torch.Tensor, cols: torch.Tensor, phase: torch.Tensor, n: int
) -> torch.Tensor:
    """Bright-phase pixels of every texture: (n_textures, N, S, S) bool (solid is all bright)."""
    p = phase.view(n, 1, 1)
    solid = torch.ones(n, rows.shape[-2], cols.shape[-1], dtype=torch.bool)
    stripes = ((rows + cols + p) // 2) % 2 == 0  # diagonal stripes, 2 px wide
    dots = ((rows + p) % 4 < 2) & ((cols + p) % 4 < 2)  # 2x2 dots on a 4 px grid
    return torch.stack([solid, stripes.expand_as(solid), dots.expand_as(solid)])


def render_scenes(
    n: int,
    *,
    size: int = 32,
    max_objects: int = 3,
    generator: torch.Generator | None = None,
) -> Scenes:
    """Draw ``n`` scenes (see the module docstring); vectorised over images, looped over slots."""
    if n < 1 or size < 8 or max_objects < 1:
        raise ShapeError(
            f"need n >= 1, size >= 8 and max_objects >= 1; got {n}, {size}, {max_objects}"
        )
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    k = max_objects
    count = torch.randint(1, k + 1, (n,), generator=g)
    present = torch.arange(k).view(1, k) < count.view(n, 1)
    shape = torch.randint(0, len(SHAPES), (n, k), generator=g)
    colour = torch.randint(0, len(COLOURS), (n, k), generator=g)
    texture = torch.randint(0, len(TEXTURES), (n, k), generator=g)
    radius = size * (0.12 + 0.13 * torch.rand(n, k, generator=g))
    margin = 1.1 * radius
    cx = margin + (size - 2 * margin) * torch.rand(n, k, generator=g)
    cy = margin + (size - 2 * margin) * torch.rand(n, k, generator=g)
    bright = 0.7 + 0.3 * torch.rand(n, k, generator=g)
    phase = torch.randint(0, 4, (n, k), generator=g)
    gray = 0.15 + 0.4 * torch.rand(n, generator=g)

    rows = torch.arange(size).view(1, size, 1)
    cols = torch.arange(size).view(1, 1, size)
    centre_y, centre_x = rows.float() + 0.5, cols.float() + 0.5
    images = gray.view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    maps = torch.full((n, 3, size, size), -1, dtype=torch.int8)
    owner = torch.full((n, size, size), -1, dtype=torch.long)  # which slot owns a pixel
    idx = torch.arange(n)
    for j in range(k):
        r = radius[:, j].view(n, 1, 1)
        dx = centre_x - cx[:, j].view(n, 1, 1)
        dy = centre_y - cy[:, j].view(n, 1, 1)
        inside = _shape_masks(dx, dy, r)[shape[:, j], idx] & present[:, j].view(n, 1, 1)
        on = _texture_bright(rows, cols, phase[:, j], n)[texture[:, j], idx]
        level = bright[:, j].view(n, 1, 1) * torch.where(on, 1.0, DARK)  # (N, S, S)
        pixel = COLOUR_RGB[colour[:, j]].view(n, 3, 1, 1) * level.unsqueeze(1)
        images = torch.where(inside.unsqueeze(1), pixel, images)
        for c, v in enumerate((shape[:, j], colour[:, j], texture[:, j])):
            maps[:, c] = torch.where(inside, v.view(n, 1, 1).to(torch.int8), maps[:, c])
        owner = torch.where(inside, j, owner)
    area = (owner.view(n, 1, -1) == torch.arange(k).view(1, k, 1)).sum(-1)  # (N, k) visible px
    # argmax returns the first maximum, i.e. the earlier object on ties.
    largest = area.argmax(dim=1)
    labels = shape[idx, largest]
    objects = {
        "present": present,
        "shape": shape,
        "colour": colour,
        "texture": texture,
        "radius": radius,
        "cx": cx,
        "cy": cy,
        "bright": bright,
        "phase": phase,
        "gray": gray,
        "visible_area": area,
    }
    return Scenes(images=images, labels=labels, maps=maps, objects=objects)


def masks_from_maps(maps: torch.Tensor) -> torch.Tensor:
    """Concept masks (N, K, S, S) bool from category maps (N, 3, S, S), in ``CONCEPTS`` order."""
    if maps.ndim != 4 or maps.shape[1] != len(CATEGORIES):
        raise ShapeError(f"maps must be (N, 3, S, S), got {tuple(maps.shape)}")
    parts = []
    for c, names in enumerate((SHAPES, COLOURS, TEXTURES)):
        values = torch.arange(len(names), dtype=maps.dtype).view(1, -1, 1, 1)
        parts.append(maps[:, c : c + 1] == values)
    return torch.cat(parts, dim=1)


class ConceptDataset(ArrayDataset):
    """An ``ArrayDataset`` that also knows the concept maps of its images.

    ``masks(indices)`` gives the (B, K, S, S) bool masks of ``CONCEPTS`` for the *unaugmented*
    images (dissection uses the val/test splits, which are never augmented).
    """

    concept_names: tuple[str, ...] = CONCEPTS
    concept_categories: tuple[str, ...] = CONCEPT_CATEGORY

    def __init__(self, base: ArrayDataset, maps: torch.Tensor):
        super().__init__(
            base.images,
            base.labels,
            scale=base.scale,
            mean=base.mean,
            std=base.std,
            augment=base.augment,
            flip=base.flip,
            pad=base.pad,
        )
        if len(maps) != len(base):
            raise ShapeError(f"{len(maps)} concept maps for {len(base)} images")
        self.maps = maps

    def masks(self, indices: Indices | None = None) -> torch.Tensor:
        """(B, K, S, S) bool concept masks of items ``indices`` (all items when None)."""
        return masks_from_maps(self.maps if indices is None else self.maps[indices])

    def subset(self, indices: Indices, *, augment: bool | None = None) -> ConceptDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ConceptDataset(super().subset(idx, augment=augment), self.maps[idx])


def concept_masks(dataset: ConceptDataset, indices: Indices | None = None) -> torch.Tensor:
    """The concept masks of a ``ConceptDataset`` (or of ``DataSplits.test`` when given splits)."""
    if isinstance(dataset, DataSplits):
        dataset = dataset.test
    if not isinstance(dataset, ConceptDataset):
        raise InvalidInputError(
            f"{type(dataset).__name__} has no concept masks; load the data with "
            "intertwiner.data.load('concepts')"
        )
    return dataset.masks(indices)


def load_concepts(
    *,
    n_train: int = 4000,
    n_test: int = 1000,
    size: int = 32,
    max_objects: int = 3,
    noise: float = 0.02,
    data_seed: int = 0,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
) -> DataSplits:
    """Concept scenes as ``DataSplits`` of ``ConceptDataset`` (5 classes: the largest shape).

    ``data_seed`` draws the scenes (train and test from one stream), ``noise`` is the std of
    Gaussian pixel noise added before uint8 quantisation, ``seed`` picks the validation part.
    ``meta`` records the generator options, so ``load_concepts(**meta["generator"])`` rebuilds them.
    """
    if n_train < 2 or n_test < 1:
        raise ShapeError(f"need n_train >= 2 and n_test >= 1, got {n_train} and {n_test}")
    if noise < 0 or not math.isfinite(noise):
        raise InvalidOptionError(f"noise must be a finite number >= 0, got {noise}")
    g = torch.Generator().manual_seed(int(data_seed))
    scenes = render_scenes(n_train + n_test, size=size, max_objects=max_objects, generator=g)
    x = scenes.images
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    generator = {
        "n_train": int(n_train),
        "n_test": int(n_test),
        "size": int(size),
        "max_objects": int(max_objects),
        "noise": float(noise),
        "data_seed": int(data_seed),
    }
    tr, te = slice(0, n_train), slice(n_train, None)
    splits = make_splits(
        images[tr],
        scenes.labels[tr],
        images[te],
        scenes.labels[te],
        name="concepts",
        scale=1.0 / 255.0,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        num_classes=len(SHAPES),
        extra_meta={"generator": generator, "concepts": list(CONCEPTS)},
    )
    # make_splits carves validation with stratified_split(labels, val_fraction, seed); redo it to
    # align the concept maps, and check that the images really line up.
    keep, held = stratified_split(scenes.labels[tr].numpy(), val_fraction, seed)
    maps_train, maps_test = scenes.maps[tr], scenes.maps[te]
    keep_t, held_t = torch.as_tensor(keep), torch.as_tensor(held)
    if not (
        torch.equal(splits.train.images, images[tr][keep_t])
        and torch.equal(splits.val.images, images[tr][held_t])
    ):  # pragma: no cover (only if make_splits changes how it splits)
        raise RuntimeError("concept maps do not align with the validation split of make_splits")
    splits.train = ConceptDataset(splits.train, maps_train[keep_t])
    splits.val = ConceptDataset(splits.val, maps_train[held_t])
    splits.test = ConceptDataset(splits.test, maps_test)
    return splits


__all__ = [
    "CATEGORIES",
    "COLOURS",
    "CONCEPTS",
    "CONCEPT_CATEGORY",
    "ConceptDataset",
    "SHAPES",
    "Scenes",
    "TEXTURES",
    "concept_masks",
    "load_concepts",
    "masks_from_maps",
    "render_scenes",
]
