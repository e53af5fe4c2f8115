"""pairwise: K x K matrices equal to the K^2 one-shot calls, each model prepared once."""

import importlib

import numpy as np
import pytest
import torch

from intertwiner.errors import InvalidInputError, InvalidOptionError, MemoryBudgetError
from intertwiner.metrics import Pairwise, metric, pairwise

from .conftest import relu_features

# The package exports functions of the same names as these modules.
gc_module = importlib.import_module("intertwiner.metrics.group_cka")
pw_module = importlib.import_module("intertwiner.metrics.pairwise")

K = 8
LAYERS = {"fc": (24, 5), "conv": (24, 3, 2, 2), "tok": (24, 3, 4), "wide": (24, 30)}
SPECS = [
    "cka",
    "cka_debiased",
    "rbf_cka",
    "group_cka",
    "procrustes_similarity:positive_monomial",
    "procrustes_distance:orthogonal",
]


def zoo(k=K, layers=LAYERS):
    """K feature sets sharing a component, so that values are away from 0."""
    base = {la: relu_features(s, 100 + i) for i, (la, s) in enumerate(layers.items())}
    return [
        {
            la: base[la] + 0.7 * relu_features(s, 10 * m + i)
            for i, (la, s) in enumerate(layers.items())
        }
        for m in range(k)
    ]


@pytest.mark.parametrize("spec", SPECS)
def test_pairwise_equals_every_pair_and_prepares_each_model_once(spec, monkeypatch):
    sets = zoo()
    calls = {"model": 0, "layer": 0, "kernel": 0}
    feats_of, prep, kern = pw_module._features_of, pw_module._prepare_layer, gc_module.kernel

    def counted_features(*a, **kw):  # one model's features: its one preprocessing pass
        calls["model"] += 1
        return feats_of(*a, **kw)

    def counted_prep(*a, **kw):
        calls["layer"] += 1
        return prep(*a, **kw)

    def counted_kernel(*a, **kw):
        calls["kernel"] += 1
        return kern(*a, **kw)

    monkeypatch.setattr(pw_module, "_features_of", counted_features)
    monkeypatch.setattr(pw_module, "_prepare_layer", counted_prep)
    monkeypatch.setattr(gc_module, "kernel", counted_kernel)
    res = pairwise(sets, spec, progress=False)
    assert calls["model"] == K  # one preprocessing pass per model
    assert calls["layer"] == K * len(LAYERS)
    assert calls["kernel"] == (K * len(LAYERS) if spec == "group_cka" else 0)
    m = metric(spec)
    procrustes = spec.startswith("procrustes")
    for la in LAYERS:
        for lb in LAYERS:
            got = res.matrix(la, lb)
            assert got.shape == (K, K)
            for i in range(K):
                for j in range(K):
                    x, y = sets[i][la], sets[j][lb]
                    if (
                        procrustes
                        and x.shape[2:] != y.shape[2:]
                        or procrustes
                        and x.dim() != y.dim()
                    ):
                        assert np.isnan(got[i, j])
                        continue
                    assert got[i, j] == pytest.approx(m(x, y), rel=1e-9, abs=1e-12), (la, lb, i, j)
    if procrustes:
        assert res.notes  # the layout mismatches say why they are NaN


def test_single_layer_tensors_and_names():
    sets = [relu_features((30, 6), i) for i in range(3)]
    res = pairwise({"a": sets[0], "b": sets[1], "c": sets[2]}, "cka", progress=False)
    assert res.names == ["a", "b", "c"]
    assert np.allclose(np.diag(res.matrix()), 1.0)
    assert np.allclose(res.matrix(), res.matrix().T, atol=1e-12)
    d = res.to_dict()
    assert d["matrices"][0]["layer_a"] == "features"


def test_models_are_run_once_each_over_the_data():
    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
        for _ in range(3)
    ]
    x = torch.randn(40, 4)
    res = pairwise(models, "cka", layers=["1", "2"], data=x, batch_size=16, progress=False)
    feats = [{"1": m[:2](x).detach(), "2": m(x).detach()} for m in models]
    for i in range(3):
        for j in range(3):
            assert res.matrix("1", "2")[i, j] == pytest.approx(
                metric("cka")(feats[i]["1"], feats[j]["2"]), rel=1e-6
            )


def test_process_pool_gives_the_same_matrices():
    sets = zoo(3, {"fc": (20, 4)})
    one = pairwise(sets, "procrustes_similarity:positive_monomial", progress=False)
    pool = pairwise(sets, "procrustes_similarity:positive_monomial", progress=False, workers=2)
    assert np.array_equal(one.matrix(), pool.matrix())


def test_same_layer_only_and_bad_inputs():
    sets = zoo(3, {"fc": (20, 4), "g": (20, 3)})
    res = pairwise(sets, "cka", cross_layers=False, progress=False)
    assert set(res.matrices) == {("fc", "fc"), ("g", "g")}
    with pytest.raises(InvalidInputError):
        pairwise(sets[:1], "cka", progress=False)
    with pytest.raises(InvalidOptionError, match="different layers"):
        pairwise([sets[0], {"fc": sets[1]["fc"]}], "cka", progress=False)
    with pytest.raises(InvalidOptionError, match="data="):
        pairwise([torch.nn.Linear(2, 2)] * 2, "cka", layers=[""], progress=False)
    with pytest.raises(MemoryBudgetError, match="max_samples"):
        pairwise(sets, "group_cka", progress=False, memory_limit=100)


@pytest.mark.parametrize("embedding", ["dendrogram", "mds"])
def test_plot_writes_a_png(tmp_path, embedding):
    import matplotlib

    backend = matplotlib.get_backend()
    res = pairwise(zoo(4, {"fc": (20, 4)}), "cka", progress=False, names=list("abcd"))
    path = tmp_path / "m.png"
    res.plot(path, embedding=embedding)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    assert isinstance(res, Pairwise)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", SPECS)
def test_metrics_run_on_the_features_device(device, spec):
    sets = [{la: t.to(device) for la, t in s.items()} for s in zoo(2, {"c": (12, 3, 2, 2)})]
    want = metric(spec)(sets[0]["c"].cpu(), sets[1]["c"].cpu())
    assert metric(spec)(sets[0]["c"], sets[1]["c"]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    res = pairwise(sets, spec, progress=False)
    assert res.matrix()[0, 1] == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.timeout(120)  # a hang fails here instead of stalling the suite
def test_a_killed_worker_is_a_clear_error_within_seconds_never_a_hang(tmp_path):
    """A pool worker killed (SIGKILL, as the OOM killer does) in the middle of a pair: a
    WorkerDiedError saying what to do, a few seconds after the death (issue 27)."""
    import dataclasses
    import time

    from intertwiner.errors import WorkerDiedError
    from intertwiner.runners.probe import KillingOptions

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(20, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    stamp = tmp_path / "died"
    m = dataclasses.replace(metric("cka"), options=KillingOptions(stamp=stamp))
    with pytest.raises(WorkerDiedError, match="worker process died.*workers=0") as err:
        pairwise(feats, m, workers=2, progress=False)
    noticed = time.time()
    died = min(float(t) for t in stamp.read_text().split())
    print(f"error {noticed - died:.2f} s after the worker died")
    assert noticed - died < 10.0, noticed - died
    assert "BrokenProcessPool" in type(err.value.__cause__).__name__
    # the same call without workers is fine: only the worker processes were killed
    assert pairwise(feats, metric("cka"), workers=0, progress=False).matrix().shape == (3, 3)
