"""Safe checkpoints: weights in safetensors, metadata in a JSON sidecar; no pickle anywhere.

``save(model, "m.safetensors", metadata)`` writes ``m.safetensors`` and ``m.json``. The JSON holds
``arch`` and ``config`` (from ``model.intertwiner_config`` of a ``models.build`` model, so ``load``
can rebuild it), ``activation``, the caller's metadata (dataset, split seed, train seed, val/test accuracy,
...), ``library_version``, ``torch_version``, ``created`` and ``sha256`` (of the safetensors file).
Each file is written to a temporary name in the same folder, flushed, fsynced and moved into place
with ``os.replace``, so a crash leaves the old file or none, never half a file. A crash between the
two moves leaves a hash mismatch, which ``load`` and ``is_valid`` detect.

``load(path)`` rebuilds the model with ``models.build``, checks the hash, the tensor names, shapes
and dtypes, and raises ``CheckpointError`` for anything missing, truncated, tampered or mismatched.

A built model some of whose layers are wider than its config (a partial zip, which records
``models.WIDENED_ATTR``) is saved the same way with ``widened``: {layer: weight shape}; ``load``
rebuilds the architecture and widens those layers before filling them in.

Any other ``nn.Module`` is saved as a *weights* checkpoint (``kind: "weights"``, ``arch`` and
``config`` null, ``model_class`` recorded for the reader): its state dict and your metadata, with the
same hashes and integrity record. Load it into a model you construct yourself:
``load(path, model=MyNet())`` checks names, shapes and dtypes against ``model`` and fills it in
(this also works for ``models.build`` checkpoints).

Metadata integrity (format 2): the sidecar's ``integrity`` record holds a sha256 of every other
field (``fields``) and a sha256 over those (``sha256``). So the whole sidecar is covered: the
architecture config and activation that rebuild the model, the tensor hash, the reported
accuracies and the training configuration. ``read_metadata`` and ``load`` refuse a sidecar edited
after saving, naming the edited fields (e.g. an activation changed from relu to tanh, which has the
same tensor shapes and would otherwise load a model computing another function). This detects
edits and corruption; it is a checksum, not a signature, so someone who rewrites the integrity
record too is not stopped (keep checkpoints where only you can write).

Checkpoints from format 1 (no ``integrity`` record; the tensors are still hash-checked) load with a
``MetadataNotAuthenticatedWarning``; re-save them with ``save`` to authenticate their metadata.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from intertwiner import _atomic
from intertwiner._types import JSONDict
from intertwiner._version import __version__
from intertwiner.errors import CheckpointError

FORMAT = "intertwiner-checkpoint"
FORMAT_VERSION = 2
#: The sidecar field holding the metadata hashes (everything else is covered by it).
INTEGRITY = "integrity"


class MetadataNotAuthenticatedWarning(UserWarning):
    """A format-1 checkpoint: its tensors are hash-checked, its metadata is not."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _sha(value: Any) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def seal(meta: JSONDict) -> JSONDict:
    """``meta`` with a fresh ``integrity`` record over all its other fields (used by ``save``)."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY}
    fields = {k: _sha(v) for k, v in body.items()}
    return {**body, INTEGRITY: {"algorithm": "sha256", "fields": fields, "sha256": _sha(fields)}}


def verify_metadata(meta: JSONDict, where: str | Path) -> None:
    """Refuse metadata edited after saving (naming the fields); warn on unauthenticated format 1."""
    record = meta.get(INTEGRITY)
    if record is None and meta.get("format_version", 0) < 2:
        warnings.warn(
            f"{where} is a format-1 checkpoint: its tensors are hash-checked but its metadata "
            "(config, activation, accuracies) is not authenticated; load it and save it again "
            "with intertwiner.checkpoints.save to authenticate it",
            MetadataNotAuthenticatedWarning,
            stacklevel=3,
        )
        return
    fields = record.get("fields") if isinstance(record, dict) else None
    if not isinstance(fields, dict) or _sha(fields) != record.get("sha256"):
        raise CheckpointError(
            f"{where}: the metadata integrity record is missing or was edited; the sidecar "
            "cannot be trusted. Retrain or restore the checkpoint from a backup."
        )
    now = {k: _sha(v) for k, v in meta.items() if k != INTEGRITY}
    edited = sorted(k for k in set(fields) | set(now) if fields.get(k) != now.get(k))
    if edited:
        raise CheckpointError(
            f"{where}: metadata field(s) {edited} were edited after saving (they no longer "
            "match the integrity record); the model or the numbers it reports would be wrong. "
            "Restore the original sidecar, or retrain and save the model again."
        )


def sidecar(path: str | Path) -> Path:
    """The JSON metadata path of a checkpoint: ``path.with_suffix(".json")``."""
    return Path(path).with_suffix(".json")


def _is_temporary(path: Path) -> bool:
    """A temporary of ``_atomic.write_bytes``: ``.NAME.safetensors.RANDOM.tmp`` or ``.NAME.json.RANDOM.tmp``."""
    name = path.name
    return _atomic.is_temporary(path) and (".safetensors." in name or ".json." in name)


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that interrupted ``save`` calls left under ``folder``; returns them.

    Only safe while nothing saves into ``folder`` (the pipeline calls it under its run lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*.tmp")):
        if path.is_file() and _is_temporary(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _sites_signature(model: nn.Module) -> list[tuple[str, str, str]]:
    from intertwiner.models import sites

    mods = dict(model.named_modules())
    return [(s, type(mods[s]).__name__, mods[s].extra_repr()) for s in sites(model)]


def _rebuild(config: JSONDict, widened: JSONDict | None = None) -> nn.Module:
    """``models.build`` from a stored config; ``widened`` ({layer: weight shape}, a partially
    zipped model) widens those layers and records them as ``models.WIDENED_ATTR``."""
    from intertwiner.models import WIDENED_ATTR, build, widen

    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch is None:
        raise CheckpointError("checkpoint config has no 'arch'; it was not written by intertwiner")
    try:
        model = build(arch, **cfg)
        if widened:
            widen(model, widened)
    except Exception as e:  # noqa: BLE001 (any failure to rebuild is a checkpoint problem)
        more = f" with layers widened to {widened}" if widened else ""
        raise CheckpointError(
            f"cannot rebuild {arch} from the stored config {cfg}{more}: {e}"
        ) from e
    if widened:
        # the config alone no longer builds it: keep the record a re-save needs, as zip does
        config = model.__dict__.pop("intertwiner_config")
        setattr(model, WIDENED_ATTR, {"config": config, "layers": dict(widened)})
    return model


def _build_record(model: nn.Module) -> tuple[JSONDict | None, JSONDict | None]:
    """(build config, widened layers or None) of a ``models.build`` model, possibly widened by
    a partial zip; (None, None) for any other module."""
    from intertwiner.models import WIDENED_ATTR

    config = getattr(model, "intertwiner_config", None)
    if isinstance(config, dict):
        return config, None
    record = getattr(model, WIDENED_ATTR, None)
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        return record["config"], {k: list(v) for k, v in record["layers"].items()}
    return None, None


def _jsonable(metadata: JSONDict) -> JSONDict:
    try:
        return json.loads(json.dumps(metadata, allow_nan=True))
    except TypeError as e:
        raise CheckpointError(
            f"metadata must be JSON-serialisable (numbers, strings, lists, dicts): {e}"
        ) from e


def save(model: nn.Module, path: str | Path, metadata: JSONDict | None = None) -> Path:
    """Write ``model``'s state to ``path`` (``.safetensors``) and metadata to ``path.json``.

    A model from ``models.build`` is saved with its ``intertwiner_config`` (what ``load``
    rebuilds) and must still match it: a model whose activations or tensor shapes differ from what
    the config builds raises ``CheckpointError`` instead of writing an unloadable file. Any other
    module is saved as weights plus metadata; load it with ``load(path, model=YourModel(...))``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint paths end in .safetensors, got {path.name}")
    config, widened = _build_record(model)
    if isinstance(config, dict):
        reference = _rebuild(config, widened)
        if _sites_signature(reference) != _sites_signature(model):
            raise CheckpointError(
                f"the model's activations {_sites_signature(model)[:1]} differ from what its "
                f"config rebuilds {_sites_signature(reference)[:1]}; pass the activation by a "
                "name that rebuilds it (e.g. 'leaky_relu' with the default slope)"
            )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if isinstance(config, dict):
        _check_state(state, reference, what=str(path))
    elif not state:
        raise CheckpointError(f"{type(model).__name__} has no parameters or buffers to save")
    blob = st_save(state, metadata={"format": FORMAT})
    meta = _jsonable(dict(metadata or {}))
    built = isinstance(config, dict)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        kind="built" if built else "weights",
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        arch=config["arch"] if built else None,
        config=_jsonable(config) if built else None,
        widened=widened,
        activation=config.get("activation") if built else None,
        library_version=__version__,
        torch_version=torch.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        sha256=hashlib.sha256(blob).hexdigest(),
        tensors={k: list(v.shape) for k, v in state.items()},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_bytes(path, blob)
    meta = seal(meta)
    _atomic.write_bytes(sidecar(path), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def _check_state(state: dict[str, torch.Tensor], reference: nn.Module, *, what: str) -> None:
    expected = reference.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{what}: tensor names do not match the architecture (missing {missing[:5]}, "
            f"unexpected {extra[:5]}); the file and its metadata belong to different models"
        )
    for k, ref in expected.items():
        t = state[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise CheckpointError(
                f"{what}: tensor {k} is {t.dtype} {tuple(t.shape)}, the architecture needs "
                f"{ref.dtype} {tuple(ref.shape)}"
            )


def read_metadata(path: str | Path, *, verify: bool = True) -> JSONDict:
    """The JSON metadata of checkpoint ``path``, refused if edited after saving (``verify``;
    the tensors' hash is checked by ``load``)."""
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise CheckpointError(f"missing metadata {meta_path} next to {path}; re-save the model")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the file is corrupt") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an intertwiner checkpoint sidecar")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format_version {meta.get('format_version')}; upgrade intertwiner"
        )
    if verify:
        verify_metadata(meta, meta_path)
    return meta


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """Verify and load checkpoint ``path``; returns ``(model in eval mode, metadata)``.

    Without ``model`` the architecture is rebuilt from the stored config (``models.build``
    checkpoints). With ``model`` (a module you constructed), its tensors are checked against the
    file's names, shapes and dtypes and overwritten in place; this is how weights checkpoints of
    your own modules load."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    meta = read_metadata(path)
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"{path}: sha256 {digest[:12]}... does not match the metadata "
            f"({str(meta.get('sha256'))[:12]}...); the file is truncated, tampered with or "
            "belongs to another run. Delete it and retrain (train_zoo resumes from here)."
        )
    try:
        state = st_load(blob)
    except Exception as e:  # noqa: BLE001 (safetensors raises several types for bad headers)
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    if model is None:
        config = meta.get("config")
        if not isinstance(config, dict):
            if meta.get("kind") == "weights":
                raise CheckpointError(
                    f"{path} holds the weights of a {meta.get('model_class')}, not a model "
                    "intertwiner can rebuild: construct the model yourself and pass it, "
                    "checkpoints.load(path, model=YourModel(...))"
                )
            raise CheckpointError(f"{sidecar(path)} has no model config")
        model = _rebuild(config, meta.get("widened"))
    elif not isinstance(model, nn.Module):
        raise CheckpointError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_state(state, model, what=str(path))
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta


def is_valid(path: str | Path, *, model: nn.Module | None = None) -> bool:
    """True when ``load(path)`` would succeed (files present, hash, names and shapes all agree);
    a weights checkpoint is checked against ``model`` when given, else up to its tensors."""
    try:
        meta = read_metadata(path)
        if model is None and meta.get("kind") == "weights":
            blob = Path(path).read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
                return False
            try:
                st_load(blob)
            except Exception:  # noqa: BLE001 (safetensors raises several types)
                return False
            return True
        load(path, model=copy.deepcopy(model) if model is not None else None)
    except (CheckpointError, OSError):
        return False
    return True


__all__ = [
    "FORMAT",
    "MetadataNotAuthenticatedWarning",
    "is_valid",
    "load",
    "read_metadata",
    "remove_temporaries",
    "save",
    "seal",
    "sidecar",
    "verify_metadata",
]


def data_splits(
    metadata: JSONDict,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    source: str | Path = "the checkpoint",
    overrides: JSONDict | None = None,
    **defaults: Any,
):
    """The ``DataSplits`` a checkpoint was trained on, rebuilt from its metadata: the dataset,
    its options (a reproduce checkpoint's ``data_options``, or the concept generator's settings
    in ``data_meta``) and the split seed, so validation and test are the ones training used.

    ``dataset`` overrides the recorded name (a different dataset gets none of its options);
    ``root`` is a data folder (CIFAR-10); ``defaults`` fill options the metadata lacks and
    ``overrides`` replace recorded ones (a job's explicit data options).
    Raises ``InvalidOptionError`` when the metadata names no dataset and none is given.
    """
    from intertwiner import data as data_mod
    from intertwiner.errors import InvalidOptionError

    name = dataset or metadata.get("dataset")
    if not name:
        raise InvalidOptionError(f"{source} does not record its dataset; pass the dataset name")
    options: JSONDict = {}
    if name == metadata.get("dataset"):  # its recorded options (older ones: the data's meta)
        recorded = metadata.get("data_options")
        options.update(recorded or data_mod.options_from_meta(metadata.get("data_meta") or {}))
    seed = metadata.get("split_seed", (metadata.get("data_meta") or {}).get("split_seed"))
    options["seed"] = int(seed or 0)
    if root is not None:
        options["root"] = str(root)
    for key, value in defaults.items():
        options.setdefault(key, value)
    options.update(overrides or {})
    splits = data_mod.load(name, **options)
    _check_input_shape(metadata, splits, name, source)
    return splits


def _check_input_shape(metadata: JSONDict, splits: Any, name: str, source: str | Path) -> None:
    """Refuse a dataset whose inputs the checkpoint's model cannot take (digits' 8x8 images for a
    CNN built for MNIST's 28x28), before any work, instead of torch's error deep in the model."""
    from intertwiner.errors import ShapeError

    cfg = metadata.get("config") or {}
    c, s = cfg.get("in_channels"), cfg.get("input_size")
    if not (isinstance(c, int) and isinstance(s, int)) or cfg.get("in_features"):
        return  # a model of one's own, or tabular inputs: nothing recorded to check against
    x = splits.test[0][0]
    want = (c, s, s)
    flat_ok = cfg.get("arch") == "mlp" and x.numel() == c * s * s  # an MLP flattens its input
    if tuple(x.shape) != want and not flat_ok:
        trained = metadata.get("dataset")
        raise ShapeError(
            f"{name} inputs are {tuple(x.shape)} but {source} ({cfg.get('arch')}) takes {want}; "
            f"use a dataset of that shape" + (f" (it was trained on {trained})" if trained else "")
        )
