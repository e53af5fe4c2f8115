"""Network dissection: unit/concept IoU and interpretable-unit counts under changes of basis.

As NetDissect (Bau et al. 2017) does it, for every unit u of a conv layer (layout (N, C, h, w)):

1. the threshold ``T_u`` is the k-th largest activation of u over all images and positions, with
   ``k = ceil(quantile * N * h * w)``, so a fraction ``quantile`` of the values reach it;
2. each activation map is upsampled bilinearly (``align_corners=False``) to the mask resolution and
   binarised with ``> T_u``;
3. ``IoU(u, c) = sum_images |A_u & M_c| / sum_images |A_u | M_c|`` for every concept mask c;
4. the unit's concept is its best IoU; it is *interpretable* when that IoU exceeds ``iou_threshold``.

A change of basis ``B`` (a group element or a dense (C, C) matrix) replaces the units by ``B a`` at
every pixel before step 1. Everything after the forward pass runs in float64: a positive scaling
then moves the threshold with the unit, so the result under any G_ReLU element is the same
dissection with units relabelled (tested exactly). Two streaming passes over the data (thresholds,
then counts) keep memory independent of the number of images, and many bases share the passes.

Label-free basis alignment (``alignment_stats``, ``basis_alignment``): excess kurtosis, Hoyer
sparsity and the fraction of near-zero values of each unit, in the neuron basis and in rotated ones.

Modules: ``_iou`` (the dissection itself), ``_alignment`` (label-free statistics). The concept
data adapter is ``intertwiner.data.ConceptSource``, the rotations live in
``intertwiner.groups._rotations``, the identity/G/orthogonal/rotation-power experiment in
``intertwiner.experiments.rotation_dissection`` and its figure in ``intertwiner.report``.
"""

from intertwiner.data.concept_source import ConceptSource
from intertwiner.dissection._alignment import alignment_stats, basis_alignment
from intertwiner.dissection._iou import Basis, DissectionResult, dissect, dissect_bases
from intertwiner.groups._rotations import random_rotation, random_rotation_powers, rotation_powers

__all__ = [
    "Basis",
    "ConceptSource",
    "DissectionResult",
    "alignment_stats",
    "basis_alignment",
    "dissect",
    "dissect_bases",
    "random_rotation",
    "random_rotation_powers",
    "rotation_powers",
]
