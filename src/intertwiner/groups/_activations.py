"""The activation table: the intertwiner group of every known elementwise activation.

``for_activation`` accepts a module instance, a module class, a functional (``torch.relu``,
``F.gelu``, ...) or a name (``"relu"``, ``"LeakyReLU"``, ``"power3"``). ``activation_module`` turns any
of those into a fresh ``nn.Module`` for building models. The paper's rows without a torch module
(the Gaussian RBF, x^d, |x|) are provided here as ``RBF``, ``Power`` and ``Abs``.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.errors import (
    InvalidOptionError,
    NotElementwiseError,
    SingularActivationError,
    UnknownActivationError,
)
from intertwiner.groups._families import (
    GENERAL_LINEAR,
    MONOMIAL,
    PERMUTATION,
    POSITIVE_MONOMIAL,
    SIGNED_PERMUTATION,
)
from intertwiner.groups._group import IntertwinerGroup
from intertwiner.groups._verify import as_function

# ------------------------------------------------------------------------------------------------
# Modules for the paper's rows that torch lacks.


class RBF(nn.Module):
    """Gaussian radial basis activation ``exp(-x^2)``, applied elementwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(x * x))


class Power(nn.Module):
    """Polynomial activation ``x^d`` for an integer ``d >= 1``, applied elementwise."""

    def __init__(self, d: int = 2):
        super().__init__()
        if int(d) != d or d < 1:
            raise InvalidOptionError(f"Power needs an integer degree d >= 1, got {d!r}")
        self.d = int(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.d

    def extra_repr(self) -> str:
        return f"d={self.d}"


class Abs(nn.Module):
    """Entrywise absolute value ``|x|``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Elementwise(nn.Module):
    """Wraps an elementwise function (e.g. ``torch.sin``) as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None):
        super().__init__()
        self.fn = fn
        self.fn_name = name or getattr(fn, "__name__", "fn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.fn_name


# ------------------------------------------------------------------------------------------------
# Names and functionals.

# Canonical name -> factory of a default module instance.
_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "rbf": RBF,
    "abs": Abs,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "hardtanh": nn.Hardtanh,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "logsigmoid": nn.LogSigmoid,
    "tanhshrink": nn.Tanhshrink,
    "softshrink": nn.Softshrink,
    "hardshrink": nn.Hardshrink,
    "prelu": nn.PReLU,
    "rrelu": nn.RReLU,
}

_ALIASES = {
    "none": "identity",
    "linear": "identity",
    "leakyrelu": "leaky_relu",
    "swish": "silu",
    "gaussian": "rbf",
    "gelutanh": "gelu_tanh",
}

# Rows printed by ``intertwiner groups``: the paper's table first, then the rest of torch.nn.
PAPER_ROWS = [
    "identity",
    "relu",
    "leaky_relu",
    "gelu",
    "sigmoid",
    "tanh",
    "rbf",
    "power2",
    "power3",
]
TORCH_ROWS = [
    "abs",
    "elu",
    "selu",
    "celu",
    "silu",
    "mish",
    "softplus",
    "softsign",
    "hardtanh",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "logsigmoid",
    "tanhshrink",
    "softshrink",
    "hardshrink",
    "prelu",
    "rrelu",
    "gelu_tanh",
]
TABLE_ROWS = PAPER_ROWS + TORCH_ROWS

_FUNCTIONALS: dict[Any, str] = {
    torch.relu: "relu",
    F.relu: "relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.gelu: "gelu",
    F.silu: "silu",
    F.elu: "elu",
    F.selu: "selu",
    torch.selu: "selu",
    F.celu: "celu",
    F.leaky_relu: "leaky_relu",
    F.softplus: "softplus",
    F.softsign: "softsign",
    F.mish: "mish",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.hardtanh: "hardtanh",
    F.relu6: "relu6",
    F.logsigmoid: "logsigmoid",
    F.tanhshrink: "tanhshrink",
    F.softshrink: "softshrink",
    F.hardshrink: "hardshrink",
    torch.abs: "abs",
}

# Modules that are activations but not elementwise: they have no intertwiner group in this sense.
_NOT_ELEMENTWISE = (
    nn.Softmax,
    nn.Softmin,
    nn.LogSoftmax,
    nn.Softmax2d,
    nn.GLU,
    nn.MultiheadAttention,
)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    squashed = key.replace("_", "")
    if key in _FACTORIES:
        return key
    for candidate in _FACTORIES:
        if candidate.replace("_", "") == squashed:
            return candidate
    return _ALIASES.get(squashed, key)


_POWER_NAME = re.compile(r"^(?:power|x\^|pow)[:_ ]?(\d+)$")


def _unknown(what: str) -> UnknownActivationError:
    return UnknownActivationError(
        f"unknown activation {what}. Known names: {', '.join(TABLE_ROWS)} (and 'powerD' for "
        "x^D). For any other elementwise function, classify it numerically with "
        "intertwiner.groups.discover(fn)."
    )


def activation_module(act: Any) -> nn.Module:
    """A fresh module for ``act`` (name, class, instance or functional), for building models."""
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    if inspect.isclass(act) and issubclass(act, nn.Module):
        try:
            return act()
        except TypeError as e:
            raise InvalidOptionError(
                f"{act.__name__} needs arguments; pass an instance such as {act.__name__}(...)"
            ) from e
    if isinstance(act, str):
        m = _POWER_NAME.match(act.strip().lower())
        if m:
            return Power(int(m.group(1)))
        name = _canonical(act)
        if name in _FACTORIES:
            return _FACTORIES[name]()
        raise _unknown(repr(act))
    if callable(act):
        try:
            name = _FUNCTIONALS.get(act)
        except TypeError:  # unhashable callables
            name = None
        if name is not None:
            return _FACTORIES[name]()
        return Elementwise(act)
    raise _unknown(repr(act))


def activation_name(act: Any) -> str:
    """A short stable name (``"relu"``, ``"power3"``) for a known activation, for configs/tables."""
    mod = activation_module(act)
    if isinstance(mod, Power):
        return f"power{mod.d}"
    for name, factory in _FACTORIES.items():
        ref = factory()
        if type(ref) is type(mod) and _same_config(ref, mod):
            return name
    return type(mod).__name__.lower()


def _same_config(a: nn.Module, b: nn.Module) -> bool:
    return a.extra_repr() == b.extra_repr()


# ------------------------------------------------------------------------------------------------
# Classification of module instances.


def _leaky_group(slope: float, display: str) -> IntertwinerGroup:
    if slope == 1.0:
        return IntertwinerGroup(GENERAL_LINEAR, "identity", f"G_{display}")
    if slope == -1.0:  # LeakyReLU with slope -1 is |x|
        return IntertwinerGroup(MONOMIAL, "abs", f"G_{display}")
    return IntertwinerGroup(POSITIVE_MONOMIAL, "identity", f"G_{display}")


def _classify(mod: nn.Module) -> IntertwinerGroup:
    name = type(mod).__name__
    perm = IntertwinerGroup(PERMUTATION, "identity", f"G_{name}")
    signed = IntertwinerGroup(SIGNED_PERMUTATION, "identity", f"G_{name}")
    if isinstance(mod, nn.Identity):
        return IntertwinerGroup(GENERAL_LINEAR, "identity", "G_Identity")
    if isinstance(mod, nn.ReLU):
        return IntertwinerGroup(POSITIVE_MONOMIAL, "identity", "G_ReLU")
    if isinstance(mod, nn.LeakyReLU):
        return _leaky_group(float(mod.negative_slope), name)
    if isinstance(mod, nn.PReLU):
        if mod.weight.numel() != 1:
            raise UnknownActivationError(
                f"PReLU with {mod.weight.numel()} parameters has a different slope per channel, "
                "so its symmetries are not those of one elementwise function. Use PReLU() with "
                "one parameter, or build a per-site group by hand."
            )
        return _leaky_group(float(mod.weight.detach().reshape(())), name)
    if isinstance(mod, nn.RReLU):
        # In eval mode RReLU is LeakyReLU with the mean slope; in train mode it is random.
        return _leaky_group((float(mod.lower) + float(mod.upper)) / 2, name)
    if isinstance(mod, nn.ELU):
        if float(mod.alpha) == 0.0:
            return IntertwinerGroup(POSITIVE_MONOMIAL, "identity", f"G_{name}")
        return perm
    if isinstance(mod, nn.Hardtanh):  # also ReLU6
        return signed if float(mod.min_val) == -float(mod.max_val) else perm
    if isinstance(mod, (nn.Softshrink, nn.Hardshrink)):
        if float(mod.lambd) == 0.0:
            return IntertwinerGroup(GENERAL_LINEAR, "identity", f"G_{name}")
        return signed
    if isinstance(mod, (nn.Tanh, nn.Softsign, nn.Tanhshrink)):
        return signed
    if isinstance(mod, nn.Threshold):
        if float(mod.threshold) == 0.0 and float(mod.value) == 0.0:
            return IntertwinerGroup(POSITIVE_MONOMIAL, "identity", f"G_{name}")
        return perm
    if isinstance(
        mod,
        (
            nn.GELU,
            nn.Sigmoid,
            nn.SiLU,
            nn.Mish,
            nn.Softplus,
            nn.SELU,
            nn.CELU,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.LogSigmoid,
        ),
    ):
        return perm
    if isinstance(mod, RBF):
        return IntertwinerGroup(SIGNED_PERMUTATION, "abs", "G_RBF")
    if isinstance(mod, Abs):
        return IntertwinerGroup(MONOMIAL, "abs", "G_Abs")
    if isinstance(mod, Power):
        if mod.d == 1:
            return IntertwinerGroup(GENERAL_LINEAR, "identity", "G_Power1")
        return IntertwinerGroup(MONOMIAL, ("power", mod.d), f"G_Power{mod.d}")
    if isinstance(mod, _NOT_ELEMENTWISE):
        raise NotElementwiseError(
            f"{name} is not an elementwise function (each output depends on several inputs), "
            "so it has no intertwiner group of the form sigma(Ax) = phi(A) sigma(x) in the "
            "paper's sense."
        )
    raise _unknown(f"{name} ({mod!r})")


def for_activation(act: Any) -> IntertwinerGroup:
    """The intertwiner group of ``act``: a module instance or class, a functional or a name.

    >>> for_activation("relu").name
    'G_ReLU'
    """
    mod = activation_module(act)
    if isinstance(mod, Elementwise):
        raise _unknown(f"function {mod.fn_name!r}")
    group = _classify(mod)
    _check_sigma_identity(mod, group)
    return group


def _check_sigma_identity(fn: Callable[[torch.Tensor], torch.Tensor], group: IntertwinerGroup):
    """phi(A) = sigma(A) sigma(I)^-1 needs sigma(I) invertible (the paper's lemma)."""
    if group.family is GENERAL_LINEAR:
        return
    with torch.no_grad():
        s = as_function(fn, torch.float64)(torch.eye(4, dtype=torch.float64))
    if not bool(torch.isfinite(s).all()) or torch.linalg.matrix_rank(s) < 4:
        raise SingularActivationError(
            f"sigma(I) is singular for {fn!r}: phi(A) = sigma(A) sigma(I)^-1 is undefined, so the "
            "intertwiner group is not described by this table."
        )
