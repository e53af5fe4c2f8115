"""The rotation sanity test: exact zero penalty for the identity, freezing, kinds, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.data import load
from intertwiner.experiments.sanity import (
    FixedTransform,
    SanityConfig,
    UnknownTransformKindError,
    format_table,
    insert_transform,
    plot_penalties,
    run_job,
    sample_transform,
    sanity_run,
    sanity_test,
    summarize,
)
from intertwiner.groups import family, for_activation
from intertwiner.training import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def data():
    return load("synthetic", n_train=120, n_test=60, input_size=16, num_classes=4)


def _model(activation="relu", batchnorm=True, seed=0):
    return models.build("myrtle_cnn", width=2, batchnorm=batchnorm, activation=activation,
                        in_channels=1, input_size=16, num_classes=4, seed=seed)  # fmt: skip


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("site", ["block1.act", "block3.act"])
def test_identity_without_training_has_exactly_zero_penalty(data, batchnorm, site):
    model = _model(batchnorm=batchnorm)
    row = sanity_run(model, site, "identity", 0, data, SanityConfig(epochs=0))
    assert row["penalty"] == 0.0
    assert row["initial_accuracy"] == row["base_accuracy"]
    assert row["retrained_val_accuracy"] == row["base_val_accuracy"]
    json.dumps(row)


def test_identity_transform_preserves_outputs_bitwise(data):
    model = _model()
    x = data.test.get_batch(torch.arange(8))[0]
    wrapped = insert_transform(model, "block2.act", family("orthogonal").identity(4), x)
    with torch.no_grad():
        assert torch.equal(wrapped(x), model.eval()(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_group_transform_is_undone_by_phi_inverse_in_the_next_layer(data, dtype):
    """The retraining target exists: W_next phi(M)^-1 restores the function for M in G_ReLU."""
    model = _model(batchnorm=False).to(dtype)
    x = data.test.get_batch(torch.arange(16))[0].to(dtype)
    g = for_activation("relu")
    el = g.sample(4, generator=torch.Generator().manual_seed(3), dtype=dtype)
    wrapped = insert_transform(model, "block2.act", el, x)
    conv = wrapped.model.block3.conv
    with torch.no_grad():
        assert not torch.allclose(wrapped(x), model(x), atol=1e-3)
        inv = g.phi(el).inverse().matrix().to(dtype)
        conv.weight.copy_(torch.einsum("oihw,ij->ojhw", conv.weight, inv))
        torch.testing.assert_close(wrapped(x), model(x))
        # an orthogonal M is not undone this way (ReLU does not commute with it)
        orth = family("orthogonal").sample(4, generator=torch.Generator().manual_seed(3))
        w2 = insert_transform(model, "block2.act", orth, x)
        c2 = w2.model.block3.conv
        c2.weight.copy_(torch.einsum("oihw,ij->ojhw", c2.weight, orth.inverse().matrix().to(dtype)))
        assert not torch.allclose(w2(x), model(x), atol=1e-3)


def test_group_element_at_relu_changes_function_but_orthogonal_is_not_in_the_group():
    act = torch.nn.ReLU()
    g = torch.Generator().manual_seed(0)
    el, fam = sample_transform("group", act, 5, g)
    assert fam == "positive_monomial" and for_activation(act).contains(el)
    el, fam = sample_transform("orthogonal", act, 5, g)
    assert fam == "orthogonal" and not for_activation(act).contains(el)
    _, fam = sample_transform("group", torch.nn.Sigmoid(), 5, g)
    assert fam == "permutation"
    assert sample_transform("g_relu", torch.nn.GELU(), 5, g)[1] == "positive_monomial"
    with pytest.raises(UnknownTransformKindError):
        sample_transform("rotation", act, 5, g)


def test_fixed_transform_matches_the_element_and_round_trips():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, 5, generator=g)
    for name in ("positive_monomial", "orthogonal"):
        el = family(name).sample(4, generator=g)
        t = FixedTransform(el)
        torch.testing.assert_close(t(x), el.apply(x.double(), dim=1).float())
        again = FixedTransform(el)
        again.load_state_dict(t.state_dict())
        assert torch.equal(again(x), t(x))
    dense = FixedTransform(family("orthogonal").sample(4, generator=g))
    torch.testing.assert_close(dense(x.flatten(2).transpose(1, 2)),
                               dense(x).flatten(2).transpose(1, 2))  # tokens: last dim  # fmt: skip


def test_retraining_freezes_the_prefix_and_its_batchnorm_statistics(data):
    model = _model(batchnorm=True)
    x = data.test.get_batch(torch.arange(4))[0]
    el = family("orthogonal").sample(4, generator=torch.Generator().manual_seed(0))
    wrapped = insert_transform(model, "block2.act", el, x)
    assert wrapped.frozen == ["block1.conv", "block1.bn", "block2.conv", "block2.bn",
                              "block2.act.transform"]  # fmt: skip
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    train(wrapped, data, TrainConfig(epochs=1, progress=False, num_threads=1))
    after = wrapped.state_dict()
    for k in before:
        if k.startswith(("model.block1.", "model.block2.")):
            assert torch.equal(before[k], after[k]), k  # weights and BN running stats
    assert not torch.equal(before["model.block3.conv.weight"], after["model.block3.conv.weight"])
    assert not torch.equal(before["model.block3.bn.running_mean"],
                           after["model.block3.bn.running_mean"])  # fmt: skip
    wrapped.train()
    assert not wrapped.model.block1.bn.training and wrapped.model.block3.bn.training
    # the source model is untouched
    assert all(p.requires_grad for p in model.parameters())


def test_sanity_test_summary_table_and_figure(data, tmp_path):
    model = _model(batchnorm=False)
    train(model, data, TrainConfig(epochs=1, progress=False, num_threads=1))
    rows = sanity_test(model, ["block1.act"], ["group", "orthogonal"], 2, data,
                       SanityConfig(epochs=1, num_threads=1), progress=False)  # fmt: skip
    assert len(rows) == 4
    summary = summarize(rows)
    assert [(r["kind"], r["repeats"]) for r in summary] == [("group", 2), ("orthogonal", 2)]
    pens = [r["penalty"] for r in rows[:2]]
    assert summary[0]["penalty_mean"] == pytest.approx(sum(pens) / 2)
    assert rows[0]["base_accuracy"] == evaluate(model, data.test)["accuracy"]
    assert "orthogonal" in format_table(summary)
    assert plot_penalties(summary, tmp_path / "s.png").stat().st_size > 1000
    # same seeds, same rows (apart from timing)
    again = sanity_run(model, "block1.act", "group", 0, data, SanityConfig(epochs=1, num_threads=1))
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in rows[0].items() if k != "seconds"
    }


def test_summarize_statistics_and_identity_control():
    def row(kind, pen, rep):
        return {"activation": "relu", "site": "s", "kind": kind, "family": kind, "epochs": 1,
                "base_accuracy": 0.9, "initial_accuracy": 0.5, "retrained_accuracy": 0.9 - pen,
                "penalty": pen, "repeat": rep}  # fmt: skip

    rows = [row("identity", -0.01, 0), row("identity", -0.03, 1), row("orthogonal", 0.02, 0),
            row("orthogonal", 0.06, 1), row("orthogonal", 0.04, 2)]  # fmt: skip
    ident, orth = summarize(rows)
    assert ident["penalty_mean"] == pytest.approx(-0.02) and ident["penalty_vs_identity"] == 0.0
    assert orth["penalty_mean"] == pytest.approx(0.04) and orth["penalty_std"] == pytest.approx(
        0.02
    )
    assert orth["penalty_vs_identity"] == pytest.approx(0.06)
    assert orth["retrained_accuracy"] == pytest.approx(0.86) and orth["repeats"] == 3
    assert "6.00" in format_table([ident, orth])
    assert summarize(rows[2:])[0]["penalty_vs_identity"] is None


def test_run_job_from_a_checkpoint(data, tmp_path):
    model = _model()
    path = tmp_path / "m.safetensors"
    checkpoints.save(model, path, {"dataset": "synthetic", "split_seed": 0})
    row = run_job({"checkpoint": str(path), "site": "block2.act", "kind": "identity", "epochs": 0,
                   "data_options": {"n_train": 120, "n_test": 60, "input_size": 16,
                                    "num_classes": 4}})  # fmt: skip
    assert row["penalty"] == 0.0 and row["checkpoint"] == str(path)


def test_cli_sanity_and_dissect(tmp_path):
    from intertwiner.cli import app

    runner = CliRunner()
    out = tmp_path / "sanity"
    base = tmp_path / "base.safetensors"
    checkpoints.save(models.build("myrtle_cnn", width=2, in_channels=1, input_size=16, seed=0),
                     base, {"dataset": "synthetic"})  # fmt: skip
    res = runner.invoke(app, ["sanity", "--data", "synthetic", "--checkpoint", str(base),
                              "--epochs", "0", "--repeats", "1", "--sites", "block1.act",
                              "--kinds", "identity,group", "--out", str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "identity" in res.output and (out / "sanity.png").exists()
    rows = json.loads((out / "sanity_rows.json").read_text())
    assert rows[0]["penalty"] == 0.0
    bad = runner.invoke(app, ["sanity", "--data", "synthetic", "--kinds", "nope", "--checkpoint",
                              str(base), "--out", str(out), "--quiet"])  # fmt: skip
    assert bad.exit_code != 0 and "unknown transform kind" in bad.output

    model = models.build("myrtle_cnn", width=2, num_classes=5, input_size=16, seed=0)
    ck = tmp_path / "c.safetensors"
    gen = {"n_train": 30, "n_test": 24, "size": 16, "max_objects": 3, "noise": 0.0, "data_seed": 0}
    checkpoints.save(model, ck, {"dataset": "concepts", "split_seed": 0,
                                 "data_meta": {"generator": gen}})  # fmt: skip
    res = runner.invoke(app, ["dissect", str(ck), "--layer", "block2.act", "--n-orthogonal", "1",
                              "--powers", "0,1", "--out", str(tmp_path / "d"), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "G_ReLU" in res.output and "power1" in res.output
    assert (tmp_path / "d" / "dissection-block2.act.png").exists()
