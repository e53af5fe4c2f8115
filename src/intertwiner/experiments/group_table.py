"""Stage "groups": one job per activation, a row of the paper's Table 1, verified and rediscovered."""

from __future__ import annotations

from intertwiner.experiments.base import Stage
from intertwiner.rows import GroupTableJob, GroupTableResult


def group_job(config: dict) -> dict:
    """Verify and rediscover the intertwiner group of ``config["activation"]``."""
    from intertwiner.groups._table import group_row

    trials = {"trials": int(config["trials"])} if "trials" in config else {}  # else group_row's
    return GroupTableResult.from_json(group_row(config["activation"], **trials)).to_json()


def stage(activations: list[str], trials: int) -> Stage:
    return Stage(
        name="groups",
        kind="group_table",
        fn=group_job,
        configs=[
            GroupTableJob(stage="groups", activation=a, trials=trials).to_json()
            for a in activations
        ],
        requires=("intertwiner.groups._table",),
        description="Table 1: the intertwiner group of each activation, verified numerically",
    )
