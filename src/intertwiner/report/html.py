"""The self-contained HTML report of a run folder (figures embedded as base64 PNG)."""

from __future__ import annotations

import html
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from intertwiner import _atomic
from intertwiner.report import figures as F
from intertwiner.report.claims import ci_text
from intertwiner.report.compare import comparison
from intertwiner.report.paper_numbers import SOURCE
from intertwiner.rows import read
from intertwiner.stats import t_interval
from intertwiner.store import Row, Store, open_existing

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1100px;padding:0 16px 40px;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:8px 0;max-width:100%}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
details{margin:8px 0}summary{cursor:pointer;color:#333}
th{background:#f3f3f3}
img{max-width:100%;height:auto;display:block;margin:8px 0}
pre{white-space:pre-wrap;word-break:break-all;background:#f7f7f7;padding:8px;font-size:12px}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 0}
.bad{color:#b00020;font-weight:600}.good{color:#1b7f3b;font-weight:600}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    cols = cols or list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if v in ("DIFFERS", "does not hold"):
        return f'<span class="bad">{_e(v)}</span>'
    if v in ("agrees", "holds"):
        return f'<span class="good">{_e(v)}</span>'
    return _e("" if v is None else v)


def _counts(values, unit: str) -> str:
    """``[2]`` epochs -> "2 epochs"; ``[1, 3]`` -> "1 to 3 epochs" (no Python list syntax in prose)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return f"an unrecorded number of {unit}s"
    lo, hi = vals[0], vals[-1]
    text = f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}"
    return f"{text} {unit}{'' if lo == hi == 1 else 's'}"


def _img(fig, alt: str) -> str:
    if fig is None:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{F.to_png_base64(fig)}">'


def _zoo_table(rows: list[Row]) -> list[dict]:
    by: dict = defaultdict(list)
    for r in read(rows, "zoo"):
        c = r.job
        by[(c.role or "zoo", c.arch, c.activation, (c.data or {}).get("name", ""))].append(r)
    out = []
    for (role, arch, act, data), rs in sorted(by.items()):
        te = F.mean_std([100 * r.result.test_accuracy for r in rs])
        va = F.mean_std([100 * r.result.val_accuracy for r in rs])
        out.append(
            {
                "role": role,
                "arch": arch,
                "activation": act,
                "data": data,
                "models": len(rs),
                "test acc % (mean ± std)": f"{te[0]:.2f} ± {te[1]:.2f}",
                "val acc %": f"{va[0]:.2f} ± {va[1]:.2f}",
                "parameters": rs[0].result.parameters,
                "epochs": rs[0].job.train.get("epochs"),
                "train s (mean)": f"{F.mean_std([r.result.train_seconds for r in rs])[0]:.1f}",
            }
        )
    return out


def _verdict_summary(table: list[dict]) -> str:
    """One line: how many claims hold, fail, or cannot be told, naming the inconclusive ones."""
    claims = [r for r in table if r.get("verdict") in ("holds", "does not hold", "inconclusive")]
    if not claims:
        return ""
    count = {v: sum(r["verdict"] == v for r in claims) for v in ("holds", "does not hold",
                                                                  "inconclusive")}  # fmt: skip
    text = (f"{len(claims)} claims: {count['holds']} hold, {count['does not hold']} do not "
            f"hold, {count['inconclusive']} inconclusive.")  # fmt: skip
    unsure = [f"{r['experiment']}: {r['quantity'].split(' (')[0]}" for r in claims
              if r["verdict"] == "inconclusive"]  # fmt: skip
    if unsure:
        text += " Inconclusive here (the interval straddles the decision): " + "; ".join(unsure)
    return f'<p class="note">{_e(text)}</p>'


def _absorb_rows(rows: list[Row]) -> list[dict]:
    """Mean ± std over repeats of the drop and the residual per (activation, conv, map)."""
    by: dict = defaultdict(list)
    for r in read(rows, "absorb"):
        c = r.job
        by[(c.activation, c.layer, c.group)].append(r.result)
    out = []
    for (act, layer, group), ms in sorted(by.items()):
        drop, sd, n = F.mean_std([100 * m.drop for m in ms])
        out.append({"activation": act, "conv": layer, "refit layer": ms[0].layer,
                    "map": group, "repeats": n,
                    "base accuracy": f"{100 * ms[0].base_accuracy:.2f}",
                    "before refit": f"{100 * np.mean([m.initial_accuracy for m in ms]):.2f}",
                    "drop (points)": f"{drop:.3f} ± {sd:.3f}",
                    "residual": f"{np.mean([m.residual for m in ms]):.2e}"})  # fmt: skip
    return out


def _stitch_rows(rows: list[Row]) -> list[dict]:
    out = []
    labels = F.site_labels(rows)
    for arch, kinds in sorted(F.stitch_table(rows).items()):
        for kind, sites in sorted(kinds.items()):
            for s, vals in sorted(sites.items()):
                m, sd, n = F.mean_std(vals)
                out.append(
                    {
                        "arch": arch,
                        "layer kind": kind,
                        "site": labels[arch].get(s, s),
                        "pairs": n,
                        "penalty (points)": f"{m:.2f} ± {sd:.2f}",
                        "95% CI (t)": ci_text(t_interval(vals)) if n else "",
                    }
                )
    return out


def _method_notes(rows_by_kind: dict[str, list[Row]]) -> str:
    """How our protocol differs from the paper's, with the sizes read from the stored configs."""
    notes = []
    st = rows_by_kind.get("stitching", [])
    if st:
        ep = {r.job.epochs for r in read(st, "stitching")}
        notes.append(
            f"Stitching: {_counts(ep, 'epoch')} per stitch; the epoch is chosen on a validation split and "
            "the penalty measured on test data (the paper takes the best test accuracy over "
            "epochs, which flatters every method); perm_scale uses the library's default solver "
            "(activation matching, then fine-tuning), not the paper's Birkhoff relaxation."
        )
    met = rows_by_kind.get("metrics", [])
    if met:
        n = {r.result.n_samples for r in read(met, "metrics")}
        notes.append(
            f"Metrics on {_counts(n, 'test image')} (the whole test split unless the preset caps "
            "it; the paper: all 10,000 CIFAR-10 test images)."
        )
    san = rows_by_kind.get("sanity", [])
    if san:
        jobs = [r.job for r in read(san, "sanity")]
        ep = {j.epochs for j in jobs}
        reps = {j.repeat for j in jobs}
        data = {(j.model or {}).get("data", {}).get("name") for j in jobs}
        notes.append(
            f"Sanity test: {_counts(ep, 'retraining epoch')} with the epoch chosen on validation, "
            f"{_counts({len(reps)}, 'repeat')} per (map, conv), on {', '.join(map(str, data))} "
            "(the paper: 50 epochs, 10 repeats, CIFAR-10)."
        )
    if rows_by_kind.get("absorb"):
        notes.append(
            "Closed-form refit (not in the paper): only the layer after the activation is refit "
            "by least squares from the frozen features to the base model's output of that layer."
        )
    if not notes:
        return ""
    return "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _executor_text(ex) -> str:
    """``{"executor": "local", "workers": 2, ...}`` -> "local (workers 2, ...)"."""
    if not isinstance(ex, dict):
        return str(ex)
    rest = ", ".join(f"{k} {v}" for k, v in ex.items() if k != "executor" and v not in (None, ""))
    return f"{ex.get('executor', '?')}" + (f" ({rest})" if rest else "")


def _run_rows(store: Store, meta: dict) -> tuple[dict[str, list[Row]], int]:
    """The rows of the run's own jobs by kind (``meta["jobs"]``; every row in a folder written
    before that list existed), and how many other rows the store holds."""
    jobs = meta.get("jobs")
    rows_by_kind = {k: store.rows(k) for k in store.kinds()}
    if jobs is None:
        return rows_by_kind, 0
    jobs = set(jobs)
    kept = {k: [r for r in rs if r.key in jobs] for k, rs in rows_by_kind.items()}
    left_out = sum(map(len, rows_by_kind.values())) - sum(map(len, kept.values()))
    return {k: rs for k, rs in kept.items() if rs}, left_out


def _stage_parts(stages: list[dict]) -> list[str]:
    """The Stages table: every stage's status, with the notes saying why."""
    parts: list[str] = []
    st_rows = []
    for s in stages:
        notes = list(s.get("notes", []))
        for f in s.get("failed", [])[:3]:
            notes.append("failed job: " + f["error"].splitlines()[-1] if f["error"] else "failed")
        if len(s.get("failed", [])) > 3:
            notes.append(f"... and {len(s['failed']) - 3} more failed jobs")
        st_rows.append(
            {
                "stage": s["stage"],
                "what": s.get("description", ""),
                "status": s.get("status"),
                "jobs": s.get("jobs"),
                "resumed (already done)": s.get("skipped_done", ""),
                "notes": "; ".join(notes),
            }
        )
    parts += ["<h2>Stages</h2>", _table(st_rows)]
    return parts


def _comparison_parts(rows_by_kind: dict[str, list[Row]]) -> list[str]:
    """Our numbers beside the paper's, the claim verdicts and the method notes."""
    parts: list[str] = []
    table = comparison(rows_by_kind)
    parts += [
        "<h2>Our numbers beside the paper's</h2>",
        f"<p>Paper: {_e(SOURCE)}. mCNN = our <code>myrtle_cnn</code> (narrow, on MNIST; the sanity "
        "test's on concept scenes). "
        "Difference = ours − paper, in the quantity's units (accuracy points or "
        "similarity). Penalties = mean clean accuracy − stitched/rotated accuracy. 95% CI: "
        "Student t-interval of the mean over model pairs, repeats or seeds (Welch's for the "
        "difference of two independent groups). Verdict of a claim: <b>holds</b> when the whole "
        "interval lies on the claimed side, <b>does not hold</b> when it lies wholly on the other "
        "side, <b>inconclusive</b> when it straddles the decision: this run cannot tell. d = "
        "effect size (mean / std); <em>detectable</em> = the smallest true difference the test "
        "would find with 80% power at these sizes.</p>",
        _table(table),
        _verdict_summary(table),
    ]
    parts.append(_method_notes(rows_by_kind))
    absent = [
        label
        for kind, label in (
            ("sanity", "3.3 sanity test"),
            ("stitching", "4 stitching"),
            ("metrics", "5 metrics"),
            ("dissection", "6 dissection"),
        )
        if kind not in rows_by_kind
    ]
    if absent:
        parts.append(
            f'<p class="note">Not measured in this run: {_e(", ".join(absent))} '
            "(see Stages for why).</p>"
        )
    return parts


def _section_parts(rows_by_kind: dict[str, list[Row]]) -> list[str]:
    """One section per experiment: tables and figures."""
    parts: list[str] = []
    g = rows_by_kind.get("group_table", [])
    if g:
        cols = {  # short headers: the table fits the page
            "activation": "activation",
            "group": "group",
            "family": "family",
            "phi": "φ",
            "verify_error_float64": "error f64",
            "verify_error_float32": "error f32",
            "larger_family_error": "error, next larger family",
            "discovered_family": "discovered",
            "discover_agrees": "agrees",
        }
        parts += [
            "<h2>Table 1: intertwiner groups</h2>",
            _table(
                [
                    {h: r.result.to_json().get(c) for c, h in cols.items()}
                    for r in read(g, "group_table")
                ]
            ),  # fmt: skip
            _img(F.groups_figure(g), "group verification errors"),
        ]
    z = rows_by_kind.get("zoo", [])
    if z:
        parts += ["<h2>Model zoo</h2>", _table(_zoo_table(z))]
    s = rows_by_kind.get("stitching", [])
    if s:
        parts += [
            "<h2>Section 4: stitching penalties</h2>",
            "<p>Mean ± std over model pairs of (mean clean accuracy − stitched accuracy), "
            "per activation site (its module name) and stitching-layer kind. A site marked * "
            "sits inside a residual branch: the block's input stream is stitched too.</p>",
            _img(F.stitching_figure(s), "stitching penalties"),
            _table(_stitch_rows(s)),
        ]
    m = rows_by_kind.get("metrics", [])
    if m:
        means = F.metric_means(m)
        parts += [
            "<h2>Section 5: representation similarity</h2>",
            "<p>Layer × layer similarity between independently trained models (mean over "
            "pairs), then the same-layer values against depth.</p>",
        ]
        parts += [_img(F.heatmap_figure(a, means[a]), f"heatmaps {a}") for a in sorted(means)]
        parts.append(_img(F.diagonal_figure(means), "diagonals"))
    sa = rows_by_kind.get("sanity", [])
    if sa:
        parts += [
            "<h2>Section 3.3: rotation sanity test</h2>",
            _img(F.sanity_figure(sa), "sanity test"),
        ]
    ab = rows_by_kind.get("absorb", [])
    if ab:
        parts += [
            "<h2>Section 3.3, sharpest form: closed-form refit of the next layer</h2>",
            "<p>A fixed map before the activation; only the next layer refit by least squares "
            "on frozen features. Drop = base − refit test accuracy (points); residual = relative "
            "least-squares residual (0 = the layer absorbs the map exactly).</p>",
            _table(_absorb_rows(ab)),
        ]
    d = rows_by_kind.get("dissection", [])
    if d:
        parts += ["<h2>Section 6: dissection</h2>", _img(F.dissection_figure(d), "dissection")]
    from intertwiner.report.alignment import is_merge, merge_table

    al = [r for r in rows_by_kind.get("alignment", []) if not is_merge(r)]
    merges = merge_table(rows_by_kind.get("alignment", []))
    if al:
        from intertwiner.report.alignment import alignment_figure, alignment_table

        parts += [
            "<h2>Beyond the paper: alignment and loss barriers</h2>",
            "<p>B aligned to A (weights or activations; permutations only = Git Re-Basin, or "
            "each site's full intertwiner group), then the straight line between them on the "
            "test split. Barrier = max over alpha of the loss minus the linear interpolation of "
            "the endpoint losses. Mean ± std over pairs.</p>",
            _img(alignment_figure(al), "barrier curves"),
            _table(alignment_table(al)),
        ]
    if merges:
        parts += [
            "<h2>Beyond the paper: merging many models</h2>",
            "<p>Three models of one architecture aligned (weights, full group) to their common "
            "mean (MergeMany) or to the first, averaged with BatchNorm re-estimated, then "
            "REPAIRed; test accuracy against the inputs and their ensemble (averaged "
            "probabilities).</p>",
            _table(merges),
        ]
    gr = rows_by_kind.get("grounding", [])
    if gr:
        from intertwiner.report.grounding import accuracy_text, grounding_tables

        parts += [
            "<h2>Beyond the paper: which similarity measure to trust</h2>",
            "<p>The grounding tests of <code>intertwiner benchmark-measures</code> on zoos "
            "trained from several seeds: layer identification (Kornblith et al. 2019: is the "
            "corresponding layer of another seed's model the most similar one), specificity "
            "(seed pairs more similar than seed vs random-label pairs; 50% is chance), "
            "monotonicity (similarity to the first layer falls with depth) and prediction "
            "(similarity of the last hidden layers ranks model pairs as their agreement on "
            "test images does). Mean [95% t-interval over seed models]; measures ranked by "
            f"their mean rank over the tests. {_e(accuracy_text(gr))}.</p>",
        ]
        for label, table in grounding_tables(gr).items():
            parts += [f"<h3>{_e(label)}</h3>", _table(table)]

    return parts


def _provenance_parts(rows_by_kind: dict[str, list[Row]], meta: dict, run: dict) -> list[str]:
    """Job timings, zoo seeds, the run configuration."""
    parts: list[str] = []
    # Provenance.
    timing = []
    for kind, rs in rows_by_kind.items():
        secs = [r.seconds or 0.0 for r in rs]
        timing.append(
            {
                "kind": kind,
                "rows": len(rs),
                "job seconds (sum)": f"{sum(secs):.1f}",
                "slowest job s": f"{max(secs):.1f}",
            }
        )
    z = rows_by_kind.get("zoo", [])
    seeds = sorted({r.job.seed for r in read(z, "zoo")})
    parts += [
        "<h2>Provenance</h2>",
        _table(timing),
        f"<p>Zoo seeds: {_e(', '.join(map(str, seeds)) or 'none')}. Wall time of the last run: "
        f"{_e(round(meta.get('last_run', {}).get('seconds', 0.0), 1))} s.</p>",
        "<details><summary>Run configuration, versions and executor (JSON)</summary><pre>"
        + _e(json.dumps(run, indent=1, default=str))
        + "</pre></details>",
    ]
    return parts


def render(folder: str | os.PathLike) -> str:
    """The report HTML of the run in ``folder`` (reads only the results store)."""
    store = open_existing(folder)
    meta = store.meta()
    run = meta.get("run", {})
    stages = meta.get("stages", [])
    rows_by_kind, left_out = _run_rows(store, meta)
    parts = [f"<h1>intertwiner reproduce: {_e(Path(folder).resolve().name)}</h1>"]
    parts.append(
        f"<p>Preset <b>{_e(run.get('preset'))}</b>, data <b>{_e(run.get('data') or 'preset default')}"
        f"</b>, executor <b>{_e(_executor_text(run.get('executor')))}</b>. "
        f"{sum(map(len, rows_by_kind.values()))} finished jobs. "
        f"Report built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>"
    )
    if left_out:
        parts.append(
            f'<p class="note">{left_out} stored rows are no job of this run\'s preset and '
            "configuration (rows of an older run or library version); they are left out.</p>"
        )
    parts.append(
        '<p class="note">Scale caveat: the CPU presets train small models for a few epochs on '
        "5,000 MNIST images (or sklearn digits; the sanity test and dissection on procedural "
        "concept scenes); the paper trains full-size models for 50 epochs on CIFAR-10 (100 seeds, "
        "16-32 pairs). Compare the <em>direction</em> of effects, not the absolute numbers, and "
        "read each claim's verdict with its interval.</p>"
    )
    parts += _stage_parts(stages)
    parts += _comparison_parts(rows_by_kind)
    parts += _section_parts(rows_by_kind)
    parts += _provenance_parts(rows_by_kind, meta, run)
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>intertwiner report</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def claim_verdicts(folder: str | os.PathLike) -> list[dict]:
    """The claims of the run in ``folder``: ``{"claim", "statistic", "ci", "verdict"}`` each."""
    store = open_existing(folder)
    rows_by_kind, _ = _run_rows(store, store.meta())
    return [
        {"claim": f"{r['experiment']}: {r['quantity'].split(' (')[0]}", "statistic": r["ours"],
         "ci": r.get("95% CI", ""), "verdict": r["verdict"]}
        for r in comparison(rows_by_kind)
        if r.get("verdict") in ("holds", "does not hold", "inconclusive")
    ]  # fmt: skip


def build_report(folder: str | os.PathLike) -> Path:
    """Write ``folder/report.html`` atomically from the store and return its path."""
    return _atomic.write_text(Path(folder) / "report.html", render(folder))
