"""Partial zipping (first k sites merged, the rest side by side) and REPAIR after zipping."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import TinyMLP, build_zoo
from torch import nn

from intertwiner.alignment import zip_models
from intertwiner.errors import InvalidOptionError, ShapeError
from intertwiner.symmetry import apply, random_elements, trace


def _inputs(shape, n=256, seed=0, dtype=torch.float64):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


def _trained_bn(cnn: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics other than (0, 1): folding BatchNorm has something to do."""
    cnn.train()
    with torch.no_grad():
        cnn(x)
    return cnn.eval()


def _cnn(key: str, seed: int, x: torch.Tensor) -> nn.Module:
    cnn = build_zoo(key, "relu", seed=seed)[0]
    return _trained_bn(cnn, x) if key == "myrtle_cnn" else cnn.eval()


def _cnn_inputs():
    return _inputs((2, 8, 8), n=64, seed=1)  # build_zoo's myrtle CNNs read 2 x 8 x 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key", ["myrtle_cnn_nobn", "myrtle_cnn"])
def test_partial_zip_of_a_cnn_with_a_transformed_copy_is_the_cnn(key, dtype):
    """Every k: the trunk of merged channels, the rest side by side (block-diagonal), averaged
    heads: A's function (the fold is exact; float64 to round-off)."""
    x = _cnn_inputs()
    cnn = _cnn(key, 0, x).to(dtype)
    x = x.to(dtype)
    spec = trace(cnn, x[:4])
    other = apply(cnn, spec, random_elements(spec, torch.Generator().manual_seed(3)))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    depth = len(spec.sites)
    with torch.no_grad():
        ref = cnn(x)
        for k in range(depth + 1):
            res = zip_models(cnn, other, x, k=k, heads="average")
            assert res.k == k and res.depth == depth and len(res.sites) == k
            assert _rel(res.model(x), ref) < tol, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["mlp", "myrtle_cnn"])
def test_repair_of_a_zip_with_a_transformed_copy_is_the_model(case, dtype):
    """Each merged channel is its partners' exact (rescaled) copy, so its statistics already are
    the targets and REPAIR folds the identity: still A's function at every k. (Every unit here
    has a live partner: a channel dead on the data correlates with nothing and may be paired
    with any other dead one, whose pre-activation differs.)"""
    if case == "mlp":
        net, x = TinyMLP(seed=1, dtype=dtype).eval(), _inputs((1, 8, 8), dtype=dtype)
    else:
        x = _cnn_inputs()
        net, x = _cnn(case, 0, x).to(dtype), x.to(dtype)
    spec = trace(net, x[:4])
    other = apply(net, spec, random_elements(spec, torch.Generator().manual_seed(3)))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    with torch.no_grad():
        for k in range(1, len(spec.sites) + 1):
            res = zip_models(net, other, x, k=k, heads="average", repair=True)
            assert all(s.within == 0 for s in res.sites)
            assert _rel(res.model(x), net(x)) < tol, k


def test_k0_is_the_ensemble_and_full_k_is_the_default_zip():
    x = _cnn_inputs()
    a, b = _cnn("myrtle_cnn", 0, x), _cnn("myrtle_cnn", 1, x)
    depth = len(trace(a, x[:4]).sites)
    with torch.no_grad():
        ens = zip_models(a, b, x, k=0).model(x)
        assert torch.equal(ens, torch.cat([a(x), b(x)], dim=1))  # the same outputs, bit for bit
        full = zip_models(a, b, x, k=depth).model(x)
        assert torch.equal(full, zip_models(a, b, x).model(x))
        assert not torch.allclose(full, ens, atol=1e-3)
        for k in range(1, depth):  # between: side-by-side channels widen the layers after k
            out = zip_models(a, b, x, k=k).model(x)
            assert out.shape == ens.shape and not torch.allclose(out, ens, atol=1e-3)


def _textbook(a: TinyMLP, b: TinyMLP, res, x: torch.Tensor) -> torch.Tensor:
    """The zipped MLP's outputs from its merge/unmerge matrices, by hand: trunk layer l is
    ``act(M_l [W_A,l U_A,l-1; W_B,l U_B,l-1] m + M_l [b_A,l; b_B,l])``; after site k each model
    runs its own layers, the first reading ``U_A,k m`` (``U_B,k m``); logits side by side."""
    la = [a.fc1, a.fc2, a.head]
    lb = [b.fc1, b.fc2, b.head]
    m = x.flatten(1)
    ua = ub = None
    for site, fa, fb in zip(res.sites, la, lb, strict=False):
        wa = fa.weight if ua is None else fa.weight @ ua
        wb = fb.weight if ub is None else fb.weight @ ub
        w = site.merge @ torch.cat([wa, wb])
        bias = site.merge @ torch.cat([fa.bias, fb.bias])
        m = torch.relu(m @ w.T + bias)
        n = site.merge.shape[0]
        ua, ub = site.unmerge[:n], site.unmerge[n:]
    outs = []
    for layers, u in ((la, ua), (lb, ub)):
        h = m if u is None else m @ u.T
        for i, layer in enumerate(layers[res.k :]):
            h = layer(h)
            if res.k + i < len(layers) - 1:
                h = torch.relu(h)
        outs.append(h)
    return torch.cat(outs, dim=1)


def test_zipped_mlp_is_the_textbook_formula_at_every_k():
    a, b = TinyMLP(seed=1, dtype=torch.float64).eval(), TinyMLP(seed=2, dtype=torch.float64).eval()
    x = _inputs((1, 8, 8))
    with torch.no_grad():
        for k in (0, 1, 2):
            res = zip_models(a, b, x, k=k)
            torch.testing.assert_close(
                res.model(x), _textbook(a, b, res, x), rtol=1e-12, atol=1e-12
            )


def _preacts(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input of each named activation module as (samples, channels) rows."""
    out, handles = {}, []
    for n in names:

        def hook(_m, inp, n=n):
            z = inp[0]
            out[n] = z.movedim(1, -1).reshape(-1, z.shape[1]) if z.dim() > 2 else z

        handles.append(model.get_submodule(n).register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


@pytest.mark.parametrize("case", ["mlp", "myrtle_cnn_nobn", "myrtle_cnn"])
def test_repair_gives_every_channel_its_target_statistics(case):
    """After zipping with repair, on the data it was fitted on, every pre-activation channel has
    mean ``M @ [mean_A; mean_B]`` and std ``|M| @ [std_A; std_B]`` at a zipped site (merge matrix
    M), and A's and B's own statistics side by side at a site kept as two heads."""
    if case == "mlp":
        a, b = TinyMLP(seed=1, dtype=torch.float64).eval(), TinyMLP(seed=2, dtype=torch.float64)
        b = b.eval()
        x = _inputs((1, 8, 8))
    else:
        x = _cnn_inputs()
        a, b = _cnn(case, 0, x), _cnn(case, 1, x)
    spec = trace(a, x[:4])
    acts = [s.activations[0] for s in spec.sites]
    ref_a, ref_b = _preacts(a, acts, x), _preacts(b, acts, x)
    for k in (1, len(acts)):
        plain = zip_models(a, b, x, k=k)
        res = zip_models(a, b, x, k=k, repair=True)
        got_plain, got = _preacts(plain.model, acts, x), _preacts(res.model, acts, x)
        merges = {s.name: s.merge for s in res.sites}
        for site, act in zip(spec.sites, acts, strict=True):
            mean = torch.cat([ref_a[act].mean(0), ref_b[act].mean(0)])
            std = torch.cat([ref_a[act].std(0, correction=0), ref_b[act].std(0, correction=0)])
            if site.name in merges:
                mean, std = merges[site.name] @ mean, merges[site.name].abs() @ std
            torch.testing.assert_close(got[act].mean(0), mean, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(got[act].std(0, correction=0), std, rtol=1e-9, atol=1e-9)
        deep = acts[-1]  # without repair the merged channels lose spread (what repair restores)
        assert not torch.allclose(
            got_plain[deep].std(0, correction=0), got[deep].std(0, correction=0)
        )


def test_partial_zip_refusals():
    x = _inputs((1, 8, 8), dtype=torch.float32)
    a, b = TinyMLP(seed=1), TinyMLP(seed=2)
    with pytest.raises(InvalidOptionError, match="k=3"):
        zip_models(a, b, x, k=3)
    with pytest.raises(InvalidOptionError, match="k"):
        zip_models(a, b, x, k=-1)
    c = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 3)).eval()
    with pytest.raises(ShapeError, match="average"):
        zip_models(c, a, x, k=0, heads="average")


def test_partially_zipped_zoo_model_round_trips_through_a_checkpoint(tmp_path):
    """A zoo CNN zipped at k < depth has wider layers than its config builds: the checkpoint
    records them, ``load`` rebuilds the architecture with those layers widened (same outputs,
    bit for bit), a re-save of the loaded model works, and editing the record is refused."""
    import json

    from intertwiner import checkpoints, models
    from intertwiner.errors import CheckpointError

    x = _cnn_inputs().float()
    a = models.build("myrtle_cnn", width=4, in_channels=2, input_size=8, batchnorm=False, seed=0)
    b = models.build("myrtle_cnn", width=4, in_channels=2, input_size=8, batchnorm=False, seed=1)
    res = zip_models(a, b, x, k=2, heads="concat")
    assert not hasattr(res.model, "intertwiner_config")
    path = checkpoints.save(res.model, tmp_path / "z.safetensors", {"dataset": "none"})
    meta = checkpoints.read_metadata(path)
    assert meta["kind"] == "built" and meta["widened"], meta
    loaded, _ = checkpoints.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
    assert loaded(x).shape[-1] == 20  # two heads of 10, concatenated
    again = checkpoints.save(loaded, tmp_path / "again.safetensors")
    assert checkpoints.read_metadata(again)["widened"] == meta["widened"]
    # a widened record that does not match the tensors, or an edited one, is refused
    side = checkpoints.sidecar(path)
    edited = json.loads(side.read_text())
    edited["widened"] = {}
    side.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError):
        checkpoints.load(path)
    plain = models.build("myrtle_cnn", width=4, in_channels=2, input_size=8, batchnorm=False)
    with pytest.raises(CheckpointError, match="tensor"):
        checkpoints.load(again, model=plain)
