"""Stage "metrics": layer x layer CKA, G_ReLU-CKA and orthogonal / G_ReLU Procrustes per model pair.

Features are the outputs of every activation site on the whole test split (``n_samples=None``, as
the paper's section 5 uses the 10,000 CIFAR-10 test images) or its first ``n_samples`` images. Procrustes similarity is the paper's 1 - d; between
layers of different spatial size the smaller map is upsampled by nearest neighbour (the paper's
choice) and the narrower layer zero-padded.
"""

from __future__ import annotations

import math

from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import load_data, load_model
from intertwiner.rows import MetricsJob, MetricsResult

METRICS = ("cka", "grelu_cka", "orthogonal_procrustes", "grelu_procrustes")


def _metric_fns() -> dict:
    from intertwiner import metrics

    return {
        "cka": lambda x, y: metrics.cka(x, y, debiased=True),
        "grelu_cka": lambda x, y: metrics.group_cka(x, y, group="positive_monomial", debiased=True),
        "orthogonal_procrustes": lambda x, y: metrics.procrustes_similarity(
            x, y, group="orthogonal", upsample=True
        ),
        "grelu_procrustes": lambda x, y: metrics.procrustes_similarity(
            x, y, group="positive_monomial", upsample=True
        ),
    }


def metrics_job(config: dict) -> dict:
    """Compute every metric for every (site of model a, site of model b) on a test subset."""
    import torch
    from torch.utils.data import Subset

    from intertwiner import features, models

    splits = load_data(config["data"])
    a = load_model(config, config["model_a"])
    b = load_model(config, config["model_b"])
    sites = models.sites(a)
    n_samples = config.get("n_samples")
    n = len(splits.test) if n_samples is None else min(int(n_samples), len(splits.test))
    subset = Subset(splits.test, range(n))
    with torch.no_grad():
        fa = features.capture(a, subset, sites)
        fb = features.capture(b, subset, sites)
    fns = _metric_fns()
    mats: dict = {}
    for name in config["metrics"]:
        fn = fns[name]
        mat = []
        for sa in sites:
            row = []
            for sb in sites:
                if config.get("diagonal_only", {}).get(name) and sa != sb:
                    row.append(None)
                    continue
                v = float(fn(fa[sa], fb[sb]))
                row.append(v if math.isfinite(v) else None)
            mat.append(row)
        mats[name] = mat
    return MetricsResult(sites=sites, n_samples=n, extra=mats).to_json()


def stage(
    model_pairs: dict[str, list[tuple[dict, dict]]],
    n_samples: int | None = None,
    metrics: tuple[str, ...] = METRICS,
    procrustes_diagonal_only: bool = False,
) -> Stage:
    diag = {m: procrustes_diagonal_only for m in metrics if m.endswith("procrustes")}
    configs = [
        MetricsJob(
            stage="metrics",
            arch=arch,
            pair=i,
            model_a=a,
            model_b=b,
            data=a["data"],
            n_samples=n_samples,
            metrics=list(metrics),
            diagonal_only=diag,
        ).to_json()  # fmt: skip
        for arch, ps in model_pairs.items()
        for i, (a, b) in enumerate(ps)
    ]
    return Stage(
        name="metrics",
        kind="metrics",
        fn=metrics_job,
        configs=configs,
        requires=(
            "intertwiner.metrics:cka,group_cka,procrustes_similarity",
            "intertwiner.features:capture",
            "intertwiner.checkpoints:load",
        ),
        description="section 5: representation similarity, layer x layer, per model pair",
    )
