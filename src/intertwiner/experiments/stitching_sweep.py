"""Stage "stitching": stitch model a into model b at each site with each layer kind; the penalty.

The paper (section 4) stitches after ReLU layers with 1x1 conv stitching layers: full (GL), low
rank, lasso and G_ReLU (perm x positive scale); penalty = mean clean accuracy - stitched accuracy.
"""

from __future__ import annotations

import dataclasses

from intertwiner.experiments.base import Stage
from intertwiner.experiments.common import filtered, load_data, load_model
from intertwiner.rows import StitchingJob, StitchingResult


def kind_label(kind) -> str:
    """Readable name of a stitch layer kind: ``["low_rank", 2]`` -> ``"low_rank_2"``."""
    return kind if isinstance(kind, str) else "_".join(str(k) for k in kind)


def spread(n: int, k: int) -> list[int]:
    """``min(k, n)`` indices among 0..n-1 spread evenly over depth, first and last included."""
    k = min(k, n)
    if k <= 1:
        return [n - 1] if k == 1 and n > 1 else list(range(k))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _scalars(obj) -> dict:
    """The float/int/str fields of a result object (to_dict() if it has one)."""
    d = (
        obj.to_dict()
        if hasattr(obj, "to_dict")
        else (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj)))
    )
    return {k: v for k, v in d.items() if isinstance(v, int | float | str | bool) or v is None}


def stitch_job(config: dict) -> dict:
    """Fit one stitching layer and report the penalty and accuracies."""
    from intertwiner import models, stitching

    splits = load_data(config["data"])
    a = load_model(config, config["model_a"])
    b = load_model(config, config["model_b"])
    site = models.sites(a)[config["site_index"]]
    kind = config["layer"] if isinstance(config["layer"], str) else tuple(config["layer"])
    scfg = filtered(
        stitching.StitchConfig,
        {
            **config.get("stitch_config", {}),
            "epochs": config["epochs"],
            "seed": config["seed"],
            "progress": False,
        },
    )
    res = stitching.stitch(a, b, site, layer=kind, data=splits, config=scfg)
    out = _scalars(res)
    out["site"] = site
    # a site inside a residual branch also stitched the block's input stream (report marks it)
    out["in_residual_branch"] = bool(getattr(res, "residual_streams", None))
    out["penalty"] = float(res.penalty)
    return StitchingResult.from_json(out).to_json()


def stage(
    model_pairs: dict[str, list[tuple[dict, dict]]],
    kinds: list,
    epochs: int,
    sites: int,
    stitch_config: dict | None = None,
) -> Stage:
    """Jobs over arch x pair x site x layer kind; ``sites`` caps the number of sites per arch,
    spread evenly over depth (site indices are resolved in the job from ``models.sites``).
    ``stitch_config`` holds extra ``StitchConfig`` fields (e.g. ``{"lr": 1e-2}``) for every job."""
    from intertwiner import models

    configs = []
    for arch, ps in model_pairs.items():
        if not ps:
            continue
        a0 = ps[0][0]
        # Sites are module names, independent of the input size: default build is enough.
        n_sites = len(models.sites(models.build(arch, **a0["model"])))
        idx = spread(n_sites, sites)
        for p, (a, b) in enumerate(ps):
            for s in idx:
                for kind in kinds:
                    job = StitchingJob(stage="stitching", arch=arch, pair=p, model_a=a, model_b=b,
                                       data=a["data"], site_index=s, layer=kind,
                                       layer_label=kind_label(kind), epochs=epochs, seed=p,
                                       stitch_config=dict(stitch_config or {}))  # fmt: skip
                    configs.append(job.to_json())
    return Stage(
        name="stitching",
        kind="stitching",
        fn=stitch_job,
        configs=configs,
        requires=("intertwiner.stitching:stitch,StitchConfig", "intertwiner.checkpoints:load"),
        description="section 4: stitching penalty per site and stitching-layer kind",
    )
