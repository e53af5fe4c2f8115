"""CIFAR-10 from the official python batches (``cifar-10-batches-py``) that the user supplies.

Nothing is downloaded. Expected layout (``root`` may be the folder itself or its parent)::

    cifar-10-batches-py/
        data_batch_1 ... data_batch_5    10,000 images each
        test_batch                       10,000 images
        batches.meta                     (optional here)

Get it from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it with
``tar xzf cifar-10-python.tar.gz``.

The official batches are pickles, the only format that distribution ships. Unpickling can run
arbitrary code, so they are read with a restricted ``Unpickler`` that resolves only the numpy
globals an ndarray needs (``_reconstruct``, ``ndarray``, ``dtype``, plus ``_codecs.encode`` for
bytes re-pickled by Python 3); anything else in the file is refused with ``DataNotFoundError``. Checkpoints of this library never use pickle.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intertwiner.data.splits import DataSplits, make_splits
from intertwiner.errors import DataNotFoundError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): a pure
    # string-to-bytes conversion (also allowed by torch.load(weights_only=True)).
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the numpy array globals; builtins such as dict/list need no global lookup."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataNotFoundError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch contains only numpy "
                f"arrays, lists and bytes. Is this the official {FOLDER} from {URL}?"
            )
        # numpy 2 moved numpy.core to numpy._core; resolve whichever this numpy has.
        if module.startswith("numpy.core"):
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # pragma: no cover (numpy 1.x)
                pass
        return getattr(importlib.import_module(module), name)


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy arrays and plain containers (latin1 for py2 pickles)."""
    return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def find_folder(root: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder at or under ``root``, or a DataNotFoundError."""
    root = Path(root).expanduser()
    for cand in (root, root / FOLDER):
        if all((cand / f).is_file() for f in [*TRAIN_FILES, TEST_FILE]):
            return cand
    missing = [f for f in [*TRAIN_FILES, TEST_FILE] if not (root / FOLDER / f).is_file()]
    raise DataNotFoundError(
        f"no CIFAR-10 python batches at {root} (missing {', '.join(missing)} under "
        f"{root / FOLDER}). Download {URL}, extract it with 'tar xzf cifar-10-python.tar.gz' and "
        f"pass the folder that contains {FOLDER}/ (data_batch_1..5, test_batch)."
    )


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    try:
        batch = safe_unpickle(path.read_bytes())
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except DataNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 (any decoding failure means a malformed file)
        raise DataNotFoundError(
            f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); re-extract {URL}"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataNotFoundError(
            f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}; "
            f"re-extract {URL}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataNotFoundError(f"{path}: labels outside 0..9; re-extract {URL}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10(
    root: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
    limit: int | None = None,
) -> DataSplits:
    """CIFAR-10: 50,000 train (minus validation) / 10,000 test images ``(3, 32, 32)``.

    ``augment`` (train only): horizontal flip and translation by up to 2 pixels, as the paper.
    ``limit``: keep only the first ``limit`` train and test images (quick experiments).
    """
    if root is None:
        raise DataNotFoundError(
            f"cifar10 needs root=<folder containing {FOLDER}/> (--data-dir on the command line); "
            f"download {URL} and extract it there"
        )
    folder = find_folder(root)
    parts = [read_batch(folder / f) for f in TRAIN_FILES]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    test_images, test_labels = read_batch(folder / TEST_FILE)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
        test_images, test_labels = test_images[:limit], test_labels[:limit]
    return make_splits(
        images,
        labels,
        test_images,
        test_labels,
        name="cifar10",
        scale=1.0 / 255.0,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        flip=True,
        num_classes=10,
        extra_meta={"root": str(folder), "classes": CLASSES},
    )
