"""Stage "dissection": interpretable-unit counts on the concept dataset under changes of basis.

For a zoo model trained on the concept scenes, each job dissects one layer under the neuron basis,
a random element of the layer's intertwiner group, random rotations and fractional powers of one
rotation (``experiments.rotation_dissection.dissection_experiment``).
"""

from __future__ import annotations

from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import load_data, load_model
from intertwiner.rows import DissectionJob, DissectionResult


def dissection_job(config: dict) -> dict:
    """Dissect one layer of one concept-trained zoo model under every basis."""
    from intertwiner import models
    from intertwiner.experiments.rotation_dissection import dissection_experiment

    splits = load_data(config["model"]["data"])
    model = load_model(config, config["model"])
    layer = models.sites(model)[config["layer"]]
    res = dissection_experiment(
        model, layer, splits.test, n_orthogonal=config["n_orthogonal"],
        powers=config["rotations"], seed=config["seed"], progress=False,
    )  # fmt: skip
    counts = {r["basis"]: r["n_interpretable"] for r in res["rows"]}
    return DissectionResult(layer=layer, group=res["group"], powers=res["powers"],
                            power_counts=res["power_counts"], counts=counts,
                            n_units=res["rows"][0]["n_units"], rows=res["rows"]).to_json()  # fmt: skip


def stage(
    models: list[dict],
    layers: list[int],
    rotations: list[float],
    n_orthogonal: int = 3,
    seed: int = 0,
) -> Stage:
    configs = [
        DissectionJob(
            stage="dissection",
            model=m,
            layer=lay,
            rotations=list(rotations),
            n_orthogonal=n_orthogonal,
            seed=seed,
        ).to_json()  # fmt: skip
        for m in models
        for lay in layers
    ]
    return Stage(
        name="dissection",
        kind="dissection",
        fn=dissection_job,
        configs=configs,
        requires=(
            "intertwiner.experiments.rotation_dissection:dissection_experiment",
            "intertwiner.checkpoints:load",
        ),
        description="section 6: interpretable units vs rotation of the neuron basis (concepts)",
    )
