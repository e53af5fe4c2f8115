"""canonicalize and fingerprint: orbit copies (random elements of the traced group) canonicalise to
the same weights (relative 1e-9 in float64), the canonical model computes the same function, the
result is a fixed point, and different trainings stay apart. Trained models with BatchNorm,
residual streams and attention, every zoo architecture and the Hugging Face models of the tests."""

from __future__ import annotations

import itertools

import pytest
import torch
from tests._support.factories import ZOO, TinyMLP, build_zoo, digits_splits, train_quick

from intertwiner import models
from intertwiner.errors import InvalidOptionError, ShapeError, UnverifiedSymmetryError
from intertwiner.groups import (
    GENERAL_LINEAR,
    ORTHOGONAL,
    IntertwinerGroup,
    KeyTerm,
    canonical_element,
)
from intertwiner.symmetry import apply, canonicalize, fingerprint, random_elements, trace
from intertwiner.symmetry.check import _run

F64 = torch.float64


def _tensors(model):
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def _rel_diff(a, b) -> float:
    """Largest relative difference over tensors (each relative to its largest entry)."""
    ta, tb = _tensors(a), _tensors(b)
    return max(
        float((ta[k].double() - tb[k].double()).abs().max())
        / max(float(ta[k].double().abs().max()), 1e-300)
        for k in ta
    )


def _orbit_check(model, x, seeds=(1, 2), tol=1e-9, spec=None):
    """canonical(g . model) == canonical(model) for random g; returns the canonical result."""
    spec = spec or trace(model, x)
    ref = canonicalize(model, spec, x)
    assert ref.complete, ref.table()
    assert ref.error is not None and ref.error <= 1e-9 + (spec.verified_tolerance or 0)
    for seed in seeds:
        g = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        moved = apply(model, spec, g)
        assert _rel_diff(model, moved) > 1e-3  # the copy really is elsewhere on the orbit
        got = canonicalize(moved, spec, x)
        assert _rel_diff(ref.model, got.model) <= tol, (seed, _rel_diff(ref.model, got.model))
    return ref


# -- trained models: BatchNorm, residual streams, attention ---------------------------------------
@pytest.fixture(scope="module")
def digits1():
    d = digits_splits(F64, n_train=300, n_val=50)
    return d


def _trained(arch, digits, seed=0, **cfg):
    model = models.build(arch, seed=seed, in_channels=1, input_size=8, **cfg).double()
    return train_quick(model, digits, steps=25, seed=seed)


TRAINED = {
    "mlp": ("mlp", {"widths": (12, 10)}),
    "myrtle_cnn": ("myrtle_cnn", {"width": 2}),  # BatchNorm
    "resnet20": ("resnet20", {"width": 2, "blocks_per_stage": 2}),  # streams, zero-pad shortcuts
    "resnet18": ("resnet18", {"width": 2}),  # projection shortcuts
    "vit": ("vit", {"dim": 8, "depth": 2, "heads": 2, "patch_size": 4}),  # attention, LayerNorm
}


@pytest.mark.parametrize("name", list(TRAINED))
def test_trained_orbit_canonicalises_to_one_point(name, digits1):
    arch, cfg = TRAINED[name]
    model = _trained(arch, digits1, **cfg)
    x = digits1.val.tensors[0][:16]
    ref = _orbit_check(model, x)
    # The canonical model computes the same function (an independent check of ref.error).
    out, out_c = _run(model, x), _run(ref.model, x)
    assert float((out - out_c).abs().max()) <= 1e-10 * float(out.abs().max())
    # A fixed point: canonicalising the canonical model changes nothing.
    again = canonicalize(ref.model, ref.spec, x)
    assert _rel_diff(ref.model, again.model) <= 1e-12


@pytest.mark.parametrize("name", ["myrtle_cnn", "vit"])
def test_different_trainings_stay_apart(name, digits1):
    arch, cfg = TRAINED[name]
    a = _trained(arch, digits1, seed=0, **cfg)
    b = _trained(arch, digits1, seed=1, **cfg)
    x = digits1.val.tensors[0][:16]
    ca, cb = canonicalize(a, example_input=x), canonicalize(b, example_input=x)
    assert _rel_diff(ca.model, cb.model) > 1e-2
    assert fingerprint(a, canonical=ca) != fingerprint(b, canonical=cb)


# -- every zoo architecture and activation -------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "power2", "leaky_relu"])
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_orbits(arch, activation):
    model, x = build_zoo(arch, activation)
    _orbit_check(model, x, seeds=(1,))


def test_float32_orbit_copies_agree_to_float32_round_off(digits1):
    model = _trained("resnet20", digits1, width=2, blocks_per_stage=2).float()
    x = digits1.val.tensors[0][:16].float()
    spec = trace(model, x)
    g = random_elements(spec, generator=torch.Generator().manual_seed(3))
    moved = apply(model, spec, g)
    ca, cb = canonicalize(model, spec, x), canonicalize(moved, spec, x)
    assert ca.complete and cb.complete
    assert _rel_diff(ca.model, cb.model) <= 1e-4
    assert next(ca.model.parameters()).dtype == torch.float32  # the input's dtype is kept
    assert fingerprint(model, canonical=ca) == fingerprint(moved, canonical=cb)


# -- brute force: every permutation of a small layer ---------------------------------------------
def test_every_permutation_of_a_small_layer_gives_the_same_canonical_model():
    model = TinyMLP(act=torch.nn.GELU, widths=(4, 3), dtype=F64)
    x = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    spec = trace(model, x)
    ref = canonicalize(model, spec, x).model
    site = spec.site("act1")
    for perm in itertools.permutations(range(4)):
        g = site.group.family.identity(4)
        g.perm = torch.tensor(perm)
        got = canonicalize(apply(model, spec, {"act1": g}), spec, x).model
        assert _rel_diff(ref, got) == 0.0, perm


# -- Hugging Face models --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet", "convnext"])
def test_hf_orbits(name):
    pytest.importorskip("transformers")
    from tests.symmetry.test_hf_models import MODELS

    torch.manual_seed(0)
    model, x = MODELS[name]()
    model = model.double().eval()
    ref = _orbit_check(model, x, seeds=(1,))
    out, out_c = _run(model, x), _run(ref.model, x)
    tol = 1e-10 if name != "llama" else 1e-5  # LLaMA's RMSNorm computes in float32
    assert float((out - out_c).abs().max()) <= tol * float(out.abs().max())


# -- honesty: what cannot be canonicalised is reported (or refused) ------------------------------
def test_deep_linear_network_is_reported_not_canonical():
    model = TinyMLP(act=torch.nn.Identity, widths=(6, 5), dtype=F64)
    x = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = canonicalize(model, example_input=x)
    assert set(res.not_canonical) == {"linear:fc1", "linear:fc2"}
    assert "A^-T" in next(s.note for s in res.sites if s.name == "linear:fc1")
    assert float((_run(model, x) - _run(res.model, x)).abs().max()) < 1e-12  # still the function
    with pytest.raises(UnverifiedSymmetryError, match="linear:fc1"):
        canonicalize(model, example_input=x, strict=True)
    with pytest.warns(UserWarning, match="not canonical"):
        fingerprint(model, canonical=res)


def test_needs_an_input_or_a_spec():
    with pytest.raises(InvalidOptionError, match="example_input"):
        canonicalize(TinyMLP())


def test_dead_units_with_equal_keys():
    """Two identical hidden units (all their weights equal): interchangeable, so canonical."""
    model = TinyMLP(widths=(4, 3), dtype=F64)
    with torch.no_grad():
        model.fc1.weight[1] = model.fc1.weight[0]
        model.fc1.bias[1] = model.fc1.bias[0]
        model.fc2.weight[:, 1] = model.fc2.weight[:, 0]
    x = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    _orbit_check(model, x)


# -- the group-level rules ------------------------------------------------------------------------
def test_orthogonal_and_gl_keys():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 9, generator=gen, dtype=F64)
    y = torch.randn(5, 7, generator=gen, dtype=F64)
    og, gl = IntertwinerGroup(ORTHOGONAL), IntertwinerGroup(GENERAL_LINEAR)
    g0, issues = canonical_element(og, [KeyTerm("A", z)])
    assert not issues
    q = ORTHOGONAL.sample(5, generator=gen).matrix()
    g1, _ = canonical_element(og, [KeyTerm("A", q @ z)])
    assert torch.allclose(g0.matrix() @ z, g1.matrix() @ q @ z, atol=1e-12)
    a = GENERAL_LINEAR.sample(5, generator=gen).matrix()
    terms0 = [KeyTerm("A", z), KeyTerm("A^-T", y)]
    terms1 = [KeyTerm("A", a @ z), KeyTerm("A^-T", torch.linalg.inv(a).T @ y)]
    (h0, i0), (h1, i1) = canonical_element(gl, terms0), canonical_element(gl, terms1)
    assert not i0 and not i1
    assert torch.allclose(h0.matrix() @ z, h1.matrix() @ a @ z, atol=1e-10)
    # Repeated singular values (an orthonormal key) leave the basis undefined: reported.
    _, issues = canonical_element(og, [KeyTerm("A", torch.eye(5, 9, dtype=F64))])
    assert issues


def test_a_spec_of_another_model_is_refused():
    x = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    spec = trace(TinyMLP(widths=(4, 3), dtype=F64), x)
    with pytest.raises(ShapeError, match="another model"):
        canonicalize(TinyMLP(widths=(5, 3), dtype=F64), spec, x)
