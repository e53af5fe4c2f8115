"""Stitch layers: linear maps from model A's features to model B's at one site, one per group.

Every layer acts along one channel axis (``channel_dim``: 1 for ``(N, C)`` and conv ``(N, C, H, W)``
features, where it is a 1x1 convolution; -1 for tokens ``(N, T, D)``) and is a map
``x -> M x (+ b)`` with ``M`` of shape ``(c_out, c_in)``, returned by ``matrix()``.

Kinds (``make_layer``): ``"full"`` (GL), ``"orthogonal"``, ``("low_rank", r)``, ``("lasso", lam)``,
``"diagonal"``, ``"permutation"``, ``"perm_scale"`` (G_ReLU: permutation x positive scales),
``"signed_perm"``, ``"monomial"`` (permutation x nonzero scales); ``"auto"`` is resolved by
``resolve_kind`` from the activation at the site. Monomial layers store ``perm`` and ``scale`` with the
``groups.MonomialElement`` convention ``y_i = scale[i] * x[perm[i]]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.errors import (
    IntertwinerError,
    InvalidElementError,
    ShapeError,
    UnsupportedGroupError,
)
from intertwiner.groups import (
    FAMILIES,
    GENERAL_LINEAR,
    ORTHOGONAL,
    POSITIVE_MONOMIAL,
    Family,
    MonomialElement,
    best_assignment,
    family,
    for_activation,
)
from intertwiner.stitching import _solvers as solvers

# Stitch kinds are the group families, by their short names (``groups.Family.short_name``), plus
# three kinds that are not groups: a rank constraint, an L1 penalty and a free diagonal.
# Families whose permutation part is not free (the reversal {I, J}) are no stitch kinds: a stitch
# layer learns which units match, and two fixed matchings leave nothing to learn. Nor is c P (one
# common scale, ``ScaledPermutation``): ``parse_kind`` refuses it.
_STITCH_FAMILIES = tuple(f for f in FAMILIES.values() if f.any_permutation and not f.common_scale)
GROUP_KINDS = tuple(f.short_name for f in _STITCH_FAMILIES)
MONOMIAL_KINDS = tuple(f.short_name for f in _STITCH_FAMILIES if f.monomial)
STRUCTURAL_KINDS = ("low_rank", "lasso", "diagonal")
KINDS = (*GROUP_KINDS, *STRUCTURAL_KINDS, "auto")
# Kinds whose maps are square (c_in == c_out): every group but GL, and the diagonal.
SQUARE_KINDS = (
    *(f.short_name for f in _STITCH_FAMILIES if f is not GENERAL_LINEAR),
    "diagonal",
)


def kind_family(kind: str) -> Family | None:
    """The group family a stitch kind names (``"perm_scale"`` -> PositiveMonomial); None for the
    structural kinds."""
    return None if kind in STRUCTURAL_KINDS else family(kind)


class UnknownLayerKindError(IntertwinerError, ValueError):
    """A stitch layer kind that ``make_layer`` does not know."""


def parse_kind(layer: Any) -> tuple[str, float | int | None]:
    """``"full"`` -> ("full", None); ``("low_rank", 4)`` or ``"low_rank:4"`` -> ("low_rank", 4)."""
    if isinstance(layer, str) and ":" in layer:
        name, arg = layer.split(":", 1)
        layer = (name, float(arg) if name.strip() == "lasso" else int(arg))
    if isinstance(layer, tuple | list) and len(layer) == 2:
        name, arg = str(layer[0]).strip().lower(), layer[1]
        if name == "low_rank":
            if int(arg) < 1:
                raise UnknownLayerKindError(f"low_rank needs a rank >= 1, got {arg}")
            return name, int(arg)
        if name == "lasso":
            if float(arg) < 0:
                raise UnknownLayerKindError(f"lasso needs lambda >= 0, got {arg}")
            return name, float(arg)
        raise UnknownLayerKindError(
            f"unknown parametrised stitch layer {layer!r}; use ('low_rank', r) or ('lasso', lam)"
        )
    if isinstance(layer, str):
        name = layer.strip().lower()
        if name in ("diagonal", "auto"):
            return name, None
        try:  # a group: any of its names or aliases ("g_relu", "positive_monomial", ...)
            fam = family(name)
        except UnsupportedGroupError:
            fam = None
        if fam is not None and fam.common_scale:
            raise UnknownLayerKindError(
                f"stitch layers constrained to {fam.name} (c P, one common scale) are not "
                "supported: a stitch layer's global scale is absorbed by the next layer anyway; "
                "use 'permutation', or 'perm_scale' for per-unit scales"
            )
        if fam is not None and fam.short_name in GROUP_KINDS:
            return fam.short_name, None
        if fam is not None:
            raise UnknownLayerKindError(
                f"{fam.name!r} is no stitch layer kind: its permutation part is fixed "
                f"({fam.description}), so there is no matching to learn; use 'permutation'"
            )
    raise UnknownLayerKindError(
        f"unknown stitch layer kind {layer!r}; choose one of 'full', 'orthogonal', "
        "('low_rank', r), ('lasso', lam), 'diagonal', 'permutation', 'perm_scale', "
        "'signed_perm', 'monomial', 'auto'"
    )


def kind_for_activation(activation: Any) -> str:
    """The stitch kind of the activation-side group ``phi(G_sigma)`` (ReLU -> ``"perm_scale"``)."""
    # The stitch sits after the activation, so it lives in phi(G), not G.
    return for_activation(activation).phi_family.short_name


def resolve_kind(layer: Any, site_module: nn.Module | None) -> tuple[str, float | int | None]:
    """Like ``parse_kind`` but ``"auto"`` becomes the kind of the site's activation group."""
    name, arg = parse_kind(layer)
    if name != "auto":
        return name, arg
    if site_module is None:
        raise UnknownLayerKindError("'auto' needs the module at the site to find its activation")
    try:
        return kind_for_activation(site_module), None
    except Exception as e:  # noqa: BLE001 (re-raised with what to do)
        raise UnknownLayerKindError(
            f"'auto' needs an activation module at the site, got {type(site_module).__name__} "
            f"({e}); stitch at an activation or name the layer kind"
        ) from None


class StitchLayer(nn.Module):
    """Base: a linear map along ``channel_dim``; subclasses define ``_map`` on channels-last input."""

    kind = "base"

    def __init__(self, c_in: int, c_out: int, channel_dim: int = 1):
        super().__init__()
        self.c_in, self.c_out, self.channel_dim = int(c_in), int(c_out), int(channel_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with ``c_in`` channels on ``channel_dim`` -> same layout with ``c_out`` channels."""
        if x.shape[self.channel_dim] != self.c_in:
            raise ShapeError(
                f"{self.kind} stitch expects {self.c_in} channels on dim {self.channel_dim}, got "
                f"shape {tuple(x.shape)}"
            )
        return self._map(x.movedim(self.channel_dim, -1)).movedim(-1, self.channel_dim)

    def _map(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover (abstract)
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """The effective ``(c_out, c_in)`` matrix in evaluation mode."""
        eye = torch.eye(self.c_in, dtype=self._dtype(), device=self._device())
        with torch.no_grad():
            was = self.training
            self.eval()
            m = self._map(eye) - self._map(torch.zeros_like(eye[:1]))
            self.train(was)
        return m.T.contiguous()

    def bias_vector(self) -> torch.Tensor | None:
        b = getattr(self, "bias", None)
        return None if b is None else b.detach()

    #: Whether the closed-form fit reads the full ``x^T x`` (else its diagonal is enough).
    needs_cross_moments = True

    def init_identity_(self) -> None:
        """Set the map to the identity (diagonal and monomial layers start there already)."""

    def fit_(self, stats: solvers.FeatureStats, *, bias: bool, ridge: float, score: str) -> None:
        """Set the map to its closed-form fit on the streamed statistics ``stats``."""
        raise NotImplementedError(f"no closed form for {self.kind!r}")

    def init_random_(self, generator: torch.Generator) -> None:
        """Random initialisation; by default PyTorch's, which the constructor already drew."""

    def project_(self, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Called after each optimiser step: keep the parameters inside the layer's set."""

    def regularization(self) -> torch.Tensor:
        """Extra training loss (0 unless a subclass says otherwise)."""
        return torch.zeros((), dtype=self._dtype(), device=self._device())

    def sparsity(self) -> float | None:
        """Fraction of zero (|w| <= 1e-3) entries of the matrix; None for kinds that do not track it."""
        return None

    def _dtype(self) -> torch.dtype:
        return next(iter(self.parameters_and_buffers())).dtype

    def _device(self) -> torch.device:
        return next(iter(self.parameters_and_buffers())).device

    def parameters_and_buffers(self) -> list[torch.Tensor]:
        return [*self.parameters(), *(b for b in self.buffers() if b.is_floating_point())]

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.c_out}, channel_dim={self.channel_dim}"


def _bias_param(c_out: int, bias: bool, dtype: torch.dtype) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(c_out, dtype=dtype)) if bias else None


def _like(layer: StitchLayer, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """``tensors`` on the layer's device and dtype (None stays None)."""
    dev, dt = layer._device(), layer._dtype()
    return [None if t is None else t.to(device=dev, dtype=dt) for t in tensors]


def _set_identity(layer: StitchLayer) -> None:
    if layer.c_in != layer.c_out:
        raise ShapeError(
            f"identity init needs equal widths, got {layer.c_in} -> {layer.c_out}; use "
            "init='closed_form'"
        )
    layer.set_(torch.eye(layer.c_in, dtype=layer._dtype(), device=layer._device()))


class FullStitch(StitchLayer):
    """GL: a dense ``(c_out, c_in)`` weight (a 1x1 conv on conv features), optional bias."""

    kind = "full"

    def __init__(self, c_in, c_out, channel_dim=1, *, bias=False, dtype=torch.float32):
        super().__init__(c_in, c_out, channel_dim)
        lin = nn.Linear(c_in, c_out, bias=False, dtype=dtype)  # PyTorch default init (the paper's)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = _bias_param(c_out, bias, dtype)

    def _map(self, x):
        return F.linear(x, self.weight, self.bias)

    def set_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.weight.copy_(weight)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    def init_identity_(self) -> None:
        _set_identity(self)

    def fit_(self, stats, *, bias, ridge, score):
        self.set_(*_like(self, *solvers.lstsq(stats, bias=bias, ridge=ridge)))


class LassoStitch(FullStitch):
    """A full layer trained with an L1 penalty ``lam * sum |W|``, applied as a proximal step
    (soft-thresholding after each optimiser step, so entries reach exact zeros; in Adam's metric
    with the default optimiser, see ``project_``). As in the paper, entries with |W| < 1e-4 are
    zeroed at evaluation and sparsity counts |W| <= 1e-3. With the default least-squares
    initialisation and 2 epochs the L1 term acts only briefly, so ``sparsity`` mostly reflects the
    least-squares solution; ``StitchConfig(init="random")`` trains the layer from scratch under
    the penalty (lam = 1e-3: about a fifth of the entries zero on the digits test models)."""

    kind = "lasso"

    def __init__(self, c_in, c_out, channel_dim=1, *, lam=1e-3, bias=False, dtype=torch.float32):
        super().__init__(c_in, c_out, channel_dim, bias=bias, dtype=dtype)
        self.lam = float(lam)

    def _map(self, x):
        w = self.weight
        if not self.training:
            w = torch.where(w.abs() < 1e-4, torch.zeros_like(w), w)
        return F.linear(x, w, self.bias)

    def project_(self, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Soft-threshold at ``lr * lam``, in Adam's metric when ``optimizer`` is Adam: Adam
        moves each entry by about ``lr`` whatever its gradient's scale, so a plain ``lr * lam``
        threshold was ~1/sqrt(v) times too weak to make any zero (sparsity 0.0 at lam = 1e-3);
        dividing it by Adam's ``sqrt(v_hat) + eps`` is the proximal step of ``lam * |W|_1`` in the
        same preconditioned geometry as the loss step (proximal Adam)."""
        with torch.no_grad():
            w = self.weight
            thresh: torch.Tensor | float = lr * self.lam
            st = optimizer.state.get(w, {}) if isinstance(optimizer, torch.optim.Adam) else {}
            if "exp_avg_sq" in st:
                group = next(g for g in optimizer.param_groups if any(p is w for p in g["params"]))
                beta2, eps = group["betas"][1], group["eps"]
                step = float(st["step"])
                v_hat = st["exp_avg_sq"] / (1.0 - beta2**step)
                thresh = lr * self.lam / (v_hat.sqrt() + eps)
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - thresh, min=0.0))

    def sparsity(self) -> float:
        return float((self.weight.detach().abs() <= 1e-3).double().mean())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lam={self.lam:g}"


class LowRankStitch(StitchLayer):
    """``up @ down`` with ``down (r, c_in)`` and ``up (c_out, r)``: 2 r C parameters."""

    kind = "low_rank"

    def __init__(self, c_in, c_out, channel_dim=1, *, rank=1, bias=False, dtype=torch.float32):
        super().__init__(c_in, c_out, channel_dim)
        if rank > min(c_in, c_out):
            raise ShapeError(f"rank {rank} exceeds the widths ({c_in} -> {c_out})")
        self.rank = int(rank)
        self.down = nn.Parameter(nn.Linear(c_in, rank, bias=False, dtype=dtype).weight.detach())
        self.up = nn.Parameter(nn.Linear(rank, c_out, bias=False, dtype=dtype).weight.detach())
        self.bias = _bias_param(c_out, bias, dtype)

    def _map(self, x):
        return F.linear(F.linear(x, self.down), self.up, self.bias)

    def set_(self, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.up.copy_(up)
            self.down.copy_(down)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    def init_identity_(self) -> None:
        raise UnknownLayerKindError(
            "a low-rank layer cannot be the identity; use init='closed_form'"
        )

    def fit_(self, stats, *, bias, ridge, score):
        fitted = solvers.reduced_rank(stats, self.rank, bias=bias, ridge=ridge)
        self.set_(*_like(self, *fitted))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"


class OrthogonalStitch(StitchLayer):
    """An orthogonal ``(c, c)`` matrix kept orthogonal by ``torch``'s orthogonal parametrisation."""

    kind = "orthogonal"

    def __init__(self, c_in, c_out, channel_dim=1, *, bias=False, dtype=torch.float32):
        super().__init__(c_in, c_out, channel_dim)
        lin = nn.Linear(c_in, c_out, bias=False, dtype=dtype)
        self.lin = nn.utils.parametrizations.orthogonal(lin)
        self.bias = _bias_param(c_out, bias, dtype)

    def _map(self, x):
        return F.linear(x, self.lin.weight, self.bias)

    def set_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.lin.weight = weight.to(self.lin.weight.dtype)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    def init_identity_(self) -> None:
        _set_identity(self)

    def fit_(self, stats, *, bias, ridge, score):
        self.set_(*_like(self, *solvers.procrustes(stats, bias=bias)))


class DiagonalStitch(StitchLayer):
    """``y = s * x (+ b)``: one free scale per unit, no mixing."""

    kind = "diagonal"

    def __init__(self, c_in, c_out, channel_dim=1, *, bias=False, dtype=torch.float32):
        super().__init__(c_in, c_out, channel_dim)
        self.scale = nn.Parameter(torch.ones(c_in, dtype=dtype))
        self.bias = _bias_param(c_out, bias, dtype)

    def _map(self, x):
        y = x * self.scale
        return y if self.bias is None else y + self.bias

    needs_cross_moments = False

    def set_(self, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.scale.copy_(scale)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    def fit_(self, stats, *, bias, ridge, score):
        self.set_(*_like(self, *solvers.diagonal(stats, bias=bias)))


class MonomialStitch(StitchLayer):
    """``y_i = scale[i] * x[perm[i]] (+ b_i)``, the hard form of every monomial kind.

    ``kind`` fixes what may train: ``permutation`` (scale fixed at 1), ``signed_perm`` (scale fixed in
    {-1, +1}), ``perm_scale`` (scale >= 0, projected after each step) and ``monomial`` (free scale).
    The permutation itself is discrete: it comes from a solver (``match`` or ``birkhoff``).
    """

    def __init__(self, c_in, c_out, channel_dim=1, *, kind="perm_scale", bias=False, dtype=None):
        super().__init__(c_in, c_out, channel_dim)
        if kind not in MONOMIAL_KINDS:
            raise UnknownLayerKindError(f"{kind!r} is not a monomial kind {MONOMIAL_KINDS}")
        dtype = dtype or torch.float32
        self.kind = kind
        self.family = family(kind)
        self.register_buffer("perm", torch.arange(c_in))
        ones = torch.ones(c_in, dtype=dtype)
        if self.family.free_scales:
            self.scale = nn.Parameter(ones)
        else:
            self.register_buffer("scale", ones)
        self.bias = _bias_param(c_out, bias, dtype)

    def _map(self, x):
        y = x.index_select(-1, self.perm) * self.scale
        return y if self.bias is None else y + self.bias

    def set_(self, perm: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        if sorted(perm.tolist()) != list(range(self.c_in)):
            raise ShapeError(f"perm must be a permutation of 0..{self.c_in - 1}")
        with torch.no_grad():
            self.perm.copy_(perm)
            self.scale.copy_(scale)
            if self.bias is not None and bias is not None:
                self.bias.copy_(bias)

    needs_cross_moments = False

    def fit_(self, stats, *, bias, ridge, score):
        perm, scale, b = solvers.match(stats, self.kind, bias=bias, score=score)
        self.set_(perm.to(self._device()), *_like(self, scale, b))

    def init_random_(self, generator: torch.Generator) -> None:
        """A random permutation with unit scales (the paper's random init of a monomial layer)."""
        perm = torch.randperm(self.c_in, generator=generator)
        self.set_(perm, torch.ones(self.c_in, dtype=self._dtype()))

    def project_(self, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        if self.family.free_scales:
            with torch.no_grad():
                self.scale.copy_(self.family.clip_scales(self.scale))

    def element(self) -> MonomialElement:
        """The layer as a ``groups.MonomialElement`` (same convention).

        A fitted ``perm_scale`` layer can have zero scales (``project_`` clamps negative ones to
        0, e.g. for units that are dead in B): it is then not invertible, not a group element,
        and this raises ``InvalidElementError`` naming those units rather than handing out an
        element whose inverse is NaN."""
        scale = self.scale.detach().cpu().clone()
        bad = torch.nonzero(~torch.isfinite(scale) | (scale == 0)).flatten().tolist()
        if bad:
            raise InvalidElementError(
                f"the fitted stitch has zero (or non-finite) scale at output unit(s) {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}: it maps those units to nothing, so it is not "
                "an invertible group element. Use the layer itself (layer(x)), or set those "
                "scales to a positive value yourself if you need an element"
            )
        return MonomialElement(self.perm.detach().cpu(), scale)

    def sparsity(self) -> float:
        return 1.0 - 1.0 / self.c_in  # the paper's convention for G_ReLU layers

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kind={self.kind}"


def sinkhorn(w: torch.Tensor, iters: int) -> torch.Tensor:
    """Alternate row then column normalisation ``iters`` times; zero rows/columns stay zero."""
    for _ in range(int(iters)):
        r = w.sum(dim=1, keepdim=True)
        w = w / torch.where(r > 0, r, torch.ones_like(r))
        c = w.sum(dim=0, keepdim=True)
        w = w / torch.where(c > 0, c, torch.ones_like(c))
    return w


def hungarian(w: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` maximising ``sum_i w[i, perm[i]]``, on ``w``'s device."""
    return best_assignment(w).to(w.device)


class BirkhoffStitch(StitchLayer):
    """The paper's relaxed G_ReLU layer: ``S = W diag(s)`` with W doubly stochastic while training.

    Training: ``y = W (s * x)`` (``s`` ignored while ``use_scale`` is False, the warm-up). After each
    step ``W <- Sinkhorn(ReLU(W))`` and ``s <- ReLU(s)``. Evaluation: W is rounded to the permutation
    ``P = Hungarian(W)`` (cached until the next step). ``regularization()`` is ``-alpha ||W||_F``,
    which pushes W towards the vertices (the permutations, of largest Frobenius norm).
    """

    def __init__(
        self,
        c,
        channel_dim=1,
        *,
        kind="perm_scale",
        alpha=0.1,
        sinkhorn_iters=16,
        generator=None,
        dtype=torch.float32,
    ):
        super().__init__(c, c, channel_dim)
        # Sinkhorn relaxes a permutation; the optional scale is positive: groups inside G_ReLU.
        if kind not in GROUP_KINDS or not family(kind) <= POSITIVE_MONOMIAL:
            raise UnknownLayerKindError(
                f"the birkhoff solver handles 'perm_scale' and 'permutation', not {kind!r}; "
                "use solver='match'"
            )
        self.kind = kind
        self.alpha, self.sinkhorn_iters = float(alpha), int(sinkhorn_iters)
        u = torch.rand(c, c, generator=generator, dtype=torch.float64)
        self.weight = nn.Parameter(sinkhorn(u, 100).to(dtype))
        self.scale = nn.Parameter(torch.ones(c, dtype=dtype))
        self.use_scale = False
        self._hard: torch.Tensor | None = None

    def _s(self) -> torch.Tensor:
        if self.use_scale and family(self.kind).free_scales:
            return self.scale
        return torch.ones_like(self.scale)

    def hard_perm(self) -> torch.Tensor:
        if self._hard is None:
            self._hard = hungarian(self.weight)
        return self._hard

    def _map(self, x):
        if self.training:
            return F.linear(x * self._s(), self.weight)
        perm = self.hard_perm()
        return x.index_select(-1, perm) * self._s()[perm]

    def project_(self, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        with torch.no_grad():
            self.weight.copy_(sinkhorn(self.weight.clamp(min=0.0), self.sinkhorn_iters))
            self.scale.clamp_(min=0.0)
        self._hard = None

    def regularization(self) -> torch.Tensor:
        return -self.alpha * torch.linalg.matrix_norm(self.weight)

    def to_monomial(self, bias: bool = False) -> MonomialStitch:
        """The hard layer this relaxation evaluates to (``y_i = s[p_i] x[p_i]``)."""
        layer = MonomialStitch(
            self.c_in, self.c_out, self.channel_dim, kind=self.kind, bias=bias,
            dtype=self.scale.dtype,
        )  # fmt: skip
        perm = self.hard_perm().cpu()
        layer.set_(perm, self._s().detach().cpu()[perm])
        return layer.to(self.scale.device)

    def sparsity(self) -> float:
        return 1.0 - 1.0 / self.c_in

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha:g}, use_scale={self.use_scale}"


def make_layer(
    kind: str,
    arg: float | int | None,
    c_in: int,
    c_out: int,
    channel_dim: int = 1,
    *,
    bias: bool = False,
    dtype: torch.dtype = torch.float32,
) -> StitchLayer:
    """A fresh (PyTorch-default or identity initialised) stitch layer of a resolved ``kind``.

    Raises ``ShapeError`` when a square kind gets ``c_in != c_out``.
    """
    if kind in SQUARE_KINDS and c_in != c_out:
        raise ShapeError(
            f"a {kind!r} stitch layer is square but model A has {c_in} channels at the site and "
            f"model B {c_out}; use 'full', ('low_rank', r) or ('lasso', lam) between widths"
        )
    common = dict(bias=bias, dtype=dtype)
    if kind == "lasso":
        return LassoStitch(c_in, c_out, channel_dim, lam=float(arg), **common)
    if kind == "low_rank":
        return LowRankStitch(c_in, c_out, channel_dim, rank=int(arg), **common)
    if kind == "diagonal":
        return DiagonalStitch(c_in, c_out, channel_dim, **common)
    if kind not in GROUP_KINDS:
        raise UnknownLayerKindError(f"unknown resolved stitch kind {kind!r}")
    fam = family(kind)
    if fam.monomial:
        return MonomialStitch(c_in, c_out, channel_dim, kind=kind, **common)
    dense = OrthogonalStitch if fam is ORTHOGONAL else FullStitch
    return dense(c_in, c_out, channel_dim, **common)
