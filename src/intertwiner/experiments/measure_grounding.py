"""Which similarity measure to trust: four grounding tests on a zoo trained here (issue 25).

The zoo (``zoo``): ``"mlp"``, ``seeds`` MLPs of one architecture trained on digits, or ``"cnn"``
(Kornblith et al.'s setting), ``seeds`` plain 10-layer CNNs (``models.plain_cnn``: 3x3 conv,
BatchNorm, ReLU; stride 2 at layers 1 and 6) trained on MNIST; seeds 0..seeds-1, and
``random_labels`` more trained the same way on a random permutation of the training labels (a
model that learned something else: memorising noise). Features are the hidden layers on
``n_inputs`` training images. Conv layers enter every measure in their documented layout handling:
CKA, RSA and the k-NN measures take one row per input (C*H*W features), G_ReLU-CKA one kernel over
inputs from every pixel, and the position-wise measures (Procrustes, the CCA family, regression,
predictivity, shape and soft matching) one row per input and pixel, with the 7x7 layers upsampled
to 14x14 by nearest neighbour (``upsample=True``, the paper's choice) when compared with the first
half. Trained models are cached (``cache=``: one safetensors checkpoint per model and training
config), so a second run only recomputes features and measures. For a measure, "similarity" below is its value when it is a
similarity and minus its value when it is a distance; asymmetric measures (regression,
predictivity) take the first-named model or layer as X.

1. **Layer identification** (Kornblith et al. 2019): for every ordered pair of different seed models
   (A, B) and every layer i of A, is layer i the layer of B most similar to it? Ties count as a
   miss unless layer i is the only best one. Score: the fraction right. Kornblith et al. (Table 2:
   ten 10-layer CNNs on CIFAR-10) found linear CKA 99.3%, RBF CKA 99.1%, linear regression 45.4%,
   PWCCA 11.1%, SVCCA 9.9-15.1%, CCA 1.4-10.6% (``KORNBLITH``).
2. **Specificity** (ReSi's random-label test, Klabunde et al. 2024): for seed model A, every other
   seed model B, every random-label model R and every layer l, is sim(A_l, B_l) > sim(A_l, R_l)
   (a tie counts one half)? Score: the fraction of such comparisons, 0.5 is chance.
3. **Monotonicity over depth**: within seed model A, the similarity of layer 1 to layer j, j = 2..L,
   should fall as j moves away. Score: minus the Spearman correlation of sim(layer 1, layer j) with
   j (1: strictly falling; 0 when every similarity is equal).
4. **Prediction agreement** (ReSi's output test): for seed model A and every other model B of the
   zoo (seeds and random-label models), the similarity of their last hidden layers against the
   fraction of held-out test images on which A and B predict the same class. Score: their Spearman
   correlation over the partners B (0 when either side is constant).

Units: every test gives one number per seed model (against its partners); the interval is the
Student t-interval over seeds (``stats.t_interval``; seeds share partners, so it is optimistic),
its ends clipped to the score's range.
The report ranks the measures by their mean rank over the tests run.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as _st

from intertwiner import checkpoints, models, stats, training
from intertwiner import data as _data
from intertwiner import features as _features
from intertwiner.errors import InvalidInputError, InvalidOptionError
from intertwiner.metrics import metric, pairwise
from intertwiner.store import config_key

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
    "linear_predictivity",
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


#: The grounding tests, in the order of the module docstring.
TESTS = ("layer_identification", "specificity", "monotonicity", "prediction")
#: Column titles of the report.
TITLES = {
    "layer_identification": "layer id %",
    "specificity": "specificity %",
    "monotonicity": "monotonicity rho",
    "prediction": "prediction rho",
}
#: Tests reported in percent.
PERCENT = ("layer_identification", "specificity")


#: The zoos: architecture, data and per-zoo defaults of the sizes (``GroundingConfig.for_zoo``).
ZOOS: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp", "data": "digits", "defaults": {}},
    "cnn": {
        "arch": "plain_cnn",
        "data": "mnist",
        # about 97% test accuracy; 200 inputs x 196 pixels keep every measure to seconds a pair
        "defaults": {
            "depth": 10,
            "width": 16,
            "epochs": 6,
            "batch_size": 64,
            "lr": 3e-3,
            "n_inputs": 200,
            # linear_predictivity's exact leave-one-input-out on conv layers solves a
            # (pixels x pixels) system per input and penalty: about 10 s a pair here,
            # hours for the zoo. Ask for it with measures=... on fewer inputs.
            "measures": tuple(m for m in MEASURES if m != "linear_predictivity"),
        },
    },
}


@dataclass(frozen=True)
class GroundingConfig:
    """A zoo of ``seeds`` models trained for ``epochs`` (Adam at ``lr`` (None: ``TrainConfig``'s
    default), ``batch_size``, cosine schedule) and ``random_labels`` more trained on permuted
    labels, compared on ``n_inputs`` training images at every hidden layer by ``measures`` in the
    grounding ``tests``. ``zoo="mlp"``: MLPs of ``depth`` hidden ReLU layers of ``width`` on digits
    (about 90% test accuracy at the defaults); ``zoo="cnn"``: plain CNNs of ``depth`` conv layers of
    ``width`` channels on MNIST (use ``for_zoo("cnn")`` for its defaults)."""

    seeds: int = 5
    depth: int = 8
    width: int = 64
    epochs: int = 20
    batch_size: int = 32
    n_inputs: int = 300
    measures: tuple[str, ...] = MEASURES
    threads: int = 1
    random_labels: int = 2
    tests: tuple[str, ...] = TESTS
    zoo: str = "mlp"
    lr: float | None = None

    @classmethod
    def for_zoo(cls, zoo: str = "mlp", **sizes: Any) -> GroundingConfig:
        """The config of ``zoo`` with its defaults, overridden by ``sizes``."""
        if zoo not in ZOOS:
            raise InvalidOptionError(f"unknown zoo {zoo!r}; choose one of {tuple(ZOOS)}")
        return cls(**{**ZOOS[zoo]["defaults"], **sizes, "zoo": zoo})

    def __post_init__(self) -> None:
        if self.zoo not in ZOOS:
            raise InvalidOptionError(f"unknown zoo {self.zoo!r}; choose one of {tuple(ZOOS)}")
        if self.lr is not None and not self.lr > 0:
            raise InvalidOptionError(f"lr must be positive, got {self.lr}")
        if self.seeds < 2:
            raise InvalidOptionError(
                f"seeds must be at least 2 (pairs of models), got {self.seeds}"
            )
        for name, v in (("depth", self.depth), ("width", self.width), ("epochs", self.epochs),
                        ("batch_size", self.batch_size), ("n_inputs", self.n_inputs), ("threads", self.threads)):  # fmt: skip
            if v < 1:
                raise InvalidOptionError(f"{name} must be a positive integer, got {v}")
        bad = [t for t in self.tests if t not in TESTS]
        if bad or not self.tests:
            raise InvalidOptionError(f"unknown or no tests {bad}; choose from {TESTS}")
        if self.random_labels < 0:
            raise InvalidOptionError(f"random_labels must be >= 0, got {self.random_labels}")
        if "specificity" in self.tests and self.random_labels < 1:
            raise InvalidOptionError("the specificity test needs random_labels >= 1")
        if "monotonicity" in self.tests and self.depth < 3:
            raise InvalidOptionError("the monotonicity test needs depth >= 3 (two distances)")


#: ``--quick``: a tiny zoo for tests and smoke runs (seconds; the numbers mean little).
QUICK = {"seeds": 3, "depth": 3, "width": 16, "epochs": 2, "n_inputs": 100, "random_labels": 1}
#: ``--quick`` for the CNN zoo (its layers need 2 strides in 3 layers: 14x14, 14x14, 7x7).
QUICK_CNN = {**QUICK, "width": 8, "epochs": 1, "n_inputs": 40}


@dataclass
class TestInterval:
    """One measure in one test: the interval over seeds and the per-seed scores."""

    interval: stats.Interval
    per_seed: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval.to_dict(), "per_seed": self.per_seed}


@dataclass
class MeasureScore:
    name: str
    tests: dict[str, TestInterval] = field(default_factory=dict)
    published: str = ""
    rank: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "published": self.published, "mean_rank": self.rank,
                "tests": {t: s.to_dict() for t, s in self.tests.items()}}  # fmt: skip


@dataclass
class GroundingReport:
    config: GroundingConfig
    test_accuracy: list[float]
    random_label_accuracy: list[float] = field(default_factory=list)
    scores: list[MeasureScore] = field(default_factory=list)

    def rank(self) -> None:
        """Set each score's mean rank over the tests (1 = best; ties share their average rank)."""
        if not self.scores:
            return
        tests = [t for t in TESTS if all(t in s.tests for s in self.scores)]
        means = [[s.tests[t].interval.mean for t in tests] for s in self.scores]
        for s, r in zip(self.scores, stats.mean_ranks(means), strict=True):
            s.rank = float(r)

    def ranked(self) -> list[MeasureScore]:
        self.rank()
        return sorted(self.scores, key=lambda s: s.rank)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "test_accuracy": self.test_accuracy,
                "random_label_accuracy": self.random_label_accuracy,
                "scores": [s.to_dict() for s in self.ranked()]}  # fmt: skip

    def table(self) -> str:
        tests = [t for t in TESTS if t in self.config.tests]
        head = f"{'measure':46s} " + " ".join(f"{TITLES[t]:22s}" for t in tests)
        lines = [head + " rank  Kornblith"]
        for s in self.ranked():
            cells = []
            for t in tests:
                iv = s.tests[t].interval
                cells.append(
                    f"{(iv.scaled(100) if t in PERCENT else iv).format(1 if t in PERCENT else 2):22s}"
                )
            lines.append(f"{s.name:46s} " + " ".join(cells) + f" {s.rank:4.1f}  {s.published}")
        return "\n".join(lines)


def _similarity(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    return values if higher_is_similar else -values


def layer_identification(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """Per model, the fraction of its layers identified in the other models.

    ``values[i, j, a, b]``: the measure between layer i of model a and layer j of model b."""
    n_layers, _, k, _ = values.shape
    v = _similarity(values, higher_is_similar)
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


def specificity(same_layer: np.ndarray, n_seeds: int, higher_is_similar: bool) -> np.ndarray:
    """Per seed model a, the fraction of (other seed b, random-label model r, layer l) with
    sim(a_l, b_l) > sim(a_l, r_l), ties one half.

    ``same_layer[l, a, b]``: the measure between layer l of models a and b; models 0..n_seeds-1
    are the seeds, the rest random-label models."""
    v = _similarity(same_layer, higher_is_similar)
    k = v.shape[1]
    if not 2 <= n_seeds < k:
        raise InvalidOptionError(
            f"specificity needs >= 2 seed models and >= 1 random-label model, got {n_seeds} of {k}"
        )
    out = np.empty(n_seeds)
    for a in range(n_seeds):
        seeds = v[:, a, [b for b in range(n_seeds) if b != a]][:, :, None]  # (L, seeds-1, 1)
        rand = v[:, a, n_seeds:][:, None, :]  # (L, 1, R)
        out[a] = float(((seeds > rand) + 0.5 * (seeds == rand)).mean())
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 0 when either side is constant (no order to agree with)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(_st.spearmanr(a, b).statistic)


def monotonicity(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """Per model a, minus the Spearman correlation of sim(layer 1, layer j) with j = 2..L.

    ``values[i, j, a, b]`` as for ``layer_identification`` (only a == b is used)."""
    n_layers, _, k, _ = values.shape
    if n_layers < 3:
        raise InvalidOptionError(f"monotonicity needs at least 3 layers, got {n_layers}")
    v = _similarity(values, higher_is_similar)
    depth = np.arange(1, n_layers, dtype=np.float64)
    return np.array([-_spearman(v[0, 1:, a, a], depth) for a in range(k)])


def prediction_agreement(
    last: np.ndarray, agreement: np.ndarray, n_seeds: int, higher_is_similar: bool
) -> np.ndarray:
    """Per seed model a, the Spearman correlation over its partners b != a (every model) of
    sim(a, b) at the last hidden layer and the agreement of their predictions.

    ``last[a, b]``: the measure between the models' last hidden layers; ``agreement[a, b]``: the
    fraction of test inputs the two models classify alike (both (K, K), seeds first)."""
    v = _similarity(last, higher_is_similar)
    k = v.shape[0]
    if k < 3:
        raise InvalidOptionError(f"prediction agreement needs at least 3 models, got {k}")
    out = np.empty(n_seeds)
    for a in range(n_seeds):
        others = [b for b in range(k) if b != a]
        out[a] = _spearman(v[a, others], agreement[a, others])
    return out


def agreement_matrix(predictions: Sequence[torch.Tensor]) -> np.ndarray:
    """(K, K): the fraction of inputs on which models a and b predict the same class."""
    p = torch.stack([torch.as_tensor(x) for x in predictions])
    return (p[:, None, :] == p[None, :, :]).double().mean(-1).numpy()


def _test_score(per_seed: np.ndarray, low: float) -> TestInterval:
    """The t-interval over seeds, its ends clipped to the score's range [low, 1]."""
    iv = stats.t_interval(per_seed.tolist())
    iv = dataclasses.replace(iv, low=max(iv.low, low), high=min(iv.high, 1.0))
    return TestInterval(iv, per_seed.tolist())


def _complete(res: Any) -> Any:
    """``res`` (a ``Pairwise``) when every pair has a value; a pair the measure could not compute
    would otherwise count as a silent miss in every test."""
    if res.notes:
        raise InvalidInputError(
            f"{res.metric} could not compare {len(res.notes)} pairs of layers, e.g. "
            f"{res.notes[0]}; the grounding tests need every pair (choose another measure or zoo)"
        )
    return res


def _values(res: Any, layers: Sequence[str]) -> np.ndarray:
    _complete(res)
    n = len(res.matrix(layers[0], layers[0]))
    out = np.empty((len(layers), len(layers), n, n))
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers):
            out[i, j] = res.matrix(la, lb)
    return out


def _spatial_sizes_differ(feature_sets: Sequence[dict[str, torch.Tensor]]) -> bool:
    return len({tuple(x.shape[2:]) for x in feature_sets[0].values() if x.dim() == 4}) > 1


def score(
    feature_sets: Sequence[dict[str, torch.Tensor]],
    spec: str,
    *,
    random_sets: Sequence[dict[str, torch.Tensor]] = (),
    predictions: Sequence[torch.Tensor] | None = None,
    tests: Sequence[str] = ("layer_identification",),
) -> MeasureScore:
    """One measure in the grounding ``tests`` over seed models given as ``{layer: features}``
    (``random_sets``: the random-label models; ``predictions``: every model's predicted classes on
    held-out inputs, seeds then random-label models, for the prediction test). Conv layers of
    different spatial sizes are compared with ``upsample=True`` by the measures that take it."""
    m = metric(spec)
    out = MeasureScore(m.name, published=KORNBLITH.get(spec, ""))
    if _spatial_sizes_differ(feature_sets) and "upsample" in inspect.signature(m.fn).parameters:
        m = metric(spec, upsample=True)  # position-wise: the smaller map upsampled (the paper)
    layers = list(feature_sets[0])
    k = len(feature_sets)
    if "layer_identification" in tests or "monotonicity" in tests:
        values = _values(pairwise(list(feature_sets), m, layers=layers, progress=False), layers)
        if "layer_identification" in tests:
            out.tests["layer_identification"] = _test_score(
                layer_identification(values, m.higher_is_similar), 0.0
            )
        if "monotonicity" in tests:
            out.tests["monotonicity"] = _test_score(monotonicity(values, m.higher_is_similar), -1.0)
    if "specificity" in tests or "prediction" in tests:
        everyone = [*feature_sets, *random_sets]
        needed = layers if "specificity" in tests else layers[-1:]
        res = _complete(pairwise(everyone, m, layers=needed, cross_layers=False, progress=False))
        same = np.stack([res.matrix(la, la) for la in needed])
        if "specificity" in tests:
            out.tests["specificity"] = _test_score(specificity(same, k, m.higher_is_similar), 0.0)
        if "prediction" in tests:
            if predictions is None or len(predictions) != len(everyone):
                raise InvalidOptionError("the prediction test needs every model's predictions")
            agree = agreement_matrix(predictions)
            out.tests["prediction"] = _test_score(
                prediction_agreement(same[-1], agree, k, m.higher_is_similar), -1.0
            )
    return out


@dataclass
class Zoo:
    """Hidden-layer features ``{layer: (n_inputs, width)}`` of the seed and random-label models,
    every model's predicted classes on the test split (seeds first), and test accuracies."""

    features: list[dict[str, torch.Tensor]]
    random_features: list[dict[str, torch.Tensor]]
    predictions: list[torch.Tensor]
    test_accuracy: list[float]
    random_label_accuracy: list[float]


def _random_label_splits(splits: Any, seed: int) -> Any:
    """The splits with training labels permuted (``seed``) and no validation split (so the last
    epoch is kept: validation accuracy on true labels would pick an arbitrary epoch)."""
    train = splits.train.subset(torch.arange(len(splits.train)))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    train.labels = train.labels[perm]
    return dataclasses.replace(splits, train=train, val=train.subset(torch.arange(0)))


def default_cache() -> Path:
    """Where ``benchmark-measures`` keeps trained zoo models: ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/intertwiner/grounding``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "intertwiner" / "grounding"


def _model_config(config: GroundingConfig, splits: Any) -> dict[str, Any]:
    if config.zoo == "mlp":
        return {"widths": [config.width] * config.depth, **splits.model_config()}
    strided = sorted({1, config.depth // 2 + 1} & set(range(1, config.depth + 1)))
    return {"width": config.width, "depth": config.depth, "strided": strided,
            **splits.model_config()}  # fmt: skip


def trained_model(
    config: GroundingConfig,
    splits: Any,
    seed: int,
    shuffled: bool,
    cache: Path | None,
    progress: bool = False,
) -> torch.nn.Module:
    """Model ``seed`` of the zoo (on permuted labels if ``shuffled``), trained or read from the
    checkpoint ``cache`` holds for exactly this model and training config."""
    arch = ZOOS[config.zoo]["arch"]
    mcfg = _model_config(config, splits)
    train = {"epochs": config.epochs, "batch_size": config.batch_size, "schedule": "cosine",
             "seed": seed, **({"lr": config.lr} if config.lr is not None else {})}  # fmt: skip
    ident = {"arch": arch, "model": mcfg, "train": train, "data": ZOOS[config.zoo]["data"],
             "random_labels": shuffled}  # fmt: skip
    path = None
    if cache is not None:
        path = cache / f"{arch}-seed{seed}-{config_key(ident)[:16]}.safetensors"
        if path.is_file():
            model, meta = checkpoints.load(path)
            if meta.get("grounding") == ident:
                return model.eval()
    data = _random_label_splits(splits, seed) if shuffled else splits
    model = models.build(arch, seed=seed, **mcfg)
    cfg = training.TrainConfig(**train, progress=progress, num_threads=config.threads,
                               device="cpu")  # fmt: skip
    trained = training.train(model, data, cfg).model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.save(trained, path, {"grounding": ident})
    return trained


def model_runs(config: GroundingConfig) -> list[tuple[int, bool]]:
    """(seed, trained on permuted labels) of every model of the zoo: seeds first."""
    return [(s, False) for s in range(config.seeds)] + [
        (1000 + r, True) for r in range(config.random_labels)
    ]


def test_accuracy(model: torch.nn.Module, splits: Any) -> float:
    """Accuracy of ``model`` on the whole test split."""
    x = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    y = torch.stack([splits.test[i][1] for i in range(len(splits.test))])
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())


def train_zoo(
    config: GroundingConfig, progress: bool = False, cache: str | Path | None = None
) -> Zoo:
    """Train the zoo (or read it from ``cache``); capture its hidden layers on ``n_inputs``
    training images and its test predictions."""
    splits = _data.load(ZOOS[config.zoo]["data"])
    x = torch.stack([splits.train[i][0] for i in range(min(config.n_inputs, len(splits.train)))])
    x_test = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    y_test = torch.stack([splits.test[i][1] for i in range(len(splits.test))])
    zoo = Zoo([], [], [], [], [])
    folder = Path(cache) if cache is not None else None
    for seed, shuffled in model_runs(config):
        trained = trained_model(config, splits, seed, shuffled, folder, progress)
        layers = models.sites(trained)
        feats = _features.capture(trained, x, layers)
        with torch.no_grad():
            pred = trained(x_test).argmax(-1)
        acc = float((pred == y_test).double().mean())
        # dense layers in float64; conv layers stay float32 (measures compute in float64 anyway)
        keep = {la: feats[la].double() if feats[la].dim() == 2 else feats[la] for la in layers}
        (zoo.random_features if shuffled else zoo.features).append(keep)
        (zoo.random_label_accuracy if shuffled else zoo.test_accuracy).append(acc)
        zoo.predictions.append(pred)
    return zoo


def run(
    config: GroundingConfig, progress: bool = False, cache: str | Path | None = None
) -> GroundingReport:
    """Train the zoo (or read it from ``cache``) and score every measure in every test."""
    zoo = train_zoo(config, progress, cache)
    report = GroundingReport(config, zoo.test_accuracy, zoo.random_label_accuracy)
    from tqdm.auto import tqdm

    for spec in tqdm(config.measures, desc="grounding", unit="measure", disable=not progress):
        report.scores.append(
            score(
                zoo.features,
                spec,
                random_sets=zoo.random_features,
                predictions=zoo.predictions,
                tests=config.tests,
            )  # fmt: skip
        )
    return report
