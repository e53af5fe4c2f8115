"""Training and evaluation with seeds, a held-out validation split and progress bars.

``train(model, data, config)`` keeps the epoch with the best *validation* accuracy (ties: lower
validation loss, then the earlier epoch); the test split is evaluated once, on the kept weights, and
never used for any choice. With the same seed on CPU the final weights are bit-identical.
``evaluate`` sums the loss and correct predictions per target (no per-batch averaging bias): a
target is an example, or one position of a sequence output (a language model's next tokens).
``train_zoo`` trains one checkpoint per seed and resumes by skipping valid checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from intertwiner import _validate
from intertwiner._types import JSONDict
from intertwiner.data.splits import ArrayDataset, DataSplits
from intertwiner.errors import ConfigMismatchError, InvalidOptionError, NonFiniteError, ShapeError


@dataclass
class TrainConfig:
    """Hyper-parameters of ``train``. Defaults follow the paper's recipe (paper.md section 3).

    - ``optimizer``: ``"adam"`` (paper: lr 1e-3) or ``"sgd"`` (with ``momentum``, Nesterov off).
    - ``weight_decay`` is applied as the paper's code does (``weight_decay_on="weights"``: every
      parameter whose name ends in ``weight``, BatchNorm/LayerNorm gains included, biases excluded),
      or to every parameter (``"all"``). It is L2 added to the gradient (torch's ``weight_decay``).
    - ``schedule``: ``"none"``, ``"step"`` (x``step_gamma`` every ``max(1, epochs // 4)`` epochs, as
      the paper) or ``"cosine"`` (to 0 over ``epochs``, stepped per epoch).
    - ``device``: ``None`` picks CUDA when available, else CPU. Bit-identical runs are promised on
      CPU only. ``num_threads``: torch intra-op threads during the call (restored after); None
      leaves torch's setting alone.
    - ``max_seconds``: stop early when another epoch (at the mean epoch time so far) would overrun
      this wall-clock budget (None: run every epoch). Timing-dependent, so runs that stop early
      are not reproducible; meant for benchmarks.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_on: str = "weights"
    schedule: str = "step"
    step_gamma: float = 0.5
    seed: int = 0
    device: str | None = None
    progress: bool = True
    num_threads: int | None = None
    eval_batch_size: int = 512
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        """Every field checked (``InvalidOptionError``, a ValueError, saying the valid range)."""
        v = _validate
        v.choice(self.optimizer, "optimizer", ("adam", "sgd"))
        v.choice(self.schedule, "schedule", ("none", "step", "cosine"))
        v.choice(self.weight_decay_on, "weight_decay_on", ("weights", "all"))
        self.epochs = v.positive_int(self.epochs, "epochs")
        self.batch_size = v.positive_int(self.batch_size, "batch_size")
        self.eval_batch_size = v.positive_int(self.eval_batch_size, "eval_batch_size")
        self.seed = v.positive_int(self.seed, "seed", minimum=0)
        self.lr = v.finite_number(self.lr, "lr", low=0.0, low_open=True, hint="e.g. 1e-3")
        self.momentum = v.finite_number(self.momentum, "momentum", low=0.0, high=1.0,
                                        high_open=True)  # fmt: skip
        self.weight_decay = v.finite_number(self.weight_decay, "weight_decay", low=0.0)
        self.step_gamma = v.finite_number(self.step_gamma, "step_gamma", low=0.0, high=1.0,
                                          low_open=True)  # fmt: skip
        if self.num_threads is not None:
            self.num_threads = v.positive_int(self.num_threads, "num_threads")
        if self.max_seconds is not None:
            self.max_seconds = v.finite_number(self.max_seconds, "max_seconds", low=0.0,
                                               low_open=True)  # fmt: skip
        if self.device is not None:
            v.device(self.device)

    def to_dict(self) -> JSONDict:
        """JSON-friendly copy (stored in checkpoint metadata)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What ``train`` returns: the model with the kept (best-validation) weights loaded, in eval mode.

    ``history``: one dict per epoch with ``epoch`` (1-based), ``train_loss``, ``train_accuracy``,
    ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``. ``test_accuracy``/``test_loss`` are of the
    kept weights, measured once after training.
    """

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> JSONDict:
        """Scalars only (no model or history), for tables and metadata."""
        return {
            "best_epoch": self.best_epoch,
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "seconds": round(self.seconds, 3),
            "epochs": len(self.history),
        }


def checkpoint_metadata(
    result: TrainResult,
    data: DataSplits,
    config: TrainConfig,
    *,
    data_options: JSONDict | None = None,
    **extra: Any,
) -> JSONDict:
    """The one metadata schema of a trained checkpoint: what ``checkpoints.data_splits`` needs to
    rebuild the exact splits (``dataset``, ``data_options``, ``split_seed``, ``data_meta``), the
    seeds and training configuration, the history and ``result.summary()``; ``extra`` adds fields
    (e.g. the zoo stage's ``zoo_config``)."""
    from intertwiner.data import options_from_meta

    meta = data.meta or {}
    return {
        "dataset": meta.get("name"),
        "data_options": dict(data_options or options_from_meta(meta)),
        "data_meta": meta,
        "split_seed": meta.get("split_seed"),
        "train_seed": config.seed,
        "init_seed": config.seed,
        "train_config": config.to_dict(),
        "history": result.history,
        **result.summary(),
        **extra,
    }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA if available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batches(
    data: Dataset | DataLoader | Iterable,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(x, y)``. ``ArrayDataset`` is sliced directly (no per-item collation)."""
    if isinstance(data, ArrayDataset):
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield data.get_batch(order[start : start + batch_size], generator)
    elif isinstance(data, Dataset):
        yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    else:  # a DataLoader or any iterable of (x, y)
        yield from data


def _to_device(x: Any, dev: torch.device) -> Any:
    """A batch's inputs on ``dev``: a tensor, or a tuple of tensors (and Nones) such as the cached
    front-of-model features stitching evaluates from."""
    if isinstance(x, tuple | list):
        return type(x)(_to_device(t, dev) for t in x)
    return x.to(dev) if torch.is_tensor(x) else x


def per_target(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (M, C), targets (M,))``: one row per predicted target.

    ``logits (N, C)`` with ``y (N,)`` are returned as they are. Outputs with more dims are read by
    their shape against ``y``: classes last (``(N, T, C)`` with ``y (N, T)``, a language model's
    next-token logits) or classes in dim 1 (``(N, C, d1, ...)`` with ``y (N, d1, ...)``, torch's
    ``cross_entropy`` layout). A shape that fits both (``T == C``) or neither is refused.
    """
    if logits.ndim == 2 and y.ndim == 1 and len(y) == len(logits):
        return logits, y
    last = logits.ndim >= 2 and logits.shape[:-1] == y.shape
    dim1 = logits.ndim >= 3 and (logits.shape[0], *logits.shape[2:]) == y.shape
    if last and dim1:
        raise ShapeError(
            f"cannot tell the class dim of logits {tuple(logits.shape)} for targets "
            f"{tuple(y.shape)}: dims 1 and -1 both fit; return (N, T, C) logits with C != T"
        )
    if not (last or dim1):
        raise ShapeError(
            f"logits {tuple(logits.shape)} do not fit targets {tuple(y.shape)}: expected (N, C) "
            "with (N,), (N, T, C) with (N, T), or (N, C, d1, ...) with (N, d1, ...)"
        )
    if dim1:
        logits = logits.movedim(1, -1)
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader | Iterable,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """``{"accuracy", "loss", "n"}``: mean cross-entropy and accuracy *per target*, in eval mode
    (``n`` targets: examples, or every position of sequence outputs; ``per_target``).

    ``dataset_or_loader``: a Dataset, a DataLoader or any iterable of ``(x, y)`` batches; ``x`` may
    be a tuple of tensors, passed to the model as one argument.

    Loss is summed in float64 over examples and divided by their count, so a small last batch weighs
    as much as its size. The model's train/eval mode is restored afterwards. ``device=None`` uses
    the device of the model's first parameter (CPU for a parameter-free model).
    """
    batch_size = _validate.positive_int(batch_size, "batch_size")
    if device is None:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = torch.device(device)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    n = 0
    try:
        for x, y in _batches(dataset_or_loader, batch_size, shuffle=False, generator=None):
            x, y = _to_device(x, dev), torch.as_tensor(y).to(dev)
            with _validate.reraise_shape_errors("evaluate", x, model):
                logits, y = per_target(model(x), y)
            total_loss += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            correct += int((logits.argmax(dim=1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    return {"accuracy": correct / n, "loss": float(total_loss) / n, "n": n}


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if config.weight_decay_on == "all" or name.endswith("weight"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over the model's trainable parameters, weight decay as ``config`` says."""
    groups = _param_groups(model, config)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule (``None`` for ``"none"``)."""
    if config.schedule == "step":
        step = max(1, config.epochs // 4)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=config.step_gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def _train_epoch(
    model: nn.Module,
    data: DataSplits,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
) -> tuple[float, float]:
    """One shuffled pass over ``data.train``: ``(mean loss, accuracy)`` per target."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = n = 0
    for x, y in _batches(data.train, config.batch_size, shuffle=True, generator=generator):
        x, y = x.to(device), y.to(device)
        logits, y = per_target(model(x), y)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"training loss became {loss.item()} at epoch {epoch}; lower lr "
                f"(now {optimizer.param_groups[0]['lr']}) or check the data for NaN/Inf"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double().cpu() * len(y)
        correct += int((logits.detach().argmax(dim=1) == y).sum())
        n += len(y)
    return float(loss_sum) / max(n, 1), correct / max(n, 1)


def train(model: nn.Module, data: DataSplits, config: TrainConfig | None = None) -> TrainResult:
    """Train ``model`` on ``data.train``; keep the epoch with the best ``data.val`` accuracy.

    Shuffling and augmentation draw from a ``torch.Generator`` seeded with ``config.seed``; the global
    RNG is also seeded (for any randomness inside the model) and restored afterwards. If the
    validation split is empty, the last epoch is kept. Raises ``NonFiniteError`` if the loss
    becomes NaN/Inf (lower ``lr``). Returns a ``TrainResult`` whose ``model`` is ``model`` itself,
    on ``config.device``, in eval mode.
    """
    config = config or TrainConfig()
    device = resolve_device(config.device)
    start = time.perf_counter()
    with _threads(config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model.to(device)
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config)
        history: list[dict[str, float]] = []
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] = {}
        best_epoch = 0
        has_val = len(data.val) > 0
        bar = tqdm(
            range(1, config.epochs + 1), desc="train", disable=not config.progress, leave=False
        )
        for epoch in bar:
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss, acc = _train_epoch(model, data, optimizer, config, generator, device, epoch)
            if scheduler is not None:
                scheduler.step()
            val = evaluate(model, data.val, device=device, batch_size=config.eval_batch_size)
            row = {
                "epoch": epoch,
                "train_loss": loss,
                "train_accuracy": acc,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": lr,
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            key = (val["accuracy"], -val["loss"]) if has_val else (float(epoch), 0.0)
            if best is None or key > best:
                best, best_epoch = key, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                acc=f"{row['train_accuracy']:.3f}",
                val=f"{row['val_accuracy']:.3f}",
            )
            if config.max_seconds is not None:
                elapsed = time.perf_counter() - start
                if elapsed * (epoch + 1) / epoch > config.max_seconds:  # next epoch would overrun
                    break
        model.load_state_dict(best_state)
        model.eval()
        test = evaluate(model, data.test, device=device, batch_size=config.eval_batch_size)
    kept = history[best_epoch - 1]
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        val_accuracy=kept["val_accuracy"],
        val_loss=kept["val_loss"],
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        seconds=time.perf_counter() - start,
        config=config.to_dict(),
    )


# ------------------------------------------------------------------------------------------------
# The zoo: one checkpoint per seed, resumable.


def zoo_filename(arch: str, activation: str, seed: int, dataset: str | None = None) -> str:
    """``{arch}-{activation}-{dataset}-seed{seed}.safetensors`` (no dataset part when None): the
    one naming of checkpoints, also ``reproduce``'s (which appends the config hash)."""
    middle = f"{dataset}-" if dataset else ""
    return f"{arch}-{activation}-{middle}seed{int(seed)}.safetensors"


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """``"0-3"`` -> [0, 1, 2, 3]; ``"0,2,5"`` -> [0, 2, 5]; ints and lists pass through."""
    if not isinstance(spec, str):
        items = list(spec) if isinstance(spec, Iterable) else [spec]
        return [_validate.positive_int(s, "seed", minimum=0) for s in items]
    seeds: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise InvalidOptionError(
                f"cannot read seeds {spec!r}: {part!r} is not a seed (>= 0) or a range low-high; "
                "use e.g. '0-3' or '0,2,5'"
            )
        if sep and int(hi) < int(lo):
            raise InvalidOptionError(f"empty seed range {part!r}; write low-high, e.g. 0-3")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise InvalidOptionError(f"no seeds in {spec!r}; use e.g. '0-3' or '0,1,2'")
    return seeds


#: TrainConfig fields that do not change the trained model (how it runs, not what it learns).
_RUN_ONLY = ("progress", "num_threads", "device", "eval_batch_size")


def _check_resumable(
    path: Path, arch: str, cfg: dict[str, Any], tc: TrainConfig, data_meta: dict[str, Any]
) -> None:
    """Refuse to reuse a zoo checkpoint made with another model configuration, training
    configuration or data split (a zoo folder reused with new settings would otherwise silently
    hand back the old models). ``ConfigMismatchError`` lists every differing field."""
    from intertwiner import checkpoints

    meta = checkpoints.read_metadata(path)

    def jsonable(d: dict[str, Any]) -> dict[str, Any]:  # as the metadata stores it
        return json.loads(json.dumps(d, default=str))

    saved_train = meta.get("train_config")
    if not isinstance(saved_train, dict):
        raise ConfigMismatchError(
            f"{path} exists but records no training configuration, so it cannot be resumed "
            "safely; use another zoo folder or delete that checkpoint"
        )
    parts = {
        "": (meta.get("config", {}), jsonable({"arch": arch, **cfg})),
        "train_config.": (saved_train, jsonable(tc.to_dict())),
        "data.": (meta.get("data_meta") or {}, jsonable(data_meta)),
    }
    differ = []
    for prefix, (saved, asked) in parts.items():
        for k, v in asked.items():
            if prefix == "train_config." and k in _RUN_ONLY:
                continue
            if k in saved and saved[k] != v:
                differ.append(f"{prefix}{k}: saved {saved[k]!r}, asked {v!r}")
    if differ:
        raise ConfigMismatchError(
            f"{path} exists with other settings ({'; '.join(differ)}); resuming would return "
            "that model, not the one asked for. Use another zoo folder (--out) or delete that "
            "checkpoint to retrain it"
        )


def train_checkpoint(
    arch: str,
    model_config: JSONDict,
    data: DataSplits,
    config: TrainConfig,
    path: str | Path,
    *,
    data_options: JSONDict | None = None,
    **metadata: Any,
) -> TrainResult:
    """The one way a model of the zoo is made: build ``arch`` with ``model_config`` and initial
    weights from ``config.seed``, ``train`` it, and save it at ``path`` with
    ``checkpoint_metadata`` (plus ``metadata``). Returns the ``TrainResult``."""
    from intertwiner import checkpoints, models

    model = models.build(arch, seed=config.seed, **model_config)
    result = train(model, data, config)
    meta = checkpoint_metadata(result, data, config, data_options=data_options, **metadata)
    checkpoints.save(result.model, path, meta)
    return result


def train_zoo(
    arch: str,
    seeds: Sequence[int] | str,
    data: DataSplits,
    out_dir: str | Path,
    *,
    model_config: JSONDict | None = None,
    train_config: TrainConfig | None = None,
    progress: bool = True,
) -> list[Path]:
    """Train one ``arch`` model per seed on ``data`` and save ``{arch}-{activation}-{dataset}-seed{s}``.

    The seed sets both the initial weights (``models.build(seed=s)``) and the training order
    (``TrainConfig.seed``); the data split is the one in ``data`` for every seed. ``in_channels``,
    ``input_size`` and ``num_classes`` default to ``data.meta``. A seed whose checkpoint exists and
    passes ``checkpoints.is_valid`` is skipped, so an interrupted zoo resumes where it stopped; it
    must have been made with the same model configuration, training configuration (all but
    progress, threads, device and eval batch size) and data split, else ``ConfigMismatchError``
    names the differing fields.
    Returns the checkpoint paths in seed order.
    """
    from intertwiner import checkpoints, models
    from intertwiner.groups import activation_name

    cfg = {**data.model_config(), **(model_config or {})}
    activation = activation_name(cfg.get("activation", models.defaults(arch)["activation"]))
    base = train_config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    seed_list = parse_seeds(seeds)
    bar = tqdm(seed_list, desc=f"zoo {arch}-{activation}", disable=not progress)
    for seed in bar:
        path = out / zoo_filename(arch, activation, seed, data.meta.get("name"))
        paths.append(path)
        tc = dataclasses.replace(base, seed=seed, progress=base.progress and progress)
        if checkpoints.is_valid(path):
            _check_resumable(path, arch, cfg, tc, data.meta)
            bar.set_postfix(seed=seed, status="exists")
            continue
        result = train_checkpoint(arch, cfg, data, tc, path)
        bar.set_postfix(seed=seed, test=f"{result.test_accuracy:.4f}")
    return paths
