"""A small store with rows of every kind the report draws, so report tests need no training."""

from __future__ import annotations

import numpy as np
import pytest

from intertwiner.store import Store


def fill(folder, seed: int = 0) -> Store:
    """Synthetic rows shaped like each stage's real output (values drawn from a seeded RNG)."""
    rng = np.random.default_rng(seed)
    s = Store(folder)
    s.set_meta("run", {"preset": "synthetic", "executor": {"executor": "local"}})
    s.set_meta(
        "stages",
        [
            {"stage": "zoo", "status": "done", "jobs": 4, "notes": []},
            {
                "stage": "dissection",
                "status": "not run",
                "jobs": 3,
                "notes": ["not run: dependency unavailable (x)"],
            },
        ],
    )
    for act, fam in (("relu", "positive_monomial"), ("tanh", "signed_permutation")):
        s.put(
            "group_table",
            {"activation": act},
            {
                "activation": act,
                "group": "G",
                "family": fam,
                "phi": "A",
                "verify_error_float64": 0.0,
                "verify_error_float32": 1e-7,
                "larger_family_error": 0.5,
                "discovered_family": fam,
                "discover_agrees": True,
            },
        )
    zoo = []
    for arch in ("myrtle_cnn", "mlp"):
        for seed_ in range(2):
            cfg = {
                "stage": "zoo",
                "arch": arch,
                "activation": "relu",
                "seed": seed_,
                "train": {"epochs": 1},
            }
            zoo.append(cfg)
            s.put(
                "zoo",
                cfg,
                {
                    "test_accuracy": 0.9 + 0.01 * seed_,
                    "val_accuracy": 0.9,
                    "parameters": 100,
                    "train_seconds": 1.0,
                },
            )
    for arch, n in (("myrtle_cnn", 4), ("mlp", 2)):
        # module names, as the real stages store them
        sites = (
            [f"block{i + 1}.act" for i in range(n)] if n == 4 else [f"act{i + 1}" for i in range(n)]
        )
        for pair in range(2):
            mets = {
                m: rng.uniform(0.2, 1.0, (n, n)).tolist()
                for m in ("cka", "grelu_cka", "orthogonal_procrustes", "grelu_procrustes")
            }
            s.put(
                "metrics",
                {"arch": arch, "pair": pair, "metrics": list(mets)},
                {"sites": sites, **mets},
            )
            for site in range(n):
                for kind in ("full", "perm_scale", "low_rank_2"):
                    s.put(
                        "stitching",
                        {"arch": arch, "pair": pair, "site_index": site, "layer_label": kind},
                        {
                            "penalty": float(rng.uniform(0, 0.3)),
                            "site": sites[site],
                            "in_residual_branch": arch == "mlp" and site == 1,
                        },
                    )
    for act in ("relu", "sigmoid"):
        for g in ("G_ReLU", "orthogonal"):
            for layer in range(3):
                for rep in range(2):
                    s.put(
                        "sanity",
                        {"activation": act, "group": g, "layer": layer, "repeat": rep},
                        {"penalty": float(rng.uniform(0, 0.1))},
                    )
    for layer in ("block3.act", "block4.act"):
        s.put(
            "dissection",
            {"layer": layer},
            {
                "layer": layer,
                "group": "G_ReLU",
                "powers": [0.0, 0.5, 1.0],
                "power_counts": [12, 8, 3],
                "n_units": 16,
                "counts": {"identity": 12, "G_ReLU": 12, "orthogonal0": 2, "orthogonal1": 4},
            },
        )
    return s


@pytest.fixture()
def synthetic_run(tmp_path):
    fill(tmp_path)
    return tmp_path
