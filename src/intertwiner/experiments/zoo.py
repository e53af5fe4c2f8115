"""Stage "zoo": train one model per (architecture, activation, seed) and save its checkpoint."""

from __future__ import annotations

import time

from intertwiner.experiments.base import Stage, run_relative
from intertwiner.experiments.common import filtered, input_shape, load_data, zoo_checkpoint
from intertwiner.rows import ZooJob, ZooResult


def zoo_config(
    arch: str, activation: str, seed: int, model: dict, train: dict, data: dict, role: str = "zoo"
) -> dict:
    """The JSON config of one zoo model (its hash names the checkpoint). ``role``: what the model
    is for ("zoo" for metrics/stitching pairs, "sanity", "dissection")."""
    return ZooJob(stage="zoo", role=role, arch=arch, activation=activation, seed=int(seed),
                  model=dict(model), train=dict(train), data=dict(data)).to_json()  # fmt: skip


def train_job(config: dict) -> dict:
    """Build, train (selecting on validation), evaluate on test and save one zoo model."""
    from intertwiner import training

    splits = load_data(config["data"])
    channels, size, num_classes = input_shape(splits)
    model_config = {
        "activation": config["activation"],
        "in_channels": channels,
        "input_size": size,
        "num_classes": num_classes,
        **config["model"],
    }
    tcfg = filtered(
        training.TrainConfig, {**config["train"], "seed": config["seed"], "progress": False}
    )
    path = zoo_checkpoint(config, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_options = {k: v for k, v in config["data"].items() if k != "name" and v is not None}
    t0 = time.perf_counter()
    result = training.train_checkpoint(
        config["arch"], model_config, splits, tcfg, path, data_options=data_options,
        zoo_config={k: v for k, v in config.items() if k[0] != "_"},
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return ZooResult(
        test_accuracy=float(result.test_accuracy),
        test_loss=float(result.test_loss),
        val_accuracy=float(result.val_accuracy),
        parameters=int(sum(p.numel() for p in result.model.parameters())),
        train_seconds=seconds,
        best_epoch=result.best_epoch,
        checkpoint=run_relative(config, path),
    ).to_json()


def stage(configs: list[dict]) -> Stage:
    return Stage(
        name="zoo",
        kind="zoo",
        fn=train_job,
        configs=configs,
        requires=(
            "intertwiner.models",
            "intertwiner.training",
            "intertwiner.data",
            "intertwiner.checkpoints",
        ),
        description="model zoo: independently seeded models per architecture and activation",
    )
