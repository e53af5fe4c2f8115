"""The data side of stitching: the splits, model inputs, and A's front features of a split,
cached when they fit in memory so that an epoch costs only the stitch and B's back."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from intertwiner._types import DeviceLike
from intertwiner.data import SplitsLike
from intertwiner.stitching._config import StitchConfig
from intertwiner.stitching._splice import StitchedModel
from intertwiner.training import evaluate


def splits(data: SplitsLike) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, val or None, test) of any ``SplitsLike``."""
    if isinstance(data, dict):
        return data["train"], data.get("val"), data["test"]
    if isinstance(data, tuple | list) and len(data) >= 3 and not hasattr(data, "train"):
        return data[0], data[1], data[2]
    return data.train, getattr(data, "val", None), data.test


def loader(ds: Dataset, batch_size: int, shuffle: bool = False, generator=None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


class FrontFeatures:
    """Front-of-A features of one split: cached tensors, or recomputed per batch when too big."""

    def __init__(self, front: nn.Module, ds: Dataset, cfg: StitchConfig, device, per_sample: int):
        self.front, self.ds, self.cfg, self.device = front, ds, cfg, device
        self.n = len(ds)
        self.cache: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self.fits = self.n * per_sample <= cfg.cache_bytes

    def fill(self, on_batch=None) -> None:
        """One pass over the split: cache (if it fits) and call ``on_batch(x, feats)``."""
        feats_all: list[list[torch.Tensor]] = []
        labels = []
        with torch.no_grad():
            for x, y in loader(self.ds, self.cfg.batch_size):
                x = to_input(x, self.device, self.cfg.channels_last)
                feats = self.front(x)
                if on_batch is not None:
                    on_batch(x, feats)
                if self.fits:
                    feats_all.append([f.detach() if torch.is_tensor(f) else f for f in feats])
                    labels.append(torch.as_tensor(y).to(self.device))
        if self.fits:
            k = len(feats_all[0])
            cat = [
                torch.cat([b[i] for b in feats_all]) if torch.is_tensor(feats_all[0][i]) else None
                for i in range(k)
            ]
            self.cache = (cat, torch.cat(labels))

    def batches(self, shuffle: bool, generator=None) -> Iterator[tuple[tuple, torch.Tensor]]:
        bs = self.cfg.batch_size
        # One order for both paths, so caching never changes the result.
        order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        if self.cache is not None:
            cat, labels = self.cache
            order = order.to(labels.device)
            for s in range(0, self.n, bs):
                idx = order[s : s + bs]
                yield tuple(c[idx] if c is not None else None for c in cat), labels[idx]
            return
        loader = DataLoader(self.ds, batch_size=bs, sampler=order.tolist())
        for x, y in loader:
            with torch.no_grad():
                feats = self.front(to_input(x, self.device, self.cfg.channels_last))
            yield tuple(feats), torch.as_tensor(y).to(self.device)


def to_input(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """A batch of inputs on ``device``; image batches (4-d) in channels-last layout if asked."""
    x = x.to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class _FromFront(nn.Module):
    """The stitched model as a function of cached front features (for ``training.evaluate``)."""

    def __init__(self, model: StitchedModel):
        super().__init__()
        self.model = model

    def forward(self, feats: tuple) -> torch.Tensor:
        return self.model.forward_from_front(feats).float()


def evaluate_stitched(model: StitchedModel, feats: FrontFeatures) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of the stitched model on a split's front features."""
    wrapped = _FromFront(model).train(model.training)  # evaluate restores the wrapper's mode
    out = evaluate(wrapped, feats.batches(shuffle=False), device=feats.device)
    return out["accuracy"], out["loss"]


def evaluate_model(model: nn.Module, ds: Dataset, cfg: StitchConfig, device: DeviceLike) -> float:
    """Test accuracy of a whole model, inputs in the layout the stitch run uses."""
    batches = ((to_input(x, device, cfg.channels_last), y) for x, y in loader(ds, cfg.batch_size))
    return evaluate(model, batches, device=device)["accuracy"]
