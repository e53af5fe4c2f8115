"""Group axioms, structured elements and projections for every family."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intertwiner.errors import ShapeError
from intertwiner.groups import FAMILIES, LARGER, DenseElement, MonomialElement, family

FAMILY_NAMES = sorted(FAMILIES)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
sizes = st.integers(min_value=1, max_value=7)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@given(seed=seeds, n=sizes)
@settings(max_examples=25, deadline=None)
def test_group_axioms(name, seed, n):
    fam = family(name)
    g = gen(seed)
    a, b, c = (fam.sample(n, generator=g) for _ in range(3))
    eye = torch.eye(n, dtype=torch.float64)
    # closure
    assert fam.contains(a @ b, atol=1e-8)
    torch.testing.assert_close((a @ b).matrix(), a.matrix() @ b.matrix())
    # identity
    e = fam.identity(n)
    torch.testing.assert_close((a @ e).matrix(), a.matrix())
    torch.testing.assert_close((e @ a).matrix(), a.matrix())
    # inverse
    assert fam.contains(a.inverse(), atol=1e-8)
    torch.testing.assert_close((a @ a.inverse()).matrix(), eye)
    torch.testing.assert_close((a.inverse() @ a).matrix(), eye)
    # associativity
    torch.testing.assert_close(((a @ b) @ c).matrix(), (a @ (b @ c)).matrix())


@pytest.mark.parametrize("name", FAMILY_NAMES)
@given(seed=seeds, n=sizes, dim=st.integers(0, 2))
@settings(max_examples=20, deadline=None)
def test_apply_equals_matrix_product(name, seed, n, dim):
    g = gen(seed)
    a = family(name).sample(n, generator=g)
    shape = [3, 4, 2]
    shape[dim] = n
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    expected = (x.movedim(dim, -1) @ a.matrix().T).movedim(-1, dim)
    torch.testing.assert_close(a.apply(x, dim=dim), expected)
    torch.testing.assert_close(a.transpose().matrix(), a.matrix().T)


def test_apply_in_float32_keeps_dtype():
    a = family("positive_monomial").sample(5, generator=gen(0))
    x = torch.randn(10, 5)
    y = a.apply(x, dim=1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x @ a.matrix(torch.float32).T)


def test_monomial_element_never_builds_a_dense_matrix(monkeypatch):
    a = family("monomial").sample(4096, generator=gen(0))
    monkeypatch.setattr(MonomialElement, "matrix", lambda *_: pytest.fail("dense matrix built"))
    y = a.apply(torch.randn(8, 4096), dim=1)
    assert y.shape == (8, 4096)
    _ = (a @ a.inverse()).apply(y, dim=1)


def test_apply_rejects_wrong_size():
    a = family("permutation").sample(4, generator=gen(0))
    with pytest.raises(ShapeError, match="size 3"):
        a.apply(torch.zeros(2, 3), dim=1)
    with pytest.raises(ShapeError):
        DenseElement(torch.zeros(2, 3))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_samples_are_members_and_larger_samples_are_not(name):
    fam = family(name)
    g = gen(1)
    for _ in range(5):
        assert fam.contains(fam.sample(6, generator=g))
    for bigger in LARGER[name]:
        # A generic element of a larger family lies outside the smaller one.
        assert not fam.contains(family(bigger).sample(6, generator=g))


def _brute_force_distance(name: str, m: np.ndarray) -> float:
    """min over the family of ||M - A||_F, by enumerating permutations (n <= 5)."""
    n = m.shape[0]
    best = np.inf
    for perm in itertools.permutations(range(n)):
        entries = m[np.arange(n), perm]
        if name == "permutation":
            s = np.ones(n)
        elif name == "signed_permutation":
            s = np.where(entries < 0, -1.0, 1.0)
        elif name == "positive_monomial":
            s = np.maximum(entries, 0.0)  # infimum over s > 0
        elif name == "scaled_permutation":  # one c for all: the clamped mean (infimum over c > 0)
            s = np.full(n, max(entries.mean(), 0.0))
        else:
            s = entries
        a = np.zeros((n, n))
        a[np.arange(n), perm] = s
        best = min(best, np.linalg.norm(m - a))
    return best


@pytest.mark.parametrize(
    "name",
    ["permutation", "signed_permutation", "positive_monomial", "monomial", "scaled_permutation"],
)
@given(seed=seeds, n=st.integers(1, 5))
@settings(max_examples=20, deadline=None)
def test_project_is_nearest_by_brute_force(name, seed, n):
    m = torch.randn(n, n, generator=gen(seed), dtype=torch.float64)
    p = family(name).project(m)
    assert family(name).contains(p, atol=0.0)
    dist = float(torch.linalg.norm(m - p.matrix()))
    assert dist == pytest.approx(_brute_force_distance(name, m.numpy()), abs=1e-9)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@given(seed=seeds, n=sizes)
@settings(max_examples=15, deadline=None)
def test_project_is_idempotent_and_fixes_members(name, seed, n):
    fam = family(name)
    g = gen(seed)
    a = fam.sample(n, generator=g)
    torch.testing.assert_close(fam.project(a.matrix()).matrix(), a.matrix())
    p = fam.project(torch.randn(n, n, generator=g, dtype=torch.float64))
    torch.testing.assert_close(fam.project(p.matrix()).matrix(), p.matrix())


def test_orthogonal_projection_beats_random_rotations():
    fam = family("orthogonal")
    g = gen(3)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    best = float(torch.linalg.norm(m - fam.project(m).matrix()))
    for _ in range(200):
        assert best <= float(torch.linalg.norm(m - fam.sample(6, generator=g).matrix())) + 1e-12


def test_same_seed_same_sample():
    for name in FAMILY_NAMES:
        a = family(name).sample(9, generator=gen(7))
        b = family(name).sample(9, generator=gen(7))
        torch.testing.assert_close(a.matrix(), b.matrix(), rtol=0, atol=0)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(KeyError, match="positive_monomial"):
        family("wreath")


def test_elements_are_checked_when_built_and_contains_rechecks_edits():
    import math

    from intertwiner.errors import InvalidElementError
    from intertwiner.groups._elements import MonomialElement
    from intertwiner.groups._families import FAMILIES

    bad = [
        ([0, 0, 2], [1.0, 1.0, 1.0]),  # repeated index: singular (issue 17 saw f change by 0.77)
        ([0, 1, 3], [1.0, 1.0, 1.0]),
        ([0, 1, 2], [math.inf, 1.0, 1.0]),  # issue 19: apply then wrote NaN weights
        ([0, 1, 2], [0.0, 1.0, 1.0]),
        ([0, 1, 2], [math.nan, 1.0, 1.0]),
    ]
    for perm, scale in bad:
        with pytest.raises(InvalidElementError):
            MonomialElement(torch.tensor(perm), torch.tensor(scale, dtype=torch.float64))
    ok = MonomialElement(torch.tensor([2, 0, 1]), torch.tensor([0.5, 2.0, 1.0]))
    for name in ("positive_monomial", "monomial"):
        assert FAMILIES[name].contains(ok)
    edited = MonomialElement(torch.tensor([2, 0, 1]), torch.tensor([0.5, 2.0, 1.0]))
    edited.scale[0] = math.inf  # edited after construction: contains must not accept it
    dup = MonomialElement(torch.tensor([2, 0, 1]), torch.tensor([0.5, 2.0, 1.0]))
    dup.perm[0] = 0
    for name in ("positive_monomial", "monomial", "permutation", "signed_permutation"):
        assert not FAMILIES[name].contains(edited)
        assert not FAMILIES[name].contains(dup)


# ---- group semantics owned by the families -------------------------------------------------------


@pytest.mark.parametrize(
    "alias, name",
    [
        ("perm_scale", "positive_monomial"),
        ("G_ReLU", "positive_monomial"),
        ("signed_perm", "signed_permutation"),
        ("full", "general_linear"),
        ("GL", "general_linear"),
        (" Orthogonal ", "orthogonal"),
        ("monomial", "monomial"),
    ],
)
def test_aliases_resolve_case_insensitively(alias, name):
    assert family(alias).name == name
    assert family(family(alias).short_name) is family(name)  # short names round trip


def test_unknown_alias_is_both_a_key_and_a_group_error():
    from intertwiner.errors import UnsupportedGroupError
    from intertwiner.groups import UnknownFamilyError

    for exc in (KeyError, UnsupportedGroupError, UnknownFamilyError):
        with pytest.raises(exc, match="perm_scale"):  # the message lists the aliases
            family("g_tanh")


# phi = identity on every family; abs and integer powers on monomial families; a non-integer
# power needs positive scales.
IMAGE_CASES = (
    [(f, "identity") for f in sorted(FAMILIES)]
    + [
        (f, phi)
        for f in sorted(FAMILIES)
        if family(f).monomial
        for phi in ("abs", ("power", 2), ("power", 3))
    ]
    + [("positive_monomial", ("power", 0.5))]
)


@pytest.mark.parametrize("name, phi", IMAGE_CASES)
def test_image_holds_phi_of_every_sample_and_is_the_smallest_such(name, phi):
    """``Family.image(phi)`` against samples: phi(A) lies in it for every sampled A, and for no
    strictly smaller family (each smaller one misses some sample)."""
    from intertwiner.groups import IntertwinerGroup

    fam = family(name)
    group = IntertwinerGroup(fam, phi)
    g = torch.Generator().manual_seed(0)
    images = [group.phi(fam.sample(5, generator=g)) for _ in range(6)]
    target = group.phi_family
    assert target is fam.image(phi)
    assert all(target.contains(m, atol=1e-9) for m in images)
    for smaller in target.subgroups():
        if smaller is not target:
            assert not all(smaller.contains(m, atol=1e-9) for m in images), smaller.name


@pytest.mark.parametrize(
    "name", [f for f in sorted(FAMILIES) if family(f).monomial and not family(f).common_scale]
)
def test_fit_scales_is_the_best_allowed_scale_by_brute_force(name):
    """gain = max over (the closure of) the family's scale set of 2 c s - q s^2, on a fine grid
    (and over +-1, 1 exactly)."""
    fam = family(name)
    g = torch.Generator().manual_seed(1)
    cross = torch.randn(40, generator=g, dtype=torch.float64)
    second = torch.rand(40, generator=g, dtype=torch.float64) + 0.05
    second[0] = 0.0  # no information: gain 0, scale 1
    gain, s = fam.fit_scales(cross, second)
    grid = torch.cat(
        [torch.linspace(-30, 30, 600_001, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
    )
    allowed = {
        "one": torch.ones(1, dtype=torch.float64),
        "sign": torch.tensor([-1.0, 1.0], dtype=torch.float64),
        "positive": grid[grid >= 0],  # the closure: the supremum at s -> 0+ is attained at 0
        "any": grid,
    }[fam.scales]
    brute = (2 * cross[:, None] * allowed - second[:, None] * allowed**2).max(dim=1).values
    assert torch.allclose(gain[1:], brute[1:], atol=1e-6)
    assert torch.allclose((2 * cross * s - second * s * s)[1:], gain[1:])
    assert gain[0] == 0 and s[0] == 1
    assert fam.contains(torch.diag(torch.where(s == 0, torch.ones_like(s), s)), atol=0.0)


def test_best_assignment_matches_brute_force_on_rectangular_gains():
    import itertools

    from intertwiner.groups import best_assignment

    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        w = torch.randn(3, 5, generator=g, dtype=torch.float64)
        best = max(
            itertools.permutations(range(5), 3), key=lambda p: sum(w[i, p[i]] for i in range(3))
        )
        assert best_assignment(w).tolist() == list(best)


def test_subgroups_and_larger_agree_with_is_subgroup():
    from intertwiner.groups import is_subgroup

    for fam in FAMILIES.values():
        assert {f.name for f in fam.subgroups()} == {
            f for f in FAMILIES if is_subgroup(f, fam.name)
        }
        for bigger in fam.larger():
            assert is_subgroup(fam, bigger) and not is_subgroup(bigger, fam)


def test_scaled_permutation_shares_one_factor_and_refuses_per_pair_scales():
    """c P: samples have one factor for every unit; a per-unit scaling (the next larger family)
    is not a member; a per-pair scale fit is refused (the scale is shared)."""
    from intertwiner.errors import UnsupportedGroupError
    from intertwiner.groups import SCALED_PERMUTATION, intersect

    a = SCALED_PERMUTATION.sample(6, generator=gen(4))
    assert torch.allclose(a.scale, a.scale[0].expand(6)) and float(a.scale[0]) != 1.0
    d = family("positive_monomial").sample(6, generator=gen(4))
    assert not SCALED_PERMUTATION.contains(d)
    assert intersect(SCALED_PERMUTATION, "signed_permutation").name == "permutation"
    assert intersect(SCALED_PERMUTATION, "orthogonal").name == "permutation"
    assert not SCALED_PERMUTATION.preserves_inner_products
    with pytest.raises(UnsupportedGroupError, match="shares one scale"):
        SCALED_PERMUTATION.fit_scales(torch.ones(3), torch.ones(3))
