"""scikit-learn's 8x8 handwritten digits (1,797 images, offline), kept at 8x8 or upsampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intertwiner.data.splits import DataSplits, make_splits, stratified_split

# The train/test split is fixed (independent of ``seed``) so every run tests on the same images.
TEST_SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits(
    *,
    input_size: int = 8,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
) -> DataSplits:
    """Digits as ``(1, input_size, input_size)`` images in [0, 1] before normalisation.

    ``input_size=8`` keeps the native resolution; larger values upsample bilinearly (e.g. 28 to reuse
    MNIST-sized models). A fixed class-stratified 20% is the test set; ``seed`` picks validation.
    """
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if int(input_size) != 8:
        images = F.interpolate(
            images, size=(int(input_size),) * 2, mode="bilinear", align_corners=False
        )
    labels = torch.as_tensor(d.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(d.target, TEST_FRACTION, TEST_SPLIT_SEED)
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return make_splits(
        images[tr],
        labels[tr],
        images[te],
        labels[te],
        name="digits",
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        num_classes=10,
        extra_meta={"test_split_seed": TEST_SPLIT_SEED, "source": "sklearn.datasets.load_digits"},
    )
