"""Small pieces of the experiment framework: pairs, keys without runtime fields, requirements."""

from __future__ import annotations

from intertwiner.experiments.base import Stage, stored_config
from intertwiner.experiments.common import model_name, pairs
from intertwiner.experiments.stitching_sweep import kind_label
from intertwiner.runners.probe import probe_job
from intertwiner.store import config_key


def test_pairs_are_distinct_and_disjoint_first():
    assert pairs(4, 2) == [(0, 1), (2, 3)]
    for n in range(2, 8):
        ps = pairs(n, 100)
        assert len(ps) == len(set(ps)) == n * (n - 1) // 2  # every unordered pair exactly once
        assert all(i < j for i, j in ps)


def test_runtime_keys_do_not_change_the_key_or_the_checkpoint_name():
    cfg = {"arch": "mlp", "activation": "relu", "seed": 0, "model": {}}
    assert stored_config({**cfg, "_run": "/a"}) == cfg
    assert model_name({**cfg, "_run": "/a"}) == model_name({**cfg, "_run": "/b"}) == model_name(cfg)
    assert config_key(stored_config({**cfg, "_run": "/a"})) == config_key(cfg)
    assert model_name({**cfg, "seed": 1}) != model_name(cfg)


def test_missing_requirements_are_named():
    st = Stage(
        "x",
        "x",
        probe_job,
        [],
        requires=(
            "intertwiner.store:Store",
            "intertwiner.store:nope",
            "intertwiner.no_such_module",
        ),
    )
    missing = st.missing()
    assert len(missing) == 2
    assert missing[0].startswith("intertwiner.store:nope") and "no_such_module" in missing[1]


def test_kind_label():
    assert kind_label("full") == "full" and kind_label(["low_rank", 2]) == "low_rank_2"


def test_spread_sites():
    from intertwiner.experiments.stitching_sweep import spread

    assert spread(19, 100) == list(range(19))
    assert spread(7, 4) == [0, 2, 4, 6]
    assert spread(4, 4) == [0, 1, 2, 3]
    for n in range(1, 20):
        for k in range(1, 25):
            s = spread(n, k)
            assert len(s) == min(n, k) and s == sorted(set(s)) and s[-1] == n - 1
