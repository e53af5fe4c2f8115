"""merge(models, reference="mean") (MergeMany), align_to_mean, Ensemble and merge_report."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import TinyMLP, build_zoo
from torch import nn

from intertwiner.alignment import (
    Ensemble,
    align_to_mean,
    merge,
    merge_report,
)
from intertwiner.errors import InvalidOptionError
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.spec import permutation_part


def _copies(model, x, k, seed=0):
    spec = trace(model, x)
    gens = [torch.Generator().manual_seed(seed + 100 + i) for i in range(k)]
    return [apply(model, spec, random_elements(spec, g)) for g in gens], spec


def _relative(out, ref):
    out, ref = out.detach(), ref.detach()
    return float((out - ref).abs().max() / ref.abs().max())


def _perm_only(elements):
    return {k: permutation_part(g) for k, g in elements.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("act", "keep"),
    [(nn.Tanh, "element"), (nn.ReLU, "permutation part")],
)
def test_merge_of_k_transformed_copies_is_the_model(dtype, act, keep):
    """Every copy moved by a random element of its spec (tanh: signed permutations; ReLU: the
    permutation part, see the xfail below for the scales): the mean merge must undo them all."""
    model = TinyMLP(act=act, seed=3, dtype=dtype).eval()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    spec = trace(model, x)
    els = [random_elements(spec, torch.Generator().manual_seed(100 + i)) for i in range(4)]
    copies = [apply(model, spec, _perm_only(e) if keep != "element" else e) for e in els]
    with torch.no_grad():
        assert _relative(Ensemble(copies, "logits")(x), model(x)) < 1e-5  # copies: the model
        naive = merge(copies, method=None)
        assert _relative(naive(x), model(x)) > 1e-2  # plain averaging of the copies is not
        # signed copies need the full group; permuted copies are undone by either
        for group in ("full",) if keep == "element" else ("full", "permutation"):
            merged = merge(copies, spec=spec, group=group)
            assert _relative(merged(x), model(x)) < (1e-6 if dtype == torch.float64 else 1e-5)


def test_merge_of_rescaled_relu_copies_is_the_model():
    """Copies with random permutations *and* positive scales: the balanced scale rule moves every
    copy to its orbit's least-norm point, so only the permutations are left to match."""
    model = TinyMLP(act=nn.ReLU, seed=3, dtype=torch.float64).eval()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    copies, spec = _copies(model, x, 4)
    merged = merge(copies, spec=spec, max_iter=5)
    with torch.no_grad():
        assert _relative(merged(x), model(x)) < 1e-6


def test_merge_of_k_transformed_copies_of_a_cnn():
    model, x = build_zoo("myrtle_cnn", "relu", seed=0)
    spec = trace(model, x)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    copies = [apply(model, spec, _perm_only(random_elements(spec, g))) for g in gens]
    merged = merge(copies, spec=spec, reference="mean")
    with torch.no_grad():
        assert _relative(merged(x), model(x)) < 1e-6


def _one_site(seed, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), act(), nn.Linear(12, 10)).double()


@pytest.mark.parametrize(("act", "group"), [(nn.ReLU, "permutation"), (nn.Tanh, "full")])
def test_two_model_mean_merge_is_a_reference_merge(act, group):
    """With one site, weight matching is solved exactly (Hungarian), and for norm-preserving
    groups (permutations, signed permutations) aligning B to A is aligning A to B inverted:
    the mean merge of two models is the reference merge to either of them (outputs: the merges
    to A and to B are the same function, (A + gB) / 2 = g (g^-1 A + B) / 2)."""
    a, b = _one_site(0, act), _one_site(1, act)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = merge([a, b], group=group, example_input=x)(x)
    refs = [merge([a, b], group=group, reference=r, example_input=x)(x) for r in (0, 1)]
    naive = merge([a, b], method=None)(x)
    assert _relative(refs[0], naive) > 1e-2  # the alignment moved B
    assert _relative(refs[0], refs[1]) < 1e-9
    assert _relative(mean, refs[0]) < 1e-9
    # "first" is reference 0
    first = merge([a, b], group=group, reference="first", example_input=x)(x)
    assert torch.equal(first, refs[0])


def test_align_to_mean_lowers_the_spread_and_keeps_functions():
    models = [TinyMLP(seed=s, dtype=torch.float64).eval() for s in range(3)]
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = align_to_mean(models, group="permutation", example_input=x, max_iter=10, seed=1)
    assert res.rounds >= 1
    assert all(b <= a * (1 + 1e-12) for a, b in zip(res.history, res.history[1:], strict=False))
    for m, aligned, els in zip(models, res.models, res.elements, strict=True):
        assert _relative(aligned(x), m(x)) < 1e-12  # each is a transformed copy of its input
        if els:  # the recorded elements reproduce the aligned copy
            again = apply(m, res.spec, els)
            assert _relative(again(x), aligned(x)) < 1e-12
    assert "ManyAlignment(models=3" in repr(res)


def test_reference_and_weights_are_checked():
    a, b = _one_site(0), _one_site(1)
    x = torch.randn(4, 64, dtype=torch.float64)
    for bad in ("middle", 2, -3, 1.0, True):
        with pytest.raises(InvalidOptionError, match="reference"):
            merge([a, b], reference=bad, example_input=x)
    with pytest.raises(InvalidOptionError, match=">= 0"):
        merge([a, b], weights=[2.0, -1.0], example_input=x)
    with pytest.raises(InvalidOptionError, match="at least 2"):
        align_to_mean([a], example_input=x)


def test_ensemble_matches_textbook_average():
    a, b, c = _one_site(0), _one_site(1), _one_site(2)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    probs = torch.stack([m(x).softmax(-1) for m in (a, b, c)]).mean(0)
    out = Ensemble([a, b, c])(x)
    torch.testing.assert_close(out.exp(), probs)
    logits = Ensemble([a, b, c], "logits")(x)
    torch.testing.assert_close(logits, (a(x) + b(x) + c(x)) / 3)
    with pytest.raises(InvalidOptionError):
        Ensemble([a], "votes")


def test_merge_report_accuracies():
    a, b = _one_site(0), _one_site(1)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    y = b(x).argmax(1)  # labels b gets right
    data = torch.utils.data.TensorDataset(x, y)
    rep = merge_report(b, [a, b], data)
    assert rep.inputs[1]["accuracy"] == 1.0 == rep.merged["accuracy"]
    ens = Ensemble([a, b])(x)
    assert rep.ensemble["accuracy"] == float((ens.argmax(1) == y).double().mean())
    nll = float(-ens.detach().gather(1, y[:, None]).mean())
    assert rep.ensemble["loss"] == pytest.approx(nll, rel=1e-12)
    assert rep.fraction_of_ensemble == pytest.approx(1.0 / rep.ensemble["accuracy"])
    assert "ensemble (probabilities)" in rep.table()
    assert rep.to_dict()["inputs"][1]["accuracy"] == 1.0
