"""Real model code from the timm and torchvision registries (extra ``[zoo]``; skipped without it):
random weights (never downloads), random BatchNorm statistics and per-feature parameters, small
configurations and inputs. ``trace`` must return a spec under which a random element of every site
at once leaves the function unchanged (float64), moving at least the share of parameter tensors
measured when the test was written (a regression guard: the tracer may only find more).

The full sweep over the registries is ``benchmarks/trace_zoo.py``."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from intertwiner.symmetry import check, random_elements, trace
from intertwiner.testing import import_timm, import_torchvision, randomize_model

_HAVE = {m: importlib.util.find_spec(m) is not None for m in ("timm", "torchvision")}
needs_timm = pytest.mark.skipif(not _HAVE["timm"], reason="timm not installed (extra [zoo])")
needs_tv = pytest.mark.skipif(
    not _HAVE["torchvision"], reason="torchvision not installed (extra [zoo])"
)


def _timm(name: str, **kwargs):
    return lambda: import_timm().create_model(name, pretrained=False, num_classes=5, **kwargs)


def _timm_class(module: str, cls: str, **kwargs):
    def build():
        timm = import_timm()
        return getattr(getattr(timm.models, module), cls)(num_classes=5, **kwargs)

    return build


def _tv(name: str, **kwargs):
    return lambda: import_torchvision().models.get_model(
        name, weights=None, num_classes=5, **kwargs
    )


def _tv_class(module: str, cls: str, **kwargs):
    def build():
        tv = import_torchvision()
        return getattr(getattr(tv.models, module), cls)(num_classes=5, **kwargs)

    return build


def _swin_v2():
    tv = import_torchvision()
    swin = tv.models.swin_transformer
    return swin.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
        block=swin.SwinTransformerBlockV2, downsample_layer=swin.PatchMergingV2, num_classes=5,
    )  # fmt: skip


def _gmixer():
    """gMixer (``gmixer_12_224``'s block: GluMlp token and channel MLPs with SiLU), 2 blocks."""
    timm = import_timm()
    return timm.models.mlp_mixer.MlpMixer(
        num_classes=5, num_blocks=2, embed_dim=32, img_size=32, patch_size=8,
        mlp_ratio=(1.0, 4.0), mlp_layer=timm.layers.GluMlp, act_layer=torch.nn.SiLU,
    )  # fmt: skip


#: name -> (builder, input size, floor of the interior tensor coverage, heads expected).
#: Floors: the coverage measured when the test was written (timm 1.0.31, torchvision 0.28), less
#: < 0.01; what the tracer freezes in each is listed in benchmarks/results/trace_zoo.md.
TIMM = {
    "resnet10t": (_timm("resnet10t"), 32, 1.0, 0),
    "convnext_atto": (_timm("convnext_atto", depths=(1, 1, 1, 1)), 32, 0.21, 0),
    "vit_tiny": (_timm("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8), 32, 0.93, 0),
    "mixer": (
        _timm_class("mlp_mixer", "MlpMixer", num_blocks=2, embed_dim=32, img_size=32, patch_size=8),
        32,
        0.20,
        0,
    ),
    "test_efficientnet": (_timm("test_efficientnet"), 32, 1.0, 0),
    # softmax over branches (SK), attention pooling over positions (GC), a token-mixing GLU
    "skresnet18": (_timm("skresnet18"), 32, 1.0, 0),
    "gcresnet33ts": (_timm("gcresnet33ts"), 32, 0.94, 0),
    "gmixer": (_gmixer, 32, 0.93, 0),
    "mobilenetv3_small_050": (_timm("mobilenetv3_small_050"), 32, 1.0, 0),
    "swin": (
        _timm_class(
            "swin_transformer",
            "SwinTransformer",
            depths=(1, 1),
            num_heads=(1, 2),
            embed_dim=16,
            img_size=32,
            window_size=4,
        ),
        32,
        0.5,
        0,
    ),
}
TORCHVISION = {
    "resnet18": (_tv("resnet18"), 32, 1.0, 0),
    "vit": (
        _tv_class(
            "vision_transformer",
            "VisionTransformer",
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
        ),
        32,
        1.0,
        2,
    ),
    "swin": (
        _tv_class(
            "swin_transformer",
            "SwinTransformer",
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=[4, 4],
        ),
        32,
        0.88,
        0,
    ),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), 32, 1.0, 0),
    "swin_v2": (_swin_v2, 32, 1.0, 2),  # cosine attention: heads with logit scale and cpb MLP
}
SLOW = {
    ("timm", "efficientnet_b0"): (_timm("efficientnet_b0"), 32, 1.0, 0),
    ("torchvision", "mobilenet_v3_small"): (_tv("mobilenet_v3_small"), 32, 1.0, 0),
}


def _check_model(build, size: int, floor: float, heads: int) -> None:
    torch.manual_seed(0)
    model = build().eval()
    randomize_model(model, 0)
    model = model.double()
    x = torch.randn(
        2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    spec = trace(model, x)
    assert spec.sites, "no site found"
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for k, inp in enumerate((x, fresh)):
        with torch.no_grad():
            ref = float(model(inp).abs().max())
        els = random_elements(spec, generator=torch.Generator().manual_seed(10 + k))
        assert check(model, spec, inp, elements=els) <= 1e-10 * ref
    cov = spec.coverage(model, x)
    assert cov.interior_tensors >= floor, cov.summary()
    assert sum(s.kind == "attention_heads" for s in spec.sites) >= heads


@needs_timm
@pytest.mark.parametrize("name", list(TIMM))
def test_timm_model(name):
    _check_model(*TIMM[name])


@needs_tv
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_model(name):
    _check_model(*TORCHVISION[name])


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SLOW), ids=lambda k: f"{k[0]}-{k[1]}")
def test_larger_zoo_model(key):
    if not _HAVE[key[0]]:
        pytest.skip(f"{key[0]} not installed (extra [zoo])")
    _check_model(*SLOW[key])


@needs_tv
def test_import_torchvision_is_idempotent():
    """The shim defines the operator schemas once; a second import finds them and the models."""
    tv = import_torchvision()
    assert import_torchvision() is tv
    assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
    assert "resnet18" in tv.models.list_models(module=tv.models)
