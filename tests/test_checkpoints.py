"""Checkpoints: exact round trips, metadata, and clear errors for damaged or mismatched files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from intertwiner import checkpoints
from intertwiner.errors import CheckpointError
from intertwiner.models import build

TINY = {
    "mlp": {"widths": [6, 5]},
    "myrtle_cnn": {"width": 2},
    "resnet20": {"width": 2, "blocks_per_stage": 1},
    "resnet18": {"width": 2},
    "vit": {"dim": 8, "depth": 1, "heads": 2},
}
META = {"dataset": "synthetic", "split_seed": 0, "train_seed": 1, "val_accuracy": 0.5,
        "test_accuracy": 0.25}  # fmt: skip


def randomised(arch: str, activation: str = "tanh") -> nn.Module:
    model = build(arch, activation=activation, seed=0, in_channels=1, input_size=28, **TINY[arch])
    with torch.no_grad():  # BN running stats too, so a forgotten buffer shows
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_round_trip_identical_outputs(tmp_path, arch):
    model = randomised(arch)
    path = checkpoints.save(model, tmp_path / f"{arch}.safetensors", META)
    loaded, meta = checkpoints.load(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert meta["arch"] == arch and meta["activation"] == "tanh"
    assert meta["config"] == model.intertwiner_config
    for key in ("library_version", "sha256", "created", *META):
        assert key in meta
    assert meta["test_accuracy"] == 0.25
    assert checkpoints.is_valid(path)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def saved(tmp_path):
    return checkpoints.save(randomised("myrtle_cnn"), tmp_path / "m.safetensors", META)


def test_truncated(saved):
    saved.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoints.load(saved)
    assert not checkpoints.is_valid(saved)


def test_tampered_byte(saved):
    blob = bytearray(saved.read_bytes())
    blob[-5] ^= 0xFF
    saved.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="tampered"):
        checkpoints.load(saved)


def test_config_mismatch_with_matching_hash(saved):
    # Matching hashes: the edited sidecar is re-sealed (as a forger would), so the checks behind
    # the metadata integrity record are exercised; test_edited_metadata covers unsealed edits.
    meta_path = checkpoints.sidecar(saved)
    meta = json.loads(meta_path.read_text())
    meta["config"]["width"] = 3  # the weights are width 2
    meta_path.write_text(json.dumps(checkpoints.seal(meta)))
    with pytest.raises(CheckpointError, match="architecture needs"):
        checkpoints.load(saved)
    meta["config"]["arch"] = "resnet20"
    meta_path.write_text(json.dumps(checkpoints.seal(meta)))
    with pytest.raises(CheckpointError, match="cannot rebuild|tensor names"):
        checkpoints.load(saved)


def test_missing_or_corrupt_sidecar(saved):
    meta_path = checkpoints.sidecar(saved)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoints.load(saved)
    meta_path.unlink()
    with pytest.raises(CheckpointError, match="missing metadata"):
        checkpoints.load(saved)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoints.load(saved.with_name("nope.safetensors"))


def test_garbage_with_forged_hash(tmp_path, saved):
    import hashlib

    saved.write_bytes(b"\x00" * 64)
    meta_path = checkpoints.sidecar(saved)
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(b"\x00" * 64).hexdigest()
    meta_path.write_text(json.dumps(checkpoints.seal(meta)))
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoints.load(saved)


def test_refuses_models_it_cannot_rebuild(tmp_path):
    odd = build("mlp", activation=nn.LeakyReLU(0.2), widths=[4], in_channels=1, input_size=4)
    with pytest.raises(CheckpointError, match="activations"):
        checkpoints.save(odd, tmp_path / "y.safetensors", {})
    with pytest.raises(CheckpointError, match="JSON"):
        checkpoints.save(randomised("mlp"), tmp_path / "z.safetensors", {"x": object()})
    with pytest.raises(CheckpointError, match=".safetensors"):
        checkpoints.save(randomised("mlp"), tmp_path / "z.pt", {})


def test_crash_mid_save_keeps_old_file(tmp_path, monkeypatch, saved):
    before = saved.read_bytes()
    before_meta = checkpoints.sidecar(saved).read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(randomised("myrtle_cnn", "relu"), saved, META)
    assert saved.read_bytes() == before
    assert checkpoints.sidecar(saved).read_text() == before_meta
    assert not list(saved.parent.glob("*.tmp"))
    monkeypatch.undo()
    assert checkpoints.is_valid(saved)


@pytest.mark.parametrize(
    "field, edit",
    [
        ("activation", lambda m: m["config"].update(activation="tanh")),  # same shapes as relu
        ("activation", lambda m: m.update(activation="tanh")),
        ("test_accuracy", lambda m: m.update(test_accuracy=0.99)),
        ("val_accuracy", lambda m: m.update(val_accuracy=0.99)),
        ("injected", lambda m: m.update(injected=1)),
        ("dataset", lambda m: m.pop("dataset")),
    ],
)
def test_edited_metadata_is_refused_by_name(tmp_path, field, edit):
    path = checkpoints.save(randomised("myrtle_cnn", "relu"), tmp_path / "m.safetensors", META)
    meta_path = checkpoints.sidecar(path)
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    key = "config" if field == "activation" and "activation" in meta["config"] else field
    for call in (checkpoints.load, checkpoints.read_metadata):
        with pytest.raises(CheckpointError, match="edited after saving") as info:
            call(path)
        assert key in str(info.value) or field in str(info.value)
    assert not checkpoints.is_valid(path)


def test_edited_integrity_record_is_refused(saved):
    meta_path = checkpoints.sidecar(saved)
    meta = json.loads(meta_path.read_text())
    meta["integrity"]["fields"]["activation"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="integrity record"):
        checkpoints.load(saved)


def test_format_1_checkpoints_load_with_a_warning(saved):
    meta_path = checkpoints.sidecar(saved)
    meta = json.loads(meta_path.read_text())
    del meta["integrity"]
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(checkpoints.MetadataNotAuthenticatedWarning, match="save it again"):
        model, got = checkpoints.load(saved)
    assert got["test_accuracy"] == META["test_accuracy"]
    # A format-2 sidecar stripped of its record is refused, not downgraded silently.
    meta["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="integrity record"):
        checkpoints.load(saved)


class MyNet(nn.Module):
    """A user's own model, not from models.build."""

    def __init__(self, width: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_any_module_saves_its_weights_and_loads_into_a_model_you_construct(tmp_path):
    torch.manual_seed(0)
    net = MyNet().eval()
    with torch.no_grad():
        net.body[1].running_mean.uniform_(-1, 1)  # buffers travel too
    path = checkpoints.save(net, tmp_path / "mine.safetensors", {"dataset": "tabular", "note": 1})
    meta = checkpoints.read_metadata(path)
    assert meta["kind"] == "weights" and meta["arch"] is None
    assert meta["model_class"].endswith("MyNet") and meta["dataset"] == "tabular"
    assert meta["integrity"]["fields"]  # the metadata is sealed like any checkpoint
    assert checkpoints.is_valid(path) and checkpoints.is_valid(path, model=MyNet())
    torch.manual_seed(1)
    fresh = MyNet()
    loaded, meta2 = checkpoints.load(path, model=fresh)
    assert loaded is fresh and not loaded.training and meta2 == meta
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), net(x))
    # without a model to fill, the error says how to load it
    with pytest.raises(CheckpointError, match=r"model=YourModel"):
        checkpoints.load(path)
    # a model of another shape is refused by tensor name and shape
    with pytest.raises(CheckpointError, match="tensor"):
        checkpoints.load(path, model=MyNet(width=6))
    assert not checkpoints.is_valid(path, model=MyNet(width=6))
    with pytest.raises(CheckpointError, match="tensor names"):
        checkpoints.load(path, model=nn.Linear(3, 2))


def test_weights_checkpoint_metadata_is_integrity_checked(tmp_path):
    path = checkpoints.save(MyNet(), tmp_path / "mine.safetensors", {"val_accuracy": 0.5})
    side = checkpoints.sidecar(path)
    meta = json.loads(side.read_text())
    meta["val_accuracy"] = 0.99
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="val_accuracy"):
        checkpoints.load(path, model=MyNet())
    assert not checkpoints.is_valid(path)


def test_built_models_load_into_a_given_model_too(tmp_path):
    model = randomised("mlp")
    path = checkpoints.save(model, tmp_path / "m.safetensors", META)
    target = build("mlp", activation="tanh", in_channels=1, input_size=28, **TINY["mlp"])
    loaded, _ = checkpoints.load(path, model=target)
    assert loaded is target
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    "name, options",
    [
        ("digits", {"seed": 3, "val_fraction": 0.2}),
        ("synthetic", {"n_train": 80, "n_test": 20, "input_size": 8, "seed": 1}),
        ("concepts", {"n_train": 40, "n_test": 10, "size": 16, "data_seed": 2}),
    ],
)
def test_data_splits_rebuilds_the_training_splits(tmp_path, name, options):
    """The one checkpoint -> data function: the schema written by ``checkpoint_metadata`` (and an
    older one with only ``data_meta``) rebuilds the same train / val / test items."""
    from intertwiner import data as data_mod
    from intertwiner import models
    from intertwiner.training import TrainConfig, TrainResult, checkpoint_metadata

    splits = data_mod.load(name, **options)
    model = models.build("mlp", widths=[4], **splits.model_config())
    result = TrainResult(model, [], 0, 0.0, 0.0, 0.0, 0.0, 0.0, {})
    meta = checkpoint_metadata(result, splits, TrainConfig(epochs=1))
    path = checkpoints.save(model, tmp_path / "m.safetensors", meta)
    _, saved = checkpoints.load(path)
    older = {k: v for k, v in saved.items() if k not in ("data_options", "split_seed")}
    for m in (saved, older):
        rebuilt = checkpoints.data_splits(m)
        pairs = zip(
            (rebuilt.train, rebuilt.val, rebuilt.test), (splits.train, splits.val, splits.test)
        )
        for a, b in pairs:
            assert len(a) == len(b)
            idx = torch.arange(min(len(a), 5))
            assert torch.equal(a.get_batch(idx)[0], b.get_batch(idx)[0])
            assert torch.equal(a.get_batch(idx)[1], b.get_batch(idx)[1])


def test_data_splits_names_what_is_missing():
    from intertwiner.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="does not record its dataset"):
        checkpoints.data_splits({}, source="x.safetensors")
