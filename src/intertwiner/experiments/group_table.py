"""Stage "groups": one job per activation, a row of the paper's Table 1, verified and rediscovered."""

from __future__ import annotations

from intertwiner.experiments.base import Stage


def group_job(config: dict) -> dict:
    """Verify and rediscover the intertwiner group of ``config["activation"]``."""
    from intertwiner.groups._table import group_row

    return group_row(config["activation"], trials=int(config.get("trials", 16)))


def stage(activations: list[str], trials: int = 16) -> Stage:
    return Stage(
        name="groups",
        kind="group_table",
        fn=group_job,
        configs=[{"stage": "groups", "activation": a, "trials": trials} for a in activations],
        requires=("intertwiner.groups._table",),
        description="Table 1: the intertwiner group of each activation, verified numerically",
    )
