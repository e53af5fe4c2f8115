"""Training the stitch layers on cached front features, the epoch chosen on validation."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from intertwiner.stitching._config import StitchConfig, uses_birkhoff
from intertwiner.stitching._features import FrontFeatures, evaluate_stitched
from intertwiner.stitching._layers import BirkhoffStitch, StitchLayer
from intertwiner.stitching._splice import StitchedModel


def make_optimizer(
    layers: list[nn.Module], kind: str, cfg: StitchConfig
) -> torch.optim.Optimizer | None:
    """SGD for birkhoff (the paper's) or Adam, per ``cfg``; None when nothing trains."""
    birkhoff = uses_birkhoff(kind, cfg)
    use_sgd = cfg.optimizer == "sgd" or (cfg.optimizer == "auto" and birkhoff)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (1e-4 if birkhoff else 0.0)
    groups = []
    for layer in layers:
        for name, p in layer.named_parameters():
            if not p.requires_grad:
                continue
            # The paper decays only the scales of its G_ReLU layer, never the doubly-stochastic W.
            decay = 0.0 if (isinstance(layer, BirkhoffStitch) and name == "weight") else wd
            groups.append({"params": [p], "weight_decay": decay})
    if not groups:
        return None
    if use_sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


def _epoch(
    model: StitchedModel,
    layers: list[StitchLayer],
    opt: torch.optim.Optimizer,
    feats: FrontFeatures,
    cfg: StitchConfig,
    generator: torch.Generator,
) -> float:
    """One pass over the training features; returns the mean training loss."""
    model.train(True)
    total, count = 0.0, 0
    device = feats.device
    for f, y in feats.batches(shuffle=True, generator=generator):
        loss = F.cross_entropy(model.forward_from_front(f), y)
        reg = sum((m.regularization() for m in layers), torch.zeros((), device=device))
        opt.zero_grad(set_to_none=True)
        (loss + reg).backward()
        opt.step()
        for m in layers:
            m.project_(cfg.lr, opt)
        total += float(loss.detach()) * len(y)
        count += len(y)
    model.train(False)
    return total / max(count, 1)


def train_stitches(
    model: StitchedModel,
    stitches: nn.ModuleDict,
    names: list[str],
    kind: str,
    cfg: StitchConfig,
    train_f: FrontFeatures,
    val_f: FrontFeatures | None,
    generator: torch.Generator,
    desc: str,
) -> tuple[list[dict[str, Any]], tuple[float, float] | None, int]:
    """Train the ``names`` layers of ``stitches`` (in place) and leave them at the epoch with the
    best validation (accuracy, -loss), the initialisation counting as epoch 0; a relaxed birkhoff
    layer becomes its hard rounding. Returns ``(history, best (val_acc, -val_loss), best_epoch)``.
    """
    history: list[dict[str, Any]] = []
    best, best_key, best_epoch = copy.deepcopy(stitches), None, 0
    if val_f is not None:
        va, vl = evaluate_stitched(model, val_f)
        history.append(
            {"epoch": 0, "train_loss": None, "val_acc": va, "val_loss": vl, "seconds": 0.0}
        )
        best_key = (va, -vl)
    layers = [stitches[n] for n in names]
    opt = make_optimizer(layers, kind, cfg) if cfg.epochs > 0 else None
    birkhoff = [m for m in layers if isinstance(m, BirkhoffStitch)]
    warm_epochs = int(cfg.warmup * cfg.epochs) if birkhoff else 0
    epochs = range(1, cfg.epochs + 1 if opt else 1)
    for epoch in tqdm(epochs, desc=desc, disable=not cfg.progress, leave=False):
        t = time.perf_counter()
        for m in birkhoff:
            m.use_scale = epoch > warm_epochs
        train_loss = _epoch(model, layers, opt, train_f, cfg, generator)
        va, vl = evaluate_stitched(model, val_f)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_acc": va, "val_loss": vl,
             "seconds": time.perf_counter() - t}
        )  # fmt: skip
        if (va, -vl) > best_key:
            best, best_key, best_epoch = copy.deepcopy(stitches), (va, -vl), epoch
    for name in names:
        layer = best[name]
        stitches[name] = layer.to_monomial() if isinstance(layer, BirkhoffStitch) else layer
    model.train(False)
    return history, best_key, best_epoch
