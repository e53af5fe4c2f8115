"""Fitting a stitch layer and measuring the stitching penalty.

``stitch(model_a, model_b, at, layer=..., data=..., config=...)`` builds ``back_B o S o front_A`` at
module ``at`` (see ``splice``), initialises S (closed form, activation matching, identity, or the
paper's random init), trains only S on the training split with both models frozen in eval mode,
keeps the epoch with the best *validation* accuracy (the initialisation counts as epoch 0), and
reports test accuracies once:

    penalty = (test acc of A + test acc of B) / 2 - test acc of the stitched model   (the paper's)

Front-of-A features are computed once and cached when they fit in ``config.cache_bytes``, so an
epoch costs only the stitch and the back of B.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from intertwiner import _validate
from intertwiner.errors import ShapeError, TooFewSamplesError
from intertwiner.stitching import solvers
from intertwiner.stitching.layers import (
    MONOMIAL_KINDS,
    BirkhoffStitch,
    MonomialStitch,
    StitchLayer,
    make_layer,
    resolve_kind,
)
from intertwiner.stitching.splice import (
    ResidualSiteError,
    StitchedModel,
    build_back,
    build_front,
    find_cut,
    trace,
)

SOLVERS = ("match", "birkhoff")
AUTO_INIT_MIN = 256  # first convergence check of init_samples="auto", in training inputs
INITS = ("auto", "closed_form", "identity", "random")


@dataclass
class StitchConfig:
    """How to fit a stitch layer.

    - ``solver``: for monomial kinds, ``"match"`` (ours: activation matching, then fine-tune the
      scales (and bias)) or ``"birkhoff"`` (the paper's relaxation; ``perm_scale`` and
      ``permutation`` only). ``match_score``: ``"lsq"`` (exact least-squares assignment) or
      ``"corr"`` (Pearson correlation).
    - ``init``: ``"auto"`` (closed form or matching; the paper's Sinkhorn init for birkhoff),
      ``"closed_form"``, ``"identity"`` or ``"random"`` (PyTorch default; a random permutation for
      monomial kinds).
    - ``epochs=0`` evaluates the initialisation alone. ``epochs=None`` and ``lr=None`` are the
      benchmarked recipes (benchmarks/stitching.py, see ``resolve_config``): 2 epochs of Adam at
      1e-2 after a closed-form or matching initialisation; the paper's 20 epochs of SGD at 1e-3
      for birkhoff; 20 epochs of Adam at 1e-2 for ``init="random"``, which starts from nothing.
    - ``optimizer="auto"`` is SGD for birkhoff (the paper's) and Adam otherwise;
      ``weight_decay=None`` is the paper's 1e-4 on the scales for birkhoff and 0 otherwise.
      ``warmup``: fraction of birkhoff epochs with the scales off (the paper's half).
    - ``residual``: ``"stitch"`` (stitch the residual stream too) or ``"error"`` (refuse such
      sites). ``channel_dim``: the neuron axis of the features (default: 1, or 2 for 3-d tokens).
    - ``cache_bytes``: cache front-of-A features up to this size. ``num_threads``: torch intra-op
      threads during the call (restored after; None leaves torch's setting alone).
    - ``init_samples``: at most this many training inputs (whole batches, in data order) feed the
      closed-form / matching statistics (None: all). B's front runs over them for the statistics
      alone, so at late sites this pass is most of ``match``'s cost; but the assignment keeps
      improving with more inputs (myrtle_cnn on MNIST, block4.act: the matched stitch's validation
      accuracy before training is 38%, 50%, 70% and 82% on 512, 1024, 2048 and all 3600), so the
      default uses all. 1024 costs 0.3-1.3 penalty points there after training.
      ``"auto"``: for ``match``, stop once the assignment has converged: after ``AUTO_INIT_MIN``
      inputs and then at every doubling, the assignment fitted on half the samples must still be
      optimal to ``auto_tol`` (relative least-squares error, ``solvers.assignment_converged``) on
      all of them (an exact symmetry stops at the second check); other kinds use every input.
      Its sampling noise stops it early on real models (0.4-3.6 points at block4.act).
    - ``channels_last``: run both models on 4-d (image) inputs in channels-last memory format (the
      same function up to float rounding; on CPU oneDNN's convolutions and max-pooling are
      markedly faster in it, which is most of ``match``'s statistics pass and every feature pass).
    """

    solver: str = "match"
    match_score: str = "lsq"
    init: str = "auto"
    epochs: int | None = None
    optimizer: str = "auto"
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float | None = None
    alpha: float = 0.1
    sinkhorn_iters: int = 16
    warmup: float = 0.5
    bias: bool = False
    ridge: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    device: str | torch.device | None = None
    progress: bool = True
    cache_bytes: int = 1 << 30
    residual: str = "stitch"
    channel_dim: int | None = None
    num_threads: int | None = None
    init_samples: int | str | None = None
    auto_tol: float = 1e-2
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.optimizer not in ("auto", "adam", "sgd"):
            raise ValueError(f"optimizer must be 'auto', 'adam' or 'sgd', got {self.optimizer!r}")
        if self.residual not in ("stitch", "error"):
            raise ValueError(f"residual must be 'stitch' or 'error', got {self.residual!r}")
        if (
            (self.epochs is not None and int(self.epochs) < 0)
            or int(self.batch_size) < 1
            or (self.lr is not None and not self.lr > 0)
        ):
            raise ValueError("epochs must be >= 0 (or None), batch_size >= 1 and lr > 0 (or None)")
        if not (
            self.init_samples is None
            or self.init_samples == "auto"
            or (isinstance(self.init_samples, int) and self.init_samples >= 1)
        ):
            raise ValueError(
                f"init_samples must be None, 'auto' or a positive int, got {self.init_samples!r}"
            )
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup is a fraction of the epochs in [0, 1], got {self.warmup}")


@dataclass
class StitchResult:
    """Accuracies (fractions in [0, 1]) on the test split, the penalty, and the fitted stitch.

    ``layer`` is the stitch at the site; ``layers`` every stitch of the cut (the site first, then any
    residual stream that B's remainder reads, see ``splice``); ``model`` the stitched network.
    ``history``: one dict per epoch (epoch 0 = initialisation) with ``train_loss``, ``val_loss``,
    ``val_acc`` and ``seconds``. ``best_epoch`` was chosen on validation out of ``epochs`` (the
    resolved recipe, trained at ``lr``). ``feature_error``: relative squared error
    ``E||S a - b||^2 / E||b||^2`` of the site's stitch on the training features (None when no
    feature statistics were computed). ``feature_errors``: the same error for every stitch
    of the cut that has statistics (the site and any residual stream), keyed like ``layers``; at a
    residual site the stream's error is as important as the site's (B's skip path reads it).
    """

    site: str
    kind: str
    solver: str | None
    acc_a: float
    acc_b: float
    acc_stitched: float
    penalty: float
    val_acc: float
    best_epoch: int
    layer: StitchLayer
    layers: dict[str, nn.Module]
    model: StitchedModel
    history: list[dict[str, Any]] = field(default_factory=list)
    sparsity: float | None = None
    feature_error: float | None = None
    feature_errors: dict[str, float] = field(default_factory=dict)
    residual_streams: list[str] = field(default_factory=list)
    init_samples: int | None = None
    epochs: int = 0
    lr: float = 0.0
    wall_time_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fit_time_s(self) -> float:
        """Seconds spent by the solver itself: initialisation (B's features at the site, the
        closed form or matching) plus training, without the work every kind shares (tracing,
        caching A's features, evaluating A, B and the stitched model on test)."""
        return self.timings.get("init", 0.0) + self.timings.get("train", 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields, timings and history (JSON-serialisable)."""
        keys = (
            "site kind solver acc_a acc_b acc_stitched penalty val_acc best_epoch sparsity "
            "feature_error feature_errors residual_streams init_samples epochs lr wall_time_s fit_time_s "
            "timings history"
        ).split()
        return {k: getattr(self, k) for k in keys}


# ---- data plumbing -----------------------------------------------------------------------------


def _splits(data: Any) -> tuple[Dataset, Dataset | None, Dataset]:
    if isinstance(data, dict):
        return data["train"], data.get("val"), data["test"]
    if isinstance(data, tuple | list) and len(data) >= 3 and not hasattr(data, "train"):
        return data[0], data[1], data[2]
    return data.train, getattr(data, "val", None), data.test


def _loader(ds: Dataset, batch_size: int, shuffle: bool = False, generator=None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


class _Features:
    """Front-of-A features of one split: cached tensors, or recomputed per batch when too big."""

    def __init__(self, front: nn.Module, ds: Dataset, cfg: StitchConfig, device, per_sample: int):
        self.front, self.ds, self.cfg, self.device = front, ds, cfg, device
        self.n = len(ds)
        self.cache: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self.fits = self.n * per_sample <= cfg.cache_bytes

    def fill(self, on_batch=None) -> None:
        """One pass over the split: cache (if it fits) and call ``on_batch(x, feats)``."""
        feats_all: list[list[torch.Tensor]] = []
        labels = []
        with torch.no_grad():
            for x, y in _loader(self.ds, self.cfg.batch_size):
                x = _input(x, self.device, self.cfg.channels_last)
                feats = self.front(x)
                if on_batch is not None:
                    on_batch(x, feats)
                if self.fits:
                    feats_all.append([f.detach() if torch.is_tensor(f) else f for f in feats])
                    labels.append(torch.as_tensor(y).to(self.device))
        if self.fits:
            k = len(feats_all[0])
            cat = [
                torch.cat([b[i] for b in feats_all]) if torch.is_tensor(feats_all[0][i]) else None
                for i in range(k)
            ]
            self.cache = (cat, torch.cat(labels))

    def batches(self, shuffle: bool, generator=None) -> Iterator[tuple[tuple, torch.Tensor]]:
        bs = self.cfg.batch_size
        # One order for both paths, so caching never changes the result.
        order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        if self.cache is not None:
            cat, labels = self.cache
            order = order.to(labels.device)
            for s in range(0, self.n, bs):
                idx = order[s : s + bs]
                yield tuple(c[idx] if c is not None else None for c in cat), labels[idx]
            return
        loader = DataLoader(self.ds, batch_size=bs, sampler=order.tolist())
        for x, y in loader:
            with torch.no_grad():
                feats = self.front(_input(x, self.device, self.cfg.channels_last))
            yield tuple(feats), torch.as_tensor(y).to(self.device)


def _input(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    """A batch of inputs on ``device``; image batches (4-d) in channels-last layout if asked."""
    x = x.to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _evaluate_model(
    model: nn.Module, ds: Dataset, batch_size: int, device, channels_last: bool = False
) -> float:
    correct = 0
    with torch.no_grad():
        for x, y in _loader(ds, batch_size):
            out = model(_input(x, device, channels_last))
            correct += int((out.argmax(1) == torch.as_tensor(y).to(device)).sum())
    return correct / max(len(ds), 1)


def _evaluate_stitched(model: StitchedModel, feats: _Features) -> tuple[float, float]:
    was = model.training
    model.train(False)
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for f, y in feats.batches(shuffle=False):
            out = model.forward_from_front(f)
            loss += float(F.cross_entropy(out.float(), y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    model.train(was)
    return correct / max(n, 1), loss / max(n, 1)


# ---- layer construction and initialisation -----------------------------------------------------


def _channel_dim(t: torch.Tensor, override: int | None) -> int:
    if override is not None:
        return override
    if t.dim() == 3:  # tokens (N, T, D)
        return 2
    if t.dim() < 2:
        raise ShapeError(f"cannot stitch a feature of shape {tuple(t.shape)}: need (N, C, ...)")
    return 1  # (N, C) dense or (N, C, H, W) conv


def _check_shapes(fa: torch.Tensor, fb: torch.Tensor, cdim: int, name: str) -> None:
    sa, sb = list(fa.shape), list(fb.shape)
    if len(sa) != len(sb) or [s for i, s in enumerate(sa) if i != cdim] != [
        s for i, s in enumerate(sb) if i != cdim
    ]:
        raise ShapeError(
            f"at {name!r} model A's features have shape {tuple(sa)} and model B's {tuple(sb)}; "
            f"they may differ only in the channel axis {cdim}"
        )


def _uses_birkhoff(kind: str, cfg: StitchConfig) -> bool:
    """The ``solver`` option applies to monomial kinds only; every other kind ignores it."""
    return kind in MONOMIAL_KINDS and cfg.solver == "birkhoff"


def _make(kind, arg, c_in, c_out, cdim, cfg: StitchConfig, dtype, gen) -> StitchLayer:
    if _uses_birkhoff(kind, cfg):
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


def _init_identity(layer: StitchLayer) -> None:
    eye = torch.eye(layer.c_in, dtype=layer._dtype())
    if layer.kind in ("full", "lasso", "orthogonal"):
        if layer.c_in != layer.c_out:
            raise ShapeError("identity init needs equal widths")
        layer.set_(eye)
    elif layer.kind == "low_rank":
        raise ValueError("a low-rank layer cannot be the identity; use init='closed_form'")
    # diagonal and monomial layers start at the identity already


def _init_random(layer: StitchLayer, gen: torch.Generator) -> None:
    if isinstance(layer, MonomialStitch):
        perm = torch.randperm(layer.c_in, generator=gen)
        layer.set_(perm, torch.ones(layer.c_in, dtype=layer._dtype()))
    # other kinds keep PyTorch's default initialisation (the paper's)


def _init_closed_form(layer: StitchLayer, stats: solvers.FeatureStats, cfg: StitchConfig) -> None:
    bias = cfg.bias
    dev = layer._device()

    def d(t):
        return None if t is None else t.to(device=dev, dtype=layer._dtype())

    if layer.kind in ("full", "lasso"):
        m, b = solvers.lstsq(stats, bias=bias, ridge=cfg.ridge)
        layer.set_(d(m), d(b))
    elif layer.kind == "orthogonal":
        q, b = solvers.procrustes(stats, bias=bias)
        layer.set_(d(q), d(b))
    elif layer.kind == "low_rank":
        up, down, b = solvers.reduced_rank(stats, layer.rank, bias=bias, ridge=cfg.ridge)
        layer.set_(d(up), d(down), d(b))
    elif layer.kind == "diagonal":
        s, b = solvers.diagonal(stats, bias=bias)
        layer.set_(d(s), d(b))
    elif isinstance(layer, MonomialStitch):
        perm, scale, b = solvers.match(stats, layer.kind, bias=bias, score=cfg.match_score)
        layer.set_(perm.to(dev), d(scale), d(b))
    else:  # pragma: no cover
        raise ValueError(f"no closed form for {layer.kind!r}")


def _needs_stats(kind: str, cfg: StitchConfig) -> bool:
    if cfg.init in ("identity", "random"):
        return False
    return not _uses_birkhoff(kind, cfg)


def resolve_config(cfg: StitchConfig, kind: str) -> StitchConfig:
    """``cfg`` with ``epochs=None`` / ``lr=None`` replaced by the recipe for ``kind`` (see
    ``StitchConfig``): 20 epochs (the paper's) for birkhoff and random inits, else 2; lr 1e-3 (the
    paper's SGD) for birkhoff, else 1e-2 (Adam)."""
    birkhoff = _uses_birkhoff(kind, cfg)
    epochs = (
        cfg.epochs if cfg.epochs is not None else (20 if birkhoff or cfg.init == "random" else 2)
    )
    lr = cfg.lr if cfg.lr is not None else (1e-3 if birkhoff else 1e-2)
    return replace(cfg, epochs=int(epochs), lr=float(lr))


def _optimizer(layers: list[nn.Module], kind: str, cfg: StitchConfig) -> torch.optim.Optimizer:
    birkhoff = _uses_birkhoff(kind, cfg)
    use_sgd = cfg.optimizer == "sgd" or (cfg.optimizer == "auto" and birkhoff)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (1e-4 if birkhoff else 0.0)
    groups = []
    for layer in layers:
        for name, p in layer.named_parameters():
            if not p.requires_grad:
                continue
            # The paper decays only the scales of its G_ReLU layer, never the doubly-stochastic W.
            decay = 0.0 if (isinstance(layer, BirkhoffStitch) and name == "weight") else wd
            groups.append({"params": [p], "weight_decay": decay})
    if not groups:
        return None
    if use_sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


# ---- the public entry point --------------------------------------------------------------------


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
    data: Any,
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
    train_ds, val_ds, test_ds = _splits(data)
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


def _stitch(model_a, model_b, at, layer, cfg, train_ds, val_ds, test_ds, device, gen):
    a, b = _frozen_copy(model_a, device), _frozen_copy(model_b, device)
    if cfg.channels_last:  # converts 4-d weights only; the copies' function is unchanged
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    gm_a, gm_b = trace(a, at), trace(b, at)
    cut = find_cut(gm_b, at)
    kind, arg = resolve_kind(layer, dict(b.named_modules())[at])
    cfg = resolve_config(cfg, kind)
    if cfg.epochs > 0 and (val_ds is None or len(val_ds) == 0):
        raise TooFewSamplesError("training a stitch needs a validation split to choose the epoch")
    if cfg.solver == "birkhoff" and kind in ("signed_perm", "monomial"):
        raise ValueError(f"the birkhoff solver fits 'perm_scale' and 'permutation', not {kind!r}")
    front_a, front_b = build_front(gm_a, cut), build_front(gm_b, cut)
    back = build_back(gm_b, at, cut)

    x0 = _input(next(iter(_loader(train_ds, min(cfg.batch_size, 8))))[0], device, cfg.channels_last)
    with torch.no_grad():
        fa0, fb0 = front_a(x0), front_b(x0)
    stitched_names, stitches, stats_of, per_sample = [], nn.ModuleDict(), {}, 0
    for i, name in enumerate(cut.names):
        ta, tb = fa0[i], fb0[i]
        if cut.passthrough[i] or not (torch.is_tensor(ta) and ta.is_floating_point()):
            stitches[name] = nn.Identity()  # the shared input (or a shape): not a representation
            continue
        cdim = _channel_dim(ta, cfg.channel_dim)
        _check_shapes(ta, tb, cdim, name)
        c_in, c_out = ta.shape[cdim], tb.shape[cdim]
        stitches[name] = _make(kind, arg, c_in, c_out, cdim, cfg, ta.dtype, gen).to(device)
        stitched_names.append(name)
        per_sample += ta[0].numel() * ta.element_size()
        if _needs_stats(kind, cfg):
            # Monomial and diagonal maps (and their residuals) read only the diagonal of x^T x.
            cross = not (kind in MONOMIAL_KINDS or kind == "diagonal")
            stats_of[name] = solvers.FeatureStats(c_in, c_out, device=device, cross_x=cross)
    if len(stitched_names) > 1 and cfg.residual == "error":
        raise ResidualSiteError(
            f"site {at!r} lies inside a residual branch: model B's remainder also reads "
            f"{stitched_names[1:]}; use residual='stitch' to stitch those streams too, or stitch "
            "at a block output"
        )

    train_f = _Features(front_a, train_ds, cfg, device, per_sample)
    index = {n: i for i, n in enumerate(cut.names)}
    timings = {"init": 0.0}
    seen = [0]
    # init_samples="auto": stop feeding B's features once match's assignment has converged.
    auto = cfg.init_samples == "auto" and kind in MONOMIAL_KINDS and cfg.init in INITS[:2]
    limit = cfg.init_samples if isinstance(cfg.init_samples, int) else None
    check = {"next": AUTO_INIT_MIN, "perms": None, "done": False}

    def accumulate(x, feats_a):
        if check["done"] or (limit is not None and seen[0] >= limit):
            return
        seen[0] += len(x)
        t = time.perf_counter()
        _accumulate(x, feats_a)
        if auto and seen[0] >= check["next"]:
            _check_convergence()
        timings["init"] += time.perf_counter() - t

    def _check_convergence():
        check["next"] *= 2
        perms, ok = {}, check["perms"] is not None
        for name, st in stats_of.items():
            if check["perms"] is None:
                perms[name], _ = solvers.assignment(st, kind, bias=cfg.bias, score=cfg.match_score)
                continue
            conv, perms[name] = solvers.assignment_converged(
                st, kind, check["perms"][name], bias=cfg.bias, score=cfg.match_score,
                tol=cfg.auto_tol,
            )  # fmt: skip
            ok = ok and conv
        check["perms"], check["done"] = perms, ok

    def _accumulate(x, feats_a):
        feats_b = front_b(x)
        for name, st in stats_of.items():
            cdim = stitches[name].channel_dim
            st.update(
                solvers.channels_last(feats_a[index[name]], cdim),
                solvers.channels_last(feats_b[index[name]], cdim),
            )

    t = time.perf_counter()
    if train_f.fits or stats_of:
        train_f.fill(accumulate if stats_of else None)
    timings["features"] = time.perf_counter() - t - timings["init"]
    t = time.perf_counter()
    for name in stitched_names:
        lay = stitches[name]
        if cfg.init == "identity":
            _init_identity(lay)
        elif cfg.init == "random":
            _init_random(lay, gen)
        elif name in stats_of:
            _init_closed_form(lay, stats_of[name], cfg)

    timings["init"] += time.perf_counter() - t
    t = time.perf_counter()
    val_f = _Features(front_a, val_ds, cfg, device, per_sample) if val_ds is not None else None
    if val_f is not None and val_f.fits:
        val_f.fill()
    timings["features"] += time.perf_counter() - t
    t = time.perf_counter()
    model = StitchedModel(front_a, stitches, back, cut.names)
    history: list[dict[str, Any]] = []
    best, best_key, best_epoch = copy.deepcopy(stitches), None, 0
    if val_f is not None:
        va, vl = _evaluate_stitched(model, val_f)
        history.append(
            {"epoch": 0, "train_loss": None, "val_acc": va, "val_loss": vl, "seconds": 0.0}
        )
        best_key = (va, -vl)
    trainable = [stitches[n] for n in stitched_names]
    opt = _optimizer(trainable, kind, cfg) if cfg.epochs > 0 else None
    birkhoff = [m for m in trainable if isinstance(m, BirkhoffStitch)]
    warm_epochs = int(cfg.warmup * cfg.epochs) if birkhoff else 0
    for epoch in tqdm(range(1, cfg.epochs + 1 if opt else 1), desc=f"stitch {at}",
                      disable=not cfg.progress, leave=False):  # fmt: skip
        t_ep = time.perf_counter()
        for m in birkhoff:
            m.use_scale = epoch > warm_epochs
        model.train(True)
        total, count = 0.0, 0
        for feats, y in train_f.batches(shuffle=True, generator=gen):
            out = model.forward_from_front(feats)
            loss = F.cross_entropy(out, y)
            reg = sum((m.regularization() for m in trainable), torch.zeros((), device=device))
            opt.zero_grad(set_to_none=True)
            (loss + reg).backward()
            opt.step()
            for m in trainable:
                m.project_(cfg.lr, opt)
            total += float(loss.detach()) * len(y)
            count += len(y)
        model.train(False)
        va, vl = _evaluate_stitched(model, val_f)
        history.append(
            {"epoch": epoch, "train_loss": total / max(count, 1), "val_acc": va, "val_loss": vl,
             "seconds": time.perf_counter() - t_ep}
        )  # fmt: skip
        if (va, -vl) > best_key:
            best, best_key, best_epoch = copy.deepcopy(stitches), (va, -vl), epoch
    # Restore the validation-chosen state; the relaxed birkhoff layer becomes its hard rounding.
    for name in stitched_names:
        lay = best[name]
        stitches[name] = lay.to_monomial() if isinstance(lay, BirkhoffStitch) else lay
    model.train(False)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    test_f = _Features(front_a, test_ds, cfg, device, 0)
    test_f.fits = False  # evaluated once: no point caching
    acc_s, _ = _evaluate_stitched(model, test_f)
    acc_a = _evaluate_model(a, test_ds, cfg.batch_size, device, cfg.channels_last)
    acc_b = _evaluate_model(b, test_ds, cfg.batch_size, device, cfg.channels_last)
    site_layer = stitches[cut.names[0]]
    feature_errors = {
        name: float(st.residual(stitches[name].matrix(), stitches[name].bias_vector()))
        for name, st in stats_of.items()
    }
    feature_error = feature_errors.get(cut.names[0])
    # Report module names ("stem.act", as models.sites, trace and capture name them), not fx node
    # names ("stem_act"); a stream that is no module's output keeps its node name.
    shown = {n: (tg if isinstance(tg, str) else n) for n, tg in zip(cut.names, cut.targets)}
    shown[cut.names[0]] = at
    feature_errors = {shown[n]: v for n, v in feature_errors.items()}
    timings["evaluate"] = time.perf_counter() - t
    solver = cfg.solver if kind in MONOMIAL_KINDS else None
    return StitchResult(
        site=at,
        kind=kind if arg is None else f"{kind}:{arg:g}",
        solver=solver,
        acc_a=acc_a,
        acc_b=acc_b,
        acc_stitched=acc_s,
        penalty=(acc_a + acc_b) / 2 - acc_s,
        val_acc=best_key[0] if best_key else float("nan"),
        best_epoch=best_epoch,
        layer=site_layer,
        layers={shown[n]: stitches[n] for n in cut.names},
        model=model,
        history=history,
        sparsity=site_layer.sparsity(),
        feature_error=feature_error,
        feature_errors=feature_errors,
        residual_streams=[shown[n] for n in stitched_names[1:]],
        init_samples=seen[0] if stats_of else None,
        epochs=cfg.epochs,
        lr=cfg.lr,
        timings=timings,
    )
