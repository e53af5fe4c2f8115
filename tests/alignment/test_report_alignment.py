"""The report's alignment section, from synthetic rows shaped like the stage's output."""

from __future__ import annotations

from intertwiner.experiments.alignment_job import ALIGNMENTS
from intertwiner.report import render
from intertwiner.report.alignment import alignment_table
from intertwiner.store import Store


def _fill(folder) -> Store:
    s = Store(folder)
    s.set_meta("run", {"preset": "synthetic", "executor": {"executor": "local"}})
    s.set_meta("stages", [{"stage": "alignment", "status": "done", "jobs": 10, "notes": []}])
    for pair in range(2):
        for k, (label, method, group) in enumerate(ALIGNMENTS):
            cfg = {"stage": "alignment", "arch": "myrtle_cnn", "pair": pair, "alignment": label,
                   "method": method, "group": group}  # fmt: skip
            losses = [0.1, 0.1 + 1.0 / (k + 1), 0.12]
            s.put(
                "alignment",
                cfg,
                {
                    "align_seconds": 0.5,
                    "sweeps": 3,
                    "distance_before": 1.0,
                    "distance_after": 0.8,
                    "barrier_bn_reset": 1.0 / (k + 1),
                    "barrier_no_reset": 2.0,
                    "mid_accuracy_bn_reset": 0.9,
                    "mid_accuracy_no_reset": 0.1,
                    "alphas_bn_reset": [0.0, 0.5, 1.0],
                    "losses_bn_reset": losses,
                    "accuracies_bn_reset": [0.98, 0.9, 0.97],
                    "alphas_no_reset": [0.0, 0.5, 1.0],
                    "losses_no_reset": losses,
                    "accuracies_no_reset": [0.98, 0.1, 0.97],
                    "has_bn": True,
                    # the second pair is an older run, made before REPAIR was measured
                    **({"barrier_repair": 0.05, "mid_accuracy_repair": 0.95} if pair else {}),
                },
            )
    return s


def test_alignment_section(tmp_path):
    store = _fill(tmp_path)
    table = alignment_table(store.rows("alignment"))
    assert [r["alignment"] for r in table] == [a[0] for a in ALIGNMENTS]
    assert table[2]["barrier (BN reset)"].startswith("0.333")
    assert (
        table[2]["barrier (REPAIR)"].startswith("0.050")
        and "95.0" in table[2]["acc @ 0.5 % (REPAIR)"]
    )
    text = render(tmp_path)
    assert "alignment and loss barriers" in text
    assert "full/activations" in text and "data:image/png;base64" in text
