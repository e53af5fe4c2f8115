"""Report section of the "grounding" stage: the similarity measures ranked by the grounding tests.

One table per zoo: each measure's score per test as "mean [low, high]" (the 95% t-interval over
seed models; percentages for layer identification and specificity), its mean rank over the tests
(1 = best; ``stats.mean_ranks``) and Kornblith et al.'s published layer-identification accuracy.
"""

from __future__ import annotations

from collections import defaultdict

from intertwiner.rows import GroundingJob, GroundingResult, TypedRow, read
from intertwiner.stats import Interval, mean_ranks
from intertwiner.store import Row

#: Test name -> (column title, shown in percent); the order of the columns.
TESTS = {
    "layer_identification": ("layer id %", True),
    "specificity": ("specificity %", True),
    "monotonicity": ("monotonicity ρ", False),
    "prediction": ("prediction ρ", False),
}


def zoo_label(config: dict) -> str:
    """``"cnn: 5 seeds, 10x16, 6 epochs, 200 inputs"`` for a stored grounding config."""
    return (f"{config['zoo']}: {config['seeds']} seeds, {config['depth']}x{config['width']}, "
            f"{config['epochs']} epochs, {config['n_inputs']} inputs")  # fmt: skip


def _interval(d: dict) -> Interval:
    keys = ("mean", "low", "high", "n", "sd", "method", "level")
    return Interval(**{k: d[k] for k in keys if k in d})


def grounding_tables(rows: list[Row]) -> dict[str, list[dict]]:
    """Zoo label -> the table rows (dicts of cells), best mean rank first."""
    by_zoo: dict[str, list[TypedRow]] = defaultdict(list)
    for r in read(rows, "grounding"):
        by_zoo[zoo_label(r.job.grounding)].append(r)
    out = {}
    for label, rs in sorted(by_zoo.items()):
        scores = [r.result.score for r in rs]
        tests = [t for t in TESTS if all(t in s["tests"] for s in scores)]
        ranks = mean_ranks([[s["tests"][t]["interval"]["mean"] for t in tests] for s in scores])
        table = []
        for s, rank in zip(scores, ranks, strict=True):
            row: dict = {"measure": s["name"]}
            for t in tests:
                title, percent = TESTS[t]
                iv = _interval(s["tests"][t]["interval"])
                row[title] = (iv.scaled(100) if percent else iv).format(1 if percent else 2)
            row["mean rank"] = f"{rank:.1f}"
            row["Kornblith et al. layer id %"] = s.get("published", "")
            table.append(row)
        out[label] = sorted(table, key=lambda c: float(c["mean rank"]))
    return out


def accuracy_text(rows: list[Row]) -> str:
    """The zoo's test accuracies (seed models; random-label models), from any of its rows."""
    parts = []
    typed: list[TypedRow[GroundingJob, GroundingResult]] = read(rows, "grounding")
    for label in sorted({zoo_label(r.job.grounding) for r in typed}):
        r = next(r for r in typed if zoo_label(r.job.grounding) == label)
        acc = ", ".join(f"{a:.3f}" for a in r.result.test_accuracy)
        rand = ", ".join(f"{a:.3f}" for a in r.result.random_label_accuracy or [])
        parts.append(f"{label}: test accuracy {acc}" + (f"; random labels {rand}" if rand else ""))
    return "; ".join(parts)
