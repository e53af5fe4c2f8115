"""Stage "sanity": the paper's section 3.3 rotation sanity test on zoo models without BatchNorm.

A fixed G_ReLU (permutation x positive scale) or orthogonal map is inserted before the activation
at one of the first three sites, everything up to it is frozen and the rest retrained; the row is
the ``experiments.sanity.run_job`` row (``penalty`` = base - retrained test accuracy).
"""

from __future__ import annotations

from intertwiner.experiments.base import Stage, run_relative
from intertwiner.experiments.common import zoo_checkpoint

GROUPS = {"G_ReLU": "positive_monomial", "orthogonal": "orthogonal"}


def sanity_job(config: dict) -> dict:
    """Run one (model, site, transform, repeat) of the sanity test (checkpoint path stored
    relative to the run folder)."""
    from intertwiner import checkpoints, models
    from intertwiner.experiments import sanity

    path = zoo_checkpoint(config, config["model"])
    model, _ = checkpoints.load(path)
    site = models.sites(model)[config["layer"]]
    data = dict(config["model"]["data"])
    row = sanity.run_job(
        {
            "checkpoint": str(path),
            "site": site,
            "kind": GROUPS[config["group"]],
            "repeat": config["repeat"],
            "epochs": config["epochs"],
            "data": data.pop("name"),
            "data_options": data,
            "seed": config["model"]["seed"],
            "lr": config.get("lr", 1e-3),
            "num_threads": None,
        }
    )
    row["checkpoint"] = run_relative(config, path)
    return row


def stage(
    models_by_activation: dict[str, dict],
    layers: int = 3,
    repeats: int = 2,
    epochs: int = 1,
    lr: float = 1e-3,
) -> Stage:
    """Jobs over activation x layer (the first ``layers`` sites) x {G_ReLU, orthogonal} x repeat."""
    notes = []
    if any(m["model"].get("batchnorm") for m in models_by_activation.values()):
        notes.append(
            "the models have BatchNorm (frozen in eval mode up to the inserted map); the paper's "
            "mCNN_k has none, but without BN a sigmoid net does not train in a few epochs"
        )
    configs = [
        {
            "stage": "sanity",
            "activation": act,
            "model": zcfg,
            "layer": layer,
            "group": g,
            "repeat": r,
            "epochs": epochs,
            "lr": lr,
        }
        for act, zcfg in models_by_activation.items()
        for layer in range(layers)
        for g in GROUPS
        for r in range(repeats)
    ]
    return Stage(
        name="sanity",
        kind="sanity",
        fn=sanity_job,
        configs=configs,
        requires=("intertwiner.experiments.sanity:run_job", "intertwiner.checkpoints:load"),
        description="section 3.3: fix a G_ReLU or orthogonal map before a layer, retrain the rest",
        notes=notes,
    )
