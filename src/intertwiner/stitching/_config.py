"""How a stitch is fitted (``StitchConfig``, with the benchmarked recipes) and what it reports
(``StitchResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from intertwiner.errors import InvalidOptionError
from intertwiner.stitching._layers import MONOMIAL_KINDS, StitchLayer
from intertwiner.stitching._splice import StitchedModel

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
            raise InvalidOptionError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.init not in INITS:
            raise InvalidOptionError(f"init must be one of {INITS}, got {self.init!r}")
        if self.optimizer not in ("auto", "adam", "sgd"):
            raise InvalidOptionError(
                f"optimizer must be 'auto', 'adam' or 'sgd', got {self.optimizer!r}"
            )
        if self.residual not in ("stitch", "error"):
            raise InvalidOptionError(f"residual must be 'stitch' or 'error', got {self.residual!r}")
        if (
            (self.epochs is not None and int(self.epochs) < 0)
            or int(self.batch_size) < 1
            or (self.lr is not None and not self.lr > 0)
        ):
            raise InvalidOptionError(
                "epochs must be >= 0 (or None), batch_size >= 1 and lr > 0 (or None)"
            )
        if not (
            self.init_samples is None
            or self.init_samples == "auto"
            or (isinstance(self.init_samples, int) and self.init_samples >= 1)
        ):
            raise InvalidOptionError(
                f"init_samples must be None, 'auto' or a positive int, got {self.init_samples!r}"
            )
        if not 0.0 <= self.warmup <= 1.0:
            raise InvalidOptionError(
                f"warmup is a fraction of the epochs in [0, 1], got {self.warmup}"
            )


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


def uses_birkhoff(kind: str, cfg: StitchConfig) -> bool:
    """The ``solver`` option applies to monomial kinds only; every other kind ignores it."""
    return kind in MONOMIAL_KINDS and cfg.solver == "birkhoff"


def needs_stats(kind: str, cfg: StitchConfig) -> bool:
    if cfg.init in ("identity", "random"):
        return False
    return not uses_birkhoff(kind, cfg)


def resolve_config(cfg: StitchConfig, kind: str) -> StitchConfig:
    """``cfg`` with ``epochs=None`` / ``lr=None`` replaced by the recipe for ``kind`` (see
    ``StitchConfig``): 20 epochs (the paper's) for birkhoff and random inits, else 2; lr 1e-3 (the
    paper's SGD) for birkhoff, else 1e-2 (Adam)."""
    birkhoff = uses_birkhoff(kind, cfg)
    epochs = (
        cfg.epochs if cfg.epochs is not None else (20 if birkhoff or cfg.init == "random" else 2)
    )
    lr = cfg.lr if cfg.lr is not None else (1e-3 if birkhoff else 1e-2)
    return replace(cfg, epochs=int(epochs), lr=float(lr))
