"""The report's alignment section, from synthetic rows shaped like the stage's output."""

from __future__ import annotations

import pytest

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


def test_merge_rows_of_the_stage(tmp_path):
    """The stage adds K=3 merge jobs per architecture (to the mean and to the first) when its
    pairs hold 3 distinct models, none with 2; a merge of a model with two randomly transformed
    copies of itself is that model (its accuracy), and the report shows the merges apart."""
    import torch

    from intertwiner import checkpoints, models
    from intertwiner.data import load
    from intertwiner.experiments import alignment_job
    from intertwiner.experiments.common import zoo_checkpoint
    from intertwiner.experiments.zoo import zoo_config
    from intertwiner.report.alignment import is_merge, merge_table
    from intertwiner.symmetry import apply, random_elements, trace

    data = {"name": "digits"}
    cfgs = [zoo_config("mlp", "relu", s, {"widths": [16]}, {"epochs": 1}, data) for s in range(3)]
    two = alignment_job.stage(
        {"mlp": [(cfgs[0], cfgs[1])]}, alphas=5, eval_samples=60, bn_samples=60
    )
    assert not any("models" in c for c in two.configs)
    st = alignment_job.stage(
        {"mlp": [(cfgs[0], cfgs[1]), (cfgs[0], cfgs[2])]}, alphas=5, eval_samples=60, bn_samples=60
    )
    merges = [c for c in st.configs if "models" in c]
    assert [c["reference"] for c in merges] == ["mean", "first"]
    assert all(c["models"] == cfgs for c in merges)

    splits = load("digits", seed=0)
    torch.manual_seed(0)
    base = models.build("mlp", widths=(16,), seed=0, **splits.model_config())
    x = torch.stack([splits.train[i][0] for i in range(4)])
    spec = trace(base, x)
    gen = torch.Generator().manual_seed(0)
    run = {"_run": str(tmp_path)}
    for k, c in enumerate(cfgs):
        m = base if k == 0 else apply(base, spec, random_elements(spec, generator=gen))
        checkpoints.save(m, zoo_checkpoint(run, c))
    store = Store(tmp_path)
    for c in merges:
        out = alignment_job.alignment_job({**c, **run})
        accs = out["input_accuracies"]
        assert accs == [accs[0]] * 3
        assert out["merged_accuracy"] == pytest.approx(accs[0], abs=1e-9)
        assert out["ensemble_accuracy"] == pytest.approx(accs[0], abs=1e-9)
        store.put("alignment", c, out)
    rows = store.rows("alignment")
    assert all(is_merge(r) for r in rows)
    table = merge_table(rows)
    assert [r["merge"] for r in table] == ["merge3/first", "merge3/mean"]
    assert table[0]["merged % (BN reset)"] == table[0]["inputs %"]
    # Beside pair rows, the merges get their own section and stay out of the barrier table.
    _fill(tmp_path)
    assert len(alignment_table(store.rows("alignment"))) == len(ALIGNMENTS)
    text = render(tmp_path)
    assert "merging many models" in text and "merge3/mean" in text
