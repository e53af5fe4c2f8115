"""Shape and indexing ops that move positions, not features (issue 24's sweep: GCViT's
``repeat_interleave`` of a global query, TNT's ``nn.Unfold``): the feature axis passes through,
and every channel matrix commutes with the op. Variants that do touch the feature axis must be
refused by the rule itself (checked with ``verify=False``: a wrong rule would change the
function before verification could drop it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.symmetry import check, random_elements, trace

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unverified(model: nn.Module, x: torch.Tensor, seeds=(0, 1, 2)):
    """The spec the rules propose (no verification) and its largest relative function change
    over a few sampled elements, in float64."""
    spec = trace(model, x, verify=False)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    change = max(
        check(model, spec, x, elements=random_elements(spec, generator=_gen(s))) / scale
        for s in seeds
    )
    return spec, change


def _moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions}


def _frozen_by(spec, op: str) -> bool:
    return any(op in reason for _, reason in spec.frozen)


# -- repeat_interleave ----------------------------------------------------------------------------
class Repeated(nn.Module):
    """A global token set (B, T, C) repeated per window along the batch dim, as GCViT repeats
    its global query; ``how`` puts the repeat elsewhere to fool the rule."""

    def __init__(self, how: str = "batch"):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(3, 6), nn.Linear(12 if how == "features" else 6, 2)

    def forward(self, x):  # (B, T, 3)
        h = torch.relu(self.fc1(x))
        if self.how == "batch":
            h = h.repeat_interleave(3, dim=0)
        elif self.how == "tensor_repeats":
            h = h.repeat_interleave(torch.tensor([1, 3]), dim=0)
        elif self.how == "features":  # each feature twice: (B, T, 12)
            h = h.repeat_interleave(2, dim=-1)
        elif self.how == "flat":  # over the flattened tensor, then back to (B, T, 6)
            h = h.repeat_interleave(2).reshape(-1, h.shape[1], h.shape[2])
        return self.fc2(h)


def _tokens() -> torch.Tensor:
    return torch.randn(2, 5, 3, dtype=F64, generator=_gen(7))


@pytest.mark.parametrize("how", ["batch", "tensor_repeats"])
def test_repeat_interleave_along_positions_keeps_the_features(how):
    model = Repeated(how).double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    assert {"fc1.weight", "fc1.bias", "fc2.weight"} <= _moved(spec)
    assert not _frozen_by(spec, "repeat_interleave")
    verified = trace(model, _tokens())
    assert not verified.dropped and verified.names == spec.names


@pytest.mark.parametrize("how", ["features", "flat"])
def test_repeat_interleave_of_the_features_is_refused(how):
    model = Repeated(how).double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    assert _frozen_by(spec, "repeat_interleave")
    assert not {"fc1.weight", "fc1.bias", "fc2.weight"} & _moved(spec)


# -- im2col (nn.Unfold) -----------------------------------------------------------------------------
class Unfolded(nn.Module):
    """TNT's pixel embedding: a conv, then ``nn.Unfold`` into (B, C * k, L) (channel-major rows),
    tokens of C * k features read by a Linear and a per-channel parameter added per pixel.
    ``how``: ``"plain"``, ``"padded"`` (padding and dilation), ``"channel_minor"`` (the rows
    regrouped as (k, C): a per-"channel" parameter on the wrong grouping), ``"spatial"``
    (features moved to the last dim first, so the op would unfold across them)."""

    def __init__(self, how: str = "plain"):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 4, 2, 2, generator=_gen(3)))
        self.fc = nn.Linear(4 * 4, 5)
        self.per_slot = nn.Parameter(torch.randn(1, 1, 4, 1, generator=_gen(4)))
        widths = {"spatial": 4 * 4, "channel_minor": 4 * 2, "kernel_slots": 4 * 4}
        self.head = nn.Linear(widths.get(how, 1), 2)

    def forward(self, x):  # (B, 3, 6, 6)
        h = torch.relu(self.conv(x))
        b = h.shape[0]
        if self.how == "spatial":  # (B, H, C, W): H read as channels, (C, W) as the image
            u = F.unfold(h.permute(0, 2, 1, 3), kernel_size=2, stride=2)
            return self.head(u.mean(-1))
        if self.how in ("channel_minor", "kernel_slots"):
            # rows c * k + p; "channel_minor" reads them as (k, C) = (2, 4) (the per-"channel"
            # parameter then meets rows of several channels), "kernel_slots" as (C, k) = (4, 4)
            # with a parameter per kernel position (the same for every channel)
            k = 2 if self.how == "channel_minor" else 4
            u = F.unfold(h, kernel_size=(k // 2, 2), stride=2)  # (B, 4 * k, L)
            u = u.reshape(b, k, 4, -1) + self.per_slot
            return self.head(u.reshape(b, 4 * k, -1).mean(-1))
        if self.how == "padded":
            u = F.unfold(h, kernel_size=2, dilation=2, padding=1, stride=2)  # (B, 16, 9)
        else:
            u = F.unfold(h, kernel_size=2, stride=2)  # (B, 16, 9)
        pixels = u.transpose(1, 2).reshape(-1, 4, 2, 2) + self.pos  # TNT: + pixel_pos
        tokens = pixels.reshape(b, -1, 16)
        return self.fc(torch.relu(tokens)).mean(1)


def _image(h: int = 6) -> torch.Tensor:
    """(2, 3, h, 6); h = 4 gives the spatial variant as many rows as channels (4)."""
    return torch.randn(2, 3, h, 6, dtype=F64, generator=_gen(8))


@pytest.mark.parametrize("how", ["plain", "padded"])
def test_unfold_moves_channel_blocks(how):
    model = Unfolded(how).double()
    spec, change = _unverified(model, _image())
    assert change < 1e-12
    assert {"conv.weight", "conv.bias", "pos", "fc.weight"} <= _moved(spec)
    assert not _frozen_by(spec, "im2col")
    (fc_in,) = [a for s in spec.sites for a in s.actions if a.name == "fc.weight" and a.axis == 1]
    assert (fc_in.n_total, fc_in.inner) == (4, 4)  # channel-major: M kron I_k
    verified = trace(model, _image())
    assert not verified.dropped
    assert verified.coverage(model, _image()).interior_tensors == 1.0


@pytest.mark.parametrize("how", ["channel_minor", "spatial"])
def test_unfold_read_across_its_channel_blocks_is_refused(how):
    model = Unfolded(how).double()
    spec, change = _unverified(model, _image(4 if how == "spatial" else 6))
    assert change < 1e-12
    assert not {"conv.weight", "conv.bias", "per_slot"} & _moved(spec)


def test_a_parameter_per_kernel_position_keeps_channel_permutations_only():
    model = Unfolded("kernel_slots").double()
    spec, change = _unverified(model, _image())
    assert change < 1e-12
    assert {"conv.weight", "conv.bias"} <= _moved(spec) and "per_slot" not in _moved(spec)
    (site,) = [s for s in spec.sites if any(a.name == "conv.weight" for a in s.actions)]
    assert site.group.family.name == "permutation"


def test_unfold_on_float32_keeps_the_function():
    model = Unfolded("padded")
    x = _image().float()
    spec = trace(model, x)
    assert not spec.dropped and spec.sites
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert check(model, spec, x, elements=random_elements(spec, generator=_gen(5))) < 1e-5 * scale


# -- a product with a fixed per-position map ----------------------------------------------------------
class SpatialGate(nn.Module):
    """CBAM / CSATv2 spatial attention: ``h * map`` with a (B, 1, H, W) map computed from the
    channel mean and max of ``h`` (``"stats"``) or from the input alone (``"input"``); a map
    that differs between features (``"per_feature"``) must be refused; ``"divide"``: ``h / map``."""

    def __init__(self, how: str = "stats"):
        super().__init__()
        self.how = how
        self.conv1, self.conv2 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 5, 1)
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x):  # (B, 3, H, W)
        h = torch.relu(self.conv1(x))
        if self.how in ("stats", "divide"):
            stats = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], dim=1)
        else:
            stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        m = torch.sigmoid(self.spatial(stats))  # (B, 1, H, W)
        if self.how == "stats_direct":  # no conv: the statistics themselves, untracked
            m = torch.sigmoid(torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1))
            m = m.mean(1, keepdim=True)
        elif self.how == "indices":  # where channel 0 peaks: moves when the channels do
            idx = F.max_pool2d(h, 2, return_indices=True)[1][:, :1].to(h.dtype)
            m = F.interpolate(idx, size=h.shape[2:]) / h.shape[2:].numel()
        elif self.how in ("moved_param", "moved_number"):  # from conv1's bias (the site moves it)
            m = torch.sigmoid(self.conv1.bias).view(1, 5, 1, 1).amax(1, keepdim=True)
            if self.how == "moved_param":  # one value per position rather than one number
                m = m * torch.linspace(0.5, 1.5, h.shape[-1], dtype=h.dtype)
        if self.how == "per_feature":  # a different factor for each feature
            m = m * torch.arange(1.0, 6.0, dtype=m.dtype).view(1, 5, 1, 1)
        g = h / (m + 0.5) if self.how == "divide" else h * m
        h = h + self.conv2(g)
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("how", ["stats", "divide", "input", "stats_direct"])
def test_a_map_shared_by_every_feature_keeps_the_channels(how):
    model = SpatialGate(how).double()
    spec, change = _unverified(model, _image())
    assert change < 1e-12
    assert {"conv1.weight", "conv2.weight", "conv2.bias"} <= _moved(spec)
    (site,) = [s for s in spec.sites if any(a.name == "conv1.weight" for a in s.actions)]
    # the channel mean and max keep permutations only; a map from the input keeps ReLU's group
    want = "positive_monomial" if how == "input" else "permutation"
    assert site.group.family.name == want
    verified = trace(model, _image())
    assert not verified.dropped and verified.names == spec.names


@pytest.mark.parametrize("how", ["per_feature", "indices", "moved_param", "moved_number"])
def test_a_map_that_differs_between_features_or_moves_is_refused(how):
    """A factor per feature, or an untracked map that the sites do move (max pooling's indices
    of one channel; a function of a parameter a site moves, even one number), is not a fixed
    per-position one."""
    model = SpatialGate(how).double()
    spec, change = _unverified(model, _image())
    assert change < 1e-12
    assert not {"conv1.weight", "conv2.weight"} & _moved(spec)
    assert any("a product with a" in r for _, r in spec.frozen)


# -- heads cut from a space that is not a fresh projection (GCViT's global query) ---------------------
class GlobalQuery(nn.Module):
    """GCViT's ``WindowAttentionGlobal``: the query is the (normalised) residual stream itself,
    repeated once per window and viewed as heads; keys and values come from a packed ``kv``
    Linear viewed as (B, N, 2, H, D); a relative position table per head is added to the scores.
    ``how``: ``"plain"``; ``"no_norm"`` (no LayerNorm holds the stream to permutations: only orthogonal maps keep
    q^T k); ``"head_minor"`` (the query's heads are read as (D, H): its channels meet the
    keys' in another order); ``"moved_probs"`` (the "probabilities" are a function of a bias that
    the stream's site moves)."""

    def __init__(self, how: str = "plain"):
        super().__init__()
        self.how, self.heads, self.d = how, 2, 4
        c = self.heads * self.d
        self.embed, self.kv, self.proj = nn.Linear(3, c), nn.Linear(c, 2 * c), nn.Linear(c, c)
        self.norm_q, self.norm_k, self.norm_out = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.table = nn.Parameter(torch.randn(self.heads, 5, 5, generator=_gen(6)))
        self.head = nn.Linear(c, 2)

    def forward(self, x):  # (B, 5, 3)
        h = self.embed(x)
        b, n, c = h.shape
        norm = self.how != "no_norm"
        win = (self.norm_k(h) if norm else h).repeat_interleave(2, dim=0).flip(1)  # 2 windows
        q = (self.norm_q(h) if norm else h).repeat_interleave(2, dim=0)
        kv = self.kv(win).reshape(2 * b, n, 2, self.heads, self.d).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.how == "head_minor":
            q = q.reshape(2 * b, n, self.d, self.heads).transpose(-1, -2).permute(0, 2, 1, 3)
        else:
            q = q.reshape(2 * b, n, self.heads, self.d).permute(0, 2, 1, 3)
        attn = (q * self.d**-0.5) @ k.transpose(-2, -1) + self.table
        if self.how == "moved_probs":
            attn = self.embed.bias[:n].view(1, 1, 1, n).expand(2 * b, self.heads, n, n)
        o = (attn.softmax(-1) @ v).transpose(1, 2).reshape(2 * b, n, c)
        h = h.repeat_interleave(2, dim=0) + self.proj(o)
        return self.head((self.norm_out(h) if norm else h).mean(1))


@pytest.mark.parametrize("how", ["plain", "no_norm"])
def test_a_query_from_the_stream_ties_its_heads_to_the_keys(how):
    model = GlobalQuery(how).double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    assert {"embed.weight", "kv.weight", "proj.weight"} <= _moved(spec)
    # the output, and the per-head table on the fixed scores (with its reason)
    assert [label for label, _ in spec.frozen] == ["head", "table"]
    assert "a permutation of the heads" in dict(spec.frozen)["table"]
    (stream,) = [s for s in spec.sites if any(a.name == "embed.weight" for a in s.actions)]
    assert stream.width == 4  # one map for both heads: diag(M, M)
    want = "orthogonal" if how == "no_norm" else "permutation"
    assert stream.group.family.name == want  # q^T M^T M k = q^T k
    verified = trace(model, _tokens())
    assert not verified.dropped and verified.names == spec.names


def test_a_query_from_the_stream_in_float32():
    model = GlobalQuery("no_norm")
    x = _tokens().float()
    spec = trace(model, x)
    assert not spec.dropped and "embed.weight" in _moved(spec)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert check(model, spec, x, elements=random_elements(spec, generator=_gen(5))) < 1e-5 * scale


@pytest.mark.parametrize("how", ["head_minor", "moved_probs"])
def test_queries_and_keys_that_do_not_meet_channel_by_channel_are_refused(how):
    model = GlobalQuery(how).double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    if how == "head_minor":  # the stream's channels meet the keys' in another order
        assert "embed.weight" not in _moved(spec)
    else:  # the values are mixed by a tensor that moves: their rows stay
        assert not [
            a for s in spec.sites for a in s.actions if (a.name, a.axis) == ("kv.weight", 0)
        ]


class HeadView(nn.Module):
    """A stream viewed as (B, N, 2, 4) and scaled per head-dim entry (``"shared"``: one (4,)
    parameter for both heads, which the tied map's permutation moves) or per head and entry
    (``"per_head"``: (2, 4), which one map for both heads cannot move)."""

    def __init__(self, how: str = "shared"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)
        shape = (4,) if how == "shared" else (2, 4)
        self.w = nn.Parameter(torch.rand(shape, generator=_gen(9)) + 0.5)

    def forward(self, x):  # (B, T, 3)
        h = torch.relu(self.fc1(x))
        b, t, _ = h.shape
        return self.fc2((h.reshape(b, t, 2, 4) * self.w).reshape(b, t, 8))


def test_a_view_into_heads_ties_the_heads():
    model = HeadView("shared").double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    (site,) = spec.sites
    assert site.width == 4 and {"fc1.weight", "w", "fc2.weight"} <= _moved(spec)
    assert [a.kind for a in site.actions if a.name == "w"] == ["P"]


def test_a_parameter_per_head_is_not_moved_by_one_map_for_all_heads():
    model = HeadView("per_head").double()
    spec, change = _unverified(model, _tokens())
    assert change < 1e-12
    assert not {"fc1.weight", "w"} & _moved(spec)
