"""The concept scenes: determinism, masks that match the drawing, splits aligned with their masks."""

from __future__ import annotations

import math

import pytest
import torch

from intertwiner.data import load
from intertwiner.data.concepts import (
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    SHAPES,
    TEXTURES,
    ConceptDataset,
    concept_masks,
    load_concepts,
    masks_from_maps,
    render_scenes,
)
from intertwiner.errors import ShapeError


def _scenes(n=48, seed=0, **kw):
    return render_scenes(n, generator=torch.Generator().manual_seed(seed), **kw)


def test_same_seed_same_scenes_and_different_seed_different():
    a, b, c = _scenes(seed=3), _scenes(seed=3), _scenes(seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.maps, b.maps)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_load_is_deterministic_and_dispatched_by_data_load():
    kw = dict(n_train=60, n_test=20, size=16)
    a, b = load_concepts(**kw), load("concepts", **kw)
    for split in ("train", "val", "test"):
        da, db = getattr(a, split), getattr(b, split)
        assert isinstance(da, ConceptDataset)
        assert torch.equal(da.images, db.images) and torch.equal(da.maps, db.maps)
        assert torch.equal(da.labels, db.labels)
    assert a.meta["num_classes"] == len(SHAPES) and a.meta["in_channels"] == 3
    assert a.meta["concepts"] == list(CONCEPTS)


def _foreground(images: torch.Tensor) -> torch.Tensor:
    """Object pixels read off the image: the background is gray (all channels equal)."""
    r, g, b = images.unbind(1)
    return ~((r == g) & (g == b))


def test_masks_partition_exactly_the_drawn_object_pixels():
    s = _scenes(n=64, size=24)
    masks = masks_from_maps(s.maps)
    fg = _foreground(s.images)
    assert fg.any()
    start = 0
    for names in (SHAPES, COLOURS, TEXTURES):  # each category covers every object pixel once
        per_pixel = masks[:, start : start + len(names)].sum(1)
        assert torch.equal(per_pixel == 1, fg) and int(per_pixel.max()) == 1
        start += len(names)


def test_colour_masks_match_the_rgb_direction_of_each_pixel():
    s = _scenes(n=64, size=24)
    masks = masks_from_maps(s.maps)
    x = s.images
    for c, name in enumerate(COLOURS):
        base = COLOUR_RGB[c].view(1, 3, 1, 1).bool()
        # pixel = k * base with k > 0: zero off the base channels, equal and positive on them
        off_zero = torch.where(base, torch.zeros_like(x), x).amax(1) == 0
        on_max = torch.where(base, x, torch.full_like(x, -1.0)).amax(1)
        on_min = torch.where(base, x, torch.full_like(x, 2.0)).amin(1)
        drawn = off_zero & (on_max == on_min) & (on_min > 0)
        drawn &= _foreground(x)
        k = len(SHAPES) + c
        assert torch.equal(masks[:, k], drawn), name


def test_texture_masks_match_bright_and_dark_pixels():
    s = _scenes(n=200, size=24, max_objects=1)
    masks = masks_from_maps(s.maps)
    dark = s.images.amax(1) < 0.5  # bright pixels are >= 0.7, dark ones <= 0.45
    fg = _foreground(s.images)
    t0 = len(SHAPES) + len(COLOURS)
    solid, stripes, dots = (masks[:, t0 + i] for i in range(3))
    assert not (dark & solid).any()  # solid objects have no dark pixels
    rows = torch.arange(24).view(1, 24, 1)
    cols = torch.arange(24).view(1, 1, 24)
    phase = s.objects["phase"][:, 0].view(-1, 1, 1)
    stripe_on = ((rows + cols + phase) // 2) % 2 == 0
    dot_on = ((rows + phase) % 4 < 2) & ((cols + phase) % 4 < 2)
    assert torch.equal(dark & stripes, stripes & ~stripe_on)
    assert torch.equal(dark & dots, dots & ~dot_on)
    assert torch.equal(fg, solid | stripes | dots)


AREA_OVER_R2 = {"circle": math.pi, "square": 2.56, "triangle": 2.4, "cross": 2.31, "diamond": 2.42}


def test_single_object_shape_masks_have_the_area_of_the_formula_shape():
    s = _scenes(n=300, size=48, max_objects=1)
    masks = masks_from_maps(s.maps)
    r = s.objects["radius"][:, 0]
    for i, name in enumerate(SHAPES):
        sel = s.objects["shape"][:, 0] == i
        assert sel.any()
        assert torch.equal(masks[sel, i].flatten(1).any(1), torch.ones(int(sel.sum()), dtype=bool))
        ratio = masks[sel, i].flatten(1).sum(1) / r[sel] ** 2
        assert abs(float(ratio.mean()) - AREA_OVER_R2[name]) < 0.15 * AREA_OVER_R2[name], name
        # single object: the label is its shape and no other shape mask is set
        assert (s.labels[sel] == i).all()
        assert int(masks[sel][:, : len(SHAPES)].sum()) == int(masks[sel, i].sum())


def test_label_is_the_shape_with_the_largest_visible_area():
    s = _scenes(n=100, size=24)
    area = s.objects["visible_area"]
    for n in range(100):
        j = int(torch.argmax(area[n]))
        assert int(s.labels[n]) == int(s.objects["shape"][n, j])
    assert torch.equal(area.sum(1), (s.maps[:, 0] >= 0).flatten(1).sum(1))


def test_split_masks_line_up_with_their_images():
    splits = load_concepts(n_train=80, n_test=30, size=16, noise=0.0, val_fraction=0.25)
    for ds in (splits.train, splits.val, splits.test):
        fg = _foreground(ds.images.to(torch.int32))  # uint8 pixels, gray background
        assert torch.equal(ds.masks()[:, : len(SHAPES)].any(1), fg)
    assert torch.equal(concept_masks(splits, torch.arange(3)), splits.test.masks(torch.arange(3)))
    sub = splits.test.subset([2, 0])
    assert torch.equal(sub.masks(), splits.test.masks(torch.tensor([2, 0])))


def test_bad_options_raise():
    with pytest.raises(ShapeError):
        load_concepts(n_train=1)
    with pytest.raises(ValueError):
        load_concepts(noise=-1.0)
    with pytest.raises(TypeError):
        concept_masks(torch.zeros(3))
