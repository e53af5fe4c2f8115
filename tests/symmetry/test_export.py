"""Specs for other tools: Git Re-Basin's permutation spec, fed to a small re-implementation of its
weight matching (written here, from the paper's Algorithm 1 and its reference code), permutes a
model without changing its function; the JSON description is plain JSON with a schema key."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from tests._support.factories import TinyResMLP, build_zoo

from intertwiner.symmetry import trace
from intertwiner.symmetry.check import _run


# -- Git Re-Basin's weight matching, as its reference code does it ---------------------------------
def _permuted(ps, perm, k, params, except_axis=None):
    w = params[k]
    for axis, p in enumerate(ps["axes_to_perm"][k]):
        if axis != except_axis and p is not None:
            w = torch.index_select(w, axis, perm[p])
    return w


def weight_matching(ps, params_a, params_b, max_iter=100, seed=0):
    sizes = {p: params_a[axes[0][0]].shape[axes[0][1]] for p, axes in ps["perm_to_axes"].items()}
    perm = {p: torch.arange(n) for p, n in sizes.items()}
    names = list(perm)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        progress = False
        for p in rng.permutation(names):
            n = sizes[p]
            a = torch.zeros(n, n, dtype=torch.float64)
            for wk, axis in ps["perm_to_axes"][p]:
                w_a = params_a[wk].double().movedim(axis, 0).reshape(n, -1)
                w_b = _permuted(ps, perm, wk, params_b, except_axis=axis)
                a += w_a @ w_b.double().movedim(axis, 0).reshape(n, -1).T
            _, ci = linear_sum_assignment(a.numpy(), maximize=True)
            old = float(a[torch.arange(n), perm[p]].sum())
            new = float(a[torch.arange(n), torch.as_tensor(ci)].sum())
            progress = progress or new > old + 1e-12
            perm[p] = torch.as_tensor(ci)
        if not progress:
            break
    return perm


def _rebased(model_a, model_b, ps):
    sa, sb = model_a.state_dict(), model_b.state_dict()
    perm = weight_matching(ps, sa, sb)
    out = copy.deepcopy(model_b)
    out.load_state_dict({k: _permuted(ps, perm, k, sb) for k in sb})
    return out, perm


def _dist(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sum(float(((sa[k].double() - sb[k].double()) ** 2).sum()) for k in sa if "num_" not in k)


CASES = {
    "resmlp": lambda seed: (
        TinyResMLP(seed=seed, dtype=torch.float64).eval(),
        torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
    ),
    "myrtle_cnn": lambda seed: build_zoo("myrtle_cnn", "relu", seed=seed),
    "resnet18": lambda seed: build_zoo("resnet18", "relu", seed=seed),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rebasin_weight_matching_preserves_the_function(name):
    a, x = CASES[name](0)
    b, _ = CASES[name](1)
    spec = trace(b, x)
    ps = json.loads(json.dumps(spec.to_permutation_spec(b)))  # plain JSON survives a round trip
    assert ps["perm_to_axes"], ps["skipped"]
    assert set(ps["axes_to_perm"]) == set(b.state_dict())
    new_b, perm = _rebased(a, b, ps)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    ref = _run(b, x)
    assert float((_run(new_b, x) - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    assert _dist(a, new_b) < _dist(a, b)


def test_rebasin_recovers_a_permuted_copy():
    a, x = CASES["resmlp"](0)
    spec = trace(a, x)
    ps = spec.to_permutation_spec(a)
    gen = torch.Generator().manual_seed(1)
    perm = {
        p: torch.randperm(a.state_dict()[axes[0][0]].shape[axes[0][1]], generator=gen)
        for p, axes in ps["perm_to_axes"].items()
    }
    sa = a.state_dict()
    b = copy.deepcopy(a)
    b.load_state_dict({k: _permuted(ps, perm, k, sa) for k in sa})
    assert _dist(a, b) > 1e-2
    new_b, _ = _rebased(a, b, ps)
    assert _dist(a, new_b) <= 1e-24


def test_partial_sites_are_skipped_with_a_reason():
    model, x = build_zoo("resnet20", "relu")  # zero-padding shortcuts: sites on channel subsets
    spec = trace(model, x)
    ps = spec.to_permutation_spec()
    assert "layer2.0.shortcut.pad" in ps["skipped"]
    assert "part of the axis" in ps["skipped"]["layer2.0.shortcut.pad"]
    assert set(ps["perm_to_axes"]) | set(ps["skipped"]) == set(spec.names)
    # Without a model: only moved tensors, slots up to the last moved axis.
    for name, slots in ps["axes_to_perm"].items():
        assert slots[-1] is not None and name in model.state_dict()


def test_gpt2_stream_and_mlp_export_heads_skipped():
    T = pytest.importorskip("transformers")
    cfg = T.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(cfg).double().eval()
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    spec = trace(model, x)
    ps = spec.to_permutation_spec(model)
    assert "transformer.h.0.mlp.act" in ps["perm_to_axes"]
    assert any("heads" in s for s in ps["skipped"])
    # The tied embedding / head table: both names carry the stream's permutation.
    stream = next(s.name for s in spec.sites if s.kind == "stream")
    assert ps["axes_to_perm"]["lm_head.weight"][1] == stream
    assert ps["axes_to_perm"]["transformer.wte.weight"][1] == stream
    # A random permutation of every exported site keeps the function.
    gen = torch.Generator().manual_seed(2)
    sd = model.state_dict()
    perm = {
        p: torch.randperm(sd[axes[0][0]].shape[axes[0][1]], generator=gen)
        for p, axes in ps["perm_to_axes"].items()
    }
    new = copy.deepcopy(model)
    new.load_state_dict({k: _permuted(ps, perm, k, sd) for k in sd})
    ref = _run(model, x)
    assert float((_run(new, x) - ref).abs().max()) <= 1e-10 * float(ref.abs().max())


def test_json_description_has_a_schema_and_every_axis():
    model, x = build_zoo("vit", "gelu")
    spec = trace(model, x)
    doc = json.loads(json.dumps(spec.to_dict()))
    assert doc["schema"] == "intertwiner.symmetry-spec/1"
    sd = model.state_dict()
    for site in doc["sites"]:
        assert {"name", "kind", "width", "group", "actions"} <= set(site)
        assert site["group"]["family"] in (
            "permutation", "signed_permutation", "positive_monomial", "monomial",
            "orthogonal", "general_linear",
        )  # fmt: skip
        for a in site["actions"]:
            assert a["name"] in sd
            assert sd[a["name"]].shape[a["axis"]] == a["outer"] * a["n_total"] * a["inner"]
            assert a["kind"] in ("A", "P", "A^-T", "phi(A)^-T")
