"""torchvision-style models this project did not shape (ResNet-50 bottlenecks, MobileNetV2,
DenseNet, U-Net, squeeze-excitation, GroupNorm, an LSTM): every spec verifies, in float64 and
float32, and the patterns get their groups (or are frozen by name where they have none here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.groups import PERMUTATION, family
from intertwiner.models import reference as R
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.check import _run

CASES = {
    "resnet50": (lambda: R.ResNet50(width=4, layers=(1, 1, 1, 1), num_classes=5), (2, 3, 32, 32)),
    "mobilenetv2": (lambda: R.MobileNetV2(width=8), (2, 3, 16, 16)),
    "densenet": (lambda: R.DenseNet(), (2, 3, 8, 8)),
    "unet": (lambda: R.UNet(), (2, 3, 16, 16)),
    "squeeze_excite": (lambda: R.SqueezeExcite(), (2, 3, 8, 8)),
    "groupnorm": (lambda: R.GroupNormNet(), (2, 3, 8, 8)),
    "lstm": (lambda: R.LSTMTagger(), (2, 5, 4)),
    "resnext": (lambda: R.ResNeXtBlockNet(), (2, 3, 6, 6)),
}


def _build(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    build, shape = CASES[name]
    model = build().to(dtype).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics as after training, not the identity
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model, torch.randn(*shape, generator=gen).to(dtype)


@pytest.fixture(scope="module")
def specs():
    import warnings

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LSTM's flat weights warn during export
        for name in CASES:
            model, x = _build(name)
            out[name] = (model, x, trace(model, x))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_function_preserved_float64(specs, name):
    model, x, spec = specs[name]
    assert not spec.dropped
    ref = _run(model, x)
    for seed in range(2):
        new = apply(
            model, spec, random_elements(spec, generator=torch.Generator().manual_seed(seed))
        )
        assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < 1e-9


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "unet", "squeeze_excite"])
def test_function_preserved_float32(specs, name):
    _, _, spec64 = specs[name]
    model, x = _build(name, torch.float32)
    ref = _run(model, x)
    g = random_elements(spec64, generator=torch.Generator().manual_seed(2))
    new = apply(model, spec64, g)
    assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_resnet50_sites_in_every_block(specs):
    names = specs["resnet50"][2].names
    for stage in range(1, 5):
        inner = [n for n in names if n.startswith(f"layer{stage}.0.relu")]
        assert len(inner) == 3, names  # two hidden ReLUs and the block's output stream


def test_mobilenet_depthwise_passes_a_monomial_through(specs):
    spec = specs["mobilenetv2"][2]
    site = spec.site("blocks.1.conv.2")  # expand ReLU6 -> depthwise -> BN -> ReLU6
    assert site.group.family.name == "permutation"  # ReLU6 = hardtanh(0, 6): no scaling
    acted = {(a.name, a.kind) for a in site.actions}
    assert ("blocks.1.conv.3.weight", "P") in acted  # depthwise filters permuted


def test_unet_decoder_and_skips(specs):
    spec = specs["unet"][2]
    for name in ("enc1.2", "enc2.2", "mid.2", "dec2.2", "dec1.2"):
        assert name in spec.names
    enc1 = spec.site("enc1.2")
    assert any(a.name == "dec1.0.weight" and a.channels for a in enc1.actions)  # skip channels


def test_squeeze_excitation_gate_moves_with_the_channels(specs):
    site = specs["squeeze_excite"][2].site("act")
    acted = {(a.name, a.kind) for a in site.actions}
    assert ("fc2.weight", "P") in acted and ("conv.weight", "A") in acted
    assert site.group.family.name == "positive_monomial"


def test_groupnorm_splits_the_space_into_blocks(specs):
    spec = specs["groupnorm"][2]
    blocks = [s for s in spec.sites if any("GroupNorm" in r for r in s.restrictions)]
    assert [s.width for s in blocks] == [4, 4]
    assert all(s.group.family.name == "permutation" for s in blocks)


def test_lstm_hidden_units_are_a_permutation_site(specs):
    """The LSTM's hidden units permute (all four gate blocks together: ``_rules_recurrent``), its
    input ReLU keeps G_ReLU (W_ih reads it linearly), and the MLP after it keeps its symmetry."""
    spec = specs["lstm"][2]
    assert spec.names == ["relu", "rnn.hidden_l0", "relu_1"]
    hidden = next(s for s in spec.sites if s.name == "rnn.hidden_l0")
    assert family(hidden.group.family) is PERMUTATION and hidden.width == 8
    assert not any("rnn" in name for name, _ in spec.frozen)


def test_grouped_convolution_splits_both_sides_into_groups(specs):
    spec = specs["resnext"][2]
    inner = [s for s in spec.sites if any("grouped convolution" in r for r in s.restrictions)]
    assert sorted(s.width for s in inner) == [4, 4, 4, 4]  # 2 input and 2 output blocks
    within = {
        a.within for s in inner for a in s.actions if a.name == "conv2.weight" and a.axis == 1
    }
    assert within == {(0, 0, 4), (0, 4, 4)}  # group j's input channels act in group j's rows
