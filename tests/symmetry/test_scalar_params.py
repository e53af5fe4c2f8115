"""One-number parameters move with a common scale (issue 24): ``c P`` sites (``ScaledPermutation``)
where a scalar is added to every feature (``b -> c b``) or multiplies a power of ReLU
(``s -> s c^(1-k)``), never where the map is not positively homogeneous; each claimed site keeps
the function under sampled elements in float32 and float64, and the next larger group (per-unit
scales) changes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.groups import POSITIVE_MONOMIAL, SCALED_PERMUTATION, ActionKind
from intertwiner.symmetry import apply, canonicalize, random_elements, trace


class LAB(nn.Module):
    """HGNetV2's LearnableAffineBlock: ``scale * x + bias``, both one number."""

    def __init__(self, scale: float = 1.3, bias: float = 0.4):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x):
        return self.scale * x + self.bias


class ConvLab(nn.Module):
    """conv -> BN -> ReLU -> LAB -> conv (HGNetV2's ConvBNAct with use_lab)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.lab = LAB()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.lab(self.act(self.bn(self.c1(x)))))


class StarReLU(nn.Module):
    """MetaFormer's ``s * relu(x)^2 + b``."""

    def __init__(self, scale: float = 0.8, bias: float = -0.3):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.scale * self.relu(x) ** 2 + self.bias


class Mlp(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.act = act
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Affine(nn.Module):
    """``s * f(x) + b`` with one-number ``s`` and ``b`` (or per-feature ones)."""

    def __init__(self, f, width: int = 10, per_feature_scale=False, per_feature_bias=False):
        super().__init__()
        self.f = f
        n_s, n_b = (width if per_feature_scale else 1), (width if per_feature_bias else 1)
        self.scale = nn.Parameter(torch.linspace(0.7, 1.4, n_s))
        self.bias = nn.Parameter(torch.linspace(-0.5, 0.6, n_b))

    def forward(self, x):
        return self.scale * self.f(x) + self.bias


class SharedBias(nn.Module):
    """One scalar added after two different ReLU layers: one factor cannot serve both."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.bias = nn.Parameter(torch.tensor([0.7]))

    def forward(self, x):
        h = torch.relu(self.fc1(x)) + self.bias
        return self.fc3(torch.relu(self.fc2(h)) + self.bias)


def _model(name: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "conv_bn_relu_lab":
        m = ConvLab()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.data.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 5, 5)
    elif name == "starrelu_mlp":
        m, x = Mlp(StarReLU()), torch.randn(4, 6)
    elif name == "bias_after_gelu":
        m, x = Mlp(Affine(nn.GELU())), torch.randn(4, 6)
    elif name == "scale_times_nonhomogeneous":  # s * (relu(x)^2 + 1) + b: not homogeneous
        m, x = Mlp(Affine(lambda z: torch.relu(z) ** 2 + 1.0)), torch.randn(4, 6)
    elif name == "per_feature_scale_scalar_bias":
        m, x = Mlp(Affine(nn.ReLU(), per_feature_scale=True)), torch.randn(4, 6)
    elif name == "scalar_scale_per_feature_bias":
        m, x = Mlp(Affine(nn.ReLU(), per_feature_bias=True)), torch.randn(4, 6)
    elif name == "shared_scalar":
        m, x = SharedBias(), torch.randn(4, 6)
    else:  # pragma: no cover
        raise KeyError(name)
    m = m.to(dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, x.to(dtype)


MODELS = (
    "conv_bn_relu_lab",
    "starrelu_mlp",
    "bias_after_gelu",
    "scale_times_nonhomogeneous",
    "per_feature_scale_scalar_bias",
    "scalar_scale_per_feature_bias",
    "shared_scalar",
)
#: (site family, one-number parameters some site moves) per model
EXPECTED = {
    "conv_bn_relu_lab": ("scaled_permutation", {"lab.bias"}),
    "starrelu_mlp": ("scaled_permutation", {"act.scale", "act.bias"}),
    "bias_after_gelu": ("permutation", set()),
    "scale_times_nonhomogeneous": ("permutation", set()),
    "per_feature_scale_scalar_bias": ("scaled_permutation", {"act.bias"}),
    "scalar_scale_per_feature_bias": ("positive_monomial", set()),
    "shared_scalar": ("permutation", set()),
}


def _scalar_moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions if ActionKind(a.kind).scalar}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampled_elements_keep_the_function(name, dtype):
    model, x = _model(name, dtype)
    spec = trace(model, x)
    fam, moved = EXPECTED[name]
    hidden = [s for s in spec.sites if s.kind == "activation"]
    assert {s.group.family.name for s in hidden} == {fam}, spec
    assert _scalar_moved(spec) == moved
    ref = model(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for seed in range(3):
        g = random_elements(spec, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        new = apply(model, spec, g)
        out = new(x)
        assert float((out - ref).abs().max()) <= tol * (1 + float(ref.abs().max())), seed
        for p in moved:  # the number really moved (c != 1)
            assert not torch.equal(new.get_parameter(p), model.get_parameter(p))


@pytest.mark.parametrize("name", ["conv_bn_relu_lab", "starrelu_mlp"])
def test_per_unit_scales_change_the_function_where_only_c_p_is_claimed(name):
    """The next larger group (positive monomial: one scale per unit) applied through the same
    actions breaks the function: the one number cannot take different factors."""
    model, x = _model(name, torch.float64)
    spec = trace(model, x)
    (site,) = [s for s in spec.sites if s.group.family is SCALED_PERMUTATION]
    g = POSITIVE_MONOMIAL.sample(site.width, generator=torch.Generator().manual_seed(3))
    new = apply(model, spec, {site.name: g}, validate=False)
    assert float((new(x) - model(x)).abs().max()) > 1e-3
    with pytest.raises(Exception, match="not in its group"):
        apply(model, spec, {site.name: g})


def test_scalar_actions_compose_with_the_writer_and_readers():
    """conv+BN on one side, the scalar, and the reader's columns by c^-1 P^T on the other."""
    model, x = _model("conv_bn_relu_lab", torch.float64)
    spec = trace(model, x)
    (site,) = spec.sites
    kinds = {a.name: str(a.kind) for a in site.actions}
    assert kinds["bn.weight"] == "A" and kinds["bn.bias"] == "A" and kinds["c1.weight"] == "P"
    assert kinds["lab.bias"] == "c(phi(A))" and kinds["c2.weight"] == "phi(A)^-T"
    g = SCALED_PERMUTATION.sample(8, generator=torch.Generator().manual_seed(5))
    c = float(g.scale[0])
    new = apply(model, spec, {site.name: g})
    torch.testing.assert_close(new.lab.bias, c * model.lab.bias)
    torch.testing.assert_close(new.lab.scale, model.lab.scale)  # degree 1: s stays
    w = model.c2.weight[:, :, 0, 0]
    torch.testing.assert_close(new.c2.weight[:, :, 0, 0], (w / c)[:, g.perm])
    torch.testing.assert_close(new(x), model(x))


def test_starrelu_scale_takes_c_to_the_one_minus_k():
    model, x = _model("starrelu_mlp", torch.float64)
    spec = trace(model, x)
    (site,) = spec.sites
    g = SCALED_PERMUTATION.sample(10, generator=torch.Generator().manual_seed(6))
    c = float(g.scale[0])
    new = apply(model, spec, {site.name: g})
    torch.testing.assert_close(new.act.scale, model.act.scale / c)  # k = 2: s c^(1 - 2)
    torch.testing.assert_close(new.act.bias, model.act.bias * c)


def test_fixed_numbers_say_why_and_moved_ones_are_not_listed():
    model, x = _model("bias_after_gelu", torch.float64)
    spec = trace(model, x)
    cov = spec.coverage(model, x)
    reasons = {t: f.reason for f in cov.frozen for t in f.tensors}
    assert "only a common factor c > 0" in reasons["act.bias"]
    assert "multiplying every feature" in reasons["act.scale"]
    model, x = _model("starrelu_mlp", torch.float64)
    spec = trace(model, x)
    assert not [f for f in spec.frozen if f[0].startswith("act.")]
    assert spec.coverage(model, x).interior_tensors == 1.0


def test_canonical_form_quotients_the_common_factor():
    model, x = _model("starrelu_mlp", torch.float64)
    spec = trace(model, x)
    ref = canonicalize(model, spec, x)
    assert ref.complete, ref.table()
    for seed in (1, 2):
        g = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        got = canonicalize(apply(model, spec, g), spec, x)
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(got.model.state_dict()[k], v, rtol=1e-9, atol=1e-12)


def test_permutation_spec_skips_the_numbers():
    model, x = _model("starrelu_mlp", torch.float64)
    spec = trace(model, x)
    ps = spec.to_permutation_spec()
    assert ps["skipped"] == {}
    assert "act.scale" not in ps["axes_to_perm"] and "act.bias" not in ps["axes_to_perm"]


def test_alignment_recovers_the_common_factor():
    """Weight matching on a c P site fits the permutation and c (``groups.fit_element``)."""
    from intertwiner.alignment import align

    model, x = _model("conv_bn_relu_lab", torch.float64)
    spec = trace(model, x)
    moved = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(1)))
    aligned = align(model, moved, example_input=x, spec=spec).model
    for (k, a), b in zip(model.state_dict().items(), aligned.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=k)


def test_teleport_moves_along_c_and_keeps_the_function():
    from intertwiner.symmetry import gradient_norm, teleport

    model, x = _model("starrelu_mlp", torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    t = teleport(model, gradient_norm(), (x, y), steps=3)
    assert t.sites == ["act.relu"] and t.objective[-1] > t.objective[0]
    assert max(t.output_change) < 1e-12
    assert float(t.model.act.scale) != pytest.approx(float(model.act.scale))


def test_c_p_is_refused_as_a_stitch_kind():
    from intertwiner.stitching._layers import UnknownLayerKindError, parse_kind

    with pytest.raises(UnknownLayerKindError, match="one common scale"):
        parse_kind("scaled_perm")


class GatedDepthwise(nn.Module):
    """EfficientViM's pattern: a per-channel gate ``sigmoid(alpha)`` (a function of a parameter)
    freezes the stream; a depthwise conv + BatchNorm then reads the frozen stream; the heads'
    logits are mixed by ``softmax(weights)[i]`` (numbers computed from a parameter)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.alpha = nn.Parameter(torch.linspace(-1.0, 1.0, 8))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])
        self.weights = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        # a gate that is a function of alpha not commuting with permutations (cumsum)
        y = h + h * torch.sigmoid(self.alpha.cumsum(0)).view(1, -1, 1, 1)
        z = (y + self.bn(self.dw(y))).mean((2, 3))
        w = self.weights.softmax(-1)
        return w[0] * self.heads[0](z) + w[1] * self.heads[1](z)


def test_parameters_on_frozen_spaces_and_numbers_of_parameters_say_why():
    from intertwiner.symmetry._coverage import NO_REASON

    model = GatedDepthwise().double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    spec = trace(model, x)
    cov = spec.coverage(model, x)
    reasons = {t: f.reason for f in cov.frozen for t in f.tensors}
    assert NO_REASON not in reasons.values(), reasons
    for t in ("dw.weight", "bn.weight", "bn.bias", "alpha"):
        assert "computed from parameter alpha" in reasons[t], (t, reasons[t])
    assert "one number computed from parameter weights (softmax" in reasons["weights"]


class ParamGate(nn.Module):
    """EfficientViM's ``x + sigmoid(alpha).view(2, -1, 1, 1)[k] * (branch_k(x) - x)``: per-channel
    factors computed from one parameter, rows used on one stream."""

    def __init__(self, f=torch.sigmoid):
        super().__init__()
        self.f = f
        self.c1 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.alpha = nn.Parameter(torch.linspace(-1.0, 1.5, 16).reshape(2, 8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.f(self.alpha).view(2, -1, 1, 1)
        h = torch.relu(self.c1(x))
        h = h + a[0] * (self.dw(h) - h)
        h = h + a[1] * (torch.relu(self.pw(h)) - h)
        return self.head(h)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_per_feature_function_of_a_parameter_moves_with_the_permutation(dtype):
    model = ParamGate().to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    spec = trace(model, x)
    moved = {a.name: a for s in spec.sites for a in s.actions}
    assert moved["alpha"].axis == 1 and str(moved["alpha"].kind) == "P"
    ref = model(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for seed in range(3):
        g = random_elements(spec, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        new = apply(model, spec, g)
        assert float((new(x) - ref).abs().max()) <= tol * (1 + float(ref.abs().max()))


def test_a_function_of_a_parameter_that_mixes_features_stays_frozen():
    """The fooling variant: ``sigmoid(cumsum(alpha))`` does not commute with permutations."""
    model = ParamGate(lambda t: torch.sigmoid(t.cumsum(-1))).double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    spec = trace(model, x)
    assert "alpha" not in {a.name for s in spec.sites for a in s.actions}
    assert any("computed from parameter alpha" in r for _, r in spec.frozen)
    g = random_elements(spec, generator=torch.Generator().manual_seed(0))
    assert float((apply(model, spec, g)(x) - model(x)).abs().max()) < 1e-10


def test_zero_dim_numbers_move_too_and_canonicalise():
    """``nn.Parameter(torch.tensor(0.8))`` (shape ()) like shape (1,): moved, counted, canonical."""
    act = StarReLU()
    act.scale, act.bias = nn.Parameter(torch.tensor(0.8)), nn.Parameter(torch.tensor(-0.3))
    model = Mlp(act).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    spec = trace(model, x)
    assert _scalar_moved(spec) == {"act.scale", "act.bias"}
    assert spec.coverage(model, x).interior_tensors == 1.0
    g = random_elements(spec, generator=torch.Generator().manual_seed(2))
    moved = apply(model, spec, g)
    torch.testing.assert_close(moved(x), model(x))
    a, b = canonicalize(model, spec, x), canonicalize(moved, spec, x)
    assert a.complete
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-9, atol=1e-12)
