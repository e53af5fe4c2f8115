"""Stages "sanity" and "absorb": the paper's section 3.3 rotation sanity test, two ways.

Both insert a fixed G_ReLU (permutation x positive scale) or orthogonal map before the activation at
one of the first three sites of a model trained without BatchNorm (the paper's mCNN_k).

- "sanity" (the paper's protocol): freeze everything up to the map and retrain the rest from the
  trained weights, epoch chosen on validation; row = ``experiments.sanity.run_job``'s
  (``penalty`` = base - retrained test accuracy).
- "absorb" (the claim's sharpest form): refit only the next layer in closed form (least squares on
  frozen features); row = ``experiments.absorb.run_job``'s (``drop`` = base - refit accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from intertwiner.experiments.base import Stage, run_relative
from intertwiner.experiments.common import zoo_checkpoint
from intertwiner.rows import AbsorbJob, AbsorbResult, Record, SanityJob, SanityResult

# Row labels -> transform kinds. "permutation" is G_ReLU without its scaling: it separates what the
# group membership costs from what badly scaled channels cost the optimiser.
GROUPS = {
    "identity": "identity",
    "G_ReLU": "positive_monomial",
    "permutation": "permutation",
    "orthogonal": "orthogonal",
}


def _job(config: dict, run: Callable[[dict], dict], extra: dict, result: type[Record]) -> dict:
    """Load the zoo checkpoint, name the site, call ``run`` with the module-level job config."""
    from intertwiner import checkpoints, models

    path = zoo_checkpoint(config, config["model"])
    model, _ = checkpoints.load(path)
    site = models.sites(model)[config["layer"]]
    data = dict(config["model"]["data"])
    row = run(
        {
            "checkpoint": str(path),
            "site": site,
            "kind": GROUPS[config["group"]],
            "repeat": config["repeat"],
            "data": data.pop("name"),
            "data_options": data,
            "seed": config["model"]["seed"],
            "num_threads": None,
            **extra,
        }
    )
    row["checkpoint"] = run_relative(config, path)
    return result.from_json(row).to_json()


def sanity_job(config: dict) -> dict:
    """One (model, site, transform, repeat) of the retraining sanity test."""
    from intertwiner.experiments import sanity

    # settings the config leaves out take SanityConfig's defaults
    extra = {k: config[k] for k in ("epochs", "lr", "batch_size", "schedule") if k in config}
    return _job(config, sanity.run_job, extra, SanityResult)


def absorb_job(config: dict) -> dict:
    """One (model, site, transform, repeat) of the closed-form absorbability test."""
    from intertwiner.experiments import absorb

    extra = {"max_rows": config["max_rows"]} if "max_rows" in config else {}  # else AbsorbConfig's
    return _job(config, absorb.run_job, extra, AbsorbResult)


def _configs(job: type[SanityJob | AbsorbJob], stage: str, models_by_activation: dict[str, dict],
             layers: int, kinds: Sequence[str], repeats: int, extra: dict) -> list[dict]:  # fmt: skip
    return [
        job(
            stage=stage, activation=act, model=zcfg, layer=layer, group=g, repeat=r, **extra
        ).to_json()  # fmt: skip
        for act, zcfg in models_by_activation.items()
        for layer in range(layers)
        for g in kinds
        for r in range(repeats)
    ]


def _notes(models_by_activation: dict[str, dict]) -> list[str]:
    if any(m["model"].get("batchnorm") for m in models_by_activation.values()):
        return ["the models have BatchNorm (frozen in eval mode up to the inserted map); the "
                "paper's mCNN_k has none"]  # fmt: skip
    return []


def stage(
    models_by_activation: dict[str, dict],
    *,
    layers: int,
    repeats: int,
    epochs: int,
    lr: float,
    kinds: Sequence[str],
    batch_size: int | None = None,
    schedule: str | None = None,
) -> Stage:
    """Jobs over activation x layer (the first ``layers`` sites) x kinds x repeat; retraining
    ``epochs`` (best on validation) at ``lr`` (``batch_size``, ``schedule``: SanityConfig's
    defaults when None). The preset's defaults: ``settings.SanitySettings``."""
    extra = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": schedule}
    return Stage(
        name="sanity",
        kind="sanity",
        fn=sanity_job,
        configs=_configs(SanityJob, "sanity", models_by_activation, layers, kinds, repeats, extra),
        requires=("intertwiner.experiments.sanity:run_job", "intertwiner.checkpoints:load"),
        description="section 3.3: fix a G_ReLU or orthogonal map before a layer, retrain the rest",
        notes=_notes(models_by_activation),
    )


def absorb_stage(
    models_by_activation: dict[str, dict],
    *,
    layers: int,
    repeats: int,
    kinds: Sequence[str],
    max_rows: int,
) -> Stage:
    """Jobs over activation x layer x kinds x repeat of the closed-form refit (the preset's
    defaults: ``settings.AbsorbSettings``)."""
    return Stage(
        name="absorb",
        kind="absorb",
        fn=absorb_job,
        configs=_configs(
            AbsorbJob,
            "absorb",
            models_by_activation,
            layers,
            kinds,
            repeats,
            {"max_rows": max_rows},
        ),  # fmt: skip
        requires=("intertwiner.experiments.absorb:run_job", "intertwiner.checkpoints:load"),
        description="section 3.3, sharpest form: fix a map before a layer, refit only the next "
        "layer in closed form (least squares)",
        notes=_notes(models_by_activation),
    )
