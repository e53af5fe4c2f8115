"""Presets: the sizes of each stage for ``test`` (seconds), ``quick`` (about 5 min on 2 CPU
cores), ``full`` (56 min on 2 CPU cores, measured end to end: 364 rows) and ``paper`` (the paper's scale on CIFAR-10; GPUs or a
cluster; ``reproduce --preset paper --dry-run`` lists its jobs beside the paper's protocol).

The sanity test runs on the procedural concept scenes, not MNIST: a width-8 mCNN_k reaches about
82% there (MNIST: about 98%, where a few points of penalty cannot show), the scenes are generated
offline, and 4,000 test scenes keep the sampling noise of one accuracy near 0.6 points.

Each preset is a typed :class:`~intertwiner.experiments.settings.Preset` (``get(name)``);
``PRESETS`` holds their JSON, what a run folder records. ``build_plan(preset, data=...,
data_dir=...)`` turns a preset into the ordered list of stages; ``shrink(config)`` cuts a preset
to seconds for smoke tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from intertwiner.errors import DataNotFoundError, IntertwinerError, InvalidOptionError
from intertwiner.experiments import (
    alignment_job,
    dissection_job,
    grounding_job,
    group_table,
    metrics_sweep,
    sanity_job,
    stitching_sweep,
    zoo,
)
from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import pairs
from intertwiner.experiments.settings import (
    AbsorbSettings,
    AlignmentSettings,
    DissectionSettings,
    GroundingSettings,
    MetricsSettings,
    Preset,
    PresetError,
    SanitySettings,
    StitchSettings,
    TrainSettings,
)
from intertwiner.groups import PAPER_ROWS

# The rows of the paper's Table 1, as the group table knows them.
PAPER_ACTIVATIONS = list(PAPER_ROWS)

# Measure grounding in the quick preset: a small MLP zoo on digits, every measure, all four tests.
GROUNDING_QUICK = GroundingSettings(zoo="mlp", seeds=4, depth=5, width=32, epochs=10, n_inputs=200,
                                    random_labels=1)  # fmt: skip

# Each preset: data, zoo sizes, and the per-stage sizes. Widths are small on CPU presets; the
# paper preset uses the paper's architectures and counts (100 seeds, 32 pairs, 50 epochs).
# Settings left out take the default declared on their field (experiments.settings).
_DEFINED: dict[str, Preset] = {
    "test": Preset(
        data="digits",
        archs={"mlp": {"widths": [16, 16]}},
        seeds=2,
        train=TrainSettings(epochs=1, batch_size=128, lr=1e-3),
        group_trials=4,
        activations=["identity", "relu", "tanh"],
        pairs=1,
        metrics=MetricsSettings(n_samples=64),
        stitch=StitchSettings(kinds=["full", "perm_scale"], epochs=1, sites=1),
        sanity=None,
        dissection=None,
        alignment=AlignmentSettings(alphas=3, eval_samples=100, bn_samples=200),
        # measure grounding (issue 25): a tiny MLP zoo, two measures (seconds)
        grounding=[
            GroundingSettings(
                zoo="mlp",
                seeds=2,
                depth=3,
                width=8,
                epochs=1,
                n_inputs=40,
                random_labels=1,
                measures=["cka", "group_cka"],
            )
        ],  # fmt: skip
    ),
    "quick": Preset(
        data="mnist",
        archs={
            "mlp": {"widths": [64, 64]},
            "myrtle_cnn": {"width": 8},
            "resnet20": {"width": 8, "blocks_per_stage": 1},
        },
        seeds=3,
        # Enough epochs for ~96-98% test accuracy: weak models make every penalty noisy.
        train=TrainSettings(epochs=4, batch_size=128, lr=3e-3),
        train_overrides={"resnet20": {"epochs": 6}},
        group_trials=16,
        activations=PAPER_ACTIVATIONS,
        pairs=2,
        # The first 256 test images: the whole split (1,000) costs 4 min more here; full and
        # paper use the whole test split.
        metrics=MetricsSettings(n_samples=256),
        stitch=StitchSettings(
            kinds=["full", ["low_rank", 2], "perm_scale"],
            epochs=2,
            sites=4,
            # Adam at 1e-2: the stitch layers have few parameters and few steps here
            # (benchmarks/stitching.py); the paper's SGD at 1e-3 barely moves in 2 epochs.
            stitch_config={"lr": 1e-2},
        ),
        # The sanity test on concept scenes (5 classes, ~80% accuracy: not saturated, unlike
        # MNIST), the paper's mCNN_k (no BatchNorm); retraining too short to decide here, the
        # closed-form refit decides.
        sanity=SanitySettings(
            data={"name": "concepts", "n_train": 2000, "n_test": 2000},
            activations=["relu"],
            arch="myrtle_cnn",
            model={"width": 8, "batchnorm": False},
            train=TrainSettings(epochs=8, batch_size=64, lr=2e-3, schedule="cosine"),
            layers=3,
            repeats=3,
            epochs=2,
            lr=1e-3,
            batch_size=64,
            absorb=AbsorbSettings(repeats=5, kinds=["G_ReLU", "orthogonal"], max_rows=50_000),
        ),
        dissection=DissectionSettings(
            arch="myrtle_cnn",
            model={"width": 16},
            seeds=2,
            data={"name": "concepts", "n_train": 2000, "n_test": 500},
            train=TrainSettings(epochs=3, batch_size=64, lr=3e-3),
            layers=[2, 3],
            rotations=[0.0, 0.25, 0.5, 0.75, 1.0],
        ),
        alignment=AlignmentSettings(alphas=5, eval_samples=500, bn_samples=1000),
        grounding=[GROUNDING_QUICK],
    ),
    "full": Preset(
        data="mnist",
        archs={
            "mlp": {"widths": [128, 128]},
            "myrtle_cnn": {"width": 16},
            "resnet20": {"width": 8},
        },
        seeds=6,
        train=TrainSettings(epochs=5, batch_size=128, lr=2e-3),
        train_overrides={"resnet20": {"epochs": 8}},
        group_trials=32,
        activations=PAPER_ACTIVATIONS,
        pairs=3,
        metrics=MetricsSettings(n_samples=None),
        stitch=StitchSettings(
            kinds=[
                "full",
                ["low_rank", 1],
                ["low_rank", 2],
                ["low_rank", 4],
                "perm_scale",
                "orthogonal",
            ],  # fmt: skip
            epochs=3,
            sites=4,
            stitch_config={"lr": 1e-2},
        ),
        # The sanity test on concept scenes (~82% test accuracy: not saturated) with the paper's
        # mCNN_k (no BN). 4,000 test scenes: sampling noise of one accuracy about 0.6 points.
        sanity=SanitySettings(
            data={"name": "concepts", "n_train": 4000, "n_test": 4000},
            activations=["relu"],
            arch="myrtle_cnn",
            model={"width": 8, "batchnorm": False},
            train=TrainSettings(epochs=30, batch_size=64, lr=2e-3, schedule="cosine"),
            layers=3,
            repeats=5,
            kinds=["G_ReLU", "permutation", "orthogonal"],
            epochs=10,
            lr=2e-3,
            schedule="cosine",
            batch_size=64,
            absorb=AbsorbSettings(repeats=5, kinds=["identity", "G_ReLU", "orthogonal"]),
        ),
        dissection=DissectionSettings(
            arch="myrtle_cnn",
            model={"width": 32},
            seeds=3,
            data={"name": "concepts", "n_train": 4000, "n_test": 1000},
            train=TrainSettings(epochs=8, batch_size=64, lr=2e-3),
            layers=[1, 2, 3],
            rotations=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        ),
        alignment=AlignmentSettings(alphas=11, eval_samples=1000, bn_samples=2000),
        grounding=[GroundingSettings(zoo="mlp"), GroundingSettings(zoo="cnn", random_labels=1)],
    ),
    "paper": Preset(
        data="cifar10",
        # The paper's training augmentation (flip + translate by 2 px), training split only.
        data_options={"augment": True},
        archs={
            "myrtle_cnn": {"width": 64},
            "resnet20": {"width": 16},
            "resnet18": {"width": 64},
        },
        seeds=100,
        train=TrainSettings(epochs=50, batch_size=32, lr=1e-3, weight_decay=1e-4),
        group_trials=64,
        activations=PAPER_ACTIVATIONS,
        pairs=32,
        metrics=MetricsSettings(n_samples=None),
        stitch=StitchSettings(
            kinds=["full", ["low_rank", 1], ["low_rank", 2], ["low_rank", 4], "perm_scale"],
            epochs=20,
            sites=100,
        ),
        sanity=SanitySettings(
            data=None,  # the preset's data (CIFAR-10)
            activations=["relu", "sigmoid"],
            arch="myrtle_cnn",
            model={"width": 64, "batchnorm": False},
            layers=3,
            repeats=10,
            epochs=50,
            lr=1e-3,
            batch_size=32,
            absorb=AbsorbSettings(repeats=10, kinds=["identity", "G_ReLU", "orthogonal"]),
        ),
        dissection=DissectionSettings(
            arch="myrtle_cnn",
            model={"width": 64},
            seeds=3,
            data={"name": "concepts", "n_train": 20000, "n_test": 2000},
            train=TrainSettings(epochs=30, batch_size=64, lr=1e-3),
            layers=[1, 2, 3],
            rotations=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        ),
        # Kornblith et al.'s layer-identification setting: ten plain 10-layer CNNs (on MNIST,
        # whatever the preset's data: the grounding zoo has its own).
        grounding=[
            GroundingSettings(
                zoo="cnn", seeds=10, width=64, epochs=20, n_inputs=500, random_labels=2
            )
        ],  # fmt: skip
    ),
}

#: Preset name -> its JSON (the given settings): what a run folder records as its configuration.
#: ``get(name)`` parses an entry into its :class:`Preset` (entries added here as plain dicts, as
#: tests do, are checked then).
PRESETS: dict[str, dict] = {name: p.to_json() for name, p in _DEFINED.items()}


def get(name: str) -> Preset:
    """The typed preset ``name``; InvalidOptionError for an unknown name, PresetError naming the
    key of an entry of ``PRESETS`` that does not fit the schema."""
    if name not in PRESETS:
        public = [p for p in PRESETS if p != "test"]  # "test" is for the test suite
        raise InvalidOptionError(f"unknown preset {name!r}; choose one of {', '.join(public)}")
    try:
        return Preset.from_json(PRESETS[name])
    except PresetError as e:
        raise PresetError(f"preset {name!r}: {e}") from None


_ALIASES = {"cifar_10": "cifar10", "cifar": "cifar10"}


def dataset_name(name: str) -> str:
    """The canonical name of dataset ``name`` (case, ``-`` and aliases folded), or
    UnknownDatasetError listing the datasets ``reproduce`` can use."""
    from intertwiner.data import DATASETS, UnknownDatasetError

    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UnknownDatasetError(
            f"unknown --data {name!r}; choose one of {', '.join(DATASETS)} (nothing was run)"
        )
    return key


def data_spec(name: str, data_dir: str | None) -> dict:
    """The data part of a job config; the name and ``data_dir`` are checked here, before any job
    is built (only cifar10 reads a data folder, so a ``data_dir`` for another dataset is refused)."""
    name = dataset_name(name)
    spec: dict = {"name": name}
    if name == "cifar10":
        if not data_dir:
            raise DataNotFoundError(
                "the cifar10 data needs --data-dir pointing at the extracted CIFAR-10 python "
                "batches (cifar-10-batches-py); nothing is downloaded at run time"
            )
        if not Path(data_dir).is_dir():
            raise DataNotFoundError(f"--data-dir {data_dir} is not a folder")
    elif data_dir:
        raise DataNotFoundError(
            f"--data-dir is only read for cifar10, and the data here is {name} (shipped with the "
            "library); drop --data-dir or pass --data cifar10"
        )
    if data_dir:
        spec["root"] = os.path.abspath(data_dir)
    return spec


def validate_data(spec: dict) -> None:
    """Load the data once in this process so that bad data fails before any job is scheduled."""
    from intertwiner.experiments.common import load_data

    try:
        load_data(spec)
    except IntertwinerError:
        raise
    except Exception as e:  # noqa: BLE001 (a loader's own failure: missing package, bad files)
        raise DataNotFoundError(
            f"cannot load the data {spec}: {type(e).__name__}: {e}; nothing was run"
        ) from e


def _typed(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else get(preset)


def resolve_data(
    preset: str | Preset, data: str | None = None, data_dir: str | None = None
) -> dict:
    """The checked data spec of a run of ``preset`` (``data`` overrides the preset's dataset; the
    preset's ``data_options`` apply to its own dataset only).

    Raises UnknownDatasetError or DataNotFoundError before anything runs.
    """
    p = _typed(preset)
    spec = _with_options(p, data_spec(data or p.data, data_dir))
    validate_data(spec)
    return spec


def _with_options(p: Preset, spec: dict) -> dict:
    if spec["name"] == dataset_name(p.data):
        spec = {**spec, **p.data_options}
    return spec


def _zoo_configs(p: Preset, dspec: dict) -> dict[str, list[dict]]:
    """arch -> the zoo configs of its seeds (ReLU, the preset's training, per-arch overrides)."""
    return {
        arch: [
            zoo.zoo_config(arch, "relu", s, mcfg, p.train_for(arch).to_json(), dspec)
            for s in range(p.seeds)
        ]
        for arch, mcfg in p.archs.items()
    }


def _sanity_models(p: Preset, dspec: dict) -> dict[str, dict]:
    """activation -> the zoo config of the sanity test's model (its own data when it has one)."""
    sp = p.sanity
    if not sp:
        return {}
    data = sp.data or dspec
    train = (sp.train or p.train).to_json()
    return {
        act: zoo.zoo_config(sp.arch, act, 0, sp.model, train, data, "sanity")
        for act in sp.activations
    }


def _sanity_stages(sp: SanitySettings, sanity_models: dict[str, dict]) -> list[Stage]:
    """The retraining sanity stage and, when the preset asks, the closed-form absorb stage."""
    stages = [
        sanity_job.stage(
            sanity_models,
            layers=sp.layers,
            repeats=sp.repeats,
            epochs=sp.epochs,
            lr=sp.lr,
            kinds=sp.kinds,
            batch_size=sp.batch_size,
        )  # fmt: skip
    ]
    ab = sp.absorb
    if ab:
        stages.append(
            sanity_job.absorb_stage(
                sanity_models,
                layers=sp.layers,
                repeats=ab.repeats,
                kinds=ab.kinds,
                max_rows=ab.max_rows,
            )  # fmt: skip
        )
    return stages


def build_plan(
    preset: str | Preset,
    data: str | None = None,
    data_dir: str | None = None,
    *,
    check_data: bool = True,
) -> list[Stage]:
    """The ordered stages of ``preset``. With ``check_data`` (the default) the data is loaded once
    first (UnknownDatasetError or DataNotFoundError on bad data); ``check_data=False`` only builds
    the job list (a dry run: the data folder need not exist). ``preset``: a name of ``PRESETS``
    or a Preset (one with overrides, ``settings.override``)."""
    p = _typed(preset)
    if check_data:
        dspec = resolve_data(p, data, data_dir)
    else:
        dspec = {"name": dataset_name(data or p.data)}
        if data_dir:
            dspec["root"] = os.path.abspath(data_dir)
        dspec = _with_options(p, dspec)
    stages = [group_table.stage(p.activations, trials=p.group_trials)]
    zoo_cfgs = _zoo_configs(p, dspec)
    sanity_models = _sanity_models(p, dspec)
    dis_models: list[dict] = []
    dp = p.dissection
    if dp:
        dis_models = [
            zoo.zoo_config(dp.arch, "relu", s, dp.model, dp.train.to_json(), dp.data, "dissection")
            for s in range(dp.seeds)
        ]
    zoo_list = [c for cs in zoo_cfgs.values() for c in cs]
    stages.append(zoo.stage(zoo_list + list(sanity_models.values()) + dis_models))
    model_pairs = {
        arch: [(cs[i], cs[j]) for i, j in pairs(len(cs), p.pairs)] for arch, cs in zoo_cfgs.items()
    }
    stages.append(metrics_sweep.stage(model_pairs, n_samples=p.metrics.n_samples))
    st = p.stitch
    stages.append(stitching_sweep.stage(model_pairs, kinds=st.kinds, epochs=st.epochs,
                                        sites=st.sites, stitch_config=st.stitch_config))  # fmt: skip
    if p.sanity:
        stages += _sanity_stages(p.sanity, sanity_models)
    if dp:
        stages.append(dissection_job.stage(dis_models, dp.layers, dp.rotations))
    al = p.alignment
    if al:
        stages.append(alignment_job.stage(model_pairs, alphas=al.alphas,
                                          eval_samples=al.eval_samples, bn_samples=al.bn_samples))  # fmt: skip
    if p.grounding:
        stages += grounding_job.stages([g.to_json() for g in p.grounding])
    return stages


# Per-architecture model options of a shrunk preset (seconds per model on a CPU).
_TINY = {
    "mlp": {"widths": [8]},
    "myrtle_cnn": {"width": 2},
    "resnet20": {"width": 2, "blocks_per_stage": 1},
    "resnet18": {"width": 2},
}


def shrink(config: dict | Preset) -> dict | Preset:
    """A copy of preset ``config`` (its JSON, or the Preset: the same type comes back) with every
    size cut to seconds: the same stages, architectures, kinds and data, 2 seeds, 1 pair, 1
    epoch, 1 stitch site, 2 repeats. For smoke tests of the paper preset on a tiny stand-in data
    folder."""
    p = config if isinstance(config, Preset) else Preset.from_json(config)
    c = p.to_json()
    c["archs"] = {a: {**m, **_TINY.get(a, {})} for a, m in p.archs.items()}
    c.update(seeds=2, pairs=1, group_trials=2, train={**c["train"], "epochs": 1})
    c.pop("train_overrides", None)
    c["metrics"] = {**c["metrics"], "n_samples": 64}
    c["stitch"] = {**c["stitch"], "epochs": 1, "sites": 1}
    sp = c.get("sanity")
    if sp:
        sp.update(repeats=2, epochs=1, layers=2, model={**sp["model"], "width": 2})
        sp["train"] = {**sp.get("train", c["train"]), "epochs": 1}
        if sp.get("absorb"):
            sp["absorb"] = {**sp["absorb"], "repeats": 2, "max_rows": 2000}
    dp = c.get("dissection")
    if dp:
        dp.update(seeds=2, layers=dp["layers"][:1], rotations=[0.0, 1.0],
                  model={**dp["model"], "width": 2}, train={**dp["train"], "epochs": 1},
                  data={**dp["data"], "n_train": 100, "n_test": 40})  # fmt: skip
    if c.get("alignment"):
        c["alignment"] = {"alphas": 3, "eval_samples": 40, "bn_samples": 40}
    if c.get("grounding"):
        c["grounding"] = [{**g, "seeds": 2, "depth": 3, "width": 4, "epochs": 1, "n_inputs": 40,
                           "random_labels": 1, "measures": ["cka"]} for g in c["grounding"]]  # fmt: skip
    small = Preset.from_json(c)
    return small if isinstance(config, Preset) else small.to_json()
