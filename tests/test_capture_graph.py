"""``features.capture`` reads the graph ``symmetry.trace`` reads (``symmetry._graph``): every
activation site name a spec gives captures, with the width the spec records, on models torch.fx
cannot trace too (Python control flow, Hugging Face); values equal a hand computation and move
by each site's ``phi(A)`` under a sampled group element."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.factories import GPT2Logits
from torch import nn

from intertwiner.features import LayerNotFoundError, capture
from intertwiner.models.reference import ReusedActivations
from intertwiner.symmetry import apply, random_elements, trace


class ControlFlow(nn.Module):
    """Python control flow on shapes and ``dim()``: torch.fx refuses it (a Proxy in ``if``),
    torch.export runs it. Two functional activations, one reused module."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # tokens: mean over them
            x = x.mean(1)
        h = F.relu(self.a(x))
        for _ in range(x.shape[-1] // 2):  # one pass for 3 features
            h = self.act(h)
        return self.c(F.gelu(self.b(h)))


def _hand(model: ControlFlow, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.mean(1)
    h1 = torch.relu(x @ model.a.weight.T + model.a.bias)
    h2 = torch.tanh(h1)
    h3 = F.gelu(h2 @ model.b.weight.T + model.b.bias)
    return [h1, h2, h3]


def _sites(spec) -> list[str]:
    return [a for s in spec.sites for a in s.activations]


def _check_every_site(model: nn.Module, x: torch.Tensor, seed: int = 1) -> dict:
    """Every activation name of ``trace(model, x)`` captures with the width the spec records,
    and after a sampled element ``g`` the captured features are ``move``d by ``g``."""
    spec = trace(model, x)
    names = _sites(spec)
    assert names, "the model has activation sites"
    before = capture(model, x, names)
    for s in spec.sites:
        for a in s.activations:
            ax = s.activation_axes[a]
            assert before[a].shape[ax.dim] == ax.outer * ax.n_total * ax.inner, (a, ax)
    g = random_elements(spec, generator=torch.Generator().manual_seed(seed))
    after = capture(apply(model, spec, g), x, names)
    for s in spec.sites:
        for a in s.activations:
            if names.count(a) == 1:  # a stream shared by several sites moves by all of them
                torch.testing.assert_close(after[a], s.move(a, before[a], g[s.name]))
    return before


def test_fx_cannot_trace_the_control_flow_model():
    with pytest.raises(Exception):  # noqa: B017 (fx raises TraceError or TypeError)
        torch.fx.symbolic_trace(ControlFlow())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_sites_of_a_model_fx_refuses_capture_and_equal_a_hand_computation(dtype):
    torch.manual_seed(0)
    model = ControlFlow().to(dtype)
    x = torch.randn(6, 4, 3, dtype=dtype)
    before = _check_every_site(model, x)
    spec = trace(model, x)
    assert "act" in _sites(spec)  # the module site; the others are graph nodes
    got = capture(model, x, _sites(spec))
    by_width = {t.shape[-1]: t for t in _hand(model.double(), x.double())[::2]}
    torch.testing.assert_close(got["act"].double(), _hand(model.double(), x.double())[1])
    for name, t in got.items():
        if name != "act":
            torch.testing.assert_close(t.double(), by_width[t.shape[-1]])
    assert set(before) == set(got)


def test_batches_of_another_size_reuse_nothing_stale():
    """export fixes shapes: a last, smaller batch is exported again, not refused."""
    torch.manual_seed(0)
    model = ControlFlow().double()
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    names = [n for n in _sites(trace(model, x)) if n != "act"]
    streamed = capture(model, x, names, batch_size=3)  # batches of 3, 3, 1
    whole = capture(model, x, names)
    for n in names:
        torch.testing.assert_close(streamed[n], whole[n])


def test_reused_module_and_functional_sites():
    torch.manual_seed(0)
    got = _check_every_site(ReusedActivations().double(), torch.randn(5, 3, dtype=torch.float64))
    assert {"relu", "relu#2"} <= set(got)


def test_a_bare_layer_with_an_activation_attribute():
    """``TransformerEncoderLayer.activation`` is a plain function: trace names its site
    ``activation`` (a module only on the lowered copy); capture finds it in the graph."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    got = _check_every_site(layer.double(), x)
    assert "activation" in got and got["activation"].shape == (3, 5, 12)
    hand = torch.relu(layer.linear1(layer.norm1(x + layer.self_attn(x, x, x)[0])))
    torch.testing.assert_close(got["activation"], hand)


def test_a_hugging_face_model_from_a_tiny_config():
    pytest.importorskip("transformers")
    wrapped = GPT2Logits()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with pytest.raises(Exception):  # noqa: B017 (torch.fx cannot follow GPT-2's forward)
        torch.fx.symbolic_trace(wrapped)
    got = _check_every_site(wrapped, ids)
    assert len(got) >= 2 and all(t.shape[:2] == (2, 7) for t in got.values())


def test_an_unknown_name_is_refused_naming_the_graph():
    with pytest.raises(LayerNotFoundError, match="exported graph"):
        capture(ControlFlow(), torch.randn(2, 4, 3), ["gelu_7"])


def test_every_site_of_a_resnet_with_zero_padding_shortcuts():
    """resnet20 (option A shortcuts): module sites, and ``layer2.0.shortcut.pad``, the site of the
    zero-padded channels that trace names after the op, captures the shortcut's output."""
    from intertwiner import models

    model = models.build("resnet20", width=4, seed=0).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _check_every_site(model, x)
    assert "layer2.0.shortcut.pad" in trace(model, x).names
    got = capture(model, x, ["layer1", "layer2.0.shortcut.pad"])
    torch.testing.assert_close(
        got["layer2.0.shortcut.pad"], model.layer2[0].shortcut(got["layer1"])
    )
