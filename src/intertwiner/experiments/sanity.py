"""The rotation "sanity test" (paper section 3.3; paper.md section 4).

Insert a fixed invertible map M right before the activation at a site of a trained model
(``x -> act(M x)``, M acting on channels at every pixel, i.e. a 1x1 conv, or on features), freeze
everything up to and including M (frozen BatchNorm stays in eval mode), retrain the rest from the
trained weights with epochs selected on validation, and report

    penalty = base test accuracy - retrained test accuracy.

When M lies in the activation's intertwiner group G_sigma, the next layer can absorb
phi(M)^-1 exactly, so the penalty should be about zero; an orthogonal M cannot be absorbed by a
ReLU net. ``kind`` chooses M: ``"identity"``, ``"group"`` (a random element of the site's own
group, ``groups.for_activation``), or any family name (``"positive_monomial"`` = G_ReLU,
``"permutation"``, ``"orthogonal"``, ``"general_linear"``, ...; aliases ``"g_relu"``, ``"gl"``).
With ``kind="identity"`` and ``epochs=0`` the penalty is exactly 0.

One unit of work is ``sanity_run`` (a flat JSON-safe row); ``sanity_test`` loops with a progress
bar; ``summarize`` gives mean and std per (activation, site, kind); ``run_job`` is the pipeline's
job function (config dict -> row).
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from intertwiner.data import DataSplits
from intertwiner.errors import IntertwinerError, InvalidOptionError
from intertwiner.experiments.common import filtered
from intertwiner.experiments.surgery import (
    FixedTransform,
    PreTransformed,
    SanityModel,
    insert_transform,
    site_width,
)
from intertwiner.groups import (
    ALIASES,
    FAMILIES,
    Family,
    GroupElement,
    activation_name,
    family,
    for_activation,
)

__all__ = [
    "FixedTransform",
    "KINDS",
    "PreTransformed",
    "SanityConfig",
    "SanityModel",
    "format_table",
    "insert_transform",
    "plot_penalties",
    "resolve_kind",
    "run_job",
    "sample_transform",
    "sanity_run",
    "sanity_test",
    "summarize",
]

KINDS = ("identity", "group", *FAMILIES)


class UnknownTransformKindError(IntertwinerError, KeyError):
    """A sanity-test transform kind that is neither identity, group nor a family name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class SanityConfig:
    """Retraining settings (the paper: Adam 1e-3, StepLR, 50 epochs; here a few for speed).

    ``epochs=0`` evaluates the transformed model without retraining. ``seed`` offsets every
    transform and retraining seed, which also depend on (site, kind, repeat).
    """

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "step"
    seed: int = 0
    device: str | None = None
    num_threads: int | None = None
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_kind(kind: str, act: nn.Module) -> Family | None:
    """The group family a transform ``kind`` names at activation ``act`` (None for identity).

    ``"group"``: the activation's own intertwiner family; otherwise any family name or alias that
    ``groups.family`` accepts (``groups.ALIASES``). The one place kind names are read.
    """
    key = str(kind).strip().lower()
    if key == "identity":
        return None
    if key == "group":
        return for_activation(act).family
    try:
        return family(key)
    except KeyError:
        raise UnknownTransformKindError(
            f"unknown transform kind {kind!r}; choose identity, group, or one of "
            f"{', '.join(FAMILIES)} (aliases: {', '.join(sorted(set(ALIASES) - set(FAMILIES)))})"
        ) from None


def sample_transform(
    kind: str, act: nn.Module, n: int, generator: torch.Generator | None = None
) -> tuple[GroupElement, str]:
    """``(element, family name)`` of size n for ``kind`` at an activation ``act``
    (``"identity"`` for the identity element)."""
    fam = resolve_kind(kind, act)
    if fam is None:
        return for_activation(act).family.identity(n, dtype=torch.float64), "identity"
    return fam.sample(n, generator=generator, dtype=torch.float64), fam.name


def _stable_seed(*parts: Any) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def _load_model(checkpoint_or_model: str | Path | nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(checkpoint_or_model, nn.Module):
        return checkpoint_or_model, {}
    from intertwiner import checkpoints

    return checkpoints.load(checkpoint_or_model)


def _example(data: DataSplits) -> torch.Tensor:
    ds = data.test
    if hasattr(ds, "get_batch"):
        return ds.get_batch(torch.arange(min(2, len(ds))))[0]
    return torch.stack([ds[i][0] for i in range(min(2, len(ds)))])


def _retrain(
    sane: nn.Module, data: DataSplits, config: SanityConfig, seed: int, initial: float
) -> dict:
    """Retrain the unfrozen part (epoch chosen on validation): ``{"test", "val", "epoch"}``."""
    from intertwiner.training import TrainConfig, evaluate, train

    if config.epochs == 0:
        return {"test": initial, "val": evaluate(sane, data.val)["accuracy"], "epoch": 0}
    tc = filtered(TrainConfig, {**config.to_dict(), "seed": seed})
    result = train(sane, data, tc)
    return {"test": result.test_accuracy, "val": result.val_accuracy, "epoch": result.best_epoch}


def sanity_run(
    checkpoint_or_model: str | Path | nn.Module,
    site: str,
    transform_kind: str,
    repeat: int,
    data: DataSplits,
    config: SanityConfig | None = None,
    *,
    base: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One repeat of the sanity test at ``site``: a flat JSON-safe row with ``penalty``.

    ``checkpoint_or_model``: a trained model (not modified) or a checkpoint path. ``data``:
    ``DataSplits`` (selection on ``val``, penalty on ``test``). ``base``: the base model's
    ``{"accuracy", "val_accuracy"}`` if already measured (saves two evaluations per repeat).
    """
    from intertwiner.training import evaluate

    config = config or SanityConfig()
    if config.epochs < 0:
        raise InvalidOptionError(f"epochs must be >= 0, got {config.epochs}")
    start = time.perf_counter()
    model, _ = _load_model(checkpoint_or_model)
    example = _example(data)
    if base is None:
        base = {
            "accuracy": evaluate(model, data.test)["accuracy"],
            "val_accuracy": evaluate(model, data.val)["accuracy"],
        }
    act = model.get_submodule(site)
    n = site_width(model, site, example)
    t_seed = _stable_seed(config.seed, site, transform_kind, repeat, "transform")
    element, fam = sample_transform(transform_kind, act, n, torch.Generator().manual_seed(t_seed))
    sane = insert_transform(model, site, element, example)
    initial = evaluate(sane, data.test)["accuracy"]
    row: dict[str, Any] = {
        "activation": activation_name(act),
        "site": site,
        "kind": transform_kind,
        "family": fam,
        "repeat": int(repeat),
        "width": n,
        "epochs": int(config.epochs),
        "base_accuracy": base["accuracy"],
        "base_val_accuracy": base["val_accuracy"],
        "initial_accuracy": initial,
        "transform_seed": t_seed,
        "n_frozen_modules": len(sane.frozen),
    }
    retrained = _retrain(
        sane,
        data,
        config,
        _stable_seed(config.seed, site, transform_kind, repeat, "train"),
        initial,
    )
    row.update(
        retrained_accuracy=retrained["test"],
        retrained_val_accuracy=retrained["val"],
        best_epoch=retrained["epoch"],
        penalty=base["accuracy"] - retrained["test"],
        seconds=round(time.perf_counter() - start, 3),
    )
    return row


def sanity_test(
    model: nn.Module,
    sites: Sequence[str],
    kinds: Sequence[str],
    repeats: int,
    data: DataSplits,
    config: SanityConfig | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``sanity_run`` for every (site, kind, repeat), with one progress bar; returns the rows."""
    from intertwiner.training import evaluate

    config = config or SanityConfig()
    for kind in kinds:  # fail early on a bad kind, before any training
        resolve_kind(kind, model.get_submodule(sites[0]))
    base = {
        "accuracy": evaluate(model, data.test)["accuracy"],
        "val_accuracy": evaluate(model, data.val)["accuracy"],
    }
    jobs = [(s, k, r) for s in sites for k in kinds for r in range(repeats)]
    rows = []
    bar = tqdm(jobs, desc="sanity", disable=not progress)
    for site, kind, rep in bar:
        bar.set_postfix(site=site, kind=kind, repeat=rep)
        rows.append(sanity_run(model, site, kind, rep, data, config, base=base))
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (ddof 1) of penalty and retrained accuracy per (activation, site, kind).

    ``penalty_vs_identity``: mean penalty minus that of the ``"identity"`` rows of the same
    (activation, site) when those were run (the effect of retraining itself), else None.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["activation"], r["site"], r["kind"]), []).append(r)
    out = []
    for (act, site, kind), rs in groups.items():
        pen = np.array([r["penalty"] for r in rs], dtype=np.float64)
        acc = np.array([r["retrained_accuracy"] for r in rs], dtype=np.float64)
        init = np.array([r["initial_accuracy"] for r in rs], dtype=np.float64)
        out.append(
            {
                "activation": act,
                "site": site,
                "kind": kind,
                "family": rs[0]["family"],
                "repeats": len(rs),
                "epochs": rs[0]["epochs"],
                "base_accuracy": rs[0]["base_accuracy"],
                "initial_accuracy": float(init.mean()),
                "retrained_accuracy": float(acc.mean()),
                "penalty_mean": float(pen.mean()),
                "penalty_std": float(pen.std(ddof=1)) if len(pen) > 1 else 0.0,
            }
        )
    # Retraining alone moves accuracy (an under-trained base gains); the identity rows measure
    # that, so the penalty net of it is the part due to the transform.
    control = {
        (r["activation"], r["site"]): r["penalty_mean"] for r in out if r["kind"] == "identity"
    }
    for r in out:
        ref = control.get((r["activation"], r["site"]))
        r["penalty_vs_identity"] = None if ref is None else r["penalty_mean"] - ref
    return out


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of ``summarize`` rows (accuracies and penalties in points)."""
    head = ("activation", "site", "kind", "family", "n", "base", "before", "after", "penalty",
            "vs identity")  # fmt: skip
    lines = [f"{head[0]:<10} {head[1]:<11} {head[2]:<11} {head[3]:<18} {head[4]:>2} "
             f"{head[5]:>6} {head[6]:>6} {head[7]:>6} {head[8]:>14} {head[9]:>11}"]  # fmt: skip
    for r in summary:
        pen = f"{100 * r['penalty_mean']:.2f} ± {100 * r['penalty_std']:.2f}"
        rel = r.get("penalty_vs_identity")
        rel_s = "" if rel is None else f"{100 * rel:.2f}"
        lines.append(
            f"{r['activation']:<10} {r['site']:<11} {r['kind']:<11} {r['family']:<18} "
            f"{r['repeats']:>2} {100 * r['base_accuracy']:6.2f} {100 * r['initial_accuracy']:6.2f} "
            f"{100 * r['retrained_accuracy']:6.2f} {pen:>14} {rel_s:>11}"
        )
    return "\n".join(lines)


def plot_penalties(summary: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bar chart of the penalty (points, mean ± std) per site, one bar per (activation, kind)."""
    from intertwiner import _atomic
    from intertwiner.report.figures import subplots

    sites = list(dict.fromkeys(r["site"] for r in summary))
    series = list(dict.fromkeys((r["activation"], r["kind"]) for r in summary))
    width = 0.8 / max(len(series), 1)
    fig, ax = subplots(figsize=(1.6 + 1.4 * len(sites) * max(1, len(series) / 2), 3.6))
    for j, (act, kind) in enumerate(series):
        vals, errs = [], []
        for s in sites:
            r = next((r for r in summary if (r["activation"], r["kind"], r["site"]) ==
                      (act, kind, s)), None)  # fmt: skip
            vals.append(100 * r["penalty_mean"] if r else math.nan)
            errs.append(100 * r["penalty_std"] if r else 0.0)
        xs = np.arange(len(sites)) + (j - (len(series) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=f"{act} / {kind}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(sites)), sites)
    ax.set_ylabel("penalty (accuracy points)")
    ax.set_title("sanity test: fixed transform before the activation, rest retrained")
    ax.legend(fontsize=8)
    return _atomic.save_figure(fig, path, dpi=110, bbox_inches="tight")


def run_job(config: dict[str, Any]) -> dict[str, Any]:
    """Pipeline job: ``{"checkpoint", "site", "kind", "repeat", "epochs", ...}`` -> one row.

    Optional keys: ``data`` (default: the checkpoint's dataset), ``data_options`` (dict passed to
    ``intertwiner.data.load``; default: the checkpoint's split seed), ``seed``, ``batch_size``,
    ``lr``, ``optimizer``, ``weight_decay``, ``schedule``, ``num_threads``, ``device``.
    """
    from intertwiner import checkpoints

    model, meta = checkpoints.load(config["checkpoint"])
    if not (config.get("data") or meta.get("dataset")):
        raise InvalidOptionError(
            "the job config needs 'data' (the checkpoint does not name its dataset)"
        )
    # The checkpoint's own splits (dataset, options, split seed); the job's options win.
    splits = checkpoints.data_splits(
        meta, dataset=config.get("data"), source=config["checkpoint"],
        overrides=config.get("data_options"),
    )  # fmt: skip
    fields = {f.name for f in dataclasses.fields(SanityConfig)}
    sc = SanityConfig(**{k: v for k, v in config.items() if k in fields and k != "progress"})
    row = sanity_run(model, config["site"], config["kind"], int(config.get("repeat", 0)),
                     splits, sc)  # fmt: skip
    row["checkpoint"] = str(config["checkpoint"])
    return row
