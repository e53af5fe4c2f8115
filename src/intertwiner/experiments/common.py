"""Helpers shared by the stage job functions: cached data loading and zoo checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import torch

from intertwiner.experiments.base import checkpoint_path, stored_config
from intertwiner.store import config_key


@functools.lru_cache(maxsize=4)
def _load_data_cached(spec_json: str) -> Any:
    from intertwiner import data

    spec = json.loads(spec_json)
    name = spec.pop("name")
    spec = {k: v for k, v in spec.items() if v is not None}
    return data.load(name, **spec)


def load_data(spec: dict) -> Any:
    """``intertwiner.data.load`` of a data spec ``{"name": ..., **options}``, cached per process."""
    return _load_data_cached(json.dumps(spec, sort_keys=True))


def input_shape(splits: Any) -> tuple[int, int, int]:
    """(channels, size, num_classes) of a DataSplits, read from its first training sample."""
    x, _ = splits.train[0]
    x = torch.as_tensor(x)
    meta = getattr(splits, "meta", None) or {}
    num_classes = int(meta.get("num_classes", 10)) if isinstance(meta, dict) else 10
    if x.dim() == 3:
        return int(x.shape[0]), int(x.shape[-1]), num_classes
    return 1, int(x.shape[-1]), num_classes


def model_name(zoo_config: dict) -> str:
    """Checkpoint name of a zoo model: the name ``intertwiner train`` gives,
    ``{arch}-{activation}-{dataset}-seed{seed}``, plus the config hash (unique per config)."""
    zoo_config = stored_config(zoo_config)  # the run folder must not change the name
    dataset = (zoo_config.get("data") or {}).get("name")
    return (
        f"zoo/{zoo_config['arch']}-{zoo_config['activation']}-"
        + (f"{dataset}-" if dataset else "")
        + f"seed{zoo_config['seed']}-{config_key(zoo_config)[:10]}"
    )


def _legacy_name(zoo_config: dict) -> str:
    """The name runs made before intertwiner 0.x.y gave (``{arch}-{act}-s{seed}-{hash}``)."""
    zoo_config = stored_config(zoo_config)
    return (
        f"zoo/{zoo_config['arch']}-{zoo_config['activation']}-s{zoo_config['seed']}-"
        f"{config_key(zoo_config)[:10]}"
    )


def zoo_checkpoint(config: dict, zoo_config: dict):
    """Path of the checkpoint written by the zoo job ``zoo_config`` in this run (the older name
    where an earlier run wrote it, so such runs resume without retraining)."""
    path = checkpoint_path(config, model_name(zoo_config))
    legacy = checkpoint_path(config, _legacy_name(zoo_config))
    return legacy if not path.exists() and legacy.exists() else path


def load_model(config: dict, zoo_config: dict) -> torch.nn.Module:
    """Load a zoo model of this run in eval mode (raises CheckpointError if it is missing)."""
    from intertwiner import checkpoints

    model, _ = checkpoints.load(zoo_checkpoint(config, zoo_config))
    model.eval()
    return model


def filtered(cls: Any, options: dict) -> Any:
    """Build dataclass ``cls`` from the keys of ``options`` it has (others are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names})


def pairs(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` disjoint-first model pairs among seeds 0..n-1: (0,1), (2,3), ..., then (1,2), ..."""
    out = [(i, i + 1) for i in range(0, n - 1, 2)] + [(i, i + 1) for i in range(1, n - 1, 2)]
    extra = [(i, j) for i in range(n) for j in range(i + 2, n)]
    return (out + extra)[:k]
