"""Which similarity measure to trust: Kornblith et al. 2019's layer-identification test on our zoo.

Several models of one architecture are trained from different seeds. For every ordered pair of
different models (A, B) and every layer i of A, a measure identifies the layer of B most similar to
A's layer i (largest similarity, or smallest distance); it is right when that is layer i. A
measure's score is the fraction of right identifications. Kornblith et al. (Table 2: ten 10-layer
CNNs on CIFAR-10) found linear CKA 99.3%, RBF CKA 99.1%, linear regression 45.4%, PWCCA 11.1%,
SVCCA 9.9-15.1%, CCA 1.4-10.6% (``KORNBLITH``).

Units: each model's score against all the others (one number per seed); the interval is the
Student t-interval over seeds (``stats.t_interval``; the seeds share partners, so it is optimistic).
Ties in a measure's values count as a miss unless the right layer is the only best one.

Only the layer-identification test is implemented here; the issue's specificity, monotonicity and
prediction tests are not (yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from intertwiner import data as _data
from intertwiner import features as _features
from intertwiner import models, stats, training
from intertwiner.errors import InvalidOptionError
from intertwiner.metrics import metric, pairwise

#: Measures compared by default (registry specs).
MEASURES = (
    "cka",
    "rbf_cka",
    "cka_debiased",
    "group_cka",
    "procrustes_distance:orthogonal",
    "procrustes_distance:positive_monomial",
    "cca",
    "cca_yanai",
    "svcca",
    "pwcca",
    "linear_regression",
    "rsa",
    "mutual_knn",
    "knn_jaccard",
    "cknna",
    "shape_distance",
    "shape_distance:positive_monomial",
    "soft_matching_distance",
)
#: Kornblith et al. 2019, Table 2 (CIFAR-10, ten 10-layer CNNs), accuracy in percent.
KORNBLITH = {
    "cka": "99.3",
    "rbf_cka": "99.1",
    "linear_regression": "45.4",
    "pwcca": "11.1",
    "svcca": "9.9-15.1",
    "cca": "1.4-10.6",
    "cca_yanai": "1.4-10.6",
}


@dataclass(frozen=True)
class GroundingConfig:
    """A zoo of ``seeds`` MLPs (``depth`` hidden ReLU layers of ``width``) trained on digits for
    ``epochs`` (Adam, ``batch_size``, cosine schedule; about 90% test accuracy at the defaults),
    compared on ``n_inputs`` training images at every hidden layer."""

    seeds: int = 5
    depth: int = 8
    width: int = 64
    epochs: int = 20
    batch_size: int = 32
    n_inputs: int = 500
    measures: tuple[str, ...] = MEASURES
    threads: int = 1

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise InvalidOptionError(
                f"seeds must be at least 2 (pairs of models), got {self.seeds}"
            )
        for name, v in (("depth", self.depth), ("width", self.width), ("epochs", self.epochs),
                        ("batch_size", self.batch_size), ("n_inputs", self.n_inputs), ("threads", self.threads)):  # fmt: skip
            if v < 1:
                raise InvalidOptionError(f"{name} must be a positive integer, got {v}")


@dataclass
class MeasureScore:
    name: str
    accuracy: stats.Interval
    per_seed: list[float]
    published: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy.to_dict(),
                "per_seed": self.per_seed, "published": self.published}  # fmt: skip


@dataclass
class GroundingReport:
    config: GroundingConfig
    test_accuracy: list[float]
    scores: list[MeasureScore] = field(default_factory=list)

    def ranked(self) -> list[MeasureScore]:
        return sorted(self.scores, key=lambda s: -s.accuracy.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "test_accuracy": self.test_accuracy,
                "scores": [s.to_dict() for s in self.ranked()]}  # fmt: skip

    def table(self) -> str:
        lines = [f"{'measure':44s} {'layer identification % [95% CI over seeds]':44s} Kornblith"]
        for s in self.ranked():
            lines.append(f"{s.name:44s} {s.accuracy.scaled(100).format(1):44s} {s.published}")
        return "\n".join(lines)


def layer_identification(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """Per model, the fraction of its layers identified in the other models.

    ``values[i, j, a, b]``: the measure between layer i of model a and layer j of model b."""
    n_layers, _, k, _ = values.shape
    v = values if higher_is_similar else -values
    right = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            for i in range(n_layers):
                col = v[i, :, a, b]
                best = np.flatnonzero(col == col.max())
                right[a, b] += float(best.tolist() == [i])
    off = ~np.eye(k, dtype=bool)
    return np.array([right[a][off[a]].mean() / n_layers for a in range(k)])


def score(feature_sets: Sequence[dict[str, torch.Tensor]], spec: str) -> MeasureScore:
    """Layer identification of one measure over models given as ``{layer: features}``."""
    m = metric(spec)
    layers = list(feature_sets[0])
    res = pairwise(list(feature_sets), m, layers=layers, progress=False)
    k = len(feature_sets)
    values = np.empty((len(layers), len(layers), k, k))
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers):
            values[i, j] = res.matrix(la, lb)
    per_seed = layer_identification(values, m.higher_is_similar)
    return MeasureScore(m.name, stats.t_interval(per_seed.tolist()), per_seed.tolist(),
                        KORNBLITH.get(spec, ""))  # fmt: skip


def train_zoo(config: GroundingConfig, progress: bool = False) -> tuple[list, list[float]]:
    """The zoo's hidden-layer features on ``n_inputs`` training images, and test accuracies."""
    splits = _data.load("digits")
    x = torch.stack([splits.train[i][0] for i in range(min(config.n_inputs, len(splits.train)))])
    layers = [f"act{i}" for i in range(1, config.depth + 1)]
    sets, accs = [], []
    for seed in range(config.seeds):
        model = models.build("mlp", seed=seed, widths=[config.width] * config.depth,
                             **splits.model_config())  # fmt: skip
        cfg = training.TrainConfig(epochs=config.epochs, batch_size=config.batch_size,
                                   schedule="cosine", seed=seed, progress=progress,
                                   num_threads=config.threads, device="cpu")  # fmt: skip
        result = training.train(model, splits, cfg)
        accs.append(float(training.evaluate(result.model, splits.test)["accuracy"]))
        feats = _features.capture(result.model, x, layers)
        sets.append({la: feats[la].double() for la in layers})
    return sets, accs


def run(config: GroundingConfig, progress: bool = False) -> GroundingReport:
    """Train the zoo and score every measure."""
    sets, accs = train_zoo(config, progress)
    report = GroundingReport(config, accs)
    for spec in config.measures:
        report.scores.append(score(sets, spec))
    return report
