"""Matrix group families: GL_n, O_n, permutations, signed permutations and monomial groups.

Each family samples elements, tests membership and projects a matrix onto its nearest element in
Frobenius norm. Families are stateless singletons; ``FAMILIES[name]`` looks one up by name.
Subgroup order (each contained in the next where an arrow is drawn):
``Permutation -> SignedPermutation -> Monomial -> GeneralLinear``,
``Permutation -> PositiveMonomial -> Monomial``, ``SignedPermutation -> Orthogonal -> GeneralLinear``,
``Permutation -> ScaledPermutation -> PositiveMonomial`` (``c P``, one common factor c > 0);
``Reversal -> Permutation``: the two-element group {I, J} of the identity and the order reversal
is contained in every family (the lattice's bottom).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from intertwiner import _validate
from intertwiner.errors import InvalidElementError, UnsupportedGroupError
from intertwiner.groups._elements import DenseElement, GroupElement, MonomialElement

# Smallest scale `project` returns for the monomial families when the nearest point lies on the
# boundary (a zero or wrong-signed entry): the infimum is not attained inside the group.
MIN_SCALE = 1e-12


def _as_square(matrix: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A real, finite, square floating matrix (integers converted); see ``_validate``."""
    return _validate.square_matrix(matrix, "matrix")


def _size(n: int) -> int:
    return _validate.positive_int(n, "n (the group size)", hint="the number of neurons")


def _atol(atol: float) -> float:
    return _validate.finite_number(atol, "atol", low=0.0)


def best_assignment(gain: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``perm`` (n_rows,) maximising ``sum_i gain[i, perm[i]]``: the one linear-assignment solver
    of the library (scipy's Hungarian method). ``gain`` is (n_rows, n_cols), n_rows <= n_cols."""
    g = gain.detach().cpu().double().numpy() if isinstance(gain, torch.Tensor) else gain
    rows, cols = linear_sum_assignment(np.asarray(g, dtype=np.float64), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


class Family:
    """A family of matrix groups, one group per size n."""

    name: str = ""
    #: Human-readable description, e.g. "P D, D > 0".
    description: str = ""
    #: True when elements are MonomialElement (permutation + scale).
    monomial: bool = False
    #: Continuous degrees of freedom of the size-n group, as a function of n.
    dof: str = ""
    #: Other names accepted by ``family()``; the first is the short name stitching and reports use.
    aliases: tuple[str, ...] = ()
    #: Monomial families: the set the diagonal scales live in ("one", "sign", "positive", "any",
    #: or "common": one positive number shared by every unit).
    scales: str = ""
    #: The family phi(G) falls in when phi forgets signs (abs, even or non-integer powers).
    unsigned_name: str = ""
    #: Monomial families: whether the permutation part ranges over every permutation (False for
    #: ``Reversal``, whose permutation part is the identity or the order reversal). Consumers that
    #: match units freely (a linear assignment, a trained permutation) need it, or ``best_perm``.
    any_permutation: bool = True

    @property
    def short_name(self) -> str:
        """The name stitch kinds and reports use: ``"perm_scale"`` for G_ReLU's family, ``"full"``
        for GL, ``"signed_perm"``, else the family name."""
        return self.aliases[0] if self.aliases and self.aliases[0] != "o" else self.name

    @property
    def free_scales(self) -> bool:
        """Monomial families whose diagonal scales vary continuously (trainable)."""
        return self.scales in ("positive", "any")

    @property
    def common_scale(self) -> bool:
        """A monomial family whose elements scale every unit by one common factor c > 0 (``c P``):
        one continuous degree of freedom, not one per unit (``free_scales`` is False)."""
        return self.scales == "common"

    @property
    def flips_signs(self) -> bool:
        """Monomial families whose scales can be negative (a unit may be matched to its negation)."""
        return self.scales in ("sign", "any")

    def clip_scales(self, scale: torch.Tensor) -> torch.Tensor:
        """``scale`` moved into the closure of this monomial family's scale set (what a projected
        gradient step keeps): positive scales clamp at 0; signs and ones are fixed sets."""
        if self.scales == "positive":
            return scale.clamp(min=0.0)
        if self.scales == "sign":
            return torch.where(scale < 0, -torch.ones_like(scale), torch.ones_like(scale))
        if self.scales == "one":
            return torch.ones_like(scale)
        if self.scales == "common":  # the nearest vector c 1 with c >= 0 (L2): the clamped mean
            return scale.mean().clamp(min=0.0).expand_as(scale).clone()
        return scale

    def image(self, phi: object = None) -> Family:
        """The family of ``phi(A)`` for A in this family (``phi``: a ``Phi`` or its stored form):
        phi = abs, an even power or a non-integer power (which needs positive scales) squares the
        signs away."""
        from intertwiner.groups._phi import as_phi  # _phi builds on this module

        if self.unsigned_name and as_phi(phi).forgets_signs:
            return FAMILIES[self.unsigned_name]
        return self

    @property
    def preserves_inner_products(self) -> bool:
        """Every element is orthogonal (permutations, signed permutations, O(n)): norms, inner
        products and Gram matrices are invariant."""
        return self <= ORTHOGONAL

    def __le__(self, other: object) -> bool:
        """Subgroup order: ``a <= b`` when family ``a`` is contained in family ``b``."""
        if not isinstance(other, Family):
            return NotImplemented
        return self.name in _SUBGROUPS[other.name]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return self <= other and self != other

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return other <= self

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Family):
            return NotImplemented
        return other < self

    def subgroups(self) -> tuple[Family, ...]:
        """Every family contained in this one (itself included), in ``FAMILIES`` order."""
        return tuple(f for f in FAMILIES.values() if f.name in _SUBGROUPS[self.name])

    def larger(self) -> tuple[Family, ...]:
        """The smallest families strictly containing this one (empty for GL)."""
        return tuple(FAMILIES[n] for n in LARGER[self.name])

    def fit_scales(
        self, cross: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pair, the scale ``s`` in this monomial family's scale set minimising
        ``second * s^2 - 2 * cross * s``: returns ``(gain, s)``, gain being the decrease from 0.

        Broadcasts. A linear assignment on ``gain`` is the least-squares fit of ``y ~ s x[perm]``
        (cross = E[x y], second = E[x^2]); with ``second = 1`` it is the nearest element of a
        matrix. Where ``second`` is 0 the gain is 0 and the scale 1 (any scale is as good).
        """
        if not self.monomial:
            raise UnsupportedGroupError(f"{self.name} is not a monomial family: no pair scales")
        if self.common_scale:
            raise UnsupportedGroupError(
                f"{self.name} shares one scale between all units, so no scale is fitted per "
                "pair: use project (one matrix) or groups.fit_element (statistics), which fit the "
                "permutation and the common scale together"
            )
        cross, second = torch.broadcast_tensors(cross, second)
        ok = second > 0
        safe = torch.where(ok, second, torch.ones_like(second))
        # The quadratic is minimised by the least-squares scale moved into the set's closure.
        s = torch.where(ok, self.clip_scales(cross / safe), torch.ones_like(cross))
        gain = torch.where(ok, 2 * cross * s - second * s * s, torch.zeros_like(cross))
        return gain, s

    def best_perm(self, gain: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Monomial families: the permutation part ``perm`` (n,) allowed in this family that
        maximises ``sum_i gain[i, perm[i]]`` (every permutation: the Hungarian method)."""
        return best_assignment(gain)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> GroupElement:
        raise NotImplementedError

    def identity(self, n: int, dtype: torch.dtype = torch.float64) -> GroupElement:
        n = _size(n)
        if self.monomial:
            return MonomialElement(torch.arange(n), torch.ones(n, dtype=dtype))
        return DenseElement(torch.eye(n, dtype=dtype))

    def contains(self, matrix: torch.Tensor | GroupElement, atol: float = 1e-8) -> bool:
        raise NotImplementedError

    def project(self, matrix: torch.Tensor) -> GroupElement:
        """The element nearest to ``matrix`` in Frobenius norm."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Family) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _randperm(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(n, generator=generator)


class _MonomialFamily(Family):
    """Shared logic for families of matrices ``diag(scale) @ P``."""

    monomial = True

    def _sample_scale(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype
    ) -> torch.Tensor:
        raise NotImplementedError

    def _scale_ok(self, scale: torch.Tensor, atol: float) -> bool:
        raise NotImplementedError

    def _best_scale(self, entries: torch.Tensor) -> torch.Tensor:
        """The nearest invertible scale to each matched entry (boundary points nudged inside)."""
        s = self.fit_scales(entries, torch.ones_like(entries))[1]
        if self.scales in ("positive", "any"):
            sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
            s = sign * s.abs().clamp_min(MIN_SCALE)
        return s

    def sample(self, n, generator=None, dtype=torch.float64):
        n = _size(n)
        perm = _randperm(n, generator)
        return MonomialElement(perm, self._sample_scale(n, generator, dtype))

    def contains(self, matrix, atol=1e-8):
        atol = _atol(atol)
        if isinstance(matrix, MonomialElement):
            # Elements are checked when built; re-check in case perm/scale were edited since.
            try:
                _validate.permutation(matrix.perm, "perm")
                _validate.scales(matrix.scale, "scale")
            except InvalidElementError:
                return False
            return self._scale_ok(matrix.scale, atol)
        m = _as_square(matrix.matrix() if isinstance(matrix, GroupElement) else matrix)
        nonzero = m.abs() > atol
        if not (bool((nonzero.sum(0) == 1).all()) and bool((nonzero.sum(1) == 1).all())):
            return False
        return self._scale_ok(m[nonzero], atol)

    def project(self, matrix):
        m = _as_square(matrix)
        md = m.detach().cpu().double()
        # ||M - A||^2 = ||M||^2 - sum_i gain(M[i, perm[i]]): the best entries win the assignment.
        perm = self.best_perm(self.fit_scales(md, torch.ones_like(md))[0])
        entries = m[torch.arange(m.shape[0]), perm]
        return MonomialElement(perm, self._best_scale(entries).to(m.dtype))


class _UnitScales(_MonomialFamily):
    """A family of permutation matrices: every scale is 1."""

    dof = "0"
    scales = "one"

    def _sample_scale(self, n, generator, dtype):
        return torch.ones(n, dtype=dtype)

    def _scale_ok(self, scale, atol):
        return bool(((scale - 1).abs() <= atol).all())


class Permutation(_UnitScales):
    name = "permutation"
    description = "P"


class SignedPermutation(_MonomialFamily):
    name = "signed_permutation"
    description = "P D, D = diag(+-1)"
    dof = "0"
    aliases = ("signed_perm",)
    scales = "sign"
    unsigned_name = "permutation"

    def _sample_scale(self, n, generator, dtype):
        return torch.randint(0, 2, (n,), generator=generator).to(dtype) * 2 - 1

    def _scale_ok(self, scale, atol):
        return bool(((scale.abs() - 1).abs() <= atol).all())


class PositiveMonomial(_MonomialFamily):
    """G_ReLU: permutation times positive diagonal."""

    name = "positive_monomial"
    description = "P D, D > 0"
    dof = "n"
    aliases = ("perm_scale", "g_relu", "grelu")
    scales = "positive"

    def _sample_scale(self, n, generator, dtype):
        # Log-normal scales with mean 1, as the paper's sanity test draws them.
        g = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.exp(g - 0.5).to(dtype)

    def _scale_ok(self, scale, atol):
        return bool((scale > atol).all())


# -- positive scalar times permutation (issue 24) ----------------------------------------------
class ScaledPermutation(_MonomialFamily):
    """``c P`` with one c > 0 for every unit: what survives where a one-number parameter (a
    scalar bias, StarReLU's ``s relu(x)^2 + b``, HGNetV2's ``LearnableAffineBlock``) must move with
    the features: the number takes the common factor (``b -> c b``, ``s -> s / c``). Not
    orthogonal; its intersection with signed permutations (or O(n)) is the permutations."""

    name = "scaled_permutation"
    description = "c P, c > 0"
    dof = "1"
    aliases = ("scaled_perm", "c_perm")
    scales = "common"

    def _sample_scale(self, n, generator, dtype):
        # one log-normal factor with mean 1, as PositiveMonomial draws each of its scales
        g = torch.randn(1, generator=generator, dtype=torch.float64)
        return torch.exp(g - 0.5).expand(n).clone().to(dtype)

    def _scale_ok(self, scale, atol):
        if not bool((scale > atol).all()):
            return False
        return bool(((scale - scale[0]).abs() <= atol * scale[0].clamp_min(1.0)).all())

    def project(self, matrix):
        # ||M - c P||^2 = ||M||^2 - 2 c sum_i M[i, perm i] + c^2 n: for every c > 0 the best perm
        # maximises the matched sum (Hungarian on M), then c = that sum / n (the closed form),
        # nudged inside (c > 0) when the sum is not positive.
        m = _as_square(matrix)
        perm = best_assignment(m.detach().cpu().double())
        entries = m[torch.arange(m.shape[0]), perm]
        c = entries.mean().clamp_min(MIN_SCALE)
        return MonomialElement(perm, c.expand(m.shape[0]).clone())


class Monomial(_MonomialFamily):
    """Permutation times any invertible diagonal."""

    name = "monomial"
    description = "P D, D invertible"
    dof = "n"
    scales = "any"
    unsigned_name = "positive_monomial"

    def _sample_scale(self, n, generator, dtype):
        g = torch.randn(n, generator=generator, dtype=torch.float64)
        sign = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
        return (sign * torch.exp(g - 0.5)).to(dtype)

    def _scale_ok(self, scale, atol):
        return bool((scale.abs() > atol).all())


def reversal_perm(n: int) -> torch.Tensor:
    """The order reversal J of size n as a permutation index: ``(J x)_i = x[n - 1 - i]``."""
    return torch.arange(n - 1, -1, -1)


def is_reversal(element: GroupElement, atol: float = 1e-6) -> bool:
    """Whether ``element`` is the reversal J (and not the identity: for n = 1, J = I is not); a
    dense element counts when its matrix is within ``atol`` of J's."""
    if element.n < 2:
        return False
    rev = reversal_perm(element.n)
    if isinstance(element, MonomialElement):
        return bool(torch.equal(element.perm.cpu(), rev))
    m = element.matrix().detach().cpu().double()
    return bool((m - torch.eye(element.n, dtype=torch.float64)[rev]).abs().max() <= atol)


class Reversal(_UnitScales):
    """{I, J}: the identity and the reversal of the feature order, ``(J x)_i = x[n - 1 - i]``.

    What survives a convolution that slides along the feature axis (ECA's ``conv1d`` over the
    channels) with symmetric zero padding: ``conv_k(J a) = J conv_flip(k)(a)``. A permutation,
    hence contained in every family; sampling draws I or J with probability 1/2 each."""

    name = "reversal"
    description = "I or J (J reverses the order)"
    any_permutation = False

    def sample(self, n, generator=None, dtype=torch.float64):
        n = _size(n)
        flip = bool(torch.randint(0, 2, (1,), generator=generator))
        perm = reversal_perm(n) if flip else torch.arange(n)
        return MonomialElement(perm, torch.ones(n, dtype=dtype))

    def contains(self, matrix, atol=1e-8):
        if not super().contains(matrix, atol):
            return False
        m = matrix if isinstance(matrix, GroupElement) else None
        if m is None:
            mat = _as_square(matrix)
            perm = (mat.abs() > _atol(atol)).to(torch.int8).argmax(1)
        else:
            perm = m.perm if isinstance(m, MonomialElement) else m.matrix().abs().argmax(1)
        n = int(perm.shape[0])
        return bool(torch.equal(perm.cpu(), torch.arange(n))) or bool(
            torch.equal(perm.cpu(), reversal_perm(n))
        )

    def best_perm(self, gain):
        """The better of I (the diagonal's sum) and J (the anti-diagonal's): ties keep I."""
        g = torch.as_tensor(gain).detach().cpu().double()
        if g.dim() != 2 or g.shape[0] != g.shape[1]:
            raise UnsupportedGroupError(
                f"the reversal family matches two spaces of one width (a square gain), got "
                f"{tuple(g.shape)}: pad or cut the features to one width, or use permutation"
            )
        n = g.shape[0]
        rev = reversal_perm(n)
        keep = float(torch.diagonal(g).sum())
        flip = float(g[torch.arange(n), rev].sum())
        return rev if flip > keep else torch.arange(n)


def _haar_orthogonal(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    g = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    # Sign correction makes the distribution Haar (Mezzadri 2007).
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1
    return (q * d).to(dtype)


class Orthogonal(Family):
    name = "orthogonal"
    description = "O(n)"
    dof = "n(n-1)/2"
    aliases = ("o",)

    def sample(self, n, generator=None, dtype=torch.float64):
        return DenseElement(_haar_orthogonal(_size(n), generator, dtype))

    def contains(self, matrix, atol=1e-8):
        atol = _atol(atol)
        m = _as_square(matrix.matrix() if isinstance(matrix, GroupElement) else matrix)
        eye = torch.eye(m.shape[0], dtype=m.dtype)
        return bool(((m.T @ m - eye).abs() <= atol).all())

    def project(self, matrix):
        m = _as_square(matrix)
        u, _, vh = torch.linalg.svd(m)
        return DenseElement(u @ vh)  # polar factor: nearest orthogonal matrix


class GeneralLinear(Family):
    name = "general_linear"
    description = "GL(n)"
    dof = "n^2"
    aliases = ("full", "gl")

    def sample(self, n, generator=None, dtype=torch.float64):
        # U diag(s) V^T with singular values in [1/2, 2]: generic, yet well conditioned so that
        # verification errors measure the symmetry, not round-off.
        n = _size(n)
        u = _haar_orthogonal(n, generator, torch.float64)
        v = _haar_orthogonal(n, generator, torch.float64)
        s = 0.5 * 4.0 ** torch.rand(n, generator=generator, dtype=torch.float64)
        return DenseElement(((u * s) @ v.T).to(dtype))

    def contains(self, matrix, atol=1e-8):
        atol = _atol(atol)
        m = _as_square(matrix.matrix() if isinstance(matrix, GroupElement) else matrix)
        return bool(torch.linalg.svdvals(m.double()).min() > atol)

    def project(self, matrix):
        m = _as_square(matrix)
        if not self.contains(m, atol=0.0):
            # Singular matrices are limits of invertible ones; nudge the zero singular values.
            u, s, vh = torch.linalg.svd(m)
            m = (u * s.clamp_min(MIN_SCALE)) @ vh
        return DenseElement(m.clone())


PERMUTATION = Permutation()
SIGNED_PERMUTATION = SignedPermutation()
POSITIVE_MONOMIAL = PositiveMonomial()
MONOMIAL = Monomial()
ORTHOGONAL = Orthogonal()
GENERAL_LINEAR = GeneralLinear()
SCALED_PERMUTATION = ScaledPermutation()

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        PERMUTATION,
        # c P between permutation and positive monomial (FAMILIES lists every family
        # after its subgroups: ``subgroups()`` keeps this order and its last entry is the family)
        SCALED_PERMUTATION,
        SIGNED_PERMUTATION,
        POSITIVE_MONOMIAL,
        MONOMIAL,
        ORTHOGONAL,
        GENERAL_LINEAR,
    )
}

# The smallest families that strictly contain each family: used by tests to show non-invariance.
LARGER: dict[str, tuple[str, ...]] = {
    "permutation": ("signed_permutation", "positive_monomial"),
    "signed_permutation": ("monomial", "orthogonal"),
    "positive_monomial": ("monomial",),
    "monomial": ("general_linear",),
    "orthogonal": ("general_linear",),
    "general_linear": (),
}
# c P sits between permutation and positive monomial.
LARGER["permutation"] = (*LARGER["permutation"], "scaled_permutation")
LARGER["scaled_permutation"] = ("positive_monomial",)

# Subgroup relation (reflexive, transitive), for intersections of restrictions.
_SUBGROUPS: dict[str, set[str]] = {
    "permutation": {"permutation"},
    "signed_permutation": {"permutation", "signed_permutation"},
    "positive_monomial": {"permutation", "positive_monomial"},
    "monomial": {"permutation", "signed_permutation", "positive_monomial", "monomial"},
    "orthogonal": {"permutation", "signed_permutation", "orthogonal"},
    "general_linear": set(FAMILIES),
}
# c P contains the permutations and lies in the (positive) monomial families and GL.
_SUBGROUPS["scaled_permutation"] = {"permutation", "scaled_permutation"}
for _big in ("positive_monomial", "monomial"):
    _SUBGROUPS[_big].add("scaled_permutation")

# -- the reversal family {I, J} (issue 24: ECA's conv1d over channels). Its own block: it is
# contained in every family (a permutation), so it joins every subgroup set and is the bottom.
REVERSAL = Reversal()
# First in FAMILIES, which lists families smallest first (``subgroups`` keeps that order; the
# largest of a metric's invariance families is its last).
_others = dict(FAMILIES)
FAMILIES.clear()
FAMILIES.update({REVERSAL.name: REVERSAL, **_others})
LARGER[REVERSAL.name] = (PERMUTATION.name,)
for _contained in _SUBGROUPS.values():
    _contained.add(REVERSAL.name)
_SUBGROUPS[REVERSAL.name] = {REVERSAL.name}
BOTTOM = REVERSAL  # the family contained in every other: what ``intersect`` always finds


# Every accepted spelling of a family, lower case: names and aliases (``"perm_scale"``, ``"gl"``).
ALIASES: dict[str, str] = {
    **{f.name: f.name for f in FAMILIES.values()},
    **{a: f.name for f in FAMILIES.values() for a in f.aliases},
}


class UnknownFamilyError(UnsupportedGroupError, KeyError):
    """A family name or alias that ``family()`` does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def family(name: str | Family) -> Family:
    """Look a family up by name or alias, case-insensitively (``"positive_monomial"``,
    ``"perm_scale"``, ``"G_ReLU"``, ``"full"``, ...), or pass a ``Family`` through."""
    if isinstance(name, Family):
        return name
    key = name.strip().lower() if isinstance(name, str) else name
    if key in ALIASES:
        return FAMILIES[ALIASES[key]]
    raise UnknownFamilyError(
        f"unknown group {name!r}; choose one of {', '.join(sorted(FAMILIES))} or an alias "
        f"({', '.join(sorted(set(ALIASES) - set(FAMILIES)))}){_activation_hint(name)}"
    )


def find_family(name: object) -> Family | None:
    """The family a label names (any name or alias, case-insensitively), or None for a label that
    names no family (``"identity"``, ``"low_rank_2"``): for reading stored rows whose labels mix
    families with other kinds."""
    if isinstance(name, Family):
        return name
    key = name.strip().lower() if isinstance(name, str) else None
    return FAMILIES[ALIASES[key]] if key in ALIASES else None


def _activation_hint(name: object) -> str:
    """For an activation's name given as a group ("relu", "tanh"): the family of its group."""
    # _activations imports this module: import it when the hint is needed, not at load time
    from intertwiner.groups._activations import for_activation

    try:
        group = for_activation(name)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError):
        return ""
    fam = group.family
    alias = f" ({fam.aliases[0]})" if fam.aliases else ""
    return f"; {name!r} is an activation, whose intertwiner group is {fam.name}{alias}"


def is_subgroup(a: str | Family, b: str | Family) -> bool:
    """True when family ``a`` is contained in family ``b`` (``family(a) <= family(b)``)."""
    return family(a) <= family(b)


def intersect(a: str | Family, b: str | Family) -> Family:
    """The largest family contained in both ``a`` and ``b``."""
    common = _SUBGROUPS[family(a).name] & _SUBGROUPS[family(b).name]
    # The largest common subgroup is the one containing all the others.
    for name in common:
        if common <= _SUBGROUPS[name]:
            return FAMILIES[name]
    raise AssertionError(f"unreachable: {BOTTOM.name} is a subgroup of every family")
