"""Public test helpers: check that a representation metric is (or is not) invariant to a group.

``assert_invariant(metric, group, X, Y)`` samples group elements g1, g2, applies them to the neuron
axis of the features (dim 1 of (N, C) and (N, C, H, W), dim 2 of (N, T, D)) and asserts
``metric(g1 X, g2 Y) == metric(X, Y)`` to tolerance. With ``Y=None`` it asserts that X and a
transformed copy are as similar as X and itself: ``metric(X, g X) == metric(g X, X) == metric(X, X)``.

``group`` is a family name, a ``Family`` or an ``IntertwinerGroup``; for the latter the features
change by phi(A), as hidden representations do when the weights change by A.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from intertwiner._types import FeatureLike
from intertwiner._validate import real_tensor
from intertwiner.groups import Family, GroupElement, GroupLike, IntertwinerGroup, family
from intertwiner.layouts import neuron_dim

__all__ = [
    "apply_to_neurons",
    "randomize_model",
    "import_timm",
    "import_torchvision",
    "assert_function_preserved",
    "assert_invariant",
    "assert_not_invariant",
    "invariance_gaps",
    "sample_neuron_element",
    "sample_non_identity",
]


#: The ``torchvision`` operator schemas defined here when its compiled ops did not load (kept
#: alive: a ``Library`` removes its definitions when collected).
_TORCHVISION_SHIM: list[torch.library.Library] = []


def import_torchvision() -> ModuleType:
    """``import torchvision`` where its compiled ops cannot load (a wheel built for a CUDA torch
    next to a CPU torch): ``import torchvision`` registers fake kernels for ``torchvision::nms``
    and ``torchvision::qnms`` and fails when those operators do not exist. Their schemas are
    defined first (only where not already defined; no kernels: calling them raises), which is
    enough for every model that does not call them (classification models). Nothing on disk is
    changed. Raises ``ImportError`` when torchvision is not installed."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError("torchvision is not installed: pip install -c constraints.txt '.[zoo]'")
    missing = [op for op in ("nms", "qnms") if not hasattr(torch.ops.torchvision, op)]
    if missing:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in missing:
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SHIM.append(lib)
    import torchvision

    return torchvision


def randomize_model(model: torch.nn.Module, generator: torch.Generator | int | None = None) -> None:
    """Random weights where model zoos initialise constants, in place: BatchNorm running
    statistics (means ~ N(0, 0.2^2), variances ~ U(0.5, 1.5)), every 1-D parameter (biases ~
    N(0, 0.2^2); norm weights, layer scales ~ N(1, 0.2^2)) and any all-zero parameter (N(0,
    0.02^2)). Zero or unit initialisations (zero-init residual branches, layer scale 1e-6) make a
    model blind to a wrong symmetry: checks of invariance need a model that uses all its weights."""
    g = _generator(generator)
    with torch.no_grad():
        for m in model.modules():
            mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(0.2 * torch.randn(mean.shape, generator=g))
                var.copy_(0.5 + torch.rand(var.shape, generator=g))
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 0.0 if name.endswith("bias") else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def import_timm() -> ModuleType:
    """``import timm`` (which imports torchvision) through ``import_torchvision``."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        raise ImportError("timm is not installed: pip install -c constraints.txt '.[zoo]'")
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()
    import timm

    return timm


#: A metric: a registry name (``"cka"``, ...) or a function ``(X, Y) -> float``.
MetricLike = str | Callable[[FeatureLike, FeatureLike], float]


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def sample_neuron_element(
    group: GroupLike, n: int, generator: torch.Generator | None = None
) -> GroupElement:
    """A random element acting on representations: phi(A) for an IntertwinerGroup, else A."""
    if isinstance(group, IntertwinerGroup):
        return group.phi(group.sample(n, generator=generator, dtype=torch.float64))
    fam = group if isinstance(group, Family) else family(group)
    return fam.sample(n, generator=generator, dtype=torch.float64)


def sample_non_identity(
    group: GroupLike, n: int, generator: torch.Generator | int | None = None, tries: int = 100
) -> GroupElement:
    """A float64 element of ``group`` on ``n`` units that is not the identity (a permutation of
    two heads draws the identity half the time), for tests that show a tensor must move with it.
    ``group``: an ``IntertwinerGroup``, a ``Family`` or a family name."""
    fam = group if isinstance(group, Family | IntertwinerGroup) else family(group)
    g = _generator(generator)
    eye = torch.eye(n, dtype=torch.float64)
    for _ in range(tries):
        element = fam.sample(n, generator=g, dtype=torch.float64)
        if not torch.equal(element.matrix(), eye):
            return element
    raise AssertionError(f"{tries} draws of {n}-unit {group} elements were all the identity")


def _tensor(x: FeatureLike) -> torch.Tensor:
    return real_tensor(x, "features")


def apply_to_neurons(
    x: FeatureLike, element: GroupElement, layout: str | None = None
) -> torch.Tensor:
    """``element`` applied along the neuron axis of features x (any supported layout)."""
    t = _tensor(x)
    return element.apply(t, dim=neuron_dim(t, layout))


def _metric(metric: MetricLike) -> Callable[[Any, Any], float]:
    if isinstance(metric, str):
        from intertwiner.metrics.registry import metric as make

        return make(metric)
    return metric


def _tolerances(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    if dtype == torch.float64:
        # Distances near 0 come from 1 - cos, so their float64 floor is sqrt(eps) ~ 1.5e-8.
        return (1e-7 if atol is None else atol), (1e-7 if rtol is None else rtol)
    return (1e-5 if atol is None else atol), (1e-4 if rtol is None else rtol)


def invariance_gaps(
    metric: MetricLike,
    group: GroupLike,
    X: FeatureLike,
    Y: FeatureLike | None = None,
    *,
    n_samples: int = 3,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | int | None = None,
    layout: str | None = None,
) -> tuple[float, list[float]]:
    """(reference value, [transformed values]) as used by the two assertions."""
    fn = _metric(metric)
    gen = _generator(generator)
    x = _tensor(X)
    x = x.to(dtype) if dtype is not None else x
    y = None if Y is None else _tensor(Y)
    if y is not None and dtype is not None:
        y = y.to(dtype)
    nx = x.shape[neuron_dim(x, layout)]
    values: list[float] = []
    if y is None:
        ref = float(fn(x, x))
        for _ in range(n_samples):
            gx = apply_to_neurons(x, sample_neuron_element(group, nx, gen), layout)
            values += [float(fn(x, gx)), float(fn(gx, x))]
        return ref, values
    ny = y.shape[neuron_dim(y, layout)]
    ref = float(fn(x, y))
    for _ in range(n_samples):
        gx = apply_to_neurons(x, sample_neuron_element(group, nx, gen), layout)
        gy = apply_to_neurons(y, sample_neuron_element(group, ny, gen), layout)
        values.append(float(fn(gx, gy)))
    return ref, values


def _name(metric: MetricLike) -> str:
    return getattr(metric, "name", getattr(metric, "__name__", repr(metric)))


def _group_name(group: GroupLike) -> str:
    return getattr(group, "name", str(group))


def assert_invariant(
    metric: MetricLike,
    group: GroupLike,
    X: FeatureLike,
    Y: FeatureLike | None = None,
    *,
    n_samples: int = 3,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | int | None = None,
    layout: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Assert ``metric`` is unchanged when sampled group elements act on the neurons of X and Y.

    ``metric``: a callable ``(X, Y) -> float`` or a metric spec string (``"cka"``,
    ``"procrustes_distance:positive_monomial"``, ...). Default tolerances: atol 1e-7 / rtol 1e-7
    for float64 inputs, 1e-5 / 1e-4 otherwise. Raises AssertionError naming the worst sample.
    """
    x_dtype = dtype or (_tensor(X).dtype if _tensor(X).is_floating_point() else torch.float64)
    a, r = _tolerances(x_dtype, atol, rtol)
    ref, values = invariance_gaps(
        metric, group, X, Y, n_samples=n_samples, dtype=dtype, generator=generator, layout=layout
    )
    gaps = [abs(v - ref) for v in values]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[worst] > a + r * abs(ref):
        raise AssertionError(
            f"{_name(metric)} is not invariant to {_group_name(group)}: {ref!r} became "
            f"{values[worst]!r} (sample {worst}, |difference| {gaps[worst]:.3g} > atol {a:g} + "
            f"rtol {r:g} * |value|)"
        )


def assert_not_invariant(
    metric: MetricLike,
    group: GroupLike,
    X: FeatureLike,
    Y: FeatureLike | None = None,
    *,
    n_samples: int = 3,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | int | None = None,
    layout: str | None = None,
    min_change: float = 1e-3,
) -> None:
    """Assert some sampled element of ``group`` changes ``metric`` by more than ``min_change``."""
    ref, values = invariance_gaps(
        metric, group, X, Y, n_samples=n_samples, dtype=dtype, generator=generator, layout=layout
    )
    biggest = max(abs(v - ref) for v in values)
    if biggest <= min_change:
        raise AssertionError(
            f"{_name(metric)} did not change under {n_samples} sampled elements of "
            f"{_group_name(group)} (largest change {biggest:.3g} <= {min_change:g}); it looks "
            "invariant to that group"
        )


# Weight-space symmetries: trace a model, apply random elements, assert the function is unchanged.
from intertwiner.symmetry.check import assert_function_preserved  # noqa: E402
