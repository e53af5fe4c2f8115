"""Every architecture x every paper-table activation: shapes, sites, hooks, fx, configs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from intertwiner.errors import ShapeError
from intertwiner.groups import PAPER_ROWS, activation_module
from intertwiner.models import (
    ARCHITECTURES,
    ModelConfigError,
    OptionAShortcut,
    UnknownArchitectureError,
    build,
    sites,
)

TINY = {
    "mlp": {"widths": [6, 5]},
    "myrtle_cnn": {"width": 2},
    "plain_cnn": {"width": 2, "depth": 3, "strided": [1, 3]},
    "resnet20": {"width": 2, "blocks_per_stage": 1},
    "resnet18": {"width": 2},
    "vit": {"dim": 8, "depth": 2, "heads": 2, "mlp_ratio": 2},
}
N_SITES = {"mlp": 2, "myrtle_cnn": 4, "plain_cnn": 3, "resnet20": 7, "resnet18": 17, "vit": 2}
SHAPES = [(1, 28), (3, 32)]


def tiny(arch: str, seed: int = 0, **kw) -> nn.Module:
    return build(arch, seed=seed, **{**TINY[arch], **kw})


def test_registry_is_complete():
    assert set(ARCHITECTURES) == set(TINY)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("activation", PAPER_ROWS)
def test_shapes_and_sites_for_every_activation(arch, activation):
    expected_type = type(activation_module(activation))
    for c, s in SHAPES:
        model = tiny(arch, activation=activation, in_channels=c, input_size=s, num_classes=7)
        out = model(torch.randn(3, c, s, s))
        assert out.shape == (3, 7)
        names = sites(model)
        assert len(names) == N_SITES[arch]
        modules = dict(model.named_modules())
        # every site is the requested activation, and a distinct instance
        assert all(type(modules[n]) is expected_type for n in names)
        assert len({id(modules[n]) for n in names}) == len(names)
        assert model.intertwiner_config["activation"] == activation


@pytest.mark.parametrize("arch", sorted(TINY))
def test_hooks_fire_once_per_site_in_forward_order(arch):
    model = tiny(arch, in_channels=1, input_size=28)
    order: list[str] = []
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n in sites(model)
    ]
    model(torch.randn(2, 1, 28, 28))
    for h in handles:
        h.remove()
    assert order == sites(model)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("activation", PAPER_ROWS)
def test_fx_traceable(arch, activation):
    model = tiny(arch, activation=activation, in_channels=3, input_size=32).eval()
    graph_module = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    # x^d stacked 17 times overflows at init (a property of the model), hence equal_nan
    torch.testing.assert_close(graph_module(x), model(x), rtol=0, atol=0, equal_nan=True)
    # every parameter is owned by a plain module the tracer can see
    called = {n.target for n in graph_module.graph.nodes if n.op == "call_module"}
    for name, _ in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        assert owner in called or owner in dict(model.named_modules())


def test_paper_parameter_counts():
    assert sum(p.numel() for p in build("resnet20").parameters()) == 269_722
    assert sum(p.numel() for p in build("resnet18").parameters()) == 11_173_962
    assert len(sites(build("resnet20"))) == 19


def test_site_names_documented():
    assert sites(tiny("mlp")) == ["act1", "act2"]
    assert sites(tiny("myrtle_cnn")) == [f"block{i}.act" for i in range(1, 5)]
    r20 = build("resnet20", width=2)
    assert sites(r20)[:3] == ["stem.act", "layer1.0.act1", "layer1.0.act2"]
    assert sites(r20)[-1] == "layer3.2.act2"
    assert sites(tiny("vit")) == ["blocks.0.act", "blocks.1.act"]


def test_resnet_block_adds_residual_before_act2():
    model = tiny("resnet20", activation="tanh").eval()
    block = model.layer2[0]  # stride 2, option-A shortcut
    assert isinstance(block.shortcut, OptionAShortcut)
    x = torch.randn(2, 2, 8, 8)
    seen = {}
    block.act2.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    block(x)
    branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
    sub = x[:, :, ::2, ::2]
    padded = torch.zeros(2, 4, 4, 4)
    padded[:, 1:3] = sub  # planes//4 = 1 zero channel on each side
    torch.testing.assert_close(seen["inp"], branch + padded)


def test_resnet18_option_b_shortcut():
    model = tiny("resnet18")
    names = dict(model.named_modules())
    assert isinstance(names["layer2.0.shortcut.conv"], nn.Conv2d)
    assert names["layer2.0.shortcut.conv"].kernel_size == (1, 1)
    assert isinstance(names["layer2.0.shortcut.bn"], nn.BatchNorm2d)
    assert isinstance(names["layer1.0.shortcut"], nn.Identity)


def test_myrtle_without_batchnorm():
    model = tiny("myrtle_cnn", batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.block1.conv.bias is not None
    assert tiny("myrtle_cnn").block1.conv.bias is None


def test_vit_head_permutation_is_a_symmetry():
    """Permuting attention heads (q/k/v rows, out columns) leaves the function unchanged."""
    model = tiny("vit", dim=8, heads=4).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    attn = model.blocks[0].attn
    dh = attn.head_dim
    perm = torch.tensor([2, 0, 3, 1])
    idx = (perm.view(-1, 1) * dh + torch.arange(dh)).flatten()
    with torch.no_grad():
        for lin in (attn.q, attn.k, attn.v):
            lin.weight.copy_(lin.weight[idx])
            lin.bias.copy_(lin.bias[idx])
        attn.out.weight.copy_(attn.out.weight[:, idx])
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_seed_and_config_round_trip():
    a, b = tiny("resnet20", seed=3), tiny("resnet20", seed=3)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    c = tiny("resnet20", seed=4)
    assert not torch.equal(a.stem.conv.weight, c.stem.conv.weight)
    cfg = json.loads(json.dumps(a.intertwiner_config))
    rebuilt = build(cfg.pop("arch"), **cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in a.state_dict().items()
    }


def test_bad_configs():
    with pytest.raises(UnknownArchitectureError, match="choose one of"):
        build("alexnet")
    with pytest.raises(ModelConfigError, match="does not take"):
        build("mlp", width=3)
    with pytest.raises(ShapeError, match="divisible"):
        build("vit", input_size=28, patch_size=5)
    with pytest.raises(ShapeError):
        build("myrtle_cnn", input_size=4)
    with pytest.raises(KeyError):  # UnknownActivationError
        build("mlp", activation="not_an_activation")


def test_sites_fallback_for_foreign_models():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    assert sites(model) == ["1", "3"]
