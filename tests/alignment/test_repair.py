"""REPAIR: interpolated channel statistics at every site, endpoints untouched, plain models out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner.alignment import interpolate, lerp, merge, repair
from intertwiner.alignment._repair import _measure, _Repairer
from intertwiner.errors import InvalidOptionError


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)
    ).double()


def _layernorm() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 12),
        nn.LayerNorm(12),
        nn.ReLU(),
        nn.Linear(12, 10),
        nn.GELU(),
        nn.Linear(10, 3),
    ).double()


def _bn_cnn() -> nn.Module:
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).double()
    with torch.no_grad():  # non-trivial running statistics and affine
        bn = m[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


BUILDERS = {"mlp": (_mlp, (6,)), "layernorm": (_layernorm, (6,)), "bn_cnn": (_bn_cnn, (1, 6, 6))}


def _pair(kind: str, n: int = 96):
    build, shape = BUILDERS[kind]
    torch.manual_seed(0)
    a = build()
    torch.manual_seed(1)
    b = build()
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return a, b, x


def _labelled(x: torch.Tensor):
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(3))
    return torch.utils.data.TensorDataset(x, y)


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_repaired_model_has_interpolated_statistics_at_every_site(kind, alpha):
    a, b, x = _pair(kind)
    rep = _Repairer([a, b], x, batch_size=40)  # several batches: streaming sums
    assert len(rep.points) == 2  # both hidden sites found, with their producers
    m = rep.apply(lerp(a, b, alpha), [1 - alpha, alpha])
    got = _measure(m, rep.points, x, batch_size=1000, max_samples=None)  # one-shot
    for k, (mean, std) in enumerate(got):
        (ma, sa), (mb, sb) = rep.stats[0][k], rep.stats[1][k]
        assert torch.allclose(mean, (1 - alpha) * ma + alpha * mb, atol=1e-5, rtol=0)
        assert torch.allclose(std, (1 - alpha) * sa + alpha * sb, atol=1e-5, rtol=0)
    # Independent check of the first site against the textbook moments of the captured input.
    with torch.no_grad():
        z = m[: int(rep.points[0].producer) + 1](x)  # the input of the first activation
    z = z.transpose(0, 1).reshape(z.shape[1], -1) if z.dim() == 4 else z.T
    (ma, sa), (mb, sb) = rep.stats[0][0], rep.stats[1][0]
    assert torch.allclose(z.mean(1), (1 - alpha) * ma + alpha * mb, atol=1e-10)
    assert torch.allclose(z.std(1, unbiased=False), (1 - alpha) * sa + alpha * sb, atol=1e-10)
    # A plain model of the same architecture, and the unrepaired line is really off.
    assert m.state_dict().keys() == a.state_dict().keys()
    (mean0, std0) = _measure(lerp(a, b, alpha), rep.points[:1], x, batch_size=64, max_samples=None)[
        0
    ]
    assert float((std0 - ((1 - alpha) * sa + alpha * sb)).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_repair_leaves_endpoints_unchanged(kind):
    a, b, x = _pair(kind)
    data = _labelled(x)
    plain = interpolate(a, b, 3, data, reset_bn=False)
    fixed = interpolate(a, b, 3, data, reset_bn=False, repair=True, bn_data=x)
    assert fixed.losses[0] == plain.losses[0] and fixed.losses[-1] == plain.losses[-1]
    assert fixed.losses[1] != plain.losses[1]
    # Repairing A toward itself (weights 1, 0) is the identity to round-off.
    again = repair(a, [a, b], x, weights=[1.0, 0.0])
    with torch.no_grad():
        assert torch.allclose(again(x), a(x), atol=1e-10)


def test_merge_with_repair_matches_weighted_statistics():
    a, b, x = _pair("bn_cnn")
    m = merge([a, b], method=None, bn_data=x, repair=True, weights=[1.0, 3.0])
    rep = _Repairer([a, b], x)
    for k, (mean, std) in enumerate(_measure(m, rep.points, x, batch_size=64, max_samples=None)):
        (ma, sa), (mb, sb) = rep.stats[0][k], rep.stats[1][k]
        assert torch.allclose(mean, 0.25 * ma + 0.75 * mb, atol=1e-8)
        assert torch.allclose(std, 0.25 * sa + 0.75 * sb, atol=1e-8)
    with pytest.raises(InvalidOptionError, match="bn_data"):
        merge([a, b], method=None, repair=True)


def test_repair_refuses_a_producer_without_bias():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    with pytest.raises(InvalidOptionError, match="no bias"):
        repair(m, [m, m], x)


def test_repair_float32_models():
    a, b, x = _pair("mlp")
    a, b, x = a.float(), b.float(), x.float()
    m = repair(lerp(a, b, 0.5), [a, b], x)
    assert next(m.parameters()).dtype == torch.float32
    rep = _Repairer([a, b], x)
    ((_, std),) = _measure(m, rep.points[:1], x, batch_size=64, max_samples=None)
    target = 0.5 * (rep.stats[0][0][1] + rep.stats[1][0][1])
    assert torch.allclose(std, target, rtol=1e-4)


def test_repair_folds_into_gpt2_conv1d_columns_on_token_inputs():
    """A Hugging Face GPT-2's MLP pre-activations come from ``Conv1D`` (``x W + b``, outputs in
    W's columns); REPAIR on token ids (integers, not cast to float) gives them the interpolated
    statistics, and interpolate takes next-token targets (N, T)."""
    pytest.importorskip("transformers")
    from tests._support.factories import GPT2Logits

    a, b = GPT2Logits(seed=0), GPT2Logits(seed=1)
    ids = torch.randint(0, 50, (24, 8), generator=torch.Generator().manual_seed(0))
    rep = _Repairer([a, b], ids, batch_size=10)
    assert [p.producer for p in rep.points] == [f"m.transformer.h.{i}.mlp.c_fc" for i in (0, 1)]
    m = rep.apply(lerp(a, b, 0.5), [0.5, 0.5])
    for k, (mean, std) in enumerate(_measure(m, rep.points, ids, batch_size=24, max_samples=None)):
        (ma, sa), (mb, sb) = rep.stats[0][k], rep.stats[1][k]
        assert torch.allclose(mean, 0.5 * (ma + mb), atol=1e-8)
        assert torch.allclose(std, 0.5 * (sa + sb), atol=1e-8)
    data = torch.utils.data.TensorDataset(ids, torch.roll(ids, -1, dims=1))
    curve = interpolate(a, b, 3, data, repair=True, bn_data=ids)
    plain = interpolate(a, b, 3, data)
    assert curve.losses[0] == plain.losses[0] and curve.losses[1] != plain.losses[1]
