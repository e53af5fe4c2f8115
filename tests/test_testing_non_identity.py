"""``testing.sample_non_identity``: never the identity; a group with no other element is refused."""

from __future__ import annotations

import pytest
import torch

from intertwiner.testing import sample_non_identity


@pytest.mark.parametrize("group", ["permutation", "signed_permutation", "orthogonal"])
def test_draws_are_never_the_identity(group):
    for seed in range(20):  # 2 units: a permutation draw is the identity half the time
        e = sample_non_identity(group, 2, generator=seed)
        assert not torch.equal(e.matrix(), torch.eye(2, dtype=torch.float64))


def test_a_group_of_one_element_is_refused():
    with pytest.raises(AssertionError, match="all the identity"):
        sample_non_identity("permutation", 1, tries=5)
