"""Training: bit-identical seeds, validation-only selection, per-example evaluation, zoo resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from intertwiner import checkpoints, training
from intertwiner.cli import app
from intertwiner.data import ArrayDataset, DataSplits, load
from intertwiner.errors import CheckpointError, NonFiniteError
from intertwiner.models import build
from intertwiner.training import TrainConfig, evaluate, parse_seeds, train, train_zoo


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load("synthetic", n_train=240, n_test=60, input_size=8, augment=True)


def small_cnn(data: DataSplits, seed: int = 0):
    return build("myrtle_cnn", width=2, seed=seed, **data.model_config())


FAST = TrainConfig(epochs=3, batch_size=32, lr=3e-3, progress=False, num_threads=1)


def test_same_seed_bit_identical_weights(data):
    a = train(small_cnn(data), data, FAST)
    b = train(small_cnn(data), data, FAST)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert a.history == [{**h, "seconds": a.history[i]["seconds"]} for i, h in enumerate(b.history)]
    c = train(small_cnn(data), data, TrainConfig(**{**FAST.to_dict(), "seed": 1}))
    assert not torch.equal(a.model.block1.conv.weight, c.model.block1.conv.weight)


def test_kept_epoch_is_best_on_validation(data):
    res = train(small_cnn(data), data, TrainConfig(**{**FAST.to_dict(), "epochs": 4}))
    val_accs = [h["val_accuracy"] for h in res.history]
    assert res.val_accuracy == max(val_accs)
    assert val_accs[res.best_epoch - 1] == max(val_accs)
    assert evaluate(res.model, data.val)["accuracy"] == pytest.approx(res.val_accuracy)
    assert evaluate(res.model, data.test)["accuracy"] == pytest.approx(res.test_accuracy)
    assert not res.model.training
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]


def test_test_split_is_never_used_for_choices(data):
    """Scrambling the test labels changes nothing but the reported test accuracy."""
    t = data.test
    scrambled = ArrayDataset(t.images, (t.labels + 1) % 10, mean=t.mean, std=t.std)
    other = DataSplits(data.train, data.val, scrambled, data.meta)
    a = train(small_cnn(data), data, FAST)
    b = train(small_cnn(data), other, FAST)
    assert a.best_epoch == b.best_epoch
    for v, w in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w)
    assert a.test_accuracy != b.test_accuracy


def test_evaluate_counts_per_example(data):
    model = small_cnn(data)
    model.train()
    x, y = data.test.get_batch(torch.arange(len(data.test)))
    with torch.no_grad():
        model.eval()
        logits = model(x)
        model.train()
    expected_loss = F.cross_entropy(logits.double(), y).item()
    expected_acc = (logits.argmax(1) == y).double().mean().item()
    for bs in (7, 60, 1000):  # 60 = 8 * 7 + 4: a small last batch must not be over-weighted
        r = evaluate(model, data.test, batch_size=bs)
        assert r["n"] == 60
        assert r["loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert r["accuracy"] == pytest.approx(expected_acc)
    loader = DataLoader(data.test, batch_size=7)
    assert evaluate(model, loader)["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert model.training  # mode restored


def test_weight_decay_groups_and_step_schedule(data):
    model = small_cnn(data)
    groups = training._param_groups(model, FAST)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") for p in groups[0]["params"])
    assert all(not names[id(p)].endswith("weight") for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0
    everything = training._param_groups(model, TrainConfig(weight_decay_on="all"))
    assert len(everything[0]["params"]) == len(list(model.parameters()))
    res = train(small_cnn(data), data, TrainConfig(**{**FAST.to_dict(), "epochs": 8}))
    lrs = [h["lr"] for h in res.history]  # step every 8 // 4 = 2 epochs, x0.5
    assert lrs == pytest.approx([3e-3, 3e-3, 1.5e-3, 1.5e-3, 7.5e-4, 7.5e-4, 3.75e-4, 3.75e-4])


def test_divergence_raises(data):
    model = build("mlp", widths=[8], seed=0, **data.model_config())
    cfg = TrainConfig(epochs=3, optimizer="sgd", lr=1e30, progress=False)
    with pytest.raises(NonFiniteError, match="lower lr"):
        train(model, data, cfg)


def test_bad_config():
    with pytest.raises(ValueError):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError):
        TrainConfig(schedule="linear")


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("1-2,7") == [1, 2, 7]
    assert parse_seeds([4, 5]) == [4, 5]
    with pytest.raises(ValueError):
        parse_seeds("3-1")


def test_zoo_resumes_and_skips_valid_checkpoints(tmp_path, data, monkeypatch):
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    mc = {"widths": [8]}
    paths = train_zoo("mlp", "0-1", data, tmp_path, model_config=mc, train_config=cfg,
                      progress=False)  # fmt: skip
    assert [p.name for p in paths] == [
        "mlp-relu-synthetic-seed0.safetensors",
        "mlp-relu-synthetic-seed1.safetensors",
    ]
    assert all(checkpoints.is_valid(p) for p in paths)
    meta = checkpoints.read_metadata(paths[1])
    assert meta["train_seed"] == 1 and meta["dataset"] == "synthetic"
    assert meta["split_seed"] == 0 and 0 <= meta["test_accuracy"] <= 1

    calls = []
    real_train = training.train
    monkeypatch.setattr(
        training, "train", lambda m, d, c: calls.append(c.seed) or real_train(m, d, c)
    )
    paths[0].write_bytes(paths[0].read_bytes()[:-10])  # truncated: must be retrained
    again = train_zoo("mlp", [0, 1, 2], data, tmp_path, model_config=mc, train_config=cfg,
                      progress=False)  # fmt: skip
    assert calls == [0, 2]
    assert all(checkpoints.is_valid(p) for p in again)


def test_cli_train_and_zoo(tmp_path):
    runner = CliRunner()
    args = ["--arch", "mlp", "--data", "synthetic", "--epochs", "1", "--quiet",
            "--model-config", '{"widths": [8]}', "--out", str(tmp_path)]  # fmt: skip
    r = runner.invoke(app, ["train", *args, "--activation", "tanh", "--seed", "3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["checkpoint"].endswith("mlp-tanh-synthetic-seed3.safetensors")
    model, meta = checkpoints.load(out["checkpoint"])
    assert meta["activation"] == "tanh" and meta["train_seed"] == 3
    r = runner.invoke(app, ["zoo", *args, "--seeds", "0-1"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 2
    r = runner.invoke(app, ["train", "--arch", "mlp", "--data", "cifar10", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "cifar-10-python.tar.gz" in r.output


def test_zoo_refuses_a_checkpoint_of_another_configuration(tmp_path, data):
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    train_zoo("mlp", [0], data, tmp_path, model_config={"widths": (8,)}, train_config=cfg,
              progress=False)  # fmt: skip
    # the same configuration (a tuple saved as a JSON list) is reused
    train_zoo("mlp", [0], data, tmp_path, model_config={"widths": [8]}, train_config=cfg,
              progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="widths: saved \\[8\\], asked \\[16\\]"):
        train_zoo("mlp", [0], data, tmp_path, model_config={"widths": [16]}, train_config=cfg,
                  progress=False)  # fmt: skip


def test_zoo_resume_refuses_other_training_settings(tmp_path):
    # Issue 17: `zoo --epochs 3 --lr 0.01` into a folder holding a seed-0 model trained otherwise
    # returned the old model with exit 0. Now: exit 2 naming the fields; the same settings resume.
    runner = CliRunner()
    args = ["zoo", "--arch", "mlp", "--data", "synthetic", "--seeds", "0", "--quiet",
            "--model-config", '{"widths": [4]}', "--out", str(tmp_path)]  # fmt: skip
    assert runner.invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    before = (tmp_path / "mlp-relu-synthetic-seed0.safetensors").read_bytes()
    r = runner.invoke(app, [*args, "--epochs", "3", "--lr", "0.01"])
    assert r.exit_code == 2, r.output
    assert "train_config.epochs: saved 1, asked 3" in r.output
    assert "train_config.lr: saved 0.001, asked 0.01" in r.output
    r = runner.invoke(app, [*args, "--epochs", "1", "--split-seed", "1"])
    assert r.exit_code == 2 and "data.split_seed: saved 0, asked 1" in r.output
    r = runner.invoke(app, [*args, "--epochs", "1", "--threads", "1"])  # run-only setting
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mlp-relu-synthetic-seed0.safetensors").read_bytes() == before


def test_zoo_resume_refuses_a_checkpoint_without_training_config(tmp_path, data):
    from intertwiner.errors import ConfigMismatchError

    model = build("mlp", widths=[8], seed=0, **data.model_config())
    checkpoints.save(
        model, tmp_path / "mlp-relu-synthetic-seed0.safetensors", {"dataset": "synthetic"}
    )
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    with pytest.raises(ConfigMismatchError, match="records no training configuration"):
        train_zoo("mlp", [0], data, tmp_path, model_config={"widths": [8]}, train_config=cfg,
                  progress=False)  # fmt: skip


class _TinyLM(torch.nn.Module):
    """Token ids (N, T) -> next-token logits (N, T, V): an embedding, a ReLU layer, a readout."""

    def __init__(self, vocab: int = 11, width: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.fc = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.embed(ids))))


def test_evaluate_and_train_sequence_outputs_per_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (37, 5), generator=g)
    y = torch.randint(0, 11, (37, 5), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    lm = _TinyLM().eval()
    with torch.no_grad():
        logits = lm(x)  # (N, T, V): classes last
    # Textbook: the mean over all N * T tokens of -log softmax at the target.
    expected = -logits.double().log_softmax(-1).gather(-1, y.unsqueeze(-1)).mean().item()
    for bs in (4, 37):
        r = evaluate(lm, ds, batch_size=bs)
        assert r["n"] == 37 * 5
        assert r["loss"] == pytest.approx(expected, rel=1e-6)
        assert r["accuracy"] == pytest.approx((logits.argmax(-1) == y).double().mean().item())
    # Classes in dim 1 (torch's (N, C, d) layout) read the same.
    moved = training.per_target(logits.transpose(1, 2), y)
    assert torch.equal(moved[0], logits.reshape(-1, 11)) and torch.equal(moved[1], y.reshape(-1))
    splits = DataSplits(ds, ds, ds, {"name": "tokens"})
    before = evaluate(lm, ds)["loss"]
    train(lm, splits, TrainConfig(epochs=5, batch_size=8, lr=1e-2, progress=False))
    assert evaluate(lm, ds)["loss"] < before


def test_per_target_refuses_ambiguous_or_mismatched_shapes():
    from intertwiner.errors import ShapeError

    with pytest.raises(ShapeError, match="dims 1 and -1 both fit"):
        training.per_target(torch.zeros(2, 4, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match="do not fit"):
        training.per_target(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
