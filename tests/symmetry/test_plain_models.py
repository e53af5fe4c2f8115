"""Specs of models built from plain torch modules (outside the zoo), the BatchNorm/pooling rules,
the apply/check API, and clear errors for what the tracer does not support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.errors import NonFiniteError, UnsupportedModuleError
from intertwiner.groups import MonomialElement, family
from intertwiner.symmetry import (
    apply,
    assert_function_preserved,
    check,
    random_elements,
    trace,
)
from intertwiner.symmetry.check import _run

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _actions(site):
    return {(a.name, a.axis, a.kind) for a in site.actions}


def test_sequential_mlp_spec_is_exact():
    model = nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()
    x = torch.randn(4, 5, dtype=F64, generator=_gen())
    spec = trace(model, x)
    assert spec.names == ["1", "3"]
    relu, tanh = spec.sites
    assert (relu.width, relu.group.name, relu.group.family.name) == (
        8,
        "G_ReLU",
        "positive_monomial",
    )
    assert (tanh.width, tanh.group.family.name) == (6, "signed_permutation")
    assert _actions(relu) == {
        ("0.weight", 0, "A"),
        ("0.bias", 0, "A"),
        ("2.weight", 1, "phi(A)^-T"),
    }
    assert _actions(tanh) == {
        ("2.weight", 0, "A"),
        ("2.bias", 0, "A"),
        ("4.weight", 1, "phi(A)^-T"),
    }
    assert relu.activations == ["1"] and relu.kind == "activation" and not relu.restrictions
    assert "4.weight" not in {a.name for s in spec.sites for a in s.actions if a.axis == 0}
    assert check(model, spec, x, generator=_gen(1)) < 1e-12
    assert spec.frozen == [("4", "the model output")]
    assert "G_ReLU" in str(spec) and "positive" not in spec.table().split("\n")[0]


def test_sequential_mlp_transform_matches_the_textbook_formula():
    """(W1, b1, W2) -> (A W1, A b1, W2 A^-1) written out by hand, for A in G_ReLU."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    spec = trace(model, torch.randn(2, 3, dtype=F64))
    g = spec.sites[0].group.sample(4, generator=_gen(2))
    new = apply(model, spec, {"1": g})
    a = g.matrix()
    torch.testing.assert_close(new[0].weight, a @ model[0].weight)
    torch.testing.assert_close(new[0].bias, a @ model[0].bias)
    torch.testing.assert_close(new[2].weight, model[2].weight @ torch.linalg.inv(a))
    torch.testing.assert_close(new[2].bias, model[2].bias)


class ResMLP(nn.Module):
    def __init__(self, d=6, h=10, depth=2):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(self.norm(x))


def test_residual_mlp_with_layernorm_and_gelu():
    model = ResMLP().double()
    x = torch.randn(5, 4, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(1))
    assert spec.names == ["stream:inp", "blocks.0.2", "blocks.1.2"]
    stream = spec.site("stream:inp")
    assert stream.kind == "stream" and stream.group.family.name == "permutation"
    assert any("LayerNorm" in r for r in stream.restrictions)
    assert stream.writers == ["inp", "blocks.0.3", "blocks.1.3"]
    names = {a.name for a in stream.actions}
    assert {"blocks.0.0.weight", "blocks.0.0.bias", "norm.weight", "out.weight"} <= names
    assert spec.site("blocks.0.2").group.name == "G_GELU"
    assert_function_preserved(model.float(), x.float(), dtype=torch.float32, generator=_gen(2))


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer(norm_first):
    layer = nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=12, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    x = torch.randn(3, 5, 8, generator=_gen())
    spec = assert_function_preserved(layer, x, generator=_gen(1))
    # The input is fixed, so the residual stream has no symmetry; attention and the MLP do.
    assert spec.names == [
        "self_attn.heads",
        "self_attn.qk0",
        "self_attn.vo0",
        "self_attn.qk1",
        "self_attn.vo1",
        "activation",
    ]
    heads = spec.site("self_attn.heads")
    assert heads.group.family.name == "permutation" and heads.width == 2
    qk = spec.site("self_attn.qk1")
    assert qk.kind == "attention_qk" and qk.group.family.name == "general_linear"
    assert qk.width == 4
    rows = {(a.kind, a.channels) for a in qk.actions if a.name == "self_attn.in_proj_weight"}
    assert rows == {("A", (4, 5, 6, 7)), ("A^-T", (12, 13, 14, 15))}  # q rows, k rows of head 1
    vo = spec.site("self_attn.vo0")
    assert ("self_attn.out_proj.weight", 1, "A^-T") in _actions(vo)
    assert spec.site("activation").group.name == "G_ReLU"
    assert_function_preserved(layer, x, dtype=torch.float32, generator=_gen(2))


def test_transformer_encoder_with_embedding_has_a_stream():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.enc = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(8, 2, 12, 0.0, activation="gelu", norm_first=True),
                2,
                enable_nested_tensor=False,
            )
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.enc(self.embed(x)).mean(0))

    spec = assert_function_preserved(Net(), torch.randn(5, 3, 3, generator=_gen()))
    stream = spec.site("stream:embed")
    assert stream.group.family.name == "permutation"
    assert "enc.layers.1.self_attn" in stream.writers and "enc.layers.1.linear2" in stream.writers


def test_multihead_attention_spec():
    mha = nn.MultiheadAttention(6, 3, batch_first=True).double()
    x = torch.randn(2, 4, 6, dtype=F64, generator=_gen())
    spec = trace(mha, (x, x, x))
    assert len(spec.sites) == 7 and spec.sites[0].name == "heads"
    g = random_elements(spec, generator=_gen(1))
    new = apply(mha, spec, g)
    torch.testing.assert_close(new(x, x, x)[0], mha(x, x, x)[0], rtol=1e-10, atol=1e-12)
    # Attention weights are invariant too.
    torch.testing.assert_close(new(x, x, x)[1], mha(x, x, x)[1], rtol=1e-10, atol=1e-12)
    # A per-head map on q alone (k untouched) changes the scores: the q/k pairing matters.
    bad = apply(mha, spec, {"qk0": g["qk0"]})
    bad.in_proj_weight.data[6:8] = mha.in_proj_weight.data[6:8]
    with torch.no_grad():
        assert float((bad(x, x, x)[0] - mha(x, x, x)[0]).abs().max()) > 1e-6


def _cnn(act, pool, bn=False):
    layers = [nn.Conv2d(2, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [act, pool, nn.Flatten(), nn.Linear(4 * 4 * 4, 3)]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize(
    ("act", "pool", "expected"),
    [
        (nn.ReLU(), nn.MaxPool2d(2), "positive_monomial"),
        (nn.Tanh(), nn.MaxPool2d(2), "permutation"),  # sign flips do not commute with max
        (nn.Tanh(), nn.AvgPool2d(2), "signed_permutation"),
        (nn.Identity(), nn.AvgPool2d(2), "general_linear"),  # any channel map
        (nn.Identity(), nn.MaxPool2d(2), "positive_monomial"),
    ],
)
def test_pooling_restrictions(act, pool, expected):
    model = _cnn(act, pool)
    x = torch.randn(3, 2, 8, 8, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(1))
    (site,) = spec.sites
    assert site.group.family.name == expected
    # The head reads the flattened (C, H, W) block structure: 16 columns per channel.
    (head,) = [a for a in site.actions if a.name == "4.weight"]
    assert (head.axis, head.n_total, head.inner) == (1, 4, 16)
    if expected != "general_linear":
        larger = family("monomial").sample(4, generator=_gen(3))
        new = apply(model, spec, {site.name: larger}, validate=False)
        assert float((_run(new, x) - _run(model, x)).abs().max()) > 1e-6


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (nn.ReLU(), "positive_monomial"),
        (nn.Tanh(), "signed_permutation"),
        (nn.Identity(), "monomial"),  # negative scales too: GL restricted by BN
    ],
)
def test_batchnorm_scale_moves_onto_gamma_and_is_exact_in_train_mode(act, expected):
    model = _cnn(act, nn.AvgPool2d(2), bn=True)
    model[1].running_mean.normal_(generator=_gen(5))
    model[1].running_var.uniform_(0.5, 2.0, generator=_gen(6))
    x = torch.randn(3, 2, 8, 8, dtype=F64, generator=_gen())
    spec = trace(model, x)
    site = spec.sites[0]
    assert site.group.family.name == expected
    kinds = {(a.name, a.kind) for a in site.actions}
    assert {("0.weight", "P"), ("0.bias", "P"), ("1.weight", "A"), ("1.bias", "A")} <= kinds
    assert {("1.running_mean", "P"), ("1.running_var", "P")} <= kinds
    g = site.group.sample(4, generator=_gen(7))
    new = apply(model, spec, {site.name: g})
    torch.testing.assert_close(new(x), model(x), rtol=1e-12, atol=1e-12)  # eval
    torch.testing.assert_close(new.train()(x), model.train()(x), rtol=1e-10, atol=1e-12)  # train
    # gamma carries the scale (negative ones included), the statistics only the permutation.
    a = g.matrix()
    torch.testing.assert_close(new[1].weight, a @ model[1].weight)
    perm = g.perm
    torch.testing.assert_close(new[1].running_var, model[1].running_var[perm])


def test_batchnorm_after_activation():
    """BN reading a ReLU output: gamma, running_var permuted; beta, running_mean get phi(A)."""
    model = (
        nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 2))
        .double()
        .eval()
    )
    model[2].running_mean.normal_(generator=_gen(1))
    model[2].running_var.uniform_(0.5, 2.0, generator=_gen(2))
    x = torch.randn(4, 3, dtype=F64, generator=_gen())
    spec = assert_function_preserved(model, x, generator=_gen(3))
    kinds = {(a.name, a.kind) for a in spec.sites[0].actions}
    assert {("2.weight", "P"), ("2.running_var", "P"), ("2.bias", "phi(A)")} <= kinds
    assert ("2.running_mean", "phi(A)") in kinds


def test_resnet20_option_a_ties_stages():
    from tests._support.factories import build_zoo

    model, x = build_zoo("resnet20", "relu")
    spec = trace(model, x)
    stem = spec.site("stem.act")
    # Lookup by any activation of the stream; stage 2 is shared with a padding site.
    assert spec.site("layer1.1.act2") is stem
    assert [s.name for s in spec.sites_for("layer2.0.act2")] == [
        "stem.act",
        "layer2.0.shortcut.pad",
    ]
    with pytest.raises(KeyError, match="several sites"):
        spec.site("layer2.0.act2")
    # Width 2 -> 4 with one zero channel before and one after: carried channels are 1, 2.
    carried = [a for a in stem.actions if a.name == "layer2.0.conv2.weight"]
    assert [(a.kind, a.channels) for a in carried] == [("P", (1, 2))]
    pad = spec.site("layer2.0.shortcut.pad")
    assert [a.channels for a in pad.actions if a.name == "layer2.0.conv2.weight"] == [(0, 3)]
    assert pad.activation_axes["layer2.0.act2"].channels == (0, 3)
    # Stage 3 (width 8, two zero channels each side): stage 2's channels sit at 2..5.
    in3 = {a.channels for a in stem.actions if a.name == "layer3.0.conv2.weight"}
    assert in3 == {(3, 4)}


def test_apply_leaves_model_untouched_and_validates():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = trace(model, torch.randn(2, 3, dtype=F64))
    apply(model, spec, random_elements(spec, generator=_gen()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    neg = MonomialElement(torch.arange(4), -torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="not in its group"):
        apply(model, spec, {"1": neg})
    with pytest.raises(KeyError, match="unknown sites"):
        apply(model, spec, {"nope": neg})


def test_random_elements_are_seeded():
    model = ResMLP().double()
    spec = trace(model, torch.randn(2, 4, dtype=F64))
    a = random_elements(spec, generator=_gen(9))
    b = random_elements(spec, generator=_gen(9))
    assert all(torch.equal(a[k].matrix(), b[k].matrix()) for k in a)


def test_spec_json_roundtrip_is_plain_data():
    import json

    spec = trace(ResMLP(), torch.randn(2, 4))
    data = json.loads(json.dumps(spec.to_dict()))
    assert [s["name"] for s in data["sites"]] == spec.names


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


class _Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 2)

    def forward(self, x):
        # after an activation (unflattened straight from ``a`` it is SK-Net's radix split, a
        # site of width 3 acting on both blocks: tests/symmetry/test_family_gaps.py); here the
        # activated space is cut into two blocks tied to one map (``_rules_shape.tied_split``)
        return self.b(torch.relu(self.a(x)).unflatten(-1, (2, 3)).sum(1))


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.c(self.a(x) * self.b(x))


@pytest.mark.parametrize(
    ("model", "x", "match"),
    [
        (nn.Sequential(nn.Linear(4, 6), nn.Softmax(-1), nn.Linear(6, 2)), (3, 4), "Softmax"),
        (_Twice(), (3, 4), "more than once"),
    ],
)
def test_unsupported_patterns_raise(model, x, match):
    x = torch.randn(*(x or (2, 2, 4, 4)))
    with pytest.raises(UnsupportedModuleError, match=match) as info:
        trace(model, x, frontend="fx")
    assert "Supported:" in str(info.value) or "supported" in str(info.value)


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (nn.Sequential(nn.Conv2d(2, 4, 1, groups=2), nn.ReLU(), nn.Conv2d(4, 1, 1)), (2, 2, 4, 4)),
        (_Gate(), (3, 4)),
        (_Split(), (3, 4)),
    ],
)
def test_patterns_the_old_fx_front_end_refused_are_traced_soundly(model, x):
    """Grouped convolutions, gated products and an activated space viewed as blocks: the torch.fx
    front end refused them; the one ATen front end has rules for them (``frontend="fx"``
    included), and what it returns keeps the function."""
    inputs = torch.randn(*x, generator=_gen())
    spec = assert_function_preserved(model, inputs)
    assert spec.sites
    assert trace(model, inputs, frontend="fx").names == spec.names


def test_lstm_with_a_state_from_the_input_is_unsupported_with_a_clear_message():
    """An LSTM is traced (tests/symmetry/test_recurrent.py); an initial state computed from the
    input would have to move with the hidden units, which the fx front end refuses by name."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 4)
            self.rnn = nn.LSTM(4, 4)

        def forward(self, x):
            h0 = self.inp(x).mean(0, keepdim=True)
            return self.rnn(self.inp(x), (h0, h0))[0]

    with pytest.raises(UnsupportedModuleError, match="lstm.*initial state"):
        trace(Net(), torch.randn(5, 2, 3), frontend="fx")


@pytest.mark.parametrize("by_keyword", [False, True])
def test_cross_attention_is_unsupported(by_keyword):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.mha = nn.MultiheadAttention(4, 2)

        def forward(self, x):
            kv = self.b(x)
            if by_keyword:
                return self.mha(query=self.a(x), key=kv, value=kv)[0]
            return self.mha(self.a(x), kv, kv)[0]

    with pytest.raises(UnsupportedModuleError, match="cross-attention"):
        trace(Net(), torch.randn(3, 2, 4), frontend="fx")


def test_non_finite_outputs_are_reported():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[2].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteError):
        assert_function_preserved(model, torch.ones(2, 2, dtype=F64))


def test_reused_activation_module_gets_one_site_per_call():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    spec = assert_function_preserved(Net(), torch.randn(4, 3, generator=_gen()))
    assert spec.names == ["relu", "relu#2"]
    assert [s.width for s in spec.sites] == [4, 5]


@pytest.mark.parametrize(
    "layer", [nn.MaxPool1d(2), nn.AvgPool1d(2), nn.Conv1d(2, 4, 1), nn.AdaptiveAvgPool1d(1)]
)
def test_unbatched_1d_ops_on_features_raise(layer):
    """A 1d pool/conv on (N, features) treats it as unbatched and mixes the features."""
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), layer)
    with pytest.raises(UnsupportedModuleError, match="unbatched"):
        trace(model, torch.randn(2, 3), frontend="fx")
