"""Splicing on the exported graph (``export_trace``): the graph ``symmetry.trace`` and
``features.capture`` read, so models torch.fx refuses stitch too; with B = A and identity
stitches the spliced model is A on any batch size, and training reaches the stitch layers only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.factories import GPT2Logits
from torch import nn

from intertwiner.stitching import StitchConfig, StitchedModel, UnknownSiteError, stitch
from intertwiner.stitching._splice import build_back, build_front, export_trace, find_cut


class ControlFlowRes(nn.Module):
    """A residual MLP whose forward branches on ``x.dim()`` (torch.fx refuses it): sites ``act``
    (a module), the functional ``relu``/``gelu`` nodes; ``act`` lies inside the residual branch."""

    def __init__(self, seed: int = 0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.fc0 = nn.Linear(64, 12, dtype=dtype)
        self.fc1, self.fc2 = nn.Linear(12, 16, dtype=dtype), nn.Linear(16, 12, dtype=dtype)
        self.head = nn.Linear(12, 10, dtype=dtype)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        s = F.relu(self.fc0(x))
        s = F.gelu(self.fc2(self.act(self.fc1(s))) + s)
        return self.head(s)


def _identity_splice(model: nn.Module, at: str, x0: torch.Tensor) -> StitchedModel:
    gm = export_trace(model, at, x0)
    cut = find_cut(gm, at)
    stitches = nn.ModuleDict({n: nn.Identity() for n in cut.names})
    return StitchedModel(build_front(gm, cut), stitches, build_back(gm, at, cut), cut.names)


def test_fx_refuses_the_model():
    with pytest.raises(Exception):  # noqa: B017 (fx raises TraceError or TypeError)
        torch.fx.symbolic_trace(ControlFlowRes())


@pytest.mark.parametrize("at", ["act", "relu", "gelu", "fc1"])
def test_self_splice_with_identities_is_the_model_on_any_batch(at):
    model = ControlFlowRes().eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=g)
    spliced = _identity_splice(model, at, x0)
    for n in (8, 3, 17):  # the graph's batch dimension is free
        x = torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=g)
        torch.testing.assert_close(spliced(x), model(x), rtol=0, atol=1e-12)


def test_a_site_in_the_residual_branch_cuts_the_stream_too():
    model = ControlFlowRes().eval()
    gm = export_trace(model, "act", torch.randn(4, 64, dtype=torch.float64))
    cut = find_cut(gm, "act")
    assert cut.names[0] == "tanh" and cut.residual and cut.targets[0] == "act"
    assert "relu" in cut.names  # the stream the skip path reads after the branch


def test_gradients_reach_the_stitch_layer_and_b_stays_frozen():
    model = ControlFlowRes().eval()
    x = torch.randn(6, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gm = export_trace(model, "relu", x)
    cut = find_cut(gm, "relu")
    assert cut.names == ["relu"]
    s = nn.Linear(12, 12, dtype=torch.float64)
    spliced = StitchedModel(
        build_front(gm, cut), nn.ModuleDict({"relu": s}), build_back(gm, "relu", cut), cut.names
    )
    spliced.train()
    spliced(x).square().sum().backward()
    assert s.weight.grad is not None and s.weight.grad.abs().sum() > 0
    frozen = list(spliced.back.parameters()) + list(spliced.front.parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    # the gradient is the true one: the same stitch layer put in by hand
    s2 = nn.Linear(12, 12, dtype=torch.float64)
    s2.load_state_dict(s.state_dict())
    h = s2(F.relu(model.fc0(x)))
    out = model.head(F.gelu(model.fc2(model.act(model.fc1(h))) + h))
    out.square().sum().backward()
    torch.testing.assert_close(s.weight.grad, s2.weight.grad)


def test_unknown_and_whole_model_sites_are_refused():
    x = torch.randn(2, 64, dtype=torch.float64)
    with pytest.raises(UnknownSiteError, match="not a module of ControlFlowRes"):
        export_trace(ControlFlowRes(), "nope", x)
    with pytest.raises(UnknownSiteError, match="whole model"):
        export_trace(ControlFlowRes(), "", x)


def test_stitch_end_to_end_on_a_model_fx_refuses(digits64):
    a, b = ControlFlowRes(seed=0), ControlFlowRes(seed=1)
    cfg = StitchConfig(init="closed_form", epochs=1, batch_size=64, progress=False, seed=0)
    r = stitch(a, b, "relu", layer="full", data=digits64, config=cfg)
    assert r.site == "relu" and r.layer.matrix().shape == (12, 12)
    assert 0.0 <= r.acc_stitched <= 1.0


def test_a_hugging_face_model_splices_exactly_and_its_masks_pass_through():
    pytest.importorskip("transformers")
    model = GPT2Logits()
    g = torch.Generator().manual_seed(0)
    at = "m.transformer.h.0.mlp.act"
    spliced = _identity_splice(model, at, torch.randint(0, 50, (2, 7), generator=g))
    ids = torch.randint(0, 50, (3, 7), generator=g)
    torch.testing.assert_close(spliced(ids), model(ids), rtol=0, atol=1e-12)
    cut = find_cut(export_trace(model, at, ids), at)
    streams = [n for n, p in zip(cut.names, cut.passthrough) if not p]
    assert len(streams) == 2 and cut.residual  # the site and the residual stream, no mask


def test_trace_with_an_example_is_the_export_path():
    from intertwiner.stitching._splice import trace

    model = ControlFlowRes().eval()
    x = torch.randn(4, 64, dtype=torch.float64)
    assert find_cut(trace(model, "act", x), "act").names[0] == "tanh"  # an ATen node name
