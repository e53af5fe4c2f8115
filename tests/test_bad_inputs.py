"""The bad-input battery (issue 17): every row is an input that once gave a wrong number, a silent
acceptance, a traceback or an accidental error from deep inside. Each must raise a specific
intertwiner exception whose message says what to do. Add a row for every new case found.

``API``: (id, call, expected exception, message fragment). ``CLI``: (id, argv, fragment): exit code
2, the fragment in the output, no traceback.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from intertwiner import checkpoints, data, errors
from intertwiner.cli import app
from intertwiner.features import LayerNotFoundError, capture
from intertwiner.groups import discover, for_activation, verify
from intertwiner.groups._elements import DenseElement, MonomialElement
from intertwiner.groups._families import MONOMIAL, ORTHOGONAL, POSITIVE_MONOMIAL
from intertwiner.metrics import (
    LinearCKA,
    ProcrustesDistance,
    cka,
    compare,
    group_cka,
    metric,
    procrustes_distance,
    procrustes_similarity,
)
from intertwiner.models import build
from intertwiner.training import TrainConfig, parse_seeds, train_zoo

E = errors
G = torch.Generator().manual_seed(0)
X = (torch.randn(20, 4, generator=G, dtype=torch.float64) + 0.3).relu()
Y = (torch.randn(20, 5, generator=G, dtype=torch.float64) + 0.3).relu()


def with_value(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t[2, 1] = value
    return t


def mlp8() -> torch.nn.Module:
    return build("mlp", widths=[6], in_channels=1, input_size=8, seed=0)


def perm_scale(perm, scale) -> MonomialElement:
    return MonomialElement(torch.tensor(perm), torch.tensor(scale, dtype=torch.float64))


def updated(acc, *batches):
    for x, y in batches:
        acc.update(x, y)
    return acc


class Ctx:
    """Lazily made files for the rows that need them (one tmp folder per test)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path

    def checkpoint(self, edit=None):
        path = checkpoints.save(
            build("myrtle_cnn", width=2, in_channels=1, input_size=8, activation="relu", seed=0),
            self.tmp / "m.safetensors",
            {"dataset": "synthetic", "test_accuracy": 0.25, "val_accuracy": 0.5},
        )
        if edit is not None:
            side = checkpoints.sidecar(path)
            meta = json.loads(side.read_text())
            edit(meta)
            side.write_text(json.dumps(meta))
        return path

    def zoo(self, **changes):
        """A one-seed zoo folder, then a resume with ``changes`` to the training or data."""
        splits = data.load("synthetic", n_train=200, n_test=50, input_size=8)
        tc = TrainConfig(epochs=1, batch_size=64, lr=1e-3, progress=False)
        kw = dict(model_config={"widths": [4]}, progress=False)
        train_zoo("mlp", [0], splits, self.tmp, train_config=tc, **kw)
        if "split_seed" in changes:
            splits = data.load("synthetic", n_train=200, n_test=50, input_size=8, seed=1)
        tc2 = TrainConfig(
            **{**tc.to_dict(), **{k: v for k, v in changes.items() if k != "split_seed"}}
        )
        return train_zoo("mlp", [0], splits, self.tmp, train_config=tc2, **kw)

    def stitch(self, **config):
        from intertwiner.stitching import StitchConfig, stitch

        splits = data.load("synthetic", n_train=40, n_test=20, input_size=16)
        return stitch(mlp8(), mlp8(), "act1", layer="full", data=splits,
                      config=StitchConfig(epochs=0, progress=False, **config))  # fmt: skip


def symmetry():
    import intertwiner.symmetry

    return intertwiner.symmetry


COMPLEX = torch.randn(20, 4, dtype=torch.complex128)
EDIT_ACT = lambda m: m["config"].update(activation="tanh")  # noqa: E731 (same shapes as relu)

# fmt: off
API = [
    # ---- metrics: dtypes ------------------------------------------------------------------------
    ("cka complex", lambda c: cka(COMPLEX, X), E.InvalidInputError, "complex"),
    ("procrustes complex", lambda c: procrustes_distance(X, COMPLEX), E.InvalidInputError, "x.real"),
    ("group_cka complex", lambda c: group_cka(COMPLEX, X), E.InvalidInputError, "complex"),
    ("similarity complex numpy", lambda c: procrustes_similarity(COMPLEX.numpy(), X), E.InvalidInputError, "complex"),
    ("cka list", lambda c: cka([[1.0]], [[1.0]]), E.InvalidInputError, "torch.tensor"),
    ("cka object array", lambda c: cka(np.array([[1, "a"]], dtype=object), X), E.InvalidInputError, "pass numbers"),
    ("cka string array", lambda c: cka(np.array([["a", "b"]]), X), E.InvalidInputError, "pass numbers"),
    # ---- metrics: shapes and sizes --------------------------------------------------------------
    ("cka zero neurons", lambda c: cka(torch.zeros(20, 0), Y), E.ShapeError, "empty axis"),
    ("group_cka zero neurons", lambda c: group_cka(X, torch.zeros(20, 0)), E.ShapeError, "no neurons"),
    ("procrustes zero neurons", lambda c: procrustes_distance(torch.zeros(20, 0), X), E.ShapeError, "empty axis"),
    ("conv zero-size map", lambda c: cka(torch.zeros(20, 3, 0, 2), X), E.ShapeError, "empty axis"),
    ("cka zero samples", lambda c: cka(torch.zeros(0, 4), torch.zeros(0, 4)), E.TooFewSamplesError, "no samples"),
    ("cka 1-d", lambda c: cka(torch.ones(20), X), E.ShapeError, "(N, C)"),
    ("cka 5-d", lambda c: cka(torch.ones(2, 2, 2, 2, 2), X), E.ShapeError, "Flatten"),
    ("cka N mismatch", lambda c: cka(X, Y[:7]), E.ShapeError, "same inputs"),
    ("group_cka N mismatch", lambda c: group_cka(X, Y[:7]), E.ShapeError, "same inputs"),
    ("procrustes N mismatch", lambda c: procrustes_distance(X, Y[:7]), E.ShapeError, "same inputs"),
    ("debiased N=3", lambda c: cka(X[:3], Y[:3], debiased=True), E.TooFewSamplesError, "debiased=False"),
    ("cka N=1", lambda c: cka(X[:1], Y[:1]), E.TooFewSamplesError, "at least 2"),
    ("group_cka N=3", lambda c: group_cka(X[:3], Y[:3]), E.TooFewSamplesError, "at least 4"),
    ("bad layout", lambda c: procrustes_distance(X, Y, layout="image"), E.ShapeError, "unknown layout"),
    ("layout/ndim mismatch", lambda c: procrustes_distance(X, Y, layout="conv"), E.ShapeError, "4-d"),
    ("spatial mismatch", lambda c: procrustes_distance(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 2, 2)), E.ShapeError, "upsample=True"),
    ("token mismatch", lambda c: procrustes_distance(torch.ones(2, 3, 4), torch.ones(2, 5, 4)), E.ShapeError, "token counts"),
    ("dense vs conv", lambda c: procrustes_distance(torch.ones(2, 3), torch.ones(2, 3, 2, 2)), E.ShapeError, "use CKA"),
    # ---- metrics: values ------------------------------------------------------------------------
    ("cka NaN", lambda c: cka(with_value(X, math.nan), Y), E.NonFiniteError, "NaN/Inf"),
    ("cka Inf", lambda c: cka(X, with_value(Y, math.inf)), E.NonFiniteError, "diverged"),
    ("group_cka NaN", lambda c: group_cka(with_value(X, math.nan), Y), E.NonFiniteError, "NaN/Inf"),
    ("similarity -Inf", lambda c: procrustes_similarity(X, with_value(Y, -math.inf)), E.NonFiniteError, "NaN/Inf"),
    ("streaming batch overflow", lambda c: updated(ProcrustesDistance(), (X, Y), (X * 1e200, Y)), E.NonFiniteError, "common scale"),
    # ---- metrics: options -----------------------------------------------------------------------
    ("cka kernel", lambda c: cka(X, Y, kernel="poly"), E.InvalidOptionError, "'linear', 'rbf'"),
    ("rbf sigma 0", lambda c: cka(X, Y, kernel="rbf", sigma=0), E.InvalidOptionError, "sigma"),
    ("rbf sigma < 0", lambda c: cka(X, Y, kernel="rbf", sigma=-1.0), E.InvalidOptionError, "> 0"),
    ("rbf sigma NaN", lambda c: cka(X, Y, kernel="rbf", sigma=math.nan), E.InvalidOptionError, "median"),
    ("chunk_size -5", lambda c: group_cka(X, Y, chunk_size=-5), E.InvalidOptionError, "chunk_size"),
    ("chunk_size 0", lambda c: group_cka(X, Y, chunk_size=0), E.InvalidOptionError, "at least 1, got 0"),
    ("chunk_size 2.5", lambda c: group_cka(X, Y, chunk_size=2.5), E.InvalidOptionError, "integer"),
    ("group_cka reduce", lambda c: group_cka(X, Y, reduce="mean"), E.InvalidOptionError, "'max'"),
    ("group_cka dtype", lambda c: group_cka(X, Y, dtype=torch.float16), E.InvalidOptionError, "dtype"),
    ("group_cka orthogonal", lambda c: group_cka(X, Y, group="orthogonal"), E.UnsupportedGroupError, "cka(...)"),
    ("procrustes GL", lambda c: procrustes_distance(X, Y, group="general_linear"), E.UnsupportedGroupError, "cka("),
    ("procrustes unknown group", lambda c: procrustes_distance(X, Y, group="nope"), E.UnsupportedGroupError, "full, g_relu, gl"),
    ("procrustes kind", lambda c: procrustes_distance(X, Y, kind="manhattan"), E.InvalidOptionError, "'angular'"),
    ("streaming kind", lambda c: ProcrustesDistance(kind="manhattan"), E.InvalidOptionError, "kind"),
    ("streaming shape change", lambda c: updated(LinearCKA(), (X, Y), (X[:, :2], Y)), E.ShapeError, "reset()"),
    ("streaming no data", lambda c: LinearCKA().compute(), E.TooFewSamplesError, "at least 2"),
    ("unknown metric", lambda c: metric("nope"), ValueError, "unknown metric"),
    # ---- group elements -------------------------------------------------------------------------
    ("repeated index", lambda c: perm_scale([0, 0, 2], [1.0, 1.0, 1.0]), E.InvalidElementError, "singular"),
    ("index out of range", lambda c: perm_scale([0, 1, 3], [1.0, 1.0, 1.0]), E.InvalidElementError, "outside 0..2"),
    ("negative index", lambda c: perm_scale([0, -1, 2], [1.0, 1.0, 1.0]), E.InvalidElementError, "outside"),
    ("fractional index", lambda c: MonomialElement(torch.tensor([0.5, 1.0]), torch.ones(2)), E.InvalidElementError, "integer indices"),
    ("infinite scale", lambda c: perm_scale([1, 0], [math.inf, 1.0]), E.InvalidElementError, "finite"),
    ("NaN scale", lambda c: perm_scale([1, 0], [math.nan, 1.0]), E.InvalidElementError, "NaN weights"),
    ("zero scale", lambda c: perm_scale([1, 0], [0.0, 1.0]), E.InvalidElementError, "nonzero"),
    ("complex scale", lambda c: MonomialElement(torch.tensor([1, 0]), torch.ones(2, dtype=torch.complex64)), E.InvalidInputError, "complex"),
    ("perm/scale lengths", lambda c: MonomialElement(torch.tensor([1, 0]), torch.ones(3)), E.ShapeError, "equal length"),
    ("apply singular element", lambda c: perm_scale([0, 0], [1.0, 1.0]).apply(X[:, :2], dim=1), E.InvalidElementError, "repeats"),
    ("phi overflows", lambda c: for_activation("power3").phi(perm_scale([1, 0], [1e200, 1.0])), E.InvalidElementError, "finite"),
    ("dense non-square", lambda c: DenseElement(torch.ones(2, 3)), E.ShapeError, "square"),
    ("dense NaN", lambda c: DenseElement(torch.full((2, 2), math.nan)), E.NonFiniteError, "finite matrix"),
    ("apply wrong size", lambda c: POSITIVE_MONOMIAL.sample(3).apply(X, dim=1), E.ShapeError, "size 4"),
    # ---- groups ---------------------------------------------------------------------------------
    ("sample(-3)", lambda c: for_activation("relu").sample(-3), E.InvalidOptionError, "number of neurons"),
    ("sample(0)", lambda c: ORTHOGONAL.sample(0), E.InvalidOptionError, "at least 1, got 0"),
    ("sample(2.5)", lambda c: MONOMIAL.sample(2.5), E.InvalidOptionError, "integer"),
    ("identity(-1)", lambda c: for_activation("tanh").identity(-1), E.InvalidOptionError, "group size"),
    ("project NaN", lambda c: for_activation("relu").project(torch.full((3, 3), math.nan)), E.NonFiniteError, "finite matrix"),
    ("project Inf (GL)", lambda c: for_activation("identity").project(torch.full((2, 2), math.inf)), E.NonFiniteError, "NaN/Inf"),
    ("project non-square", lambda c: ORTHOGONAL.project(torch.ones(2, 3)), E.ShapeError, "square"),
    ("contains NaN", lambda c: POSITIVE_MONOMIAL.contains(torch.full((2, 2), math.nan)), E.NonFiniteError, "finite"),
    ("contains complex", lambda c: ORTHOGONAL.contains(torch.eye(2, dtype=torch.complex64)), E.InvalidInputError, "complex"),
    ("contains atol < 0", lambda c: POSITIVE_MONOMIAL.contains(torch.eye(2), atol=-1.0), E.InvalidOptionError, "atol"),
    ("discover a name", lambda c: discover("relu"), E.InvalidInputError, "for_activation('relu')"),
    ("discover non-callable", lambda c: discover(42), E.InvalidInputError, "callable"),
    ("verify trials 0", lambda c: verify(for_activation("relu"), torch.relu, trials=0), E.InvalidOptionError, "proves nothing"),
    ("verify n -1", lambda c: verify(for_activation("relu"), torch.relu, n=-1), E.InvalidOptionError, "n must be"),
    ("unknown activation", lambda c: for_activation("nope"), E.UnknownActivationError, "discover"),
    # ---- training configuration -----------------------------------------------------------------
    ("lr NaN", lambda c: TrainConfig(lr=math.nan), E.InvalidOptionError, "lr must be a finite number > 0"),
    ("lr 0", lambda c: TrainConfig(lr=0.0), E.InvalidOptionError, "e.g. 1e-3"),
    ("lr Inf", lambda c: TrainConfig(lr=math.inf), E.InvalidOptionError, "lr"),
    ("epochs 0", lambda c: TrainConfig(epochs=0), E.InvalidOptionError, "epochs must be at least 1, got 0"),
    ("epochs 2.5", lambda c: TrainConfig(epochs=2.5), E.InvalidOptionError, "epochs"),
    ("batch_size -1", lambda c: TrainConfig(batch_size=-1), E.InvalidOptionError, "batch_size"),
    ("optimizer", lambda c: TrainConfig(optimizer="rmsprop"), E.InvalidOptionError, "'adam', 'sgd'"),
    ("schedule", lambda c: TrainConfig(schedule="linear"), E.InvalidOptionError, "'cosine'"),
    ("momentum 1.5", lambda c: TrainConfig(momentum=1.5), E.InvalidOptionError, "< 1"),
    ("weight_decay < 0", lambda c: TrainConfig(weight_decay=-1.0), E.InvalidOptionError, ">= 0"),
    ("step_gamma 0", lambda c: TrainConfig(step_gamma=0.0), E.InvalidOptionError, "step_gamma"),
    ("device quantum", lambda c: TrainConfig(device="quantum"), E.InvalidOptionError, "'cpu'"),
    ("device cuda:99", lambda c: TrainConfig(device="cuda:99"), E.InvalidOptionError, "CUDA"),
    ("threads 0", lambda c: TrainConfig(num_threads=0), E.InvalidOptionError, "num_threads"),
    ("max_seconds < 0", lambda c: TrainConfig(max_seconds=-1.0), E.InvalidOptionError, "max_seconds"),
    ("seed -1", lambda c: TrainConfig(seed=-1), E.InvalidOptionError, "at least 0, got -1"),
    ("parse_seeds a", lambda c: parse_seeds("a"), E.InvalidOptionError, "'0-3'"),
    ("parse_seeds -3", lambda c: parse_seeds("-3"), E.InvalidOptionError, "not a seed"),
    ("parse_seeds 3-1", lambda c: parse_seeds("3-1"), E.InvalidOptionError, "empty seed range"),
    ("parse_seeds empty", lambda c: parse_seeds(" , "), E.InvalidOptionError, "no seeds"),
    ("parse_seeds 1.5", lambda c: parse_seeds([1.5]), E.InvalidOptionError, "seed"),
    # ---- data options ---------------------------------------------------------------------------
    ("digits colour", lambda c: data.load("digits", colour=True), E.InvalidOptionError, "its options are"),
    ("val_fraction 1.5", lambda c: data.load("digits", val_fraction=1.5), E.InvalidOptionError, "< 1"),
    ("split seed -1", lambda c: data.load("digits", seed=-1), E.InvalidOptionError, "at least 0, got -1"),
    ("n_train 0", lambda c: data.load("synthetic", n_train=0), E.InvalidOptionError, "n_train"),
    ("noise NaN", lambda c: data.load("synthetic", noise=math.nan), E.InvalidOptionError, "noise"),
    ("augment 'yes'", lambda c: data.load("digits", augment="yes"), E.InvalidOptionError, "True or False"),
    ("input_size 2.5", lambda c: data.load("synthetic", input_size=2.5), E.InvalidOptionError, "integer"),
    ("unknown dataset", lambda c: data.load("imagenet"), data.UnknownDatasetError, "choose one of"),
    # ---- features / compare / stitch: the model's shape errors, our options ---------------------
    ("capture batch_size 0", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), "act1", batch_size=0), E.InvalidOptionError, "batch_size"),
    ("capture max_samples 0", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), "act1", max_samples=0), E.InvalidOptionError, "or None"),
    ("capture device", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), "act1", device="quantum"), E.InvalidOptionError, "device"),
    ("capture layout", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), "act1", layout="nchw"), E.InvalidOptionError, "layout"),
    ("capture no layers", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), []), E.InvalidOptionError, "models.sites"),
    ("capture no data", lambda c: capture(mlp8(), torch.randn(0, 1, 8, 8), "act1"), E.TooFewSamplesError, "non-empty"),
    ("capture data of a list", lambda c: capture(mlp8(), 5, "act1"), E.InvalidInputError, "DataLoader"),
    ("evaluate batch_size 0", lambda c: __import__("intertwiner.training", fromlist=["evaluate"]).evaluate(mlp8(), data.load("synthetic", input_size=8).test, batch_size=0), E.InvalidOptionError, "batch_size"),
    ("from_arrays complex", lambda c: data.from_arrays(np.ones((10, 4, 4), dtype=complex), np.zeros(10)), E.InvalidInputError, "complex"),
    ("from_arrays test_fraction", lambda c: data.from_arrays(np.ones((10, 4, 4)), np.zeros(10), test_fraction=1.5), E.InvalidOptionError, "test_fraction"),
    ("from_arrays num_classes 0", lambda c: data.from_arrays(np.ones((10, 4, 4)), np.zeros(10), num_classes=0), E.InvalidOptionError, "num_classes"),
    ("metric group of a number", lambda c: procrustes_distance(X, Y, group=42), E.InvalidInputError, "for_activation('relu')"),
    ("capture missing layer", lambda c: capture(mlp8(), torch.randn(4, 1, 8, 8), "nope"), LayerNotFoundError, "available module names"),
    ("capture input shape", lambda c: capture(mlp8(), torch.randn(4, 1, 7, 7), "act1"), E.ShapeError, "capture: the model could not run on the input of shape (4, 1, 7, 7)"),
    ("compare input shape", lambda c: compare(mlp8(), mlp8(), torch.randn(4, 1, 7, 7), "act1", "act1", progress=False), E.ShapeError, "compare: the model could not run"),
    ("stitch input shape", lambda c: c.stitch(), E.ShapeError, "stitch: model A could not run on the input of shape (batch, 1, 16, 16)"),
    ("stitch device", lambda c: c.stitch(device="quantum"), E.InvalidOptionError, "device"),
    # ---- checkpoints ----------------------------------------------------------------------------
    ("edited activation", lambda c: checkpoints.load(c.checkpoint(EDIT_ACT)), E.CheckpointError, "['config'] were edited after saving"),
    ("edited accuracy (load)", lambda c: checkpoints.load(c.checkpoint(lambda m: m.update(test_accuracy=0.99))), E.CheckpointError, "['test_accuracy']"),
    ("edited accuracy (read)", lambda c: checkpoints.read_metadata(c.checkpoint(lambda m: m.update(test_accuracy=0.99))), E.CheckpointError, "Restore the original sidecar"),
    ("edited integrity", lambda c: checkpoints.load(c.checkpoint(lambda m: m["integrity"].update(sha256="0"))), E.CheckpointError, "integrity record"),
    ("missing checkpoint", lambda c: checkpoints.load(c.tmp / "none.safetensors"), E.CheckpointError, "no checkpoint"),
    ("zoo resume other lr", lambda c: c.zoo(lr=0.01), E.ConfigMismatchError, "train_config.lr: saved 0.001, asked 0.01"),
    ("zoo resume other epochs", lambda c: c.zoo(epochs=3), E.ConfigMismatchError, "train_config.epochs"),
    ("zoo resume other split", lambda c: c.zoo(split_seed=1), E.ConfigMismatchError, "data.split_seed"),
    # ---- symmetry (wired by the lead: see _validate.reraise_shape_errors) -----------------------
    pytest.param(
        lambda c: symmetry().trace(mlp8(), torch.randn(4, 1, 7, 7)),
        E.ShapeError,
        "trace: the model could not run on the input of shape (4, 1, 7, 7)",
        id="trace input shape",
    ),
    pytest.param(
        lambda c: symmetry().check(
            mlp8(), symmetry().trace(mlp8(), torch.randn(4, 1, 8, 8)), torch.randn(4, 1, 7, 7)
        ),
        E.ShapeError,
        "check: the model could not run on the input of shape (4, 1, 7, 7)",
        id="check input shape",
    ),
]

CLI = [
    ("groups trials 0", ["groups", "--trials", "0"], "--trials"),
    ("groups trials -3", ["groups", "--trials", "-3"], "--trials must be at least 1, got -3"),
    ("groups unknown activation", ["groups", "--activation", "nope"], "discover"),
    ("train threads 0", ["train", "--arch", "mlp", "--threads", "0", "--out", "{tmp}"], "--threads"),
    ("train out is a file", ["train", "--arch", "mlp", "--out", "{file}"], "existing file"),
    ("train epochs 0", ["train", "--arch", "mlp", "--epochs", "0", "--out", "{tmp}"], "--epochs"),
    ("train batch 0", ["train", "--arch", "mlp", "--batch-size", "0", "--out", "{tmp}"], "--batch-size"),
    ("train lr nan", ["train", "--arch", "mlp", "--lr", "nan", "--out", "{tmp}"], "finite number > 0"),
    ("train weight decay < 0", ["train", "--arch", "mlp", "--weight-decay", "-1", "--out", "{tmp}"], ">= 0"),
    ("train val fraction", ["train", "--arch", "mlp", "--val-fraction", "1.5", "--out", "{tmp}"], "< 1"),
    ("train unknown arch", ["train", "--arch", "nope", "--data", "synthetic", "--out", "{tmp}"], "choose one of"),
    ("train unknown data", ["train", "--arch", "mlp", "--data", "nope", "--out", "{tmp}"], "unknown dataset"),
    ("train bad json", ["train", "--arch", "mlp", "--data", "synthetic", "--model-config", "{bad", "--out", "{tmp}"], "not valid JSON"),
    ("train model key of wrong type", ["train", "--arch", "mlp", "--data", "synthetic", "--model-config", '{"widths": -1}', "--out", "{tmp}"], "does not build mlp"),
    ("groups empty activation", ["groups", "--activation", ""], "unknown activation"),
    ("train unknown model key", ["train", "--arch", "mlp", "--data", "synthetic", "--model-config", '{"nope": 1}', "--out", "{tmp}"], "config keys"),
    ("zoo seeds a", ["zoo", "--arch", "mlp", "--seeds", "a", "--out", "{tmp}"], "--seeds"),
    ("zoo seeds 3-1", ["zoo", "--arch", "mlp", "--seeds", "3-1", "--out", "{tmp}"], "empty seed range"),
    ("zoo out is a file", ["zoo", "--arch", "mlp", "--out", "{file}"], "names"),
    ("stitch device", ["stitch", "a.safetensors", "b.safetensors", "--at", "x", "--device", "quantum"], "unknown --device"),
    ("stitch threads 0", ["stitch", "a.safetensors", "b.safetensors", "--at", "x", "--threads", "0"], "--threads"),
    ("stitch lr 0", ["stitch", "a.safetensors", "b.safetensors", "--at", "x", "--lr", "0"], "--lr"),
    ("stitch init samples 0", ["stitch", "{ckpt}", "{ckpt}", "--at", "block1.act", "--init-samples", "0"], "--init-samples"),
    ("stitch missing file", ["stitch", "a.safetensors", "b.safetensors", "--at", "x"], "no checkpoint"),
    ("symmetries batch 0", ["symmetries", "x.safetensors", "--batch", "0"], "--batch"),
    ("symmetries missing", ["symmetries", "x.safetensors"], "no checkpoint"),
    ("symmetries edited", ["symmetries", "{edited}"], "edited after saving"),
    ("dissect quantile", ["dissect", "x.safetensors", "--layer", "a", "--quantile", "2"], "--quantile"),
    ("dissect rotations 0", ["dissect", "x.safetensors", "--layer", "a", "--n-rotations", "0"], "--n-rotations"),
    ("dissect out is a file", ["dissect", "x.safetensors", "--layer", "a", "--out", "{file}"], "existing file"),
    ("sanity repeats 0", ["sanity", "--repeats", "0", "--out", "{tmp}"], "--repeats"),
    ("sanity out is a file", ["sanity", "--out", "{file}"], "existing file"),
]
# fmt: on


def test_battery_size():
    assert len(API) + len(CLI) >= 80


API_PARAMS = [pytest.param(*r[1:], id=r[0]) if type(r) is tuple else r for r in API]


@pytest.mark.parametrize("call, exc, fragment", API_PARAMS)
def test_api_refuses_bad_input(tmp_path, call, exc, fragment):
    with pytest.raises(exc) as info:
        call(Ctx(tmp_path))
    assert isinstance(info.value, errors.IntertwinerError), type(info.value)
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("argv, fragment", [r[1:] for r in CLI], ids=[r[0] for r in CLI])
def test_cli_refuses_bad_input(tmp_path, argv, fragment):
    ctx = Ctx(tmp_path)
    names = {"tmp": str(tmp_path / "out"), "file": str(tmp_path / "file.txt")}
    (tmp_path / "file.txt").write_text("not a folder")
    if any("{ckpt}" in a for a in argv):
        names["ckpt"] = str(ctx.checkpoint())
    if any("{edited}" in a for a in argv):
        names["edited"] = str(ctx.checkpoint(EDIT_ACT))
    args = [names[a[1:-1]] if a[1:-1] in names and a[0] == "{" else a for a in argv]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert fragment in flat, result.output
