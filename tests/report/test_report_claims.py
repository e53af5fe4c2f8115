"""The report's claims: intervals, verdicts, the absorb section, the verdict summary line."""

from __future__ import annotations

from conftest import fill
from intertwiner.report import claim_verdicts, render
from intertwiner.store import Store


def _absorb(store: Store) -> None:
    for layer in range(3):
        for rep in range(3):
            for group, drop in (("G_ReLU", 0.0), ("orthogonal", 0.02 + 0.01 * rep)):
                store.put(
                    "absorb",
                    {"stage": "absorb", "activation": "relu", "group": group, "layer": layer,
                     "repeat": rep},
                    {"drop": drop, "layer": f"block{layer + 2}.conv", "base_accuracy": 0.8,
                     "initial_accuracy": 0.3, "refit_accuracy": 0.8 - drop,
                     "residual": 1e-14 if drop == 0 else 0.05},
                )  # fmt: skip


def test_claims_have_intervals_verdicts_and_a_summary(tmp_path):
    store = fill(tmp_path)
    _absorb(store)
    text = render(tmp_path)
    assert "closed-form refit of the next layer" in text and "block2.conv" in text
    assert "95% CI" in text and "inconclusive" in text and "Welch" in text
    assert "claims:" in text and "Inconclusive here" in text
    verdicts = {c["claim"]: c["verdict"] for c in claim_verdicts(tmp_path)}
    absorbed = [v for k, v in verdicts.items() if "G_ReLU map absorbed" in k]
    assert absorbed == ["holds"]
    not_absorbed = [v for k, v in verdicts.items() if "orthogonal map not absorbed" in k]
    assert not_absorbed == ["holds"]
    # two synthetic sanity repeats per group cannot decide anything
    assert all(v == "inconclusive" for k, v in verdicts.items() if "retrained" in k)
    assert set(verdicts.values()) <= {"holds", "does not hold", "inconclusive"}
