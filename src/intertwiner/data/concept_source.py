"""Images with concept masks, as network dissection reads them (``ConceptSource``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from intertwiner.errors import InvalidInputError, ShapeError

if TYPE_CHECKING:
    from intertwiner.data.concepts import ConceptDataset
    from intertwiner.data.splits import DataSplits

__all__ = ["ConceptData", "ConceptSource"]


#: What dissection reads: a ``ConceptDataset``, ``DataSplits`` (its test split), a
#: ``(images (N, C, H, W), masks (N, K, H', W'))`` pair, or a ``ConceptSource``.
ConceptData: TypeAlias = (
    "ConceptDataset | DataSplits | tuple[torch.Tensor, torch.Tensor] | ConceptSource"
)


@dataclass
class ConceptSource:
    """Images ``(N, C, H, W)`` (model inputs) with concept masks ``(N, K, H', W')`` bool.

    Built by ``ConceptSource.from_data`` from a ``ConceptDataset`` (``intertwiner.data.load(
    "concepts")``), from ``DataSplits`` (its test split) or from a tuple ``(images, masks)``.
    """

    images: Any  # an object with get_batch(indices) -> (x, y), or an (N, C, H, W) tensor
    masks_fn: Any  # indices -> (B, K, H', W') bool
    n: int
    concept_names: tuple[str, ...]
    concept_categories: tuple[str, ...] | None = None

    @classmethod
    def from_data(
        cls, data: ConceptData, concept_names: Sequence[str] | None = None
    ) -> ConceptSource:
        from intertwiner.data.splits import DataSplits

        if isinstance(data, ConceptSource):
            return data
        if isinstance(data, DataSplits):
            data = data.test
        if hasattr(data, "masks") and hasattr(data, "get_batch"):
            base = data.subset(torch.arange(len(data)), augment=False) if data.augment else data
            return cls(
                images=base,
                masks_fn=base.masks,
                n=len(base),
                concept_names=tuple(concept_names or base.concept_names),
                concept_categories=tuple(getattr(base, "concept_categories", ())) or None,
            )
        if isinstance(data, tuple | list) and len(data) == 2:
            images, masks = (torch.as_tensor(t) for t in data)
            if images.ndim != 4 or masks.ndim != 4 or len(images) != len(masks):
                raise ShapeError(
                    f"expected images (N, C, H, W) and masks (N, K, H, W), got "
                    f"{tuple(images.shape)} and {tuple(masks.shape)}"
                )
            names = tuple(concept_names or (f"concept{k}" for k in range(masks.shape[1])))
            if len(names) != masks.shape[1]:
                raise ShapeError(f"{len(names)} concept names for {masks.shape[1]} masks")
            return cls(images=images, masks_fn=lambda i: masks[i].bool(), n=len(images),
                       concept_names=names)  # fmt: skip
        raise InvalidInputError(
            f"cannot dissect with data of type {type(data).__name__}: pass a ConceptDataset "
            "(intertwiner.data.load('concepts').test), DataSplits, or a tuple (images, masks)"
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x (B, C, H, W) float32, masks (B, K, H', W') bool)`` in order."""
        for start in range(0, self.n, batch_size):
            idx = torch.arange(start, min(start + batch_size, self.n))
            if isinstance(self.images, torch.Tensor):
                x = self.images[idx].float()
            else:
                x = self.images.get_batch(idx)[0]
            yield x, self.masks_fn(idx)
