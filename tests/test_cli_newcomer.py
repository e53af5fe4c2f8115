"""The CLI and API as a newcomer meets them (issue 29): no quietly wrong output, no traceback, and
one line saying what to do for a wrong path, wrong data, wrong kind or a bad count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from intertwiner import checkpoints, models
from intertwiner.cli import app


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one intra-op thread."""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two independently initialised BatchNorm CNNs recorded as trained on digits (8x8)."""
    folder = tmp_path_factory.mktemp("newcomer")
    cfg = dict(width=2, in_channels=1, input_size=8)
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        paths[name] = folder / f"{name}.safetensors"
        model = models.build("myrtle_cnn", seed=seed, **cfg)
        checkpoints.save(model, paths[name], {"dataset": "digits", "split_seed": 0})
    return paths


def run(*args: str):
    """``intertwiner ARGS`` through typer's runner (stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r, *words: str) -> None:
    """Exit 2 with one ``error: ...`` line that holds ``words``, and no traceback."""
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert r.exception is None or isinstance(r.exception, SystemExit)


# ---- item 2: counts are validated everywhere the same way ---------------------------------------
@pytest.mark.parametrize(
    "args, option, value",
    [
        (["interpolate", "A", "B", "--eval-samples", "-10"], "--eval-samples", -10),
        (["interpolate", "A", "B", "--samples", "0"], "--samples", 0),
        (["interpolate", "A", "B", "--alphas", "1"], "--alphas", 1),
        (["align", "A", "B", "--out", "x.safetensors", "--samples", "-5"], "--samples", -5),
        (["compare", "A", "B", "--samples", "-3"], "--samples", -3),
        (["train", "--epochs", "0"], "--epochs", 0),
        (["symmetries", "A", "--batch", "0"], "--batch", 0),
        (["reproduce", "--workers", "0"], "--workers", 0),
    ],
)
def test_bad_counts_are_one_line_errors(ckpts, args, option, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing written in the worktree should a check fail to refuse
    args = [str(ckpts["a"]) if a == "A" else str(ckpts["b"]) if a == "B" else a for a in args]
    minimum = {"--alphas": 2}.get(option, 4 if args[0] == "compare" else 1)
    r = run(*args)
    one_line_error(r, f"{option} must be at least {minimum}, got {value}")


def test_negative_count_in_the_api_is_refused_not_sliced(ckpts):
    from intertwiner.data import load, random_subset
    from intertwiner.errors import InvalidOptionError

    splits = load("digits")
    with pytest.raises(InvalidOptionError, match="at least 1, got -10"):
        random_subset(splits.test, -10)


# ---- item 4: interpolate's endpoints are the trained models --------------------------------------
def test_interpolate_endpoints_are_the_models_themselves(ckpts):
    from intertwiner.data import random_subset
    from intertwiner.training import evaluate

    r = run("interpolate", ckpts["a"], ckpts["b"], "--alphas", "3", "--samples", "200",
            "--eval-samples", "150", "--json", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    (curve,) = json.loads(r.stdout)
    assert curve["reset_bn"] is True  # the midpoint's statistics are re-estimated
    for k, name in ((0, "a"), (-1, "b")):
        model, meta = checkpoints.load(ckpts[name])
        test = random_subset(checkpoints.data_splits(meta).test, 150)
        own = evaluate(model, test)
        assert curve["accuracies"][k] == own["accuracy"]
        assert curve["losses"][k] == pytest.approx(own["loss"], rel=1e-6)


# ---- item 1: feature files with different row counts --------------------------------------------
def test_compare_refuses_feature_files_of_different_rows(tmp_path):
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.random((100, 6)))
    np.save(tmp_path / "b.npy", g.random((80, 6)))
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", "-q")
    one_line_error(r, "a has 100 rows", "b has 80", "same inputs")
    assert "nan" not in r.stdout


def test_compare_never_exits_0_after_printing_nan(tmp_path):
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.random((30, 4, 3)))  # (N, T, D) against (N, C): no pairing
    np.save(tmp_path / "b.npy", g.random((30, 5)))
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", "--metrics",
            "procrustes_similarity:orthogonal", "-q")  # fmt: skip
    one_line_error(r, "could not be computed", "use CKA")


# ---- item 5: foreign data is said; names are never cut ------------------------------------------
def test_compare_on_foreign_data_says_so(ckpts, tmp_path):
    layer = models.sites(checkpoints.load(ckpts["a"])[0])[0]
    mnist_like = tmp_path / "m.safetensors"
    model, _ = checkpoints.load(ckpts["a"])
    checkpoints.save(model, mnist_like, {"dataset": "synthetic", "split_seed": 0})
    r = run("compare", ckpts["a"], mnist_like, "--layers", layer, "--samples", "32",
            "--metrics", "cka", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "not the training data of m (synthetic)" in r.stderr


def test_compare_many_inputs_keeps_names_apart(tmp_path):
    g = np.random.default_rng(0)
    base = g.random((40, 5))
    for run_dir in ("run_one", "run_two", "run_three"):
        (tmp_path / run_dir).mkdir()
        np.save(tmp_path / run_dir / "myrtle_cnn-relu-seed0.npy", base + g.random((40, 5)))
    paths = [
        tmp_path / d / "myrtle_cnn-relu-seed0.npy" for d in ("run_one", "run_two", "run_three")
    ]
    r = run("compare", *paths, "--metrics", "cka", "-q")
    assert r.exit_code == 0, r.output
    for d in ("run_one", "run_two", "run_three"):
        label = f"{d}/myrtle_cnn-relu-seed0"
        assert any(ln.startswith(label) for ln in r.stdout.splitlines()), r.stdout
    assert str(tmp_path) not in r.stdout  # no absolute paths as labels


# ---- items 3 and 6: results --kind and the long format -------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A run folder with one stitching row of a low-rank stitch, as the sweep writes it."""
    from intertwiner.store import Store

    config = {"arch": "mlp", "seed": 0, "pair": 0, "site_index": 1, "layer": ["low_rank", 2],
              "layer_label": "low_rank_2", "epochs": 1, "stage": "stitching"}  # fmt: skip
    metrics = {
        "acc_stitched": 0.5,
        "penalty": 0.1,
        "site": "act2",
        "solver": None,
        "kind": "low_rank",
    }
    Store(tmp_path).put("stitching", config, metrics, seconds=1.0)
    return tmp_path


@pytest.mark.parametrize("fmt", ["csv", "long", "json"])
def test_results_unknown_kind_names_the_kinds(run_dir, fmt):
    r = run("results", run_dir, "--kind", "stitch", "-f", fmt)
    one_line_error(r, "unknown kind 'stitch'", "stitching", "alignment")
    assert r.stdout == ""


def test_results_kind_without_rows_is_an_error(run_dir):
    one_line_error(
        run("results", run_dir, "--kind", "dissection"), "no dissection rows", "stitching"
    )


def test_results_long_has_one_number_per_line_and_the_layer(run_dir):
    import csv
    import io

    r = run("results", run_dir, "-f", "long", "--kind", "stitching")
    assert r.exit_code == 0, r.output
    lines = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {ln["metric"] for ln in lines} == {"acc_stitched", "penalty", "seconds"}
    for ln in lines:
        float(ln["value"])  # every value is a number
        assert ln["layer"] == "low_rank_2" and ln["site"] == "act2"


def test_results_out_writes_the_file_and_a_missing_folder_is_one_line(run_dir):
    r = run("results", run_dir, "--out", run_dir / "rows.csv")
    assert r.exit_code == 0, r.output
    assert (run_dir / "rows.csv").read_text().startswith("key,")
    r = run("results", run_dir, "--out", run_dir / "new" / "rows.csv")  # made, like --out folders
    assert r.exit_code == 0 and (run_dir / "new" / "rows.csv").is_file(), r.output
    (run_dir / "a_file").write_text("x")
    one_line_error(run("results", run_dir, "--out", run_dir / "a_file" / "rows.csv"), "--out")


# ---- item 7: an output in a missing folder ------------------------------------------------------
def test_interpolate_plot_in_a_missing_folder_is_made(ckpts, tmp_path):
    png = tmp_path / "missing_dir" / "barrier.png"
    r = run("interpolate", ckpts["a"], ckpts["b"], "--align", "--alphas", "3", "--samples", "100",
            "--eval-samples", "50", "--plot", png, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "loss barrier" in r.stdout and png.stat().st_size > 1000


def test_interpolate_plot_that_cannot_be_written_fails_before_the_job(ckpts, tmp_path):
    (tmp_path / "file").write_text("x")
    r = run("interpolate", ckpts["a"], ckpts["b"], "--plot", tmp_path / "file" / "b.png", "-q")
    one_line_error(r, "--plot")


# ---- item 8: a dataset the model cannot take -----------------------------------------------------
@pytest.fixture(scope="module")
def mnist_ckpts(tmp_path_factory):
    """CNNs built for MNIST's 28x28 inputs (untrained: only their input shape matters here)."""
    folder = tmp_path_factory.mktemp("mnist")
    paths = []
    for seed in (0, 1):
        paths.append(folder / f"cnn{seed}.safetensors")
        model = models.build("myrtle_cnn", seed=seed, width=2, in_channels=1, input_size=28)
        checkpoints.save(model, paths[-1], {"dataset": "mnist", "split_seed": 0})
    return paths


@pytest.mark.parametrize(
    "command",
    [
        ["interpolate", "A", "B", "--data", "digits", "-q"],
        ["align", "A", "B", "--method", "activations", "--data", "digits", "--out", "x", "-q"],
        ["compare", "A", "B", "--data", "digits", "--layers", "block1.act", "-q"],
    ],
)
def test_a_dataset_the_model_cannot_take_is_one_line(mnist_ckpts, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(mnist_ckpts[0]) if a == "A" else str(mnist_ckpts[1]) if a == "B" else a
            for a in command]  # fmt: skip
    one_line_error(run(*args), "digits inputs are (1, 8, 8)", "takes (1, 28, 28)", "mnist")


def test_trace_takes_a_dataset_and_names_a_wrong_shape():
    from intertwiner.data import load
    from intertwiner.errors import ShapeError
    from intertwiner.symmetry import trace

    splits = load("digits")
    small = models.build("myrtle_cnn", width=2, in_channels=1, input_size=8)
    assert len(trace(small, splits.test).sites) == len(trace(small, splits.test[0][0][None]).sites)
    big = models.build("myrtle_cnn", width=2, in_channels=1, input_size=28)
    with pytest.raises(ShapeError, match=r"expects \(N, 1, 28, 28\)"):
        trace(big, splits.test)


# ---- item 9: the CLI speaks CLI; unknown groups list the names ----------------------------------
def test_compare_speaks_of_options_not_keywords(tmp_path, ckpts):
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.random((20, 4, 4, 4)))
    np.save(tmp_path / "b.npy", g.random((20, 4, 2, 2)))
    spec = ["--metrics", "procrustes_similarity:orthogonal", "-q"]
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", *spec)
    one_line_error(r, "pass --upsample")
    assert "=True" not in r.stderr
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", *spec, "--upsample")
    assert r.exit_code == 0, r.output
    r = run("compare", ckpts["a"], ckpts["b"], "-q")  # checkpoints without --layers
    one_line_error(r, "needs --layers", "block1.act, block2.act")
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", "--layers", "x", "-q")
    one_line_error(r, "lacks layers ['x']", "it has ['features']")


@pytest.mark.parametrize("group", ["relu", "tanh", "G_RELU_X"])
def test_unknown_group_lists_the_names(tmp_path, group):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((20, 4)))
    r = run(
        "compare",
        tmp_path / "a.npy",
        tmp_path / "a.npy",
        "--metrics",
        f"procrustes_similarity:{group}",
    )
    one_line_error(r, "positive_monomial", "perm_scale", "g_relu", "signed_perm")
    if group == "relu":
        assert "'relu' is an activation, whose intertwiner group is positive_monomial" in r.stderr


def test_unknown_group_in_python_lists_the_names():
    from intertwiner.errors import UnsupportedGroupError
    from intertwiner.metrics import procrustes_similarity

    x = np.random.default_rng(0).random((20, 4))
    with pytest.raises(
        UnsupportedGroupError, match="perm_scale.*'tanh' is an activation.*signed_perm"
    ):
        procrustes_similarity(x, x, group="tanh")


# ---- item 10: the sites `symmetries` prints are layers `compare` takes ----------------------------
def test_compare_takes_every_site_symmetries_prints(tmp_path):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"r{seed}.safetensors")
        model = models.build("resnet20", seed=seed, width=4, in_channels=1, input_size=8)
        checkpoints.save(model, paths[-1], {"dataset": "digits", "split_seed": 0})
    r = run("symmetries", paths[0], "--json")
    assert r.exit_code == 0, r.output
    sites = [s["name"] for s in json.loads(r.stdout)["sites"]]
    assert "layer2.0.shortcut.pad" in sites
    r = run("compare", *paths, "--layers", ",".join(sites), "--same-layer", "--samples", "16",
            "--metrics", "cka", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "layer2.0.shortcut.pad" in r.stdout


# ---- item 14: each model runs once for all metrics ----------------------------------------------
@pytest.mark.parametrize("n_inputs", [2, 3])
def test_compare_runs_each_model_once_for_all_metrics(ckpts, tmp_path, n_inputs):
    import torch

    paths = [ckpts["a"], ckpts["b"]]
    if n_inputs == 3:
        paths.append(tmp_path / "c.safetensors")
        checkpoints.save(checkpoints.load(ckpts["a"])[0], paths[-1], {"dataset": "digits"})
    seen = {"samples": 0}
    roots = {type(checkpoints.load(ckpts["a"])[0])}
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: (
            seen.__setitem__("samples", seen["samples"] + a[0].shape[0])
            if type(m) in roots and a
            else None
        )
    )
    try:
        r = run("compare", *paths, "--layers", "block1.act,block2.act", "--samples", "40",
                "--metrics", "cka,procrustes_similarity:perm_scale,group_cka", "-q")  # fmt: skip
    finally:
        handle.remove()
    assert r.exit_code == 0, r.output
    # one pass per model (compare() adds a probe of a few inputs to plan its memory), not one
    # pass per metric (3 metrics: 3 x 40 per model before)
    assert n_inputs * 40 <= seen["samples"] < n_inputs * 40 + 5 * n_inputs


# ---- item 15 (second half): layers of different names in different inputs -----------------------
def test_compare_pairs_layers_named_differently(tmp_path, ckpts):
    from safetensors.torch import save_file

    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.random((30, 5)))
    save_file({"l1": torch_tensor(g.random((30, 4))), "l2": torch_tensor(g.random((30, 3)))},
              str(tmp_path / "b.safetensors"))  # fmt: skip
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.safetensors", "--metrics", "cka", "-q")
    assert r.exit_code == 0, r.output
    header = [ln for ln in r.stdout.splitlines() if "l1" in ln][0]
    assert header.split() == ["l1", "l2"]
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.safetensors", "--layers", "features",
            "--layers", "l2", "--metrics", "cka", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:3]] == ["l2", "features"]
    r = run("compare", ckpts["a"], ckpts["b"], "--layers", "block1.act", "--layers", "block4.act",
            "--samples", "32", "--metrics", "cka", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "block4.act" in r.stdout and "block1.act" in r.stdout


def torch_tensor(a):
    import torch

    return torch.from_numpy(a).float()


# ---- item 11: align and merge on one's own modules, as the README shows them ---------------------
def _own_models():
    import torch
    from torch import nn

    class OwnMLP(nn.Module):
        def __init__(self, seed):
            torch.manual_seed(seed)
            super().__init__()
            self.l1, self.act, self.l2 = nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)

        def forward(self, x):
            return self.l2(self.act(self.l1(x)))

    class OwnCNN(nn.Module):
        def __init__(self, seed):
            torch.manual_seed(seed)
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU()
            self.head = nn.Linear(6, 10)

        def forward(self, x):
            return self.head(self.act(self.bn(self.conv(x))).mean((2, 3)))

    return OwnMLP, OwnCNN


def test_align_and_merge_own_modules_without_example_input():
    import torch

    from intertwiner.alignment import align, merge, weight_distance

    OwnMLP, OwnCNN = _own_models()
    a, b = OwnMLP(0), OwnMLP(1)
    aligned, elements = align(a, b)  # as in the README: no example_input
    assert weight_distance(a, aligned) < weight_distance(a, b)
    x = torch.randn(5, 10)
    assert torch.allclose(aligned(x), b(x), atol=1e-5)
    assert len(repr(align(a, b))) < 300
    images = torch.randn(40, 1, 8, 8)
    merged = merge([OwnCNN(0), OwnCNN(1)], bn_data=images)  # bn_data serves to trace them
    assert merged(images[:2]).shape == (2, 10)


# ---- item 12: one naming of checkpoints, the dataset in the name --------------------------------
def test_train_and_reproduce_name_checkpoints_alike(tmp_path):
    from intertwiner.experiments.common import model_name

    r = run(
        "train", "--arch", "mlp", "--data", "synthetic", "--epochs", "1", "--out", tmp_path, "-q"
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mlp-relu-synthetic-seed0.safetensors").is_file()
    zoo = {"arch": "myrtle_cnn", "activation": "relu", "seed": 0, "stage": "zoo", "role": "zoo"}
    names = {d: model_name({**zoo, "data": {"name": d}}) for d in ("mnist", "digits", "concepts")}
    for d, name in names.items():
        assert name.startswith(f"zoo/myrtle_cnn-relu-{d}-seed0-"), name


def test_a_run_with_the_older_names_still_finds_its_checkpoints(tmp_path):
    from intertwiner.experiments.common import _legacy_name, model_name, zoo_checkpoint

    zoo = {"arch": "mlp", "activation": "relu", "seed": 1, "data": {"name": "digits"}}
    config = {"_run": str(tmp_path)}
    old = tmp_path / "checkpoints" / f"{_legacy_name(zoo)}.safetensors"
    assert zoo_checkpoint(config, zoo).name == model_name(zoo).split("/")[-1] + ".safetensors"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    assert zoo_checkpoint(config, zoo) == old


# ---- item 13: labels and figures ----------------------------------------------------------------
def test_figures_use_the_metric_range_and_the_names(tmp_path):
    from intertwiner.metrics import pairwise

    g = np.random.default_rng(0)
    base = g.random((30, 6))
    feats = [base + 0.01 * g.random((30, 6)) for _ in range(3)]  # CKA near 0.99 everywhere
    np.save(tmp_path / "a.npy", feats[0])
    np.save(tmp_path / "b.npy", feats[1])
    r = run("compare", tmp_path / "a.npy", tmp_path / "b.npy", "--metrics", "cka", "-q", "--out",
            tmp_path / "o")  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert (saved["model_a"], saved["model_b"]) == ("a", "b")
    from intertwiner.metrics import Comparison

    comp = Comparison(["features"], ["features"], {"cka": np.array([[0.985]])}, 30,
                      value_range={"cka": (0.0, 1.0)}, names=("a", "b"))  # fmt: skip
    ax = comp.plot().axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("b", "a")
    assert ax.images[0].get_clim() == (0.0, 1.0)
    fig = pairwise(feats, "cka", progress=False).plot()
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_interpolate_plot_title_is_not_clipped():
    from intertwiner.alignment import Interpolation, plot_curves

    curve = Interpolation([0.0, 0.5, 1.0], [0.3, 0.9, 0.35], [0.9, 0.5, 0.88], True, label="x")
    title = "/a/very/long/absolute/path/to/runs/quick/checkpoints/zoo/" * 3 + " -> b"
    fig = plot_curves([curve], title=title)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = fig.texts[0].get_window_extent(renderer)
    fig_box = fig.bbox
    assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and box.y1 <= fig_box.y1
    assert box.y0 >= max(ax.get_window_extent(renderer).y1 for ax in fig.axes)


def test_align_says_1_sweep_and_a_pickled_npy_is_named(ckpts, tmp_path):
    r = run("align", ckpts["a"], ckpts["a"], "--out", tmp_path / "x.safetensors", "-q")
    assert r.exit_code == 0, r.output
    assert " 1 sweeps" not in r.stdout and "sweep" in r.stdout
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok.npy", np.zeros((3, 2)))
    r = run("compare", tmp_path / "obj.npy", tmp_path / "ok.npy")
    one_line_error(r, "obj.npy", "pickled")


# ---- item 15 (first half): checkpoints of one's own modules from the CLI ------------------------
NETS = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.l1, self.act, self.l2 = nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x):
        return self.l2(self.act(self.l1(self.flat(x))))


def build():
    return Net()
"""


def test_own_module_checkpoints_load_with_model_factory(tmp_path, monkeypatch):
    import importlib
    import sys

    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "issue29_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    nets = importlib.import_module("issue29_nets")
    for seed in (0, 1):
        torch.manual_seed(seed)
        checkpoints.save(nets.build(), tmp_path / f"own{seed}.safetensors", {"dataset": "digits"})
    one_line_error(run("symmetries", "own0.safetensors"), "--model package.module:factory")
    r = run("symmetries", "own0.safetensors", "--model", "issue29_nets:build")
    assert r.exit_code == 0, r.output
    assert "issue29_nets.Net" in r.stdout and "G_ReLU" in r.stdout
    r = run("compare", "own0.safetensors", "own1.safetensors", "--model", "issue29_nets:build",
            "--layers", "act", "--metrics", "cka", "--samples", "32", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run("align", "own0.safetensors", "own1.safetensors", "--model", "issue29_nets.py:build",
            "--out", "aligned.safetensors", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    one_line_error(
        run("symmetries", "own0.safetensors", "--model", "issue29_nets:nope"), "no function 'nope'"
    )
    one_line_error(
        run("symmetries", "own0.safetensors", "--model", "nowhere:build"), "cannot import nowhere"
    )
    sys.modules.pop("issue29_nets", None)


# ---- the newcomer's sweep: wrong kind, wrong path, wrong option -> one line ----------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["interpolate", "A", "B", "--method", "nope"], ["unknown --method 'nope'", "'weights'"]),
        (
            ["align", "A", "B", "--group", "nope", "--out", "x.safetensors"],
            ["unknown --group 'nope'"],
        ),
        (["results", ".", "-f", "nope"], ["unknown --format 'nope'", "long"]),
        (["symmetries", "notes.txt"], ["notes.txt is not a checkpoint", ".safetensors"]),
        (["symmetries", "missing.safetensors"], ["no checkpoint at missing.safetensors"]),
    ],
)
def test_newcomer_mistakes_are_one_line(ckpts, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    args = [str(ckpts["a"]) if a == "A" else str(ckpts["b"]) if a == "B" else a for a in args]
    one_line_error(run(*args), *words)


@pytest.mark.parametrize("case", ["align max_sweeps", "interpolate bn_samples", "pairwise workers"])
def test_api_counts_read_the_same(case):
    from intertwiner.alignment import align, interpolate
    from intertwiner.data import load
    from intertwiner.errors import InvalidOptionError
    from intertwiner.metrics import pairwise

    a = models.build("mlp", widths=[8], in_channels=1, input_size=8, seed=0)
    x = np.ones((5, 3))
    call = {
        "align max_sweeps": lambda: align(a, a, max_sweeps=-1),
        "interpolate bn_samples": lambda: interpolate(a, a, 3, load("digits").test, bn_samples=-3),
        "pairwise workers": lambda: pairwise([x, x], "cka", workers=-1, progress=False),
    }[case]
    with pytest.raises(InvalidOptionError, match=r"must be at least \d, got -\d"):
        call()


def test_compare_many_feature_files_with_other_layers_asks_for_layers(tmp_path):
    from safetensors.numpy import save_file

    g = np.random.default_rng(0)
    for name, keys in (("p", "xy"), ("q", "xy"), ("r", "xz")):
        save_file({k: g.random((10, 3)) for k in keys}, str(tmp_path / f"{name}.safetensors"))
    paths = [tmp_path / f"{n}.safetensors" for n in "pqr"]
    one_line_error(run("compare", *paths, "--metrics", "cka", "-q"), "different layers", "--layers")
    r = run("compare", *paths, "--layers", "x,y", "--layers", "x,y", "--layers", "x,z",
            "--metrics", "cka", "--same-layer", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "cka  y|z" in r.stdout


def test_results_of_a_run_without_rows_is_an_error(tmp_path):
    from intertwiner.store import Store

    Store(tmp_path)  # a run folder whose jobs have not finished yet
    one_line_error(run("results", tmp_path), "no results yet", "reproduce")


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["compare", "f.npy", "f.npy", "--out", "file.txt/sub"],
            ["--out file.txt/sub", "is a file"],
        ),
        (["train", "--arch", "mlp", "--out", "file.txt/sub"], ["--out file.txt/sub", "is a file"]),
        (
            ["align", "A", "B", "--out", "file.txt/x.safetensors"],
            ["--out", "nothing can be written"],
        ),
        (["results", ".", "--out", "file.txt/x.csv"], ["--out file.txt/x.csv", "is a file"]),
        (
            ["interpolate", "A", "B", "--data", "digits", "--data-dir", "d"],
            ["--data-dir is for", "cifar10"],
        ),
        (
            ["train", "--arch", "mlp", "--data", "mnist", "--data-dir", "d", "--out", "o"],
            ["--data-dir"],
        ),
    ],
)
def test_paths_under_a_file_and_a_data_dir_that_does_not_apply(
    ckpts, tmp_path, monkeypatch, args, words
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    np.save(tmp_path / "f.npy", np.zeros((4, 2)))
    args = [str(ckpts["a"]) if a == "A" else str(ckpts["b"]) if a == "B" else a for a in args]
    one_line_error(run(*args), *words)
