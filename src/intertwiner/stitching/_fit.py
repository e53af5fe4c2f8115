"""Fitting a stitch layer and measuring the stitching penalty.

``stitch(model_a, model_b, at, layer=..., data=..., config=...)`` builds ``back_B o S o front_A`` at
module ``at`` (see ``splice``), initialises S (closed form, activation matching, identity, or the
paper's random init), trains only S on the training split with both models frozen in eval mode,
keeps the epoch with the best *validation* accuracy (the initialisation counts as epoch 0), and
reports test accuracies once:

    penalty = (test acc of A + test acc of B) / 2 - test acc of the stitched model   (the paper's)

This module composes the steps: ``_config`` (settings and recipes), ``_features`` (data, cached
front features, evaluation), ``_init`` (statistics and initialisation), ``_train`` (the epochs).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from intertwiner import _validate
from intertwiner._types import SiteName
from intertwiner.data import SplitsLike
from intertwiner.errors import InvalidOptionError, ShapeError, TooFewSamplesError
from intertwiner.groups import family
from intertwiner.layouts import neuron_dim
from intertwiner.stitching._config import (
    AUTO_INIT_MIN,
    StitchConfig,
    StitchResult,
    resolve_config,
    uses_birkhoff,
)
from intertwiner.stitching._features import (
    FrontFeatures,
    evaluate_model,
    evaluate_stitched,
    loader,
    splits,
    to_input,
)
from intertwiner.stitching._init import InitStatistics, initialise
from intertwiner.stitching._layers import (
    MONOMIAL_KINDS,
    BirkhoffStitch,
    StitchLayer,
    make_layer,
    resolve_kind,
)
from intertwiner.stitching._splice import (
    Cut,
    ResidualSiteError,
    StitchedModel,
    build_back,
    build_front,
    export_trace,
    find_cut,
)
from intertwiner.stitching._train import train_stitches

__all__ = ["AUTO_INIT_MIN", "StitchConfig", "StitchResult", "resolve_config", "stitch"]


# ---- layer construction ------------------------------------------------------------------------


def _channel_dim(t: torch.Tensor, override: int | None) -> int:
    """The neuron axis: ``layouts.neuron_dim`` for dense, tokens and conv features; 1 for other
    (N, C, ...) features (e.g. video)."""
    if override is not None:
        return override
    if t.dim() < 2:
        raise ShapeError(f"cannot stitch a feature of shape {tuple(t.shape)}: need (N, C, ...)")
    return neuron_dim(t) if t.dim() <= 4 else 1


def _check_shapes(fa: torch.Tensor, fb: torch.Tensor, cdim: int, name: str) -> None:
    sa, sb = list(fa.shape), list(fb.shape)
    if len(sa) != len(sb) or [s for i, s in enumerate(sa) if i != cdim] != [
        s for i, s in enumerate(sb) if i != cdim
    ]:
        raise ShapeError(
            f"at {name!r} model A's features have shape {tuple(sa)} and model B's {tuple(sb)}; "
            f"they may differ only in the channel axis {cdim}"
        )


def _make(kind, arg, c_in, c_out, cdim, cfg: StitchConfig, dtype, gen) -> StitchLayer:
    if uses_birkhoff(kind, cfg):
        if c_in != c_out:
            raise ShapeError(f"a {kind!r} stitch is square; got {c_in} -> {c_out} channels")
        layer = BirkhoffStitch(
            c_in, cdim, kind=kind, alpha=cfg.alpha, sinkhorn_iters=cfg.sinkhorn_iters,
            generator=gen, dtype=dtype,
        )  # fmt: skip
        if cfg.init == "identity":
            with torch.no_grad():
                layer.weight.copy_(torch.eye(c_in, dtype=dtype))
        return layer
    return make_layer(kind, arg, c_in, c_out, cdim, bias=cfg.bias, dtype=dtype)


def _frozen_copy(model: nn.Module, device) -> nn.Module:
    m = copy.deepcopy(model).to(device).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def stitch(
    model_a: nn.Module,
    model_b: nn.Module,
    at: str,
    *,
    layer: Any,
    data: SplitsLike,
    config: StitchConfig | None = None,
) -> StitchResult:
    """Stitch the front of ``model_a`` (up to and including module ``at``) into the back of
    ``model_b`` through a stitch layer of kind ``layer``; return accuracies and the penalty.

    ``data``: a ``DataSplits`` (or ``(train, val, test)``) of ``(image, label)`` datasets; the
    stitch trains on train, the epoch is chosen on val, test is evaluated once. The input models are
    never modified (they are copied, frozen and kept in eval mode). Raises ``UnknownSiteError``,
    ``UnknownLayerKindError``, ``ShapeError`` (mismatched widths for square kinds, or other axes),
    ``ResidualSiteError`` (with ``residual="error"``).
    """
    cfg = config or StitchConfig()
    t0 = time.perf_counter()
    train_ds, val_ds, test_ds = splits(data)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise TooFewSamplesError("stitching needs non-empty train and test splits")
    device = _validate.device(cfg.device) if cfg.device is not None else torch.device("cpu")
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(int(cfg.num_threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            gen = torch.Generator().manual_seed(int(cfg.seed))
            shape = f"shape (batch, {', '.join(map(str, torch.as_tensor(train_ds[0][0]).shape))})"
            with _validate.reraise_shape_errors("stitch", shape, model_a):
                result = _stitch(
                    model_a, model_b, at, layer, cfg, train_ds, val_ds, test_ds, device, gen
                )
    finally:
        torch.set_num_threads(threads)
    result.wall_time_s = time.perf_counter() - t0
    return result


@dataclass
class _Setup:
    """The two frozen models, the cut at the site and the stitch layers of every cut stream."""

    a: nn.Module
    b: nn.Module
    cut: Cut
    front_a: nn.Module
    front_b: nn.Module
    back: nn.Module
    kind: str
    arg: float | int | None
    cfg: StitchConfig
    stitches: nn.ModuleDict
    names: list[str]  # the stitched streams, the site first
    per_sample: int  # bytes of A's front features per input


def _setup(model_a, model_b, at, layer, cfg, train_ds, val_ds, device, gen) -> _Setup:
    a, b = _frozen_copy(model_a, device), _frozen_copy(model_b, device)
    if cfg.channels_last:  # converts 4-d weights only; the copies' function is unchanged
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    x0 = to_input(
        next(iter(loader(train_ds, min(cfg.batch_size, 8))))[0], device, cfg.channels_last
    )
    _check_models_run({"model A": (a, model_a), "model B": (b, model_b)}, x0)
    # the graph trace and capture read (torch.export; models torch.fx refuses too)
    gm_a, gm_b = export_trace(a, at, x0), export_trace(b, at, x0)
    cut = find_cut(gm_b, at)
    kind, arg = resolve_kind(layer, dict(b.named_modules()).get(SiteName.parse(at).base))
    cfg = resolve_config(cfg, kind)
    if cfg.epochs > 0 and (val_ds is None or len(val_ds) == 0):
        raise TooFewSamplesError("training a stitch needs a validation split to choose the epoch")
    if uses_birkhoff(kind, cfg) and family(kind).flips_signs:
        raise InvalidOptionError(
            f"the birkhoff solver fits 'perm_scale' and 'permutation', not {kind!r}"
        )
    front_a, front_b = build_front(gm_a, cut), build_front(gm_b, cut)
    stitches, names, per_sample = _make_stitches(front_a, front_b, cut, kind, arg, cfg, x0, gen)
    if len(names) > 1 and cfg.residual == "error":
        raise ResidualSiteError(
            f"site {at!r} lies inside a residual branch: model B's remainder also reads "
            f"{names[1:]}; use residual='stitch' to stitch those streams too, or stitch "
            "at a block output"
        )
    back = build_back(gm_b, at, cut)
    return _Setup(a, b, cut, front_a, front_b, back, kind, arg, cfg, stitches, names, per_sample)


def _check_models_run(models: dict[str, tuple[nn.Module, nn.Module]], x0: torch.Tensor) -> None:
    """Run each frozen model whole on the first inputs ``x0`` (a batch of up to 8), so that data
    of a shape a model was not built for is reported naming that model ("model A") and the
    shape. Without this the error surfaced later, inside B's back half of the stitched model, as
    torch's own (a pooling window larger than A's 8 x 8 feature map, say), naming neither."""
    shape = f"shape (batch, {', '.join(map(str, x0.shape[1:]))})"
    with torch.no_grad():
        for name, (frozen, original) in models.items():
            with _validate.reraise_shape_errors("stitch", shape, original, name=name):
                frozen(x0)


def _make_stitches(front_a, front_b, cut, kind, arg, cfg, x0, gen):
    """A stitch layer per cut stream that carries a representation (an identity elsewhere);
    ``x0``: the first inputs, on the device, which fix every stream's width."""
    device = x0.device
    with torch.no_grad():
        fa0, fb0 = front_a(x0), front_b(x0)
    names, stitches, per_sample = [], nn.ModuleDict(), 0
    for i, name in enumerate(cut.names):
        ta, tb = fa0[i], fb0[i]
        if cut.passthrough[i] or not (torch.is_tensor(ta) and ta.is_floating_point()):
            stitches[name] = nn.Identity()  # the shared input (or a shape): not a representation
            continue
        cdim = _channel_dim(ta, cfg.channel_dim)
        _check_shapes(ta, tb, cdim, name)
        c_in, c_out = ta.shape[cdim], tb.shape[cdim]
        stitches[name] = _make(kind, arg, c_in, c_out, cdim, cfg, ta.dtype, gen).to(device)
        names.append(name)
        per_sample += ta[0].numel() * ta.element_size()
    return stitches, names, per_sample


def _stitch(model_a, model_b, at, layer, cfg, train_ds, val_ds, test_ds, device, gen):
    s = _setup(model_a, model_b, at, layer, cfg, train_ds, val_ds, device, gen)
    cfg, timings = s.cfg, {}
    index = {n: i for i, n in enumerate(s.cut.names)}
    stats = InitStatistics(s.stitches, s.names, index, s.front_b, s.kind, cfg, device)
    t = time.perf_counter()
    train_f = FrontFeatures(s.front_a, train_ds, cfg, device, s.per_sample)
    if train_f.fits or stats:
        train_f.fill(stats if stats else None)
    t_init = time.perf_counter()
    initialise(s.stitches, s.names, stats, cfg, gen)
    val_f = FrontFeatures(s.front_a, val_ds, cfg, device, s.per_sample) if val_ds else None
    t_val = time.perf_counter()
    if val_f is not None and val_f.fits:
        val_f.fill()
    t_train = time.perf_counter()
    timings["init"] = stats.seconds + (t_val - t_init)
    timings["features"] = (t_init - t - stats.seconds) + (t_train - t_val)
    model = StitchedModel(s.front_a, s.stitches, s.back, s.cut.names)
    history, best_key, best_epoch = train_stitches(
        model, s.stitches, s.names, s.kind, cfg, train_f, val_f, gen, f"stitch {at}"
    )
    timings["train"] = time.perf_counter() - t_train
    t = time.perf_counter()
    result = _evaluate(s, model, at, test_ds, device)
    timings["evaluate"] = time.perf_counter() - t
    result.history, result.best_epoch, result.timings = history, best_epoch, timings
    result.val_acc = best_key[0] if best_key else float("nan")
    result.feature_errors = {
        _shown(s, at)[n]: v for n, v in stats.feature_errors(s.stitches).items()
    }
    result.feature_error = result.feature_errors.get(at)
    result.init_samples = stats.seen if stats else None
    return result


def _shown(s: _Setup, at: str) -> dict[str, str]:
    """Module names ("stem.act", as models.sites, trace and capture name them) for the cut's fx
    node names ("stem_act"); a stream that is no module's output keeps its node name."""
    shown = {n: (tg if isinstance(tg, str) else n) for n, tg in zip(s.cut.names, s.cut.targets)}
    shown[s.cut.names[0]] = at
    return shown


def _evaluate(s: _Setup, model: StitchedModel, at: str, test_ds: Dataset, device) -> StitchResult:
    """Test accuracies of A, B and the stitched model, once, and the result around them."""
    test_f = FrontFeatures(s.front_a, test_ds, s.cfg, device, 0)
    test_f.fits = False  # evaluated once: no point caching
    acc_s, _ = evaluate_stitched(model, test_f)
    acc_a = evaluate_model(s.a, test_ds, s.cfg, device)
    acc_b = evaluate_model(s.b, test_ds, s.cfg, device)
    site_layer = s.stitches[s.cut.names[0]]
    shown = _shown(s, at)
    return StitchResult(
        site=at,
        kind=s.kind if s.arg is None else f"{s.kind}:{s.arg:g}",
        solver=s.cfg.solver if s.kind in MONOMIAL_KINDS else None,
        acc_a=acc_a,
        acc_b=acc_b,
        acc_stitched=acc_s,
        penalty=(acc_a + acc_b) / 2 - acc_s,
        val_acc=float("nan"),
        best_epoch=0,
        layer=site_layer,
        layers={shown[n]: s.stitches[n] for n in s.cut.names},
        model=model,
        sparsity=site_layer.sparsity(),
        residual_streams=[shown[n] for n in s.names[1:]],
        epochs=s.cfg.epochs,
        lr=s.cfg.lr,
    )
