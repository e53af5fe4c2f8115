"""End-to-end stitching: self-stitching, symmetry-transformed copies, residual sites, frozen models."""

from __future__ import annotations

import copy

import pytest
import torch
from tests._support.factories import (
    TinyMLP,
    TinyResMLP,
    digits_splits,
    monomial_matrix,
    random_monomial,
    train_quick,
    transformed_mlp,
    transformed_resmlp,
)

from intertwiner import models
from intertwiner.errors import ShapeError
from intertwiner.stitching import (
    MonomialStitch,
    ResidualSiteError,
    StitchConfig,
    UnknownLayerKindError,
    UnknownSiteError,
    stitch,
)
from intertwiner.stitching._fit import AUTO_INIT_MIN

QUIET = dict(progress=False, batch_size=256)


def _cfg(**kw):
    return StitchConfig(**{**QUIET, **kw})


def _live(model, data, site):
    """Units of ``site`` that are nonzero on some training input (dead units are unidentifiable)."""
    out = {}
    handle = dict(model.named_modules())[site].register_forward_hook(
        lambda m, i, o: out.setdefault("h", o)
    )
    with torch.no_grad():
        model(data.train.tensors[0])
    handle.remove()
    return (out["h"] != 0).any(0)


@pytest.mark.parametrize("site", ["act1", "act2"])
@pytest.mark.parametrize("layer", ["full", "perm_scale", "orthogonal", "diagonal"])
def test_self_stitch_identity_is_exact(mlp, digits, site, layer):
    r = stitch(mlp, mlp, site, layer=layer, data=digits, config=_cfg(init="identity", epochs=0))
    assert r.acc_a == r.acc_b == r.acc_stitched > 0.5
    assert r.penalty == 0.0
    assert r.history[0]["epoch"] == 0 and r.best_epoch == 0


def test_self_stitch_closed_form_full_is_near_exact(mlp, digits):
    r = stitch(mlp, mlp, "act2", layer="full", data=digits, config=_cfg(epochs=0))
    assert abs(r.penalty) <= 1 / len(digits.test)  # ridge shrinks a hair: at most one flip
    assert r.feature_error < 1e-6


@pytest.mark.parametrize("site", ["act1", "act2"])
def test_match_recovers_a_symmetry_transformed_copy(mlp64, digits64, site):
    twin, elements = transformed_mlp(mlp64, torch.Generator().manual_seed(1))
    r = stitch(mlp64, twin, site, layer="perm_scale", data=digits64, config=_cfg(epochs=0))
    perm, scale = elements[site]
    live = _live(twin, digits64, site)
    assert live.sum() >= 8
    assert torch.equal(r.layer.perm[live], perm[live])
    torch.testing.assert_close(r.layer.scale.detach()[live], scale[live], rtol=1e-6, atol=1e-6)
    assert r.penalty == 0.0 and r.best_epoch == 0
    x = digits64.test.tensors[0]
    torch.testing.assert_close(r.model(x), twin(x), rtol=1e-9, atol=1e-9)  # exact function


def test_match_recovers_every_unit_when_none_is_dead(digits64):
    model = TinyMLP(dtype=torch.float64, seed=1).eval()  # untrained: all act1 units alive
    assert _live(model, digits64, "act1").all()
    twin, elements = transformed_mlp(model, torch.Generator().manual_seed(2))
    r = stitch(model, twin, "act1", layer="perm_scale", data=digits64, config=_cfg(epochs=0))
    assert torch.equal(r.layer.perm, elements["act1"][0])
    torch.testing.assert_close(r.layer.scale.detach(), elements["act1"][1], rtol=1e-6, atol=1e-6)
    assert r.penalty == 0.0


def test_init_samples_subset_still_recovers_the_symmetry(mlp64, digits64):
    twin, elements = transformed_mlp(mlp64, torch.Generator().manual_seed(1))
    cfg = _cfg(epochs=0, init_samples=256, batch_size=128)
    r = stitch(mlp64, twin, "act1", layer="perm_scale", data=digits64, config=cfg)
    live = _live(twin, digits64, "act1")
    assert torch.equal(r.layer.perm[live], elements["act1"][0][live])
    assert r.penalty == 0.0


def test_match_in_float32(mlp, digits):
    twin, elements = transformed_mlp(mlp, torch.Generator().manual_seed(3))
    r = stitch(mlp, twin, "act1", layer="auto", data=digits, config=_cfg(epochs=0))
    assert r.kind == "perm_scale"
    live = _live(twin, digits, "act1")
    assert torch.equal(r.layer.perm[live], elements["act1"][0][live])
    torch.testing.assert_close(
        r.layer.scale.detach()[live].double(), elements["act1"][1][live], rtol=1e-5, atol=1e-5
    )
    assert abs(r.penalty) <= 1 / len(digits.test)


def test_orthogonal_cannot_represent_the_scales(mlp64, digits64):
    twin, _ = transformed_mlp(mlp64, torch.Generator().manual_seed(1))
    cfg = _cfg(epochs=0)
    ortho = stitch(mlp64, twin, "act1", layer="orthogonal", data=digits64, config=cfg)
    monom = stitch(mlp64, twin, "act1", layer="perm_scale", data=digits64, config=cfg)
    assert monom.feature_error < 1e-12
    assert ortho.feature_error > 1e-2  # the best orthogonal map misses the scales
    # ... while a pure permutation (scales 1) is orthogonal and is found exactly.
    pure = copy.deepcopy(mlp64)
    perm, _ = random_monomial(24, torch.Generator().manual_seed(5))
    p = monomial_matrix(perm, torch.ones(24, dtype=torch.float64))
    with torch.no_grad():
        pure.fc1.weight.copy_(p @ pure.fc1.weight)
        pure.fc1.bias.copy_(p @ pure.fc1.bias)
        pure.fc2.weight.copy_(pure.fc2.weight @ p.T)
    exact = stitch(mlp64, pure, "act1", layer="orthogonal", data=digits64, config=cfg)
    assert exact.feature_error < 1e-12 and exact.penalty == 0.0
    live = _live(mlp64, digits64, "act1")  # columns of dead units are arbitrary
    torch.testing.assert_close(exact.layer.matrix()[:, live], p[:, live])


def test_residual_site_stitches_the_stream_and_is_exact(resmlp64, digits64):
    twin, elements = transformed_resmlp(resmlp64, torch.Generator().manual_seed(4))
    x = digits64.test.tensors[0]
    torch.testing.assert_close(twin(x), resmlp64(x))
    r = stitch(resmlp64, twin, "act1", layer="perm_scale", data=digits64, config=_cfg(epochs=0))
    assert r.residual_streams == ["act0"] and list(r.layers) == ["act1", "act0"]
    assert list(r.feature_errors) == ["act1", "act0"] and max(r.feature_errors.values()) < 1e-12
    torch.testing.assert_close(r.model(x), twin(x), rtol=1e-9, atol=1e-9)
    assert r.penalty == 0.0
    for site in ("act1", "act0"):
        live = _live(twin, digits64, site)
        assert torch.equal(r.layers[site].perm[live], elements[site][0][live])
    # Without the stream stitch, A's raw stream would leak into B's skip path: not the same model.
    leak = r.model.back(r.layers["act1"](r.model.front(x)[0]), r.model.front(x)[1])
    assert (leak - twin(x)).abs().max() > 1e-3
    with pytest.raises(ResidualSiteError):
        stitch(resmlp64, twin, "act1", layer="perm_scale", data=digits64,
               config=_cfg(epochs=0, residual="error"))  # fmt: skip
    # A block-output site is the stream itself: one stitch, no refusal.
    out = stitch(resmlp64, twin, "act2", layer="perm_scale", data=digits64,
                 config=_cfg(epochs=0, residual="error"))  # fmt: skip
    assert out.residual_streams == [] and out.penalty == 0.0


def _mnist_like(n=96, size=8, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ds = torch.utils.data.TensorDataset
    return type("S", (), {"train": ds(x[:48], y[:48]), "val": ds(x[48:72], y[48:72]),
                          "test": ds(x[72:], y[72:])})()  # fmt: skip


@pytest.mark.parametrize(
    "arch,config,site,n_cut",
    [
        ("resnet20", dict(width=4, blocks_per_stage=1), "layer2.0.act1", 2),
        ("resnet20", dict(width=4, blocks_per_stage=1), "layer1.0.act2", 1),
        ("resnet18", dict(width=4), "layer4.1.act1", 2),
        ("vit", dict(dim=8, depth=2, heads=2, patch_size=4), "blocks.1.act", 2),
        ("myrtle_cnn", dict(width=4), "block3.act", 1),
    ],
)
def test_self_stitch_zoo_layouts(arch, config, site, n_cut):
    data = _mnist_like()
    m = models.build(arch, seed=0, in_channels=1, input_size=8, **config).eval()
    x = data.test.tensors[0]
    r = stitch(m, m, site, layer="full", data=data, config=_cfg(init="identity", epochs=0))
    assert len(r.layers) == n_cut
    torch.testing.assert_close(r.model(x), m(x))
    assert r.penalty == 0.0
    r = stitch(m, m, site, layer="auto", data=data, config=_cfg(epochs=0))
    assert r.kind == ("permutation" if arch == "vit" else "perm_scale")  # GELU vs ReLU
    assert all(lay.kind == r.kind for lay in r.layers.values())
    torch.testing.assert_close(r.model(x), m(x), rtol=1e-4, atol=1e-4)


def _snapshot(model):
    return {k: v.clone() for k, v in {**dict(model.named_parameters()),
                                      **dict(model.named_buffers())}.items()}  # fmt: skip


def test_frozen_models_are_bit_identical_after_training():
    data = _mnist_like(n=96, size=8)
    a = models.build("myrtle_cnn", seed=0, in_channels=1, input_size=8, width=4)
    b = models.build("myrtle_cnn", seed=1, in_channels=1, input_size=8, width=4)
    for m in (a, b):  # non-trivial BN running statistics
        m.train()
        with torch.no_grad():
            m(data.train.tensors[0] * 2 + 1)
    a.eval()
    b.train()  # a model handed over in train mode must be evaluated in eval mode anyway
    before_a, before_b = _snapshot(a), _snapshot(b)
    r = stitch(a, b, "block2.act", layer="full", data=data, config=_cfg(epochs=2, batch_size=16))
    for before, model in ((before_a, a), (before_b, b)):
        after = _snapshot(model)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert not a.training and b.training  # untouched, flags included
    back_buffers = dict(r.model.back.named_buffers())
    for name, buf in back_buffers.items():  # the copy of B inside the stitch did not drift either
        assert torch.equal(buf, before_b[name]), name
    assert len(r.history) == 3 and r.history[1]["train_loss"] is not None
    assert not r.model.back.training and not r.model.front.training
    r.model.train()
    assert not r.model.back.training and r.model.stitches.training


def test_training_improves_and_epoch_is_chosen_on_validation(digits):
    a = train_quick(TinyMLP(seed=0), digits)
    b = train_quick(TinyMLP(seed=1), digits, seed=1)
    r = stitch(
        a, b, "act1", layer="perm_scale", data=digits, config=_cfg(epochs=3, lr=1e-2, bias=True)
    )
    vals = [h["val_acc"] for h in r.history]
    assert r.val_acc == max(vals) and r.history[r.best_epoch]["val_acc"] == r.val_acc
    assert r.val_acc > r.history[0]["val_acc"]  # fine-tuning the scales and bias helped on val
    full = stitch(a, b, "act1", layer="full", data=digits, config=_cfg(epochs=2, lr=1e-2))
    assert full.penalty < 0.1


def test_birkhoff_solver_runs_and_rounds(digits):
    a = train_quick(TinyMLP(seed=0), digits)
    b = train_quick(TinyMLP(seed=1), digits, seed=1)
    r = stitch(a, b, "act1", layer="perm_scale", data=digits,
               config=_cfg(solver="birkhoff", epochs=2, batch_size=128))  # fmt: skip
    assert isinstance(r.layer, MonomialStitch) and r.solver == "birkhoff"
    assert sorted(r.layer.perm.tolist()) == list(range(24))
    assert len(r.history) == 3
    ident = stitch(a, a, "act1", layer="perm_scale", data=digits,
                   config=_cfg(solver="birkhoff", init="identity", epochs=0))  # fmt: skip
    assert ident.penalty == 0.0
    with pytest.raises(ValueError):
        stitch(a, b, "act1", layer="signed_perm", data=digits,
               config=_cfg(solver="birkhoff", epochs=0))  # fmt: skip


def test_same_seed_same_result_and_cache_is_transparent(mlp, digits):
    b = train_quick(TinyMLP(seed=1), digits, seed=1)
    cfg = _cfg(epochs=2, init="random", lr=1e-2)
    r1 = stitch(mlp, b, "act1", layer="full", data=digits, config=cfg)
    r2 = stitch(mlp, b, "act1", layer="full", data=digits, config=cfg)
    r3 = stitch(mlp, b, "act1", layer="full", data=digits,
                config=_cfg(epochs=2, init="random", lr=1e-2, cache_bytes=0))  # fmt: skip
    assert r1.history[-1]["val_loss"] == r2.history[-1]["val_loss"]
    torch.testing.assert_close(r1.layer.weight, r2.layer.weight, rtol=0, atol=0)
    torch.testing.assert_close(r1.layer.weight, r3.layer.weight)
    assert r1.penalty == r2.penalty == r3.penalty
    assert set(r1.timings) == {"features", "init", "train", "evaluate"}
    assert 0 < r1.fit_time_s <= r1.wall_time_s
    assert r1.to_dict()["fit_time_s"] == r1.fit_time_s


def test_lasso_reports_sparsity(mlp, digits):
    r = stitch(mlp, mlp, "act2", layer=("lasso", 0.05), data=digits, config=_cfg(epochs=2, lr=1e-2))
    assert 0.0 < r.sparsity <= 1.0
    assert r.kind == "lasso:0.05"


def test_bad_inputs(mlp, digits):
    with pytest.raises(UnknownSiteError):
        stitch(mlp, mlp, "act9", layer="full", data=digits, config=_cfg(epochs=0))
    with pytest.raises(KeyError):  # UnknownSiteError is a KeyError too
        stitch(mlp, mlp, "", layer="full", data=digits, config=_cfg(epochs=0))
    with pytest.raises(UnknownLayerKindError):
        stitch(mlp, mlp, "act1", layer="rotation", data=digits, config=_cfg(epochs=0))
    with pytest.raises(UnknownLayerKindError):
        stitch(mlp, mlp, "fc1", layer="auto", data=digits, config=_cfg(epochs=0))
    wide = TinyMLP(widths=(20, 16))
    with pytest.raises(ShapeError):
        stitch(mlp, wide, "act1", layer="perm_scale", data=digits, config=_cfg(epochs=0))
    r = stitch(mlp, wide, "act1", layer="full", data=digits, config=_cfg(epochs=0))
    assert r.layer.matrix().shape == (20, 24)  # GL between widths is fine
    with pytest.raises(ValueError):
        StitchConfig(solver="sinkhorn")
    with pytest.raises(ValueError):
        stitch(mlp, mlp, "act1", layer="full", data=(digits.train, None, digits.test),
               config=_cfg(epochs=1))  # fmt: skip


def test_float64_and_digits_fixture_sanity():
    d = digits_splits(torch.float64)
    assert d.train.tensors[0].dtype == torch.float64
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    x_tr = set(map(tuple, d.train.tensors[0].flatten(1).tolist()[:50]))
    assert not x_tr & set(map(tuple, d.test.tensors[0].flatten(1).tolist()))
    _ = TinyResMLP


@pytest.mark.parametrize("layer", ["perm_scale", "full"])
@pytest.mark.parametrize("site", ["layer1.0.act1", "layer2.0.act1", "layer3.0.act1"])
def test_resnet_residual_site_with_symmetry_transformed_copy_is_exact(site, layer):
    """ResNet-20 (option-A shortcuts, BN in eval) and a copy moved by random G_ReLU elements at
    every site (``intertwiner.symmetry``): stitching inside a residual branch also stitches the
    block's input stream, and the stitched model equals the copy, without training. ``full``:
    the two closed-form least-squares fits (site and stream, each fitted alone) are exact too, so
    the site and stream stitches are wired to the right tensors and fitted on B's eval features."""
    symmetry = pytest.importorskip("intertwiner.symmetry")
    raw = _mnist_like(n=96, size=8)
    ds = torch.utils.data.TensorDataset
    data = type("S", (), {k: ds(getattr(raw, k).tensors[0].double(), getattr(raw, k).tensors[1])
                          for k in ("train", "val", "test")})()  # fmt: skip
    m = models.build("resnet20", seed=0, in_channels=1, input_size=8, width=4, blocks_per_stage=1)
    m = m.double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1, generator=gen)
                mod.running_var.uniform_(0.5, 2.0, generator=gen)
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.uniform_(-0.2, 0.2, generator=gen)
    x = data.test.tensors[0]
    spec = symmetry.trace(m, x[:2])
    twin = symmetry.apply(m, spec, symmetry.random_elements(spec, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(twin(x), m(x))
    r = stitch(m, twin, site, layer=layer, data=data, config=_cfg(epochs=0, ridge=1e-12))
    assert len(r.residual_streams) == 1
    assert list(r.feature_errors) == [r.site, *r.residual_streams]  # the site, then the stream
    assert r.feature_errors[r.site] == r.feature_error
    # module names, as models.sites and trace give them (not fx node names like "stem_act")
    assert all(s in dict(m.named_modules()) for s in r.residual_streams), r.residual_streams
    assert max(r.feature_errors.values()) < (1e-12 if layer == "perm_scale" else 1e-6)
    tol = 1e-10 if layer == "perm_scale" else 1e-5
    torch.testing.assert_close(r.model(x), twin(x), rtol=tol, atol=tol)
    assert r.penalty == 0.0
    front = r.model.front(x)
    leak = r.model.back(r.layers[r.site](front[0]), front[1])  # raw stream into B
    assert (leak - twin(x)).abs().max() > 1e-3


def test_auto_init_samples_stops_early_and_stays_exact(mlp64, digits64):
    twin, elements = transformed_mlp(mlp64, torch.Generator().manual_seed(1))
    n = len(digits64.train)
    auto = stitch(mlp64, twin, "act1", layer="perm_scale", data=digits64,
                  config=_cfg(epochs=0, batch_size=128, init_samples="auto"))  # fmt: skip
    every = stitch(mlp64, twin, "act1", layer="perm_scale", data=digits64,
                   config=_cfg(epochs=0, batch_size=128, init_samples=None))  # fmt: skip
    assert every.init_samples == n
    # two checks (256, then 512 inputs) agree on an exact twin: stop there
    assert 2 * AUTO_INIT_MIN <= auto.init_samples < n
    assert torch.equal(auto.layer.perm, every.layer.perm)
    live = _live(twin, digits64, "act1")
    assert torch.equal(auto.layer.perm[live], elements["act1"][0][live])
    torch.testing.assert_close(
        auto.layer.scale.detach()[live], elements["act1"][1][live], rtol=1e-6, atol=1e-6
    )
    assert auto.penalty == 0.0


def test_auto_init_samples_only_for_match(mlp, digits):
    n = len(digits.train)
    r = stitch(mlp, mlp, "act1", layer="full", data=digits,
               config=_cfg(epochs=0, init_samples="auto"))  # fmt: skip
    assert r.init_samples == n  # closed forms use every input
    r = stitch(mlp, mlp, "act1", layer="perm_scale", data=digits,
               config=_cfg(epochs=0, solver="birkhoff", init_samples="auto"))  # fmt: skip
    assert r.init_samples is None  # birkhoff computes no statistics
    r = stitch(mlp, mlp, "act1", layer="perm_scale", data=digits,
               config=_cfg(epochs=0, init_samples=300))  # fmt: skip
    assert r.init_samples == 512  # whole batches (256) until the limit is reached


def test_auto_init_samples_runs_on_while_the_assignment_moves(mlp, digits):
    other = train_quick(TinyMLP(seed=5), digits, seed=5)
    n = len(digits.train)
    r = stitch(mlp, other, "act1", layer="perm_scale", data=digits,
               config=_cfg(epochs=0, batch_size=128, init_samples="auto", auto_tol=0.0))  # fmt: skip
    every = stitch(mlp, other, "act1", layer="perm_scale", data=digits,
                   config=_cfg(epochs=0, batch_size=128, init_samples=None))  # fmt: skip
    assert r.init_samples > 2 * AUTO_INIT_MIN  # unrelated models: no early agreement at tol 0
    if r.init_samples == n:
        assert torch.equal(r.layer.perm, every.layer.perm)


@pytest.mark.parametrize("bad", [0, -3, "all", 1.5])
def test_bad_init_samples(bad):
    with pytest.raises(ValueError, match="init_samples"):
        StitchConfig(init_samples=bad)


def test_channels_last_is_the_same_function():
    data = _mnist_like(n=96, size=8)
    a = models.build("myrtle_cnn", seed=0, in_channels=1, input_size=8, width=4).eval()
    b = models.build("myrtle_cnn", seed=1, in_channels=1, input_size=8, width=4).eval()
    x = data.test.tensors[0]
    runs = [stitch(a, b, "block3.act", layer="perm_scale", data=data,
                   config=_cfg(epochs=1, lr=1e-2, channels_last=cl)) for cl in (True, False)]  # fmt: skip
    assert torch.equal(runs[0].layer.perm, runs[1].layer.perm)
    torch.testing.assert_close(runs[0].model(x), runs[1].model(x), rtol=1e-4, atol=1e-4)
    assert runs[0].acc_a == runs[1].acc_a and runs[0].acc_b == runs[1].acc_b
    assert next(a.parameters()).is_contiguous()  # the caller's models are not converted


def test_default_recipes_resolve_per_kind():
    from intertwiner.stitching._fit import resolve_config

    ours = resolve_config(StitchConfig(), "perm_scale")
    assert (ours.epochs, ours.lr) == (2, 1e-2)
    paper = resolve_config(StitchConfig(solver="birkhoff"), "perm_scale")
    assert (paper.epochs, paper.lr) == (20, 1e-3)  # the paper's recipe
    # the solver applies to monomial kinds only: a full layer keeps our recipe
    assert resolve_config(StitchConfig(solver="birkhoff"), "full").epochs == 2
    assert resolve_config(StitchConfig(init="random"), "full").epochs == 20
    explicit = resolve_config(StitchConfig(solver="birkhoff", epochs=3, lr=0.5), "perm_scale")
    assert (explicit.epochs, explicit.lr) == (3, 0.5)


def test_result_records_the_resolved_recipe(mlp, digits):
    r = stitch(mlp, mlp, "act1", layer="perm_scale", data=digits, config=_cfg(epochs=None))
    assert (r.epochs, r.lr) == (2, 1e-2)
    assert [h["epoch"] for h in r.history] == [0, 1, 2]


def test_stitch_sites_named_like_symmetry_sites():
    """A stitch can sit at the k-th call of a reused module (``relu#2``) or at a functional call,
    as ``symmetry.trace`` and ``features.capture`` name them: with B = A the stitched model is A."""
    from intertwiner.models.reference import ReusedActivations
    from intertwiner.stitching._splice import build_back, build_front, find_cut, trace

    torch.manual_seed(0)
    model = ReusedActivations().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    functional = [n.name for n in trace(model, "a").graph.nodes if n.op == "call_function"]
    for at in ("relu#1", "relu#2", functional[0]):
        gm = trace(model, at)
        cut = find_cut(gm, at)
        front, back = build_front(gm, cut), build_back(gm, at, cut)
        out = back(*front(x))
        torch.testing.assert_close(out, model(x))
        assert front(x)[0].shape[-1] == {"relu#1": 4, "relu#2": 5}.get(at, 6)


def test_lasso_at_its_documented_lambda_makes_zeros(mlp, digits):
    """lam = 1e-3 (the default) must do something: the proximal step is taken in Adam's metric,
    so the L1 term makes exact zeros (the plain lr * lam threshold left sparsity near 0.0)."""
    cfg = StitchConfig(init="random", progress=False, seed=0)
    plain = stitch(mlp, mlp, "act2", layer=("lasso", 0.0), data=digits, config=cfg)
    lasso = stitch(mlp, mlp, "act2", layer=("lasso", 1e-3), data=digits, config=cfg)
    assert lasso.sparsity >= plain.sparsity + 0.1, (plain.sparsity, lasso.sparsity)
    assert lasso.penalty < 0.05  # still a good stitch


@pytest.mark.parametrize(
    ("sizes", "culprit"), [((16, 16), "model A"), ((8, 16), "model B")], ids=["A", "B"]
)
def test_data_of_the_wrong_size_is_refused_naming_the_model_and_the_shape(sizes, culprit):
    """Models built for 16 x 16 inputs, data of 8 x 8: myrtle_cnn's convolutions run, its pooling
    window does not fit; torch's RuntimeError from inside must become a ShapeError naming the
    model that cannot take the data and the data's shape (issue 27)."""
    from torch.utils.data import TensorDataset

    a, b = (
        models.build("myrtle_cnn", width=2, in_channels=1, input_size=s, seed=k)
        for k, s in enumerate(sizes)
    )
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(12, 1, 8, 8, generator=g), torch.arange(12) % 10)
    with pytest.raises(ShapeError) as err:
        stitch(a, b, models.sites(a)[0], layer="full", data=(ds, ds, ds), config=_cfg(epochs=0))
    msg = str(err.value)
    assert f"stitch: {culprit} could not run on the input of shape (batch, 1, 8, 8)" in msg
    assert "expects (N, 1, 16, 16)" in msg and "Output size is too small" in msg
    assert isinstance(err.value.__cause__, RuntimeError)  # torch's error is chained
