"""The GELU homogeneity defect against the paper's numbers and against a textbook integral."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from intertwiner.groups._homogeneity import homogeneity_defect, homogeneity_profile


@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0, 10.0])
def test_zero_for_positively_homogeneous_functions(lam):
    assert homogeneity_defect(torch.relu, lam) == 0.0
    assert homogeneity_defect(torch.nn.LeakyReLU(0.2), lam) < 1e-12


def test_gelu_matches_the_paper():
    gelu = torch.nn.GELU()
    assert homogeneity_defect(gelu, 1.0) == 0.0
    assert homogeneity_defect(gelu, 0.0) == 0.0
    profile = homogeneity_profile(gelu, np.linspace(0.3, 0.5, 41))
    lam, peak = max(profile, key=lambda p: p[1])
    assert lam == pytest.approx(0.39, abs=0.01)  # paper: local max ~0.0726 at ~0.39
    assert peak == pytest.approx(0.0726, abs=5e-4)
    assert homogeneity_defect(gelu, 2.0) == pytest.approx(0.177, abs=5e-4)


def test_gelu_asymptotic_slope_matches_the_closed_form():
    # xi(lam)/lam -> sqrt(E[(X (H(X) - Phi(X)))^2]) = sqrt(2 int_0^inf x^2 (1 - Phi)^2 phi dx).
    closed, _ = integrate.quad(lambda x: 2 * x * x * norm.sf(x) ** 2 * norm.pdf(x), 0, math.inf)
    slope = homogeneity_defect(torch.nn.GELU(), 1e4) / 1e4
    assert slope == pytest.approx(math.sqrt(closed), rel=1e-4)
    assert slope == pytest.approx(0.12675, abs=5e-5)  # the paper's Monte Carlo value
