"""Shared fixtures: tiny zoo models and one intra-op thread (tiny convs are slower with more)."""

from __future__ import annotations

import pytest
import torch

from intertwiner import models

# Tiny configs: every architecture's structure (BN, pooling, option-A/B shortcuts, attention) at
# widths that keep the whole file fast. resnet20 keeps 2 blocks per stage so that an identity
# shortcut follows each zero-padding shortcut.
ZOO = {
    "mlp": ("mlp", {"widths": (6, 5), "in_channels": 1, "input_size": 4}),
    "myrtle_cnn": ("myrtle_cnn", {"width": 2, "in_channels": 2, "input_size": 8}),
    "myrtle_cnn_nobn": (
        "myrtle_cnn",
        {"width": 2, "in_channels": 2, "input_size": 8, "batchnorm": False},
    ),
    "resnet20": (
        "resnet20",
        {"width": 2, "in_channels": 2, "input_size": 8, "blocks_per_stage": 2},
    ),
    "resnet18": ("resnet18", {"width": 2, "in_channels": 2, "input_size": 8}),
    "vit": (
        "vit",
        {"dim": 8, "depth": 2, "heads": 2, "in_channels": 2, "input_size": 8, "patch_size": 4},
    ),
}


def build_zoo(key: str, activation: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny zoo model with non-trivial BatchNorm parameters and statistics and an input batch,
    both float64, in eval mode.

    BN running statistics are calibrated on the batch (as after training), so pre-activations stay
    O(1) and x^2, x^3 networks stay finite. ResNet-20's option-A stream is never renormalised, so
    with power activations it gets one block per stage (x^3 composed 13 times overflows float64).
    """
    arch, cfg = ZOO[key]
    cfg = dict(cfg)
    if key == "resnet20" and activation.startswith("power"):
        cfg["blocks_per_stage"] = 1
    model = models.build(arch, activation=activation, seed=seed, **cfg).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(8, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=gen)
    x = x.double()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def calibrate(m, inputs):
        h = inputs[0]
        m.running_mean.copy_(h.mean(dim=(0, 2, 3)))
        var = h.var(dim=(0, 2, 3), unbiased=False)
        # A floor keeps near-constant channels from amplifying float32 round-off.
        m.running_var.copy_(var + 0.1 * var.mean())

    model.eval()
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
        # Each BN's statistics are set from its own eval-mode input in one pass, upstream first.
        hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
        model(x)
        for h in hooks:
            h.remove()
    return model, x


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
