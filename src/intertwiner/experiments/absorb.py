"""Closed-form absorbability: the sharpest form of the sanity test (paper section 3.3).

Insert a fixed map M before the activation at ``site`` (``act(M x)``), freeze everything, and refit
**only** the next layer that has weights (the conv or linear layer reading the activation, after
any pooling) in closed form: least squares from the transformed model's frozen input of that layer
to the base model's output of it, on training images. Then

    drop = base test accuracy - test accuracy with the refit layer.

For M in the activation's intertwiner group, ``act(M x) = phi(M) act(x)`` and pooling commutes with
a permutation times a positive scaling, so ``W phi(M)^-1`` reproduces the base layer exactly: least
squares finds it and the drop is 0 (up to float rounding). For an orthogonal M, ``relu(M x)`` is not
a linear function of ``relu(x)``: the best linear refit loses information and the drop is positive.
No training, no optimiser: the measurement has no retraining noise, so a few repeats decide it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from intertwiner.data import DataSplits
from intertwiner.errors import ShapeError
from intertwiner.experiments.sanity import (
    _example,
    _load_model,
    _stable_seed,
    resolve_kind,
    sample_transform,
)
from intertwiner.experiments.surgery import insert_transform, next_parametric, site_width
from intertwiner.groups import activation_name

__all__ = ["AbsorbConfig", "absorb_run", "absorb_test", "fit_layer", "format_table", "run_job"]


@dataclass
class AbsorbConfig:
    """``max_rows``: least-squares rows (images x output positions) drawn at random from the
    training set (all when fewer); ``rcond``: relative cut-off of small singular values (dead
    units make the normal matrix singular; the minimum-norm solution is used); ``seed`` offsets the
    transform and row-sampling seeds, which also depend on (site, kind, repeat)."""

    max_rows: int = 200_000
    rcond: float = 1e-10
    batch_size: int = 256
    seed: int = 0
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as least-squares rows (with a trailing 1 for the bias): a conv's
    unfolded patches (N*L, C*kh*kw + 1), a linear layer's features (N, in + 1)."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ShapeError("closed-form refit supports plain Conv2d (groups=1, zero padding)")
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    elif isinstance(layer, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
    else:
        raise ShapeError(f"closed-form refit of {type(layer).__name__} is not supported")
    return torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)


def _targets(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The layer's output as rows matching ``_rows``: (N*L, C_out) or (N, out)."""
    if isinstance(layer, nn.Conv2d):
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]).double()
    return y.reshape(-1, y.shape[-1]).double()


def _capture(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output of module ``name`` on batch ``x`` (eval, no grad)."""
    seen: dict[str, torch.Tensor] = {}
    mod = model.get_submodule(name)
    if want == "in":
        h = mod.register_forward_pre_hook(lambda _m, a: seen.setdefault("v", a[0]))
    else:
        h = mod.register_forward_hook(lambda _m, _a, out: seen.setdefault("v", out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return seen["v"]


def fit_layer(
    source: nn.Module,
    target: nn.Module,
    name: str,
    data: DataSplits,
    config: AbsorbConfig,
    seed: int,
) -> dict[str, Any]:
    """Least squares for module ``name``: its input in ``source`` -> its output in ``target``
    (both eval mode). Returns ``{"weight", "bias", "residual", "rows"}`` in the layer's shapes;
    ``residual``: RSS / total sum of squares on the fitted rows (0 = exact)."""
    layer = target.get_submodule(name)
    n = len(data)
    g = torch.Generator().manual_seed(seed)
    probe = _rows(layer, _capture(source, name, data.get_batch(torch.arange(1))[0], "in"))
    keep = min(1.0, config.max_rows / max(1, n * probe.shape[0]))
    xtx = xty = None
    yty, ysum, rows = 0.0, 0.0, 0
    for start in range(0, n, config.batch_size):
        xb = data.get_batch(torch.arange(start, min(n, start + config.batch_size)))[0]
        a = _rows(layer, _capture(source, name, xb, "in"))
        b = _targets(layer, _capture(target, name, xb, "out"))
        if keep < 1.0:
            pick = torch.rand(a.shape[0], generator=g) < keep
            a, b = a[pick], b[pick]
        xtx = a.T @ a if xtx is None else xtx + a.T @ a
        xty = a.T @ b if xty is None else xty + a.T @ b
        yty, ysum, rows = yty + float((b * b).sum()), ysum + b.sum(0), rows + a.shape[0]
    beta = torch.linalg.lstsq(xtx, xty, rcond=config.rcond, driver="gelsd").solution
    rss = yty - 2 * float((beta * xty).sum()) + float((beta * (xtx @ beta)).sum())
    tss = yty - float((ysum * ysum).sum()) / rows
    weight = beta[:-1].T.reshape(layer.weight.shape)
    return {"weight": weight, "bias": beta[-1], "residual": max(rss, 0.0) / tss, "rows": rows}


def _set_layer(model: nn.Module, name: str, fit: dict[str, Any]) -> None:
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.weight.copy_(fit["weight"].to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(fit["bias"].to(layer.weight.dtype))
        else:
            layer.bias.copy_(fit["bias"].to(layer.bias.dtype))


def absorb_run(
    checkpoint_or_model: str | Path | nn.Module,
    site: str,
    kind: str,
    repeat: int,
    data: DataSplits,
    config: AbsorbConfig | None = None,
) -> dict[str, Any]:
    """One repeat: insert a ``kind`` map at ``site``, refit the next layer in closed form on the
    training split, evaluate on test. A flat JSON-safe row with ``drop`` (base - refit accuracy)
    and ``residual`` (relative least-squares residual); ``kind="identity"`` is the control that
    measures the error of the refit itself."""
    from intertwiner.training import evaluate

    config = config or AbsorbConfig()
    start = time.perf_counter()
    model, _ = _load_model(checkpoint_or_model)
    model.eval()
    example = _example(data)
    act = model.get_submodule(site)
    n = site_width(model, site, example)
    t_seed = _stable_seed(config.seed, site, kind, repeat, "absorb")
    element, fam = sample_transform(kind, act, n, torch.Generator().manual_seed(t_seed))
    sane = insert_transform(model, site, element, example).eval()
    layer = next_parametric(sane.model, site, example)
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        base = evaluate(model, data.test)["accuracy"]
        initial = evaluate(sane, data.test)["accuracy"]
        fit = fit_layer(sane.model, model, layer, data.train, config, t_seed + 1)
        _set_layer(sane.model, layer, fit)
        refit = evaluate(sane, data.test)["accuracy"]
    finally:
        torch.set_num_threads(threads)
    return {
        "activation": activation_name(act),
        "site": site,
        "layer": layer,
        "kind": kind,
        "family": fam,
        "repeat": int(repeat),
        "width": n,
        "base_accuracy": base,
        "initial_accuracy": initial,
        "refit_accuracy": refit,
        "drop": base - refit,
        "residual": fit["residual"],
        "rows": fit["rows"],
        "transform_seed": t_seed,
        "seconds": round(time.perf_counter() - start, 3),
    }


def absorb_test(
    model: nn.Module,
    sites: Sequence[str],
    kinds: Sequence[str],
    repeats: int,
    data: DataSplits,
    config: AbsorbConfig | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``absorb_run`` for every (site, kind, repeat), with one progress bar; returns the rows."""
    for kind in kinds:  # fail early on a bad kind
        resolve_kind(kind, model.get_submodule(sites[0]))
    jobs = [(s, k, r) for s in sites for k in kinds for r in range(repeats)]
    return [absorb_run(model, s, k, r, data, config)
            for s, k, r in tqdm(jobs, desc="refit", disable=not progress)]  # fmt: skip


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per (site, kind): repeats, base / refit accuracy, drop mean ± std (points), residual."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["site"], r["kind"]), []).append(r)
    lines = [f"{'site':<12} {'kind':<12} {'refit layer':<12} {'n':>2} {'base':>6} {'refit':>6} "
             f"{'drop':>15} {'residual':>9}"]  # fmt: skip
    for (site, kind), rs in groups.items():
        drop = np.array([100 * r["drop"] for r in rs])
        sd = drop.std(ddof=1) if len(drop) > 1 else 0.0
        lines.append(f"{site:<12} {kind:<12} {rs[0]['layer']:<12} {len(rs):>2} "
                     f"{100 * rs[0]['base_accuracy']:6.2f} "
                     f"{100 * np.mean([r['refit_accuracy'] for r in rs]):6.2f} "
                     f"{drop.mean():7.3f} ± {sd:5.3f} "
                     f"{np.mean([r['residual'] for r in rs]):9.2e}")  # fmt: skip
    return "\n".join(lines)


def run_job(config: dict[str, Any]) -> dict[str, Any]:
    """Pipeline job: ``{"checkpoint", "site", "kind", "repeat", "data", "data_options", ...}``
    (``AbsorbConfig`` fields optional) -> one ``absorb_run`` row."""
    from intertwiner import data as data_mod

    splits = data_mod.load(config["data"], **dict(config.get("data_options") or {}))
    fields = {f.name for f in dataclasses.fields(AbsorbConfig)}
    ac = AbsorbConfig(**{k: v for k, v in config.items() if k in fields})
    row = absorb_run(config["checkpoint"], config["site"], config["kind"],
                     int(config.get("repeat", 0)), splits, ac)  # fmt: skip
    row["checkpoint"] = str(config["checkpoint"])
    return row
