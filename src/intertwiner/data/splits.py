"""Seeded, class-stratified, disjoint splits; the in-memory ``ArrayDataset``; the ``DataSplits`` bundle."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import torch
from torch.utils.data import Dataset

from intertwiner._types import Indices, JSONDict
from intertwiner.data import transforms as tf
from intertwiner.errors import InvalidOptionError, NonFiniteError, ShapeError, TooFewSamplesError


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..N-1`` into ``(keep, held)``, holding out ``fraction`` of every class.

    One permutation per class from ``np.random.default_rng(seed)``, so the two parts are disjoint by
    construction (the reference code drew two independent permutations and overlapped by ~80%).
    Each class with at least 2 examples gives at least one example to each side when
    ``0 < fraction < 1``. Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise InvalidOptionError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(int(seed))
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        n_held = min(max(n_held, 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    keep_idx, held_idx = np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
    if len(held_idx) == 0 or len(keep_idx) == 0:
        raise TooFewSamplesError(
            f"cannot hold out {fraction:.0%} of {len(labels)} examples: a side would be empty; "
            "pass more data or a different fraction"
        )
    return keep_idx, held_idx


# ------------------------------------------------------------------------------------------------
# In-memory datasets and the train/val/test bundle.


class ArrayDataset(Dataset):
    """Images held in memory: item ``i`` is ``(image float32 (C, H, W), label int64 scalar)``;
    tabular rows ``(N, D)`` give items ``(row float32 (D,), label)`` (normalised per feature, never
    augmented).

    ``images`` (N, C, H, W) may be uint8 (kept compact; CIFAR-10 is 150 MB this way) or float; an
    item is ``normalize(images[i] * scale, mean, std)``, then augmented when ``augment`` is true
    (translation by up to ``pad`` pixels, horizontal flip if ``flip``). ``get_batch(indices,
    generator)`` returns the same transform for many items at once, which training uses.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        scale: float = 1.0,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        augment: bool = False,
        flip: bool = False,
        pad: int = 2,
    ):
        if images.ndim not in (2, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise ShapeError(
                f"expected images (N, C, H, W) or rows (N, D) and labels (N,), got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if images.ndim == 2 and augment:
            raise ShapeError("tabular rows (N, D) cannot be augmented; pass augment=False")
        c = images.shape[1]
        self.images = images
        self.labels = labels.to(torch.long)
        self.scale = float(scale)
        self.mean = torch.zeros(c) if mean is None else mean.float()
        self.std = torch.ones(c) if std is None else std.float()
        self.augment = bool(augment)
        self.flip = bool(flip)
        self.pad = int(pad)

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(
        self, indices: torch.Tensor | slice, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (B, C, H, W) float32, labels (B,) int64)`` for ``indices``."""
        x = tf.normalize(self.images[indices].to(torch.float32) * self.scale, self.mean, self.std)
        if self.augment:
            x = tf.augment_batch(x, flip=self.flip, pad=self.pad, generator=generator)
        return x, self.labels[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch(torch.tensor([int(i)]))
        return x[0], y[0]

    def subset(self, indices: Indices, *, augment: bool | None = None) -> ArrayDataset:
        """A new dataset over ``indices`` with the same transform (``augment`` overridable)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(
            self.images[idx],
            self.labels[idx],
            scale=self.scale,
            mean=self.mean,
            std=self.std,
            augment=self.augment if augment is None else augment,
            flip=self.flip,
            pad=self.pad,
        )


@dataclass
class DataSplits:
    """Train / validation / test datasets of ``(image (C, H, W) float32, label int64)``.

    ``val`` is held out from the training data with ``meta["split_seed"]`` and never overlaps
    ``train``; ``test`` is never used for any choice (epoch selection uses ``val``). ``meta`` holds
    at least ``name``, ``in_channels``, ``input_size``, ``num_classes``, ``split_seed``.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    meta: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> dict[str, int]:
        """``in_channels``, ``input_size`` and ``num_classes`` for ``models.build``; for tabular
        data (``meta["layout"] == "tabular"``) ``in_features`` and ``num_classes`` (an ``mlp``); for
        token sequences (``"tokens"``) ``vocab_size`` and ``seq_len``."""
        if self.meta.get("layout") == "tokens":  # a language model's (vocabulary, context)
            return {
                "vocab_size": int(self.meta["vocab_size"]),
                "seq_len": int(self.meta["seq_len"]),
            }
        if self.meta.get("layout") == "tabular":
            return {
                "in_features": int(self.meta["in_features"]),
                "num_classes": int(self.meta["num_classes"]),
            }
        return {k: int(self.meta[k]) for k in ("in_channels", "input_size", "num_classes")}


def make_splits(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    name: str,
    scale: float = 1.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
    flip: bool = False,
    num_classes: int | None = None,
    extra_meta: JSONDict | None = None,
) -> DataSplits:
    """Carve a stratified validation set out of ``images`` and bundle train/val/test.

    Normalisation statistics come from the training part only (after the validation carve-out), so
    neither val nor test influences anything; augmentation applies to ``train`` only.
    """
    tabular = images.ndim == 2
    for what, t in (("images", images), ("test images", test_images)):
        if t.ndim != (2 if tabular else 4):
            raise ShapeError(
                f"{what} must be (N, C, H, W) (or (N, D) rows for both), got {tuple(t.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteError(f"{what} contain NaN or Inf; clean the data first")
    if images.shape[1:] != test_images.shape[1:]:
        raise ShapeError(
            f"train and test images differ in shape: {tuple(images.shape[1:])} vs "
            f"{tuple(test_images.shape[1:])}"
        )
    if not tabular and images.shape[2] != images.shape[3]:
        raise ShapeError(f"images must be square, got {tuple(images.shape[2:])}")
    keep, held = stratified_split(labels.numpy(), val_fraction, seed)
    keep_t, held_t = torch.as_tensor(keep), torch.as_tensor(held)
    if normalize:
        mean, std = tf.channel_stats(images[keep_t], scale)
    else:
        mean, std = None, None
    base = dict(scale=scale, mean=mean, std=std, flip=flip)
    train = ArrayDataset(images[keep_t], labels[keep_t], augment=augment, **base)
    val = ArrayDataset(images[held_t], labels[held_t], augment=False, **base)
    test = ArrayDataset(test_images, test_labels, augment=False, **base)
    k = (
        int(num_classes)
        if num_classes is not None
        else int(max(labels.max(), test_labels.max())) + 1
    )
    meta = {
        "name": name,
        "layout": "tabular" if tabular else "image",
        "in_channels": 1 if tabular else int(images.shape[1]),
        "input_size": int(images.shape[1]) if tabular else int(images.shape[2]),
        "num_classes": k,
        "split_seed": int(seed),
        "val_fraction": float(val_fraction),
        "augment": bool(augment),
        "normalize": bool(normalize),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
    }
    if tabular:
        meta["in_features"] = int(images.shape[1])
    if mean is not None:
        meta["mean"] = [round(float(v), 6) for v in mean]
        meta["std"] = [round(float(v), 6) for v in std]
    meta.update(extra_meta or {})
    return DataSplits(train, val, test, meta)


def square_side(d: int) -> int:
    """The side of a square image with ``d`` pixels, or a ShapeError."""
    side = math.isqrt(d)
    if side * side != d:
        raise ShapeError(f"cannot reshape {d} features into a square image; pass (N, C, H, W)")
    return side


#: What stitching and the experiments accept as splits: a ``DataSplits``, a ``{"train", "val",
#: "test"}`` mapping of datasets, or a ``(train, val, test)`` tuple (``val`` may be None).
SplitsLike: TypeAlias = DataSplits | Mapping[str, Dataset] | tuple[Dataset, Dataset | None, Dataset]
