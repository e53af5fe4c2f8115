"""Sweep ``symmetry.trace`` over the timm and torchvision model zoos (not a test).

Models: the smallest variant of every timm family (names grouped by their prefix, see ``family``;
parameters counted on the meta device, families whose smallest variant has more than
``--max-params`` are skipped and listed) and every torchvision classification model
(``torchvision.models.list_models(module=torchvision.models)``). Random weights (never downloads),
float64, random BatchNorm statistics, random per-feature parameters (norm weights, layer scales,
biases: the zoo's zero/one initialisations would hide broken symmetries), one small input.

For each model: family, parameters, sites, coverage (``SymmetrySpec.coverage``: tensors, scalars,
without the output side), the function change (max relative output change under one random element
of the whole spec, on the example input and on a fresh one: ~1e-12 when the spec is sound), heads
found, what stays frozen (per module, with the op and the module class) and the time.

Resumable: one JSON line per model in ``--out`` (the file is rewritten atomically after each
model; done models are skipped). Each model runs in a worker process with ``torch.set_num_threads
(1)`` and a timeout (``--timeout``); a worker that times out or dies is replaced.

Run: ``python benchmarks/trace_zoo.py`` (hours on a loaded 2-core machine), then
``python benchmarks/trace_zoo.py --report`` for the summary and ``benchmarks/results/trace_zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
#: Results: ``<OUT>_<source>.jsonl`` (one per source, so that two sweeps can run side by side),
#: ``<OUT>_<source>.skipped.json``, and the per-model table ``<OUT>.md``.
OUT = RESULTS / "trace_zoo"
SELECTION = RESULTS / "trace_zoo_timm_params.json"
SIZES = (64, 96, 128, 160, 224, 256)
#: First tokens that name a variant of a family rather than a family (``tf_efficientnet``).
_TWO_TOKENS = {"tf", "gluon", "legacy", "test", "dm", "tiny", "wide", "nf", "ese", "eca", "gc"}


def family(name: str) -> str:
    """timm family of a model name: its first ``_`` token (two for ``tf_``, ``nf_``, ...), less a
    trailing size (``resnet50d`` -> ``resnet``; versions stay: ``mobilenetv3``)."""
    tokens = name.split("_")
    head = "_".join(tokens[:2]) if tokens[0] in _TWO_TOKENS and len(tokens) > 1 else tokens[0]
    return re.sub(r"(?<![v.])\d+[a-z]{0,2}$", "", head) or head


# ---- selection ----------------------------------------------------------------------------------
#: Name parts of large variants: never a family's smallest when the family has other names.
_LARGE = re.compile(
    r"large|huge|giant|gigantic|enormous|_base|base_|_[hgl]_|_[0-9.]+b_|so400m|so150m"
)


def timm_params(refresh: bool = False) -> dict[str, int | None]:
    """Parameters of the timm models that may be the smallest of their family (meta device; None:
    fails to build), cached on disk. Names of large variants (``_LARGE``) are counted only in a
    family that has no other name."""
    import torch
    from tqdm import tqdm

    from intertwiner._atomic import write_text
    from intertwiner.testing import import_timm

    timm = import_timm()
    cache = {} if refresh or not SELECTION.exists() else json.loads(SELECTION.read_text())
    fams: dict[str, list[str]] = {}
    for n in timm.list_models():
        fams.setdefault(family(n), []).append(n)
    names = []
    for members in fams.values():
        small = [n for n in members if not _LARGE.search(n)] or members
        names += [n for n in small if n not in cache]
    for i, n in enumerate(tqdm(names, desc="counting timm parameters (meta)")):
        try:
            with torch.device("meta"):
                m = timm.create_model(n, pretrained=False)
            cache[n] = sum(p.numel() for p in m.parameters())
        except Exception:  # noqa: BLE001 (a model that does not build is listed as such)
            cache[n] = None
        if i % 50 == 49 or i == len(names) - 1:
            write_text(SELECTION, json.dumps(cache, indent=0, sort_keys=True))
    return cache


def select(
    max_params: float, max_tv: float, sources: tuple[str, ...] = ("timm", "torchvision")
) -> tuple[list[dict], list[dict]]:
    """(jobs, skipped): the smallest timm model per family, then torchvision's models (those over
    ``max_tv`` parameters skipped: their float64 copies would not fit a shared 2-core machine)."""
    import torch

    from intertwiner.testing import import_torchvision

    params = timm_params() if "timm" in sources else {}
    fams: dict[str, list[tuple[int, str]]] = {}
    for n, p in params.items():
        fams.setdefault(family(n), []).append((p if p is not None else 1 << 62, n))
    jobs, skipped = [], []
    for fam, members in sorted(fams.items()):
        p, n = min(members)
        if p == 1 << 62:
            skipped.append(
                {"source": "timm", "family": fam, "model": n, "why": "no variant builds"}
            )
        elif p > max_params:
            skipped.append(
                {
                    "source": "timm",
                    "family": fam,
                    "model": n,
                    "why": f"smallest has {p / 1e6:.0f}M params",
                }
            )
        else:
            jobs.append({"source": "timm", "name": n, "family": fam, "params": p})
    tv = import_torchvision()
    for n in tv.models.list_models(module=tv.models) if "torchvision" in sources else []:
        try:  # the weights' metadata (nothing downloaded), else a build on the meta device
            p = next(iter(tv.models.get_model_weights(n))).meta["num_params"]
        except (ValueError, KeyError, StopIteration):
            with torch.device("meta"):
                p = sum(q.numel() for q in tv.models.get_model(n, weights=None).parameters())
        fam = tv.models.get_model_builder(n).__module__.rsplit(".", 1)[-1]
        job = {"source": "torchvision", "name": n, "family": fam, "params": p}
        if p > max_tv:
            skipped.append({**job, "model": n, "why": f"{p / 1e6:.0f}M params"})
        else:
            jobs.append(job)
    return jobs, skipped


# ---- one model (in the worker) ------------------------------------------------------------------
def _build(job: dict):
    """(model, input) with the smallest input size in ``SIZES`` that the model runs on."""
    import torch

    from intertwiner.testing import import_timm, import_torchvision

    last = None
    for size in SIZES:
        for kwargs in ({"img_size": size}, {}) if job["source"] == "timm" else ({},):
            try:
                if job["source"] == "timm":
                    model = import_timm().create_model(job["name"], pretrained=False, **kwargs)
                else:
                    tv = import_torchvision()
                    extra = {"image_size": size} if job["name"].startswith("vit_") else {}
                    model = tv.models.get_model(job["name"], weights=None, **extra)
                model.eval()
                x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
                with torch.no_grad():
                    model(x)
                return model, x
            except Exception as e:  # noqa: BLE001 (next size, else the last error is reported)
                last = e
    raise RuntimeError(f"no input size in {SIZES} works: {type(last).__name__}: {last}")


def _rel_change(model, spec, x, seed: int) -> float:
    import torch

    from intertwiner.symmetry import check, random_elements

    with torch.no_grad():
        ref = float(model(x).abs().max()) or 1.0
    els = random_elements(spec, generator=torch.Generator().manual_seed(seed))
    return check(model, spec, x, elements=els) / ref


def gap(reason: str) -> str:
    """A reason with module names, node ids and line numbers taken out, for grouping."""
    r = re.sub(r"'[^']*'", "<m>", reason.replace("e.g.", "eg"))
    r = re.sub(r"\b\w+(?:\.\w+)+(?: \(\w+\))?", lambda m: m[0] if ".py" in m[0] else "<m>", r)
    r = re.sub(r"\(\w+\)", "", r)
    r = re.sub(r":\d+", "", r)
    return re.sub(r"\s+", " ", r).strip()


def run_one(job: dict) -> dict:
    """Trace one model and measure it; a row for the JSON-lines file."""
    import torch

    from intertwiner.symmetry import trace
    from intertwiner.testing import randomize_model

    t0 = time.perf_counter()
    torch.manual_seed(0)  # the registries initialise from the global generator: same model each run
    model, x = _build(job)
    randomize_model(model, 0)
    model = model.double().eval()
    x = x.double()
    row = {**job, "input": list(x.shape[1:]), "params": sum(p.numel() for p in model.parameters())}
    t1 = time.perf_counter()
    spec = trace(model, x)
    row["trace_s"] = time.perf_counter() - t1
    cov = spec.coverage(model, x)
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    row["change"] = max(_rel_change(model, spec, x, 2), _rel_change(model, spec, fresh, 3))
    row["verified_error"] = spec.verified_error
    # the tolerance and the round-off that scaled it (None: every check passed at 1e-9)
    row["verified_tolerance"] = spec.verified_tolerance
    row["verified_roundoff"] = spec.verified_roundoff
    row["sites"] = len(spec.sites)
    row["dropped"] = len(spec.dropped)
    row["heads"] = sum(s.kind == "attention_heads" for s in spec.sites)
    row["attention_modules"] = sum(
        "attention" in type(m).__name__.lower() or isinstance(m, torch.nn.MultiheadAttention)
        for m in model.modules()
    )
    row |= {k: v for k, v in cov.to_dict().items() if k != "frozen"}
    frozen = []
    for f in cov.frozen:
        try:
            cls = type(model.get_submodule(f.module)).__name__
        except AttributeError:
            cls = ""
        frozen.append({"module": f.module, "class": cls, "tensors": [t.rsplit(".", 1)[-1] for t in f.tensors],
                       "scalars": f.scalars, "reason": f.reason[:300], "gap": gap(f.reason),
                       "output_side": f.output_side})  # fmt: skip
    row["frozen"] = frozen
    reasons = cov.reasons()
    row["top_reason"] = gap(reasons[0][0]) if reasons else ""
    row["status"] = "ok"
    row["time_s"] = time.perf_counter() - t0
    return row


def _worker(conn) -> None:
    import torch

    torch.set_num_threads(1)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            row = run_one(job)
        except Exception as e:  # noqa: BLE001 (recorded on the row)
            row = {**job, "status": "error", "error": f"{type(e).__name__}: {str(e)[:400]}",
                   "where": traceback.format_exc(limit=-3)[-600:]}  # fmt: skip
        conn.send(row)


class _Pool:
    """One worker process, replaced after a timeout or a crash."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        self.proc = None

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def run(self, job: dict, timeout: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        t0 = time.perf_counter()
        self.conn.send(job)
        if self.conn.poll(timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        died = self.proc.is_alive() is False
        self.proc.kill()
        self.proc.join()
        self.proc = None
        status = "died" if died else "timeout"
        return {**job, "status": status, "time_s": time.perf_counter() - t0}

    def close(self):
        """End the worker (it may be inside a model: killed, not asked)."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ---- results ------------------------------------------------------------------------------------
def load(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def save(path: Path, rows: list[dict]) -> None:
    from intertwiner._atomic import write_text

    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _file(stem: Path, source: str, suffix: str = ".jsonl") -> Path:
    return stem.with_name(f"{stem.name}_{source}{suffix}")


def sweep(args) -> None:
    from tqdm import tqdm

    sources = (args.only,) if args.only else ("timm", "torchvision")
    jobs, skipped = select(args.max_params, args.max_params_torchvision, sources)
    for source in sources:
        save(
            _file(args.out, source, ".skipped.jsonl"), [s for s in skipped if s["source"] == source]
        )
    rows = [r for source in sources for r in load(_file(args.out, source))]
    done = {
        (r["source"], r["name"])
        for r in rows
        if (r["status"] != "error" or not args.retry) and r["name"] not in args.redo
    }
    rows = [r for r in rows if (r["source"], r["name"]) in done]
    if args.models:  # these models only, in this order
        order = {n: i for i, n in enumerate(args.models)}
        jobs = sorted((j for j in jobs if j["name"] in order), key=lambda j: order[j["name"]])
    # Smallest first: the sweep gives most rows per hour, the large models come last.
    todo = sorted(
        (j for j in jobs if (j["source"], j["name"]) not in done),
        key=lambda j: 0 if args.models else j["params"],
    )
    todo = todo[: args.limit]
    print(f"{len(jobs)} models ({len(skipped)} skipped, see .skipped.jsonl), {len(todo)} to do")
    pool = _Pool()
    # A plain ``kill`` of the sweep ends its worker too (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bar = tqdm(todo, desc="trace zoo")
    try:
        for job in bar:
            bar.set_postfix_str(f"{job['source']}:{job['name']}")
            rows.append(pool.run(job, args.timeout))
            save(_file(args.out, job["source"]), [r for r in rows if r["source"] == job["source"]])
    finally:
        pool.close()


def report(args) -> None:
    """Summary on stdout, per-model table (markdown) beside the JSON lines."""
    rows = [r for source in ("timm", "torchvision") for r in load(_file(args.out, source))]
    ok = [r for r in rows if r["status"] == "ok"]
    cov = [r["interior_tensors"] for r in ok]
    print(f"models: {len(rows)} ({sum(r['source'] == 'timm' for r in rows)} timm, "
          f"{sum(r['source'] == 'torchvision' for r in rows)} torchvision); traced {len(ok)}; "
          + ", ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in ("error", "timeout", "died")))  # fmt: skip
    if ok:
        print(f"max function change {max(r['change'] for r in ok):.1e}; "
              f"coverage of tensors without the output side: median {statistics.median(cov):.3f}, "
              f"< 0.9: {sum(c < 0.9 for c in cov)}, < 0.75: {sum(c < 0.75 for c in cov)}, "
              f"< 0.5: {sum(c < 0.5 for c in cov)}; scalars: median "
              f"{statistics.median(r['interior_scalars'] for r in ok):.3f}")  # fmt: skip
    lines = ["| source | model | family | params (M) | input | sites | heads | coverage tensors "
             "(interior) | scalars (interior) | function change | time (s) | top frozen reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["status"] != "ok", r.get("interior_tensors", 0))):
        if r["status"] != "ok":
            why = r.get("error", r["status"])
            lines.append(f"| {r['source']} | {r['name']} | {r['family']} | | | | | | | | "
                         f"{r.get('time_s', 0):.0f} | {r['status']}: {_cell(why)} |")  # fmt: skip
            continue
        lines.append(
            f"| {r['source']} | {r['name']} | {r['family']} | {r['params'] / 1e6:.1f} | "
            f"{r['input'][-1]} | {r['sites']} | {r['heads']}/{r['attention_modules']} | "
            f"{r['tensors']:.3f} ({r['interior_tensors']:.3f}) | {r['scalars']:.3f} "
            f"({r['interior_scalars']:.3f}) | {r['change']:.0e} | {r['time_s']:.0f} | "
            f"{_cell(', '.join(c for c, _ in classify(r)[:3]))}; {_cell(_where(r))} |"
        )
    md = args.out.with_suffix(".md")
    for source in ("timm", "torchvision"):
        path = _file(args.out, source, ".skipped.jsonl")
        for sk in load(path):
            lines.append(f"| {source} | {sk['model']} | {sk.get('family', '')} | | | | | | | | | "
                         f"skipped: {sk['why']} |")  # fmt: skip
    md.write_text("\n".join(lines) + "\n")
    print(f"per-model table: {md}")
    print("\nworst 20 (interior tensor coverage; top frozen reason with module class):")
    for r in sorted(ok, key=lambda r: r["interior_tensors"])[:20]:
        print(f"  {r['interior_tensors']:.3f}  {r['source']}:{r['name']}  {_where(r)[:160]}")
    low = [r for r in ok if r["interior_tensors"] < 0.9]
    print(
        f"\ngap classes of the {len(low)} models under 0.9 (models where the class freezes "
        "anything; the first class listed per model leaves most scalars unmoved):"
    )
    classes: dict[str, list[str]] = {}
    for r in low:
        for c, _ in classify(r):
            classes.setdefault(c, []).append(r["name"])
    for c, names in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(names):3d}  {c}: {', '.join(names)}")
    print("\n" + readme_block(rows))


#: Gap classes, first match wins: (label, test on a frozen entry). Consequences (a head that
#: reads a frozen space, a module with no recorded reason) come last.
GAPS = [
    ("unused parameters", lambda f: f["reason"].startswith("not used by the forward")),
    ("weight standardisation (StdConv)", lambda f: "StdConv" in f["class"]),
    ("relative position bias table", lambda f: "RelPos" in f["class"]
     or any("relative_position" in t or "rel_pos" in t or "pos_bias" in t for t in f["tensors"])),
    ("layer scale / per-channel gamma", lambda f: "LayerScale" in f["class"]
     or any(t.startswith(("gamma", "ls", "layer_scale")) for t in f["tensors"])),
    ("head split (packed qkv or per-head reshape)", lambda f: "splits the feature axis" in f["reason"]),
    ("token-mixing layer (feature axis not last)", lambda f: "not its last dim" in f["reason"]),
    ("residual add of an input-dependent tensor", lambda f: "added to a tensor computed" in f["reason"]),
    ("residual addition frozen", lambda f: "residual addition" in f["reason"]),
    ("gating / attention product (x * f(x))", lambda f: "product with a tensor computed" in f["reason"]
     or "product of two hidden" in f["reason"]),
    ("norm over more than the feature axis", lambda f: "must normalise exactly" in f["reason"]
     or "GroupNorm" in f["reason"] or "statistic over the feature axis" in f["reason"]),
    ("op without a rule", lambda f: "has no rule for" in f["reason"]),
    ("second axis of a computed product (HSM-SSD state)",
     lambda f: "the other factor of a product of two computed" in f["reason"]),
    ("gates or channel groups split over several sites (SE, mixed kernels, grouped conv)",
     lambda f: "split over several sites" in f["reason"] or "already split between sites" in f["reason"]),
    ("computed weight (re-parameterised, weight-normalised)", lambda f: "is computed, not a parameter" in f["reason"]),
    ("concatenation (cls token, joined with an input-derived tensor)", lambda f: "concatenating" in f["reason"]),
    ("attention layout not recognised", lambda f: "an attention block wh" in f["reason"]),
    ("reduction over the feature axis", lambda f: "reduction over the feature axis" in f["reason"]),
    ("feature axis not where the layer reads it", lambda f: "needs the feature axis" in f["reason"]),
    ("slicing / padding / unbinding the feature axis", lambda f: any(
        w in f["reason"] for w in ("slicing", "padding the feature", "unbinding", "changes the size"))),
    ("dropped at verification or sharing", lambda f: f["reason"].startswith("dropped")),
    ("head reads a frozen space", lambda f: f["reason"].startswith("writes the model output")),
    ("no reason recorded", lambda f: True),
]  # fmt: skip


def gap_class(f: dict) -> str:
    """The class of a frozen entry (``GAPS``); ``other: ...`` when only the catch-all fits."""
    for label, test in GAPS:
        if test(f):
            if (
                label == "no reason recorded"
                and f["reason"] != ""
                and not f["reason"].startswith("no site")
            ):
                return f"other: {f['gap'][:80]}"
            return label
    raise AssertionError  # pragma: no cover (the last class takes everything)


def classify(r: dict) -> list[tuple[str, int]]:
    """(gap class, unmoved scalars) of a row's interior frozen entries, most scalars first."""
    count: dict[str, int] = {}
    for f in r["frozen"]:
        if not f["output_side"]:
            c = gap_class(f)
            count[c] = count.get(c, 0) + f["scalars"]
    return sorted(count.items(), key=lambda kv: -kv[1])


def summary_table(rows: list[dict]) -> str:
    """The README's summary: one column per source and one for both."""
    cols = {"timm": [r for r in rows if r["source"] == "timm"],
            "torchvision": [r for r in rows if r["source"] == "torchvision"], "all": rows}  # fmt: skip

    def stat(rs: list[dict]) -> list[str]:
        ok = [r for r in rs if r["status"] == "ok"]
        cov = [r["interior_tensors"] for r in ok]
        att = [r for r in ok if r["attention_modules"]]
        return [
            f"{len(ok)} of {len(rs)}",
            f"{max((r['change'] for r in ok), default=0):.1e}",
            f"{statistics.median(cov):.3f}" if cov else "-",
            f"{statistics.median([r['interior_scalars'] for r in ok]):.3f}" if ok else "-",
            f"{statistics.median([r['tensors'] for r in ok]):.3f}" if ok else "-",
            str(sum(c < 0.9 for c in cov)),
            str(sum(c < 0.75 for c in cov)),
            str(sum(c < 0.5 for c in cov)),
            f"{sum(r['heads'] > 0 for r in att)} of {len(att)}",
        ]

    names = ["models traced", "largest function change (relative, float64)",
             "median interior tensor coverage", "median interior scalar coverage",
             "median tensor coverage (all parameters)", "models under 0.9", "under 0.75",
             "under 0.5", "attention heads found (models with attention modules)"]  # fmt: skip
    stats = {c: stat(rs) for c, rs in cols.items()}
    out = ["| | timm | torchvision | all |", "|---|---|---|---|"]
    for i, n in enumerate(names):
        out.append(f"| {n} | " + " | ".join(stats[c][i] for c in cols) + " |")
    return "\n".join(out)


def readme_block(rows: list[dict], least: int = 20) -> str:
    """The README's sweep block (between its ``trace-zoo-summary`` markers): the summary table,
    the ``least`` covered models with the gap classes that leave most scalars unmoved and the sites
    dropped at verification, and which models with attention have their heads found."""
    ok = [r for r in rows if r["status"] == "ok"]
    out = [summary_table(rows), "", f"The {least} least covered (interior tensor coverage; the gap "
           "classes that leave most scalars unmoved first):", "",
           "| model | coverage | sites | what stays frozen |", "|---|---|---|---|"]  # fmt: skip
    for r in sorted(ok, key=lambda r: r["interior_tensors"])[:least]:
        by: dict[str, int] = {}
        for f in r["frozen"]:
            if not f["output_side"]:
                by[f["gap"]] = by.get(f["gap"], 0) + f["scalars"]
        gaps = ", ".join(g[:90] for g, _ in sorted(by.items(), key=lambda kv: -kv[1])[:3])
        dropped = r["dropped"] if isinstance(r["dropped"], int) else len(r["dropped"] or [])
        extra = f" ({dropped} sites dropped at verification)" if dropped else ""
        out.append(f"| {r['source']} {r['name']} | {r['interior_tensors']:.2f} | {r['sites']} | "
                   f"{gaps}{extra} |")  # fmt: skip
    att = [r for r in ok if r["attention_modules"]]
    found = [r["name"] for r in att if r["heads"] > 0]
    missing = [r["name"] for r in att if r["heads"] == 0]
    out += ["", f"Attention heads are found in {len(found)} of the {len(att)} models with attention "
            f"modules: {', '.join(found)}; not in {', '.join(missing)}."]  # fmt: skip
    return "\n".join(out)


def _where(r: dict) -> str:
    """The interior frozen reason leaving most scalars unmoved, with its module classes (causes
    before consequences: a head reading a frozen space, no recorded reason)."""
    inner = [f for f in r["frozen"] if not f["output_side"]]
    if not inner:
        return ""
    by: dict[str, list] = {}
    for f in inner:
        by.setdefault(f["gap"], []).append(f)
    late = ("writes the model output", "no site acts", "not used by")
    g, fs = max(
        by.items(), key=lambda kv: (not kv[0].startswith(late), sum(f["scalars"] for f in kv[1]))
    )
    classes = sorted({f["class"] for f in fs if f["class"]})
    return f"{len(fs)} modules ({', '.join(classes[:3])}): {g}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:200]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT, help="stem of the result files")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    ap.add_argument("--max-params", type=float, default=30e6)
    ap.add_argument("--max-params-torchvision", type=float, default=100e6)
    ap.add_argument("--only", choices=("timm", "torchvision"))
    ap.add_argument("--limit", type=int, default=None, help="at most this many new models")
    ap.add_argument("--retry", action="store_true", help="run models that failed again")
    ap.add_argument("--models", nargs="*", default=[], help="run only these (in this order)")
    ap.add_argument("--redo", nargs="*", default=[], help="run these models again")
    ap.add_argument("--report", action="store_true", help="summarise --out; run nothing")
    args = ap.parse_args()
    if not args.report:
        sweep(args)
    report(args)


if __name__ == "__main__":
    main()
