"""Report section of the "alignment" stage: the barrier table and mean curves per architecture."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from intertwiner.report.figures import mean_std
from intertwiner.rows import AlignmentJob, AlignmentResult, TypedRow, read
from intertwiner.rows import is_merge as rows_is_merge
from intertwiner.store import Row

ORDER = ["none", "perm/weights", "full/weights", "perm/activations", "full/activations"]


def _order(label: str) -> int:
    return ORDER.index(label) if label in ORDER else len(ORDER)


def _has(rows: list[TypedRow], key: str) -> bool:
    return any(getattr(r.result, key) is not None for r in rows)


def is_merge(row: Row) -> bool:
    """A many-model merge row of the stage (its config lists ``models``), not a pair's."""
    return rows_is_merge(row.config)


def alignment_table(rows: list[Row]) -> list[dict]:
    """Per architecture and alignment: loss barrier (BN re-estimated / not / REPAIR), accuracy at
    the midpoint, relative weight distance to A and the time to align (mean +- std over pairs).
    Many-model merge rows are left to ``merge_table``."""
    by: dict = defaultdict(list)
    for r in read((r for r in rows if not is_merge(r)), "alignment"):
        by[(r.job.arch, r.job.alignment)].append(r)
    out = []
    for (arch, label), rs in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):

        def ms(key, scale=1.0, rs=rs):
            values = [getattr(r.result, key) for r in rs]
            m, s, _ = mean_std([scale * v for v in values if v is not None])
            return f"{m:.3f} ± {s:.3f}"

        has_bn = any(r.result.has_bn for r in rs)
        out.append(
            {
                "arch": arch,
                "alignment": label,
                "pairs": len(rs),
                "barrier (BN reset)": ms("barrier_bn_reset") if has_bn else "no BN",
                "barrier (no reset)": ms("barrier_no_reset"),
                "acc @ 0.5 % (BN reset)": ms("mid_accuracy_bn_reset", 100.0) if has_bn else "no BN",
                "acc @ 0.5 % (no reset)": ms("mid_accuracy_no_reset", 100.0),
                # Rows of runs made before REPAIR was measured have no such metric.
                "barrier (REPAIR)": ms("barrier_repair") if _has(rs, "barrier_repair") else "-",
                "acc @ 0.5 % (REPAIR)": (
                    ms("mid_accuracy_repair", 100.0) if _has(rs, "mid_accuracy_repair") else "-"
                ),
                "distance to A": ms("distance_after"),
                "align s": f"{mean_std([r.result.align_seconds for r in rs])[0]:.2f}",
            }
        )
    return out


def merge_table(rows: list[Row]) -> list[dict]:
    """Per architecture and reference (mean: MergeMany; first: every model aligned to the first):
    test accuracy (%) of the inputs (mean), their ensemble, the merge with BN re-estimated and
    REPAIRed, the merge as a share of the ensemble, rounds and seconds to align."""
    out = []
    merges = sorted(read((r for r in rows if is_merge(r)), "alignment"),
                    key=lambda r: (r.job.arch, r.job.alignment))  # fmt: skip
    for r in merges:
        m = r.result
        ens = m.ensemble_accuracy
        out.append(
            {
                "arch": r.job.arch,
                "merge": r.job.alignment,
                "models": len(r.job.models),
                "inputs %": f"{100 * float(np.mean(m.input_accuracies)):.1f}",
                "ensemble %": f"{100 * ens:.1f}",
                "merged % (BN reset)": f"{100 * m.merged_accuracy:.1f}",
                "merged % (REPAIR)": f"{100 * m.repair_accuracy:.1f}",
                "REPAIR / ensemble": f"{m.repair_accuracy / ens:.2f}" if ens > 0 else "-",
                "rounds": str(m.rounds),
                "align s": f"{m.align_seconds:.2f}",
            }
        )
    return out


def alignment_figure(rows: list[Row]):
    """Mean test loss along alpha per alignment (BN re-estimated), one panel per architecture."""
    if not rows:
        return None
    from intertwiner.report.figures import subplots

    typed: list[TypedRow[AlignmentJob, AlignmentResult]] = read(
        (r for r in rows if not is_merge(r)), "alignment"
    )
    archs = sorted({r.job.arch for r in typed})
    fig, axes = subplots(1, len(archs), figsize=(4.2 * len(archs), 3.2), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        by: dict = defaultdict(list)
        for r in typed:
            if r.job.arch == arch and r.result.losses_bn_reset is not None:
                by[r.job.alignment].append(r)
        for label in sorted(by, key=_order):
            rs = by[label]
            alphas = rs[0].result.alphas_bn_reset
            losses = np.mean([r.result.losses_bn_reset for r in rs], axis=0)
            ax.plot(alphas, losses, marker="o", ms=3, label=label)
        ax.set_title(arch, fontsize=9)
        ax.set_xlabel("alpha (0 = A, 1 = aligned B)")
        ax.set_ylabel("test loss (BN re-estimated)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
