"""Stage "alignment": loss barriers between zoo pairs, unaligned and aligned modulo the group.

For each pair of independently trained zoo models and each alignment (none; permutations only,
the Git Re-Basin baseline; each site's full intertwiner group; by weights or by activations), B is
aligned to A and the straight line between them is evaluated on the test split, with BatchNorm
statistics re-estimated on training images at every point (and once without, to show the spurious
barrier that averaging BN statistics creates), and once more with REPAIR (every pre-activation
channel given the interpolated endpoint statistics, ``interpolate(repair=True)``).

Many-model merges ride in the same stage (new rows, not a new stage, so the presets and the
identity of existing run folders are unchanged: a resumed run adds just these jobs): per
architecture the first ``MERGE_K`` distinct models of its pairs are aligned (weights, full group)
to their common mean (``reference="mean"``, MergeMany) or to the first (``"first"``), averaged
with BN re-estimated, then REPAIRed; each merge is scored against every input and their ensemble.
"""

from __future__ import annotations

import time

from intertwiner.data import random_subset as _subset
from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import load_data, load_model
from intertwiner.rows import AlignmentJob, AlignmentResult, MergeJob, MergeResult, is_merge

#: (label, method, group)
ALIGNMENTS = [
    ("none", None, "none"),
    ("perm/weights", "weights", "permutation"),
    ("full/weights", "weights", "full"),
    ("perm/activations", "activations", "permutation"),
    ("full/activations", "activations", "full"),
]


#: Models per many-model merge, and the references each is merged to (one job each).
MERGE_K = 3
MERGE_REFERENCES = ("mean", "first")
#: Rounds of alignment to the mean at most (``merge``'s default is 20): keeps a quick run cheap;
#: the row records the rounds taken.
MERGE_MAX_ITER = 5


def alignment_job(config: dict) -> dict:
    """Align B to A one way, interpolate (with and without BN re-estimation); the barriers.
    A config with ``models`` is a many-model merge instead (``merge_job``)."""
    from intertwiner.alignment import align, interpolate, weight_distance

    if is_merge(config):
        return merge_job(config)
    splits = load_data(config["data"])
    a = load_model(config, config["model_a"])
    b = load_model(config, config["model_b"])
    train = _subset(splits.train, config["bn_samples"])
    test = _subset(splits.test, config["eval_samples"])
    t0 = time.perf_counter()
    if config["method"] is None:
        aligned, sweeps = b, 0
    else:
        # select=None: the stage measures each group's search as it is (the barrier-aware
        # choice between searches, ``align``'s default with labelled data, would blur
        # "permutations" against "full group"; it is measured in benchmarks/merging.py)
        res = align(
            a, b, data=train, method=config["method"], group=config["group"], seed=0, select=None
        )
        aligned, sweeps = res.model, res.sweeps
    seconds = time.perf_counter() - t0
    out = {
        "align_seconds": seconds,
        "sweeps": sweeps,
        "distance_before": weight_distance(a, b),
        "distance_after": weight_distance(a, aligned),
    }
    for tag, reset, repair in (
        ("bn_reset", True, False),
        ("no_reset", False, False),
        ("repair", True, True),
    ):
        c = interpolate(
            a, aligned, config["alphas"], test, reset_bn=reset, repair=repair, bn_data=train
        )
        out[f"barrier_{tag}"] = c.barrier
        out[f"mid_accuracy_{tag}"] = c.midpoint["accuracy"]
        out[f"alphas_{tag}"] = c.alphas
        out[f"losses_{tag}"] = c.losses
        out[f"accuracies_{tag}"] = c.accuracies
        out["has_bn"] = c.reset_bn or out.get("has_bn", False)
    return AlignmentResult.from_json(out).to_json()


def merge_job(config: dict) -> dict:
    """Merge ``config["models"]`` (aligned to ``config["reference"]``); accuracy of the merge (BN
    re-estimated, then REPAIRed) against each input and their ensemble on the test split."""
    import torch

    from intertwiner.alignment import align, align_to_mean, merge, merge_report
    from intertwiner.training import evaluate

    splits = load_data(config["data"])
    models = [load_model(config, c) for c in config["models"]]
    train = _subset(splits.train, config["bn_samples"])
    test = _subset(splits.test, config["eval_samples"])
    example = torch.stack([torch.as_tensor(train[i][0]) for i in range(min(8, len(train)))])
    t0 = time.perf_counter()
    rounds = 0
    if config["reference"] == "mean":
        many = align_to_mean(models, example_input=example, max_iter=config["max_iter"], seed=0)
        aligned, rounds = many.models, many.rounds
    else:
        aligned = [models[0]] + [
            align(models[0], m, example_input=example, seed=0).model for m in models[1:]
        ]
    seconds = time.perf_counter() - t0
    # The aligned copies are averaged as they are (method=None); BN re-estimated on train.
    merged = merge(aligned, method=None, bn_data=train, example_input=example)
    repaired = merge(aligned, method=None, bn_data=train, repair=True, example_input=example)
    rep = merge_report(merged, models, test)
    return MergeResult(
        align_seconds=seconds,
        rounds=rounds,
        input_accuracies=[r["accuracy"] for r in rep.inputs],
        ensemble_accuracy=rep.ensemble["accuracy"],
        merged_accuracy=rep.merged["accuracy"],
        merged_loss=rep.merged["loss"],
        repair_accuracy=evaluate(repaired, test)["accuracy"],
    ).to_json()


def _merge_configs(
    model_pairs: dict[str, list[tuple[dict, dict]]], eval_samples: int, bn_samples: int
) -> list[dict]:
    """One merge job per architecture with ``MERGE_K`` distinct models and reference."""
    configs = []
    for arch, ps in model_pairs.items():
        distinct: list[dict] = []
        for pair in ps:
            for m in pair:
                if m not in distinct:
                    distinct.append(m)
        if len(distinct) < MERGE_K:
            continue  # e.g. a preset of 2 seeds: no K-model merge
        for ref in MERGE_REFERENCES:
            job = MergeJob(stage="alignment", arch=arch, models=distinct[:MERGE_K],
                           data=distinct[0]["data"], alignment=f"merge{MERGE_K}/{ref}",
                           reference=ref, max_iter=MERGE_MAX_ITER, eval_samples=eval_samples,
                           bn_samples=bn_samples)  # fmt: skip
            configs.append(job.to_json())
    return configs


def stage(
    model_pairs: dict[str, list[tuple[dict, dict]]],
    alphas: int,
    eval_samples: int,
    bn_samples: int,
) -> Stage:
    """Jobs over arch x pair x alignment (see ``ALIGNMENTS``), then the many-model merges."""
    configs = []
    for arch, ps in model_pairs.items():
        for p, (a, b) in enumerate(ps):
            for label, method, group in ALIGNMENTS:
                job = AlignmentJob(stage="alignment", arch=arch, pair=p, model_a=a, model_b=b,
                                   data=a["data"], alignment=label, method=method, group=group,
                                   alphas=alphas, eval_samples=eval_samples,
                                   bn_samples=bn_samples)  # fmt: skip
                configs.append(job.to_json())
    configs += _merge_configs(model_pairs, eval_samples, bn_samples)
    return Stage(
        name="alignment",
        kind="alignment",
        fn=alignment_job,
        configs=configs,
        requires=(
            "intertwiner.alignment:align,interpolate,align_to_mean,merge,merge_report",
            "intertwiner.checkpoints:load",
        ),
        description="beyond the paper: loss barriers between zoo pairs aligned modulo the group",
    )
