"""Stage "alignment": loss barriers between zoo pairs, unaligned and aligned modulo the group.

For each pair of independently trained zoo models and each alignment (none; permutations only,
the Git Re-Basin baseline; each site's full intertwiner group; by weights or by activations), B is
aligned to A and the straight line between them is evaluated on the test split, with BatchNorm
statistics re-estimated on training images at every point (and once without, to show the spurious
barrier that averaging BN statistics creates), and once more with REPAIR (every pre-activation
channel given the interpolated endpoint statistics, ``interpolate(repair=True)``).
"""

from __future__ import annotations

import time

from intertwiner.data import random_subset as _subset
from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import load_data, load_model
from intertwiner.rows import AlignmentJob, AlignmentResult

#: (label, method, group)
ALIGNMENTS = [
    ("none", None, "none"),
    ("perm/weights", "weights", "permutation"),
    ("full/weights", "weights", "full"),
    ("perm/activations", "activations", "permutation"),
    ("full/activations", "activations", "full"),
]


def alignment_job(config: dict) -> dict:
    """Align B to A one way, interpolate (with and without BN re-estimation); the barriers."""
    from intertwiner.alignment import align, interpolate, weight_distance

    splits = load_data(config["data"])
    a = load_model(config, config["model_a"])
    b = load_model(config, config["model_b"])
    train = _subset(splits.train, config["bn_samples"])
    test = _subset(splits.test, config["eval_samples"])
    t0 = time.perf_counter()
    if config["method"] is None:
        aligned, sweeps = b, 0
    else:
        res = align(a, b, data=train, method=config["method"], group=config["group"], seed=0)
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


def stage(
    model_pairs: dict[str, list[tuple[dict, dict]]],
    alphas: int,
    eval_samples: int,
    bn_samples: int,
) -> Stage:
    """Jobs over arch x pair x alignment (see ``ALIGNMENTS``)."""
    configs = []
    for arch, ps in model_pairs.items():
        for p, (a, b) in enumerate(ps):
            for label, method, group in ALIGNMENTS:
                job = AlignmentJob(stage="alignment", arch=arch, pair=p, model_a=a, model_b=b,
                                   data=a["data"], alignment=label, method=method, group=group,
                                   alphas=alphas, eval_samples=eval_samples,
                                   bn_samples=bn_samples)  # fmt: skip
                configs.append(job.to_json())
    return Stage(
        name="alignment",
        kind="alignment",
        fn=alignment_job,
        configs=configs,
        requires=("intertwiner.alignment:align,interpolate", "intertwiner.checkpoints:load"),
        description="beyond the paper: loss barriers between zoo pairs aligned modulo the group",
    )
