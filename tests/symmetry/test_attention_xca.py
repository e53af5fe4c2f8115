"""XCiT's cross-covariance attention (XCA): q, k, v of shape (B, H, D, N), q and k L2-normalised
over the N tokens per channel, ``A = softmax(tau_h q^ k^T)`` between the D channels of a head,
``out = A v``, a per-head temperature ``tau``.

What survives, per head: ``qo<j>`` (q's channels by any positive monomial D P, the output
projection's columns by P), ``kv<j>`` (k's by D P, v's by P), ``vo<j>`` (one number c on v,
1/c on the output projection); the heads permute with their temperature. Each is checked to be
a symmetry (float32 and float64) and to be no larger than that (a negative scale, a general
linear map, a per-channel scale of v, a head moved without its temperature all change the
function). Variants written to fool the rule (normalised over the channels, one of q / k not
normalised, a per-channel or input-dependent temperature, the temperature before the
normalisation, v scaled per channel, a causal mask over the channels) get no XCA sites, and
every returned spec keeps the function. XCiT's position encoding is repeated over the batch
(``repeat``), which froze its whole residual stream before that op had a rule."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import apply, assert_function_preserved, check, random_elements, trace
from intertwiner.symmetry._attention import find_attention
from intertwiner.symmetry._graph import export_graph
from intertwiner.symmetry.check import _run
from intertwiner.testing import import_timm, randomize_model, sample_non_identity

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class XCA(nn.Module):
    """timm's ``XCA`` in 20 lines (``fused``: its SDPA form, the temperature on q^).

    ``fool``: "channels" (normalise over a head's channels, not the tokens), "k_raw" (k not
    normalised), "tau_channel" (a temperature per channel), "tau_input" (a temperature that reads
    the tokens), "tau_first" (q times the temperature before the normalisation), "v_scaled" (v
    times a per-channel parameter), "causal" (SDPA with a causal mask over the channels),
    "tau_mixed" (the temperature mixed across heads)."""

    def __init__(self, dim=12, heads=3, fused=False, fool="", tau=None):
        super().__init__()
        self.h, self.fused, self.fool = heads, fused or fool == "causal", fool
        d = dim // heads
        shape = (heads, d, 1) if fool == "tau_channel" else (heads, 1, 1)
        self.temperature = (
            tau if tau is not None else nn.Parameter(torch.rand(shape, generator=_gen(3)) + 0.5)
        )
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.v_scale = nn.Parameter(torch.rand(d, 1, generator=_gen(4)) + 0.5)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 4, 1).unbind(0)
        tau = self.temperature
        if self.fool == "tau_input":
            tau = tau * x.mean().abs()
        elif self.fool == "tau_mixed":
            tau = tau + tau.mean(0, keepdim=True)
        if self.fool == "tau_first":
            q = q * tau
        dim = -2 if self.fool == "channels" else -1
        q = F.normalize(q, dim=dim)
        k = k if self.fool == "k_raw" else F.normalize(k, dim=dim)
        if self.fool == "v_scaled":
            v = v * self.v_scale
        if self.fused:
            q = q if self.fool == "tau_first" else q * tau
            out = F.scaled_dot_product_attention(
                q, k, v, scale=1.0, is_causal=self.fool == "causal"
            )
        else:
            scores = q @ k.transpose(-2, -1)
            out = (scores if self.fool == "tau_first" else scores * tau).softmax(-1) @ v
        return self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, blocks=1, shared_tau=False, **kw):
        super().__init__()
        self.embed = nn.Linear(5, 12)
        first = XCA(**kw)
        rest = [XCA(**kw, tau=first.temperature if shared_tau else None) for _ in range(blocks - 1)]
        self.attn = nn.ModuleList([first, *rest])
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        h = self.embed(x)
        for a in self.attn:
            h = h + a(F.layer_norm(h, (12,)))
        return self.head(torch.relu(h))


def _x(dtype=F64) -> torch.Tensor:
    return torch.randn(2, 7, 5, generator=_gen()).to(dtype)


def _xca_sites(spec, block: str = "attn.0") -> set[str]:
    return {n.removeprefix(f"{block}.")[:2] for n in spec.names if n.startswith(f"{block}.")}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_xca_sites_keep_the_function(fused, dtype):
    model = Net(fused=fused).to(dtype)
    spec = assert_function_preserved(model, _x(dtype), generator=_gen(1))
    assert not spec.dropped
    heads = spec.site("attn.0.heads")
    assert ("attn.0.temperature", 0) in {(a.name, a.axis) for a in heads.actions}
    for j in range(3):
        for name in (f"attn.0.qo{j}", f"attn.0.kv{j}"):
            site = spec.site(name)
            assert site.kind == "attention_channels" and site.width == 4
            assert site.group.family.name == "positive_monomial"
        vo = spec.site(f"attn.0.vo{j}")
        assert vo.width == 1 and vo.group.family.name == "general_linear"
    # the stream reads q, k and v through the projection's input axis: still a site
    assert any(a.name == "embed.weight" for s in spec.sites for a in s.actions)


def test_every_sampled_element_keeps_the_function_many_draws():
    """Many independent draws (each site's D, P, c; negative c included) at round-off."""
    model = Net(fused=False).double()
    x = _x()
    spec = trace(model, x)
    ref = float(_run(model, x).abs().max())
    for seed in range(20):
        assert check(model, spec, x, elements=random_elements(spec, generator=_gen(seed))) < (
            1e-12 * ref
        )


def _qkv_edit(model: Net, rows: slice, matrix: torch.Tensor, block: int = 0) -> Net:
    """A copy of ``model`` with ``matrix`` applied to rows ``rows`` of qkv's weight and bias."""
    new = Net(fused=model.attn[0].fused).double()
    new.load_state_dict(model.state_dict())
    lin = new.attn[block].qkv
    with torch.no_grad():
        lin.weight[rows] = matrix @ lin.weight[rows]
        lin.bias[rows] = matrix @ lin.bias[rows]
    return new


def _changed(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((_run(a, x) - _run(b, x)).abs().max())


def test_what_the_sites_do_not_include_changes_the_function():
    """The sites are no larger than the symmetry: head 0's q rows are 0:4, k rows 12:16, v rows
    24:28 of qkv."""
    model = Net().double()
    x = _x()
    d = torch.diag(torch.tensor([2.0, 0.5, 3.0, 1.5], dtype=F64))
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64))
    g = torch.eye(4, dtype=F64) + 0.3 * torch.randn(4, 4, generator=_gen(5), dtype=F64)
    # positive scales of q's and of k's channels are divided out by the normalisation ...
    assert _changed(model, _qkv_edit(model, slice(0, 4), d), x) < 1e-12
    assert _changed(model, _qkv_edit(model, slice(12, 16), d), x) < 1e-12
    # ... a negative one is not, nor a general linear map, nor a per-channel scale of v
    for rows, m in [(slice(0, 4), flip), (slice(12, 16), flip), (slice(0, 4), g),
                    (slice(12, 16), g), (slice(24, 28), d)]:  # fmt: skip
        assert _changed(model, _qkv_edit(model, rows, m), x) > 1e-6
    # one number on v (any sign) is undone in the output projection's columns of the head
    scaled = _qkv_edit(model, slice(24, 28), -2.0 * torch.eye(4, dtype=F64))
    with torch.no_grad():
        scaled.attn[0].proj.weight[:, 0:4] /= -2.0
    assert _changed(model, scaled, x) < 1e-12


def test_a_permutation_of_q_needs_the_output_projection_and_one_of_k_needs_v():
    model = Net().double()
    x = _x()
    p = torch.eye(4, dtype=F64)[[2, 0, 3, 1]]
    q_only = _qkv_edit(model, slice(0, 4), p)
    assert _changed(model, q_only, x) > 1e-6
    with torch.no_grad():
        q_only.attn[0].proj.weight[:, 0:4] = q_only.attn[0].proj.weight[:, 0:4] @ p.T
    assert _changed(model, q_only, x) < 1e-12
    k_only = _qkv_edit(model, slice(12, 16), p)
    assert _changed(model, k_only, x) > 1e-6
    assert _changed(model, _qkv_edit(k_only, slice(24, 28), p), x) < 1e-12


def test_moving_the_heads_without_their_temperature_changes_the_function():
    model = Net().double()
    x = _x()
    spec = trace(model, x)
    site = spec.site("attn.0.heads")
    swap = sample_non_identity(site.group, 3)
    moved = apply(model, spec, {"attn.0.heads": swap})
    assert _changed(model, moved, x) < 1e-12
    moved.attn[0].temperature.data = model.attn[0].temperature.data.clone()
    assert _changed(model, moved, x) > 1e-6


@pytest.mark.parametrize(
    "kw, kept",
    [
        ({"fool": "channels"}, False),  # normalised over channels: not XCA
        ({"fool": "k_raw"}, False),  # k not normalised: its scales are not divided out
        ({"fool": "tau_channel"}, False),  # a temperature per channel moves with no channel map
        ({"fool": "tau_input"}, False),  # a temperature that reads the tokens
        ({"fool": "tau_first"}, False),  # before the normalisation: not read as the temperature
        ({"fool": "v_scaled"}, False),  # v times a per-channel parameter
        ({"fool": "causal"}, False),  # a causal mask over the channels
        ({"fool": "tau_mixed"}, True),  # the heads share their temperatures: heads stay
        ({"blocks": 2, "shared_tau": True}, True),  # one temperature, two blocks: heads stay
    ],
)
def test_fooling_variants_get_no_sites_they_would_break(kw, kept):
    model = Net(**kw).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(2))
    assert not spec.dropped  # refused by the rules, not by verification
    assert "attn.0.heads" not in spec.names
    assert ({"qo", "kv", "vo"} <= _xca_sites(spec)) == kept


def test_a_temperature_shared_by_all_heads_lets_them_permute():
    """A (1, 1, 1) temperature is the same for every head: nothing has to move with them."""
    model = Net(tau=nn.Parameter(torch.tensor([[[1.7]]]))).double()
    spec = assert_function_preserved(model, _x(), generator=_gen(3))
    assert "attn.0.heads" in spec.names and "attn.0.qo0" in spec.names


class PosRepeat(nn.Module):
    """XCiT's stream: conv features plus a position encoding computed by a 1 x 1 conv from fixed
    coordinates and repeated over the batch (``fool``: repeated along the channels, then cut
    back, which moves channels between the copies)."""

    def __init__(self, fool=False):
        super().__init__()
        self.fool = fool
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Conv2d(4, 8 if not fool else 4, 1)
        self.register_buffer("grid", torch.randn(1, 4, 5, 5, generator=_gen(6)))
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        pos = self.pos(self.grid)
        pos = pos.repeat(x.shape[0], 2, 1, 1) if self.fool else pos.repeat(x.shape[0], 1, 1, 1)
        h = self.stem(x) + pos
        h = h + self.mix(torch.relu(h))
        return self.head(h.mean((2, 3)))


def test_repeat_over_the_batch_keeps_the_stream():
    model = PosRepeat().double()
    x = torch.randn(2, 3, 5, 5, generator=_gen(), dtype=F64)
    spec = assert_function_preserved(model, x, generator=_gen(1))
    moved = {a.name for s in spec.sites for a in s.actions}
    assert {"stem.weight", "pos.weight", "mix.weight", "head.weight"} <= moved


def test_repeat_along_the_channels_freezes():
    model = PosRepeat(fool=True).double()
    x = torch.randn(2, 3, 5, 5, generator=_gen(), dtype=F64)
    spec = assert_function_preserved(model, x, generator=_gen(1))
    moved = {a.name for s in spec.sites for a in s.actions}
    assert "pos.weight" not in moved and "stem.weight" not in moved
    assert any("repeat" in reason for _, reason in spec.frozen)


@pytest.mark.parametrize("fool", ["", "channels", "k_raw", "tau_channel", "v_scaled", "causal"])
def test_the_matcher_reads_xca_and_refuses_the_fooling_variants(fool):
    """The matcher itself: the plain block (and its fused form) is read as channel attention with
    three heads of four channels; each fooling variant is not read at all."""
    model = Net(fool=fool).double()
    blocks = find_attention(export_graph(model, (_x(),)).graph)
    if fool:
        assert blocks == []
        return
    (b,) = blocks
    assert b.channels and (b.heads, b.head_dim, b.head_dim_v) == (3, 4, 4)
    assert b.q.heads[1] == (4, 5, 6, 7) and b.v.heads[2] == (32, 33, 34, 35)


_HAVE_TIMM = importlib.util.find_spec("timm") is not None


@pytest.mark.skipif(not _HAVE_TIMM, reason="timm not installed (extra [zoo])")
def test_timm_xcit_moves_every_interior_tensor():
    """timm's XCiT (two XCA blocks with LPI, one class-attention block), random weights."""
    torch.manual_seed(0)
    xcit = import_timm().models.xcit.Xcit
    model = xcit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                 cls_attn_layers=1, num_classes=5).eval()  # fmt: skip
    randomize_model(model, 0)
    model = model.double()
    x = torch.randn(2, 3, 32, 32, generator=_gen(1), dtype=F64)
    spec = trace(model, x)
    assert not spec.dropped
    ref = float(_run(model, x).abs().max())
    assert check(model, spec, x, elements=random_elements(spec, generator=_gen(2))) < 1e-10 * ref
    assert spec.coverage(model, x).interior_tensors == 1.0
    for blk in (0, 1):
        assert {f"blocks.{blk}.attn.{s}{j}" for s in ("qo", "kv", "vo") for j in range(4)} <= set(
            spec.names
        )
        assert f"blocks.{blk}.attn.heads" in spec.names
