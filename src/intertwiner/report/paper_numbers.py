"""The paper's numbers (paper.md sections 4-6; read from the authors' notebook, approximate for bar
charts) that the report puts beside ours. Layers are the mCNN's ReLU layers 3/6/10/14, i.e. the
1st..4th activation site of our ``myrtle_cnn``; sanity-test convs 0/2/5 are its 1st..3rd conv.
"""

from __future__ import annotations

SOURCE = "Godfrey et al., NeurIPS 2022 (paper.md digest; notebook outputs, CIFAR-10)"

# Section 3.3 sanity test, ReLU mCNN_k (no BN): rotation penalty in accuracy points per conv.
SANITY_BASELINE_ACC = 87.36
SANITY_PENALTY = {  # conv index (0-based among the first three convs) -> (G_ReLU, orthogonal)
    0: (0.0, 0.7),
    1: (1.7, 4.6),
    2: (1.3, 8.3),
}

# Section 4 stitching penalties, mCNN, per ReLU site (0-based site index) and layer kind.
STITCH_MCNN = {
    "full": [1.5, 1.7, 2.7, 2.5],
    "low_rank_4": [8.7, 14.0, 26.5, 16.0],
    "low_rank_2": [21.0, 28.0, 40.5, 31.5],
    "low_rank_1": [42.0, 53.5, 57.0, 62.5],
    "perm_scale": [8.5, 7.5, 17.0, 6.0],
}

# Section 5 Procrustes similarity (1 - d), mCNN, same layer, mean over 32 pairs.
PROCRUSTES_MCNN = {
    "grelu_procrustes": [0.6208, 0.5106, 0.4432, 0.4899],
    "orthogonal_procrustes": [0.7724, 0.5743, 0.5087, 0.5825],
}

# Section 5 CKA heatmaps, mCNN, 16 pairs (rows model-1 layers, columns model-2 layers).
CKA_MCNN = {
    "grelu_cka": [
        [0.84, 0.60, 0.31, 0.21],
        [0.62, 0.61, 0.31, 0.21],
        [0.31, 0.31, 0.45, 0.34],
        [0.20, 0.21, 0.35, 0.43],
    ],
    "cka": [
        [0.98, 0.91, 0.53, 0.37],
        [0.90, 0.97, 0.66, 0.49],
        [0.52, 0.66, 0.92, 0.83],
        [0.37, 0.49, 0.83, 0.93],
    ],
}

# Table 1 (groups): activation -> (family, phi).
TABLE1 = {
    "identity": ("general_linear", "A"),
    "relu": ("positive_monomial", "A"),
    "leaky_relu": ("positive_monomial", "A"),
    "gelu": ("permutation", "A"),
    "sigmoid": ("permutation", "A"),
    "tanh": ("signed_permutation", "A"),
    "rbf": ("signed_permutation", "abs(A)"),
    "power2": ("monomial", "A^d"),
    "power3": ("monomial", "A^d"),
}

# Section 6: the unit counts could not be retrieved (paper.md section 7): only the claim.
DISSECTION_CLAIM = (
    "interpretable units drop under rotation of the neuron basis and are unchanged under G_ReLU "
    "(permutation x positive scaling); counts not retrievable"
)
