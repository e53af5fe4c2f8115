"""teleport: every step is a group element (the loss stays to float64 round-off) while the
objective moves: the gradient norm of a trained MLP goes up (or down)."""

from __future__ import annotations

import pytest
import torch
from tests._support.factories import TinyMLP, TinyResMLP, build_zoo, digits_splits, train_quick

from intertwiner.errors import InvalidOptionError, UnknownSiteError
from intertwiner.symmetry import gradient_norm, teleport

CE = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def batch():
    d = digits_splits(torch.float64, n_train=400, n_val=50)
    x, y = d.train.tensors
    return d, (x[:128], y[:128])


@pytest.mark.parametrize("maximize", [True, False])
def test_trained_mlp_gradient_norm_moves_loss_stays(batch, maximize):
    data, b = batch
    model = train_quick(TinyMLP(dtype=torch.float64), data, steps=60)
    res = teleport(model, gradient_norm(), b, steps=8, lr=0.5, maximize=maximize, loss_fn=CE)
    assert len(res.objective) >= 3  # steps were accepted
    if maximize:
        assert res.objective[-1] > 1.5 * res.objective[0]
    else:
        assert res.objective[-1] < 0.9 * res.objective[0]
    assert max(abs(v - res.loss[0]) for v in res.loss) <= 1e-10 * res.loss[0]
    assert max(res.output_change) <= 1e-10
    # The weights really moved (a no-op teleport would pass the loss check too).
    moved = sum(float((p - q.double()).abs().max().detach()) for p, q in
                zip(res.model.parameters(), model.parameters(), strict=True))  # fmt: skip
    assert moved > 1e-3
    assert set(res.sites) == {"act1", "act2"}


def test_residual_stream_and_attention_maps(batch):
    data, b = batch
    res_mlp = train_quick(TinyResMLP(dtype=torch.float64), data, steps=40)
    out = teleport(res_mlp, gradient_norm(), b, steps=4, loss_fn=CE)
    assert out.objective[-1] > out.objective[0] and max(out.output_change) <= 1e-10
    vit, x = build_zoo("vit", "gelu")  # GL per-head maps; permutations (gelu, LN stream) stay
    y = torch.arange(x.shape[0]) % 10
    out = teleport(vit, gradient_norm(), (x, y), steps=3, loss_fn=CE)
    assert any(".qk" in s for s in out.sites) and not any("heads" in s for s in out.sites)
    assert out.objective[-1] > out.objective[0] and max(out.output_change) <= 1e-9


def test_bad_options(batch):
    _, b = batch
    model = TinyMLP(dtype=torch.float64)
    with pytest.raises(InvalidOptionError):
        teleport(model, gradient_norm(), b, steps=2, lr=0.0)
    with pytest.raises(UnknownSiteError, match="fc9"):
        teleport(model, gradient_norm(), b, steps=1, sites=["fc9"])


def test_llama_orthogonal_stream():
    """An RMSNorm stream moves by rotations (its norm weights folded first); gradient_norm needs a
    double backward, which SDPA's CPU kernel lacks: eager attention."""
    pytest.importorskip("transformers")
    from tests.symmetry.test_hf_models import MODELS

    torch.manual_seed(0)
    model, x = MODELS["llama"]()
    model = model.double().eval()
    model.set_attn_implementation("eager")
    y = torch.randint(0, 50, x.shape, generator=torch.Generator().manual_seed(1))

    def ce(logits, target):
        return CE(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    out = teleport(model, gradient_norm(ce), (x, y), steps=3, loss_fn=ce)
    assert "stream:model.embed_tokens" in out.sites
    assert len(out.objective) == 4 and out.objective[-1] > out.objective[0]
    # LLaMA's RMSNorm computes in float32 whatever the model's dtype: its round-off bounds this.
    assert max(abs(v - out.loss[0]) for v in out.loss) <= 1e-6 * out.loss[0]
