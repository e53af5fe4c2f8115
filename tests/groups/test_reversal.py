"""The reversal family {I, J} (issue 24): the bottom of the family lattice, and every consumer of
families either supports it (brute force over its two elements) or refuses it clearly."""

from __future__ import annotations

import pytest
import torch

from intertwiner import metrics
from intertwiner.errors import UnsupportedGroupError
from intertwiner.groups import (
    ABS_PHI,
    FAMILIES,
    PERMUTATION,
    REVERSAL,
    DenseElement,
    FitTerm,
    IntertwinerGroup,
    KeyTerm,
    MonomialElement,
    PowerPhi,
    canonical_element,
    fit_element,
    intersect,
    is_reversal,
    reversal_perm,
)

N = 6


def _j(n: int = N) -> MonomialElement:
    return MonomialElement(reversal_perm(n), torch.ones(n, dtype=torch.float64))


def _i(n: int = N) -> MonomialElement:
    return MonomialElement(torch.arange(n), torch.ones(n, dtype=torch.float64))


def test_reversal_is_the_bottom_of_the_lattice():
    for fam in FAMILIES.values():
        assert REVERSAL <= fam
        assert intersect(fam, REVERSAL) is REVERSAL
        assert intersect(REVERSAL, fam.name) is REVERSAL
    assert not PERMUTATION <= REVERSAL
    assert list(FAMILIES)[0] == REVERSAL.name  # smallest first


def test_samples_are_i_or_j_and_both_occur():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(32):
        e = REVERSAL.sample(N, generator=g)
        assert REVERSAL.contains(e)
        seen.add(is_reversal(e))
    assert seen == {True, False}
    assert is_reversal(_j()) and not is_reversal(_i())
    assert not is_reversal(_j(1))  # for one unit J is the identity
    assert is_reversal(DenseElement(torch.eye(N, dtype=torch.float64).flip(0)))
    assert not is_reversal(DenseElement(torch.eye(N, dtype=torch.float64)))


def test_membership_of_other_permutations_and_matrices():
    assert REVERSAL.contains(torch.eye(N).flip(0))
    assert REVERSAL.contains(torch.eye(N))
    assert not REVERSAL.contains(MonomialElement(torch.tensor([1, 0, 2, 3, 4, 5]), torch.ones(N)))
    assert not REVERSAL.contains(MonomialElement(reversal_perm(N), 2 * torch.ones(N)))
    assert (_j() @ _j()).matrix().equal(torch.eye(N, dtype=torch.float64))
    assert _j().inverse().perm.equal(reversal_perm(N))


def test_project_and_best_perm_are_the_better_of_two_by_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m = torch.randn(N, N, generator=g, dtype=torch.float64)
        got = REVERSAL.project(m).matrix()
        best = min((torch.linalg.norm(m - e.matrix()), k) for k, e in enumerate((_i(), _j())))
        assert float(torch.linalg.norm(m - got)) == pytest.approx(float(best[0]), abs=1e-12)
    with pytest.raises(UnsupportedGroupError, match="one width"):
        REVERSAL.best_perm(torch.zeros(3, 4))


@pytest.mark.parametrize("kinds", [("A",), ("A", "A^-T"), ("phi(A)", "P")])
def test_fit_element_is_the_better_of_i_and_j(kinds):
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        terms, rows = [], []
        for kind in kinds:
            x = torch.randn(N, 5, generator=g, dtype=torch.float64)
            y = torch.randn(N, 5, generator=g, dtype=torch.float64)
            terms.append(FitTerm(kind, x @ y.T, (y * y).sum(1), (x * x).sum(1)))
            rows.append((x, y))
        e, cost = fit_element(REVERSAL, "identity", terms)
        assert REVERSAL.contains(e)

        def j_of(el, rows=rows):  # every kind of a scale-1 element moves rows by its perm
            return sum(float(((x - el.apply(y, 0)) ** 2).sum()) for x, y in rows)

        assert cost == pytest.approx(min(j_of(_i()), j_of(_j())), rel=1e-12)
        assert j_of(e) == pytest.approx(min(j_of(_i()), j_of(_j())), rel=1e-12)


def test_canonical_element_is_the_same_for_both_members_of_an_orbit():
    group = IntertwinerGroup(REVERSAL, "identity")
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        rows = [torch.randn(N, 4, generator=g, dtype=torch.float64) for _ in range(2)]
        terms = [KeyTerm("A", rows[0]), KeyTerm("A^-T", rows[1])]
        flipped = [KeyTerm(t.kind, t.rows.flip(0)) for t in terms]
        e1, issues1 = canonical_element(group, terms)
        e2, issues2 = canonical_element(group, flipped)
        assert not issues1 and not issues2
        assert REVERSAL.contains(e1) and REVERSAL.contains(e2)
        assert e1.apply(rows[0], 0).equal(e2.apply(rows[0].flip(0), 0))
    palindrome = torch.randn(3, 4, generator=g, dtype=torch.float64)
    key = [KeyTerm("A", torch.cat([palindrome, palindrome.flip(0)]))]
    assert canonical_element(group, key)[1]  # reads the same reversed: an issue
    assert not canonical_element(group, key, complete=True)[1]


def test_phi_preimage_of_reversal_is_reversal():
    for phi in (ABS_PHI, PowerPhi(2), PowerPhi(3)):
        assert phi.preimage(REVERSAL) is REVERSAL
        assert IntertwinerGroup(REVERSAL, phi).phi(_j()).matrix().equal(_j().matrix())


def test_consumers_that_need_every_permutation_refuse_it():
    from intertwiner.errors import InvalidOptionError
    from intertwiner.stitching._layers import GROUP_KINDS, UnknownLayerKindError, parse_kind

    x = torch.randn(20, N, dtype=torch.float64)
    with pytest.raises(UnsupportedGroupError, match="no Procrustes metric for group 'reversal'"):
        metrics.procrustes_distance(x, x.flip(1), group="reversal")
    with pytest.raises(UnsupportedGroupError, match="two orders"):
        metrics.group_cka(x, x, group="reversal")
    with pytest.raises(InvalidOptionError, match="two orders"):
        metrics.shape_distance(x, x, group="reversal")
    assert "reversal" not in GROUP_KINDS
    with pytest.raises(UnknownLayerKindError, match="no stitch layer kind"):
        parse_kind("reversal")
