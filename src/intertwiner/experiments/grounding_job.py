"""Stages "grounding_zoo" and "grounding": the measure-grounding tests of ``benchmark-measures``
(``measure_grounding``) as part of ``reproduce``.

``grounding_zoo`` trains the grounding zoo, one job per model (seed models, then random-label
models), into ``RUN/checkpoints/grounding/`` (the cache ``measure_grounding`` reads); ``grounding``
scores one measure per job in the chosen tests on that zoo (features are recomputed from the
checkpoints: seconds). A killed run resumes at the first unfinished model or measure, and a
measure job whose model is missing trains it (the same checkpoint) rather than fail.
Rows: ``grounding`` holds one ``MeasureScore`` (its per-test interval over seeds and per-seed
scores) with the zoo's test accuracies; the report ranks the measures per zoo.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from intertwiner.experiments.base import Stage, run_dir
from intertwiner.rows import GroundingJob, GroundingResult, GroundingZooJob, GroundingZooResult

CACHE = "checkpoints/grounding"


def _config(spec: dict) -> Any:
    from intertwiner.experiments import measure_grounding as mg

    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return mg.GroundingConfig.for_zoo(**sizes)


def zoo_job(config: dict) -> dict:
    """Train (or find) one model of the grounding zoo; its test accuracy."""
    from intertwiner import data
    from intertwiner.experiments import measure_grounding as mg

    cfg = _config(config["grounding"])
    splits = data.load(mg.ZOOS[cfg.zoo]["data"])
    model = mg.trained_model(cfg, splits, config["seed"], config["random_labels"],
                             run_dir(config) / CACHE)  # fmt: skip
    return GroundingZooResult(test_accuracy=mg.test_accuracy(model, splits)).to_json()


def measure_job(config: dict) -> dict:
    """Score one measure in the grounding tests on the zoo (trained by ``zoo_job``)."""
    from intertwiner.experiments import measure_grounding as mg

    cfg = dataclasses.replace(_config(config["grounding"]), measures=(config["measure"],))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant layers: documented values
        report = mg.run(cfg, cache=run_dir(config) / CACHE)
    (score,) = report.scores
    return GroundingResult(score=score.to_dict(), test_accuracy=report.test_accuracy,
                           random_label_accuracy=report.random_label_accuracy).to_json()  # fmt: skip


def stages(specs: list[dict]) -> list[Stage]:
    """The two stages for grounding configs ``specs`` (``GroundingConfig.for_zoo`` keywords; one
    zoo each, its ``measures`` one job each)."""
    from intertwiner.experiments import measure_grounding as mg

    zoo_configs, measure_configs = [], []
    for spec in specs:
        cfg = _config(spec)
        stored = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(cfg).items() if k != "measures"}  # fmt: skip
        runs = mg.model_runs(cfg)
        zoo_configs += [GroundingZooJob(stage="grounding_zoo", grounding=stored, seed=s,
                                        random_labels=shuffled).to_json()
                        for s, shuffled in runs]  # fmt: skip
        measure_configs += [GroundingJob(stage="grounding", grounding=stored, measure=m).to_json()
                            for m in cfg.measures]  # fmt: skip
    requires = ("intertwiner.metrics:pairwise", "intertwiner.features:capture",
                "intertwiner.checkpoints:load")  # fmt: skip
    return [
        Stage(
            "grounding_zoo",
            "grounding_zoo",
            zoo_job,
            zoo_configs,
            requires,
            "measure grounding: the zoo (seed and random-label models)",
        ),  # fmt: skip
        Stage(
            "grounding",
            "grounding",
            measure_job,
            measure_configs,
            requires,
            "measure grounding: each similarity measure in the grounding tests (issue 25)",
        ),  # fmt: skip
    ]
