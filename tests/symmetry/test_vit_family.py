"""Plain ViT patterns (issue 24): the residual stream of a ViT is one permutation site that moves
the patch embedding, ``pos_embed`` (also when it is resampled to the input's grid, as timm does
with ``dynamic_img_size``), the class token joined with ``cat`` + ``expand``, every LayerNorm's
weight and bias and every residual writer and reader. Each pattern has a small model that uses it
(found, and the function kept under sampled elements) and one written to fool the rule (it must
be refused: the parameter stays in place and no site moves the stream through it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests._support.traced import gen as _gen
from tests._support.traced import traced
from tests.symmetry.test_zoo_models import _check_model, _timm, needs_timm
from torch import nn

F64 = torch.float64


def _moved(spec) -> set[str]:
    return {a.name for s in spec.sites for a in s.actions}


def _site_of(spec, pname: str):
    return next(s for s in spec.sites if any(a.name == pname for a in s.actions))


class Block(nn.Module):
    """Pre-norm transformer block, timm's packed ``qkv`` reshaped to (B, N, 3, H, D)."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.h = heads
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Patch embedding, class token (``cat`` of ``cls.expand``), ``pos_embed`` for a 4 x 4 grid
    resampled (bicubic) to the input's grid, two blocks, final norm, head on the class token.

    ``fool``: "index" reads ``pos_embed[..., idx]`` with a fixed shuffle of the features, "offset"
    adds a fixed per-feature buffer to it before resampling; both break ``f(P p) = P f(p)``."""

    def __init__(self, c: int = 8, heads: int = 2, fool: str | None = None):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 2, stride=2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, c))
        self.register_buffer("idx", torch.randperm(c, generator=_gen(5)))
        self.register_buffer("offset", torch.randn(c, generator=_gen(6)))
        self.blocks = nn.Sequential(Block(c, heads), Block(c, heads))
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 3)
        self.fool = fool

    def pos(self, grid: tuple[int, int]) -> torch.Tensor:
        p = self.pos_embed
        if self.fool == "index":
            p = p[..., self.idx]
        elif self.fool == "offset":
            p = p + self.offset
        p = p.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        p = F.interpolate(p, size=grid, mode="bicubic", align_corners=False)
        return p.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)

    def forward(self, x):
        x = self.patch(x)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self.pos(grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_resampled_pos_embed_and_cls_token_move_with_the_stream(dtype):
    x = torch.randn(2, 3, 6, 6, generator=_gen())  # a 3 x 3 grid: pos_embed is resampled
    model, spec = traced(TinyViT(), x, dtype)
    stream = _site_of(spec, "pos_embed")
    names = {a.name for a in stream.actions}
    assert {"cls_token", "patch.weight", "patch.bias", "norm.weight", "norm.bias"} <= names
    assert {"blocks.0.norm1.weight", "blocks.1.proj.bias", "blocks.1.fc2.weight"} <= names
    assert "head.weight" in names and stream.width == 8
    # LayerNorm (mean subtraction, per-feature weight) leaves the permutations of the features
    assert stream.group.family.name == "permutation"
    assert sum(s.kind == "attention_heads" for s in spec.sites) == 2
    assert spec.dropped == []


@pytest.mark.parametrize("fool", ["index", "offset"])
def test_pos_embed_read_per_feature_differently_is_refused(fool):
    x = torch.randn(2, 3, 6, 6, generator=_gen())
    model, spec = traced(TinyViT(fool=fool), x)
    assert "pos_embed" not in _moved(spec)
    assert spec.dropped == []  # refused by the rule, not left for verification to catch
    # the stream it is added to cannot move: no site acts on the patch embedding's outputs
    assert not any(a.name == "patch.weight" and a.axis == 0 for s in spec.sites for a in s.actions)


def test_pos_embed_read_twice_is_refused():
    """Fool: the resampled ``pos_embed`` is added, and ``pos_embed`` is also read by a second,
    unrelated path (a bias on the head): moving it for the stream would change that path."""

    class Twice(TinyViT):
        def forward(self, x):
            return super().forward(x) + self.pos_embed.sum()

    model, spec = traced(Twice(), torch.randn(2, 3, 6, 6, generator=_gen()))
    assert "pos_embed" not in _moved(spec) and spec.dropped == []


class Net(nn.Module):
    """An attention module between a Linear embedding and a ReLU + Linear head."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 8), attn, nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.attn(self.embed(x))))


# -- EVA / DINOv3 attention: qkv bias = cat(q_bias, zero k_bias buffer, v_bias), rotary ---------
def _rotate_half(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


class EvaAttention(nn.Module):
    """timm's ``EvaAttention``: a fused ``qkv`` Linear without a bias of its own, the bias
    ``cat(q_bias, k_bias, v_bias)`` with ``k_bias`` a zero buffer, rotary embeddings on every
    token but the first (the class token), ``type_as`` casts, SDPA, ``proj``.

    ``sub_ln``: a LayerNorm over the heads' outputs before ``proj`` (EVA-CLIP's
    ``scale_attn_inner``). ``fool``: "k_bias" makes the buffer nonzero (the heads would need it
    moved), "rope" rotates each head by a different table (the heads are no longer alike),
    "head_ln" normalises each head alone with one weight shared by the heads. ``computed``: the
    rotary tables are computed in the forward from half-width buffers, ``cat(sin, sin)``
    (DINOv3), ops beside the path from the projection to q and k."""

    def __init__(
        self, c=8, heads=2, n=5, fool: str | None = None, sub_ln: bool = False, computed=False
    ):
        super().__init__()
        self.h, self.d, self.fool, self.computed = heads, c // heads, fool, computed
        self.norm = nn.LayerNorm(self.d if fool == "head_ln" else c) if sub_ln else nn.Identity()
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))
        k_bias = torch.randn(c, generator=_gen(3)) if fool == "k_bias" else torch.zeros(c)
        self.register_buffer("k_bias", k_bias)
        self.proj = nn.Linear(c, c)
        d = self.d // 2 if computed else self.d
        shape = (heads, n - 1, d) if fool == "rope" else (n - 1, d)
        self.register_buffer("sin", torch.rand(shape, generator=_gen(4)))
        self.register_buffer("cos", torch.rand(shape, generator=_gen(5)))

    def rope(self, t):
        sin, cos = self.sin, self.cos
        if self.computed:
            sin, cos = torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)
        return torch.cat([t[:, :, :1], t[:, :, 1:] * cos + _rotate_half(t[:, :, 1:]) * sin], 2)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.h, self.d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.rope(q).type_as(v), self.rope(k).type_as(v)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        if self.fool == "head_ln":
            return self.proj(self.norm(a).reshape(b, n, c))
        return self.proj(self.norm(a.reshape(b, n, c)))


@pytest.mark.parametrize("computed", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_eva_attention_heads_move_the_pieces_of_a_computed_qkv_bias(dtype, computed):
    attn = EvaAttention(computed=computed)
    model, spec = traced(Net(attn), torch.randn(2, 5, 4, generator=_gen()), dtype)
    heads = [s for s in spec.sites if s.kind == "attention_heads"]
    assert len(heads) == 1 and spec.dropped == []
    names = {a.name for a in heads[0].actions}
    assert {"attn.qkv.weight", "attn.q_bias", "attn.v_bias", "attn.proj.weight"} <= names
    assert "attn.k_bias" not in _moved(spec)  # a zero buffer: fixed by every map
    # rotary embeddings rotate q and k per position: no GL(head_dim) on them, GL on v and o stays
    kinds = {s.kind for s in spec.sites}
    assert "attention_qk" not in kinds and "attention_vo" in kinds
    vo = next(s for s in spec.sites if s.kind == "attention_vo")
    assert "attn.v_bias" in {a.name for a in vo.actions}


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_a_sub_layer_norm_before_the_output_projection_moves_with_the_heads(dtype):
    model, spec = traced(
        Net(EvaAttention(sub_ln=True)), torch.randn(2, 5, 4, generator=_gen()), dtype
    )
    (heads,) = [s for s in spec.sites if s.kind == "attention_heads"]
    assert {"attn.norm.weight", "attn.norm.bias"} <= {a.name for a in heads.actions}
    vo = [s for s in spec.sites if s.kind == "attention_vo"]  # LayerNorm: permutations only
    assert len(vo) == 2 and all(s.group.family.name == "permutation" for s in vo)
    assert all("attn.norm.weight" in {a.name for a in s.actions} for s in vo)
    assert spec.dropped == []


@pytest.mark.parametrize("fool", ["k_bias", "rope", "computed rope", "head_ln"])
def test_eva_attention_fooled_keeps_its_heads_in_place(fool):
    computed, fool = fool.startswith("computed "), fool.removeprefix("computed ")
    attn = EvaAttention(fool=fool, sub_ln=fool == "head_ln", computed=computed)
    model, spec = traced(Net(attn), torch.randn(2, 5, 4, generator=_gen()))
    assert not any(s.kind == "attention_heads" for s in spec.sites)
    assert spec.dropped == []  # refused by the rule, not left for verification to catch


# -- LeViT attention: Linear + BatchNorm q/k/v split by a view, k^T by one permute --------------
class LinearBN(nn.Module):
    """LeViT's ``LinearNorm``: Linear without bias, BatchNorm1d over the flattened tokens (eval,
    random running statistics so that a wrong channel map shows). ``shuffle``: the channels
    interleaved between the two by views and a transpose (the fool: the norm's channel c is not
    projection row c, though only shaping ops sit between them)."""

    def __init__(self, a: int, b: int, shuffle: bool = False):
        super().__init__()
        self.linear, self.bn = nn.Linear(a, b, bias=False), nn.BatchNorm1d(b)
        self.bn.running_mean.copy_(torch.randn(b, generator=_gen(7)))
        self.bn.running_var.copy_(torch.rand(b, generator=_gen(8)) + 0.5)
        self.shuffle = shuffle

    def forward(self, x):
        y = self.linear(x)
        if self.shuffle:
            y = y.view(*y.shape[:-1], 2, -1).transpose(-1, -2).reshape(y.shape)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


class LevitAttention(nn.Module):
    def __init__(
        self, c: int = 8, heads: int = 2, d: int = 2, dv: int = 4, n: int = 5, shuffle=False
    ):
        super().__init__()
        self.h, self.d, self.dv = heads, d, dv
        self.qkv = LinearBN(c, heads * (2 * d + dv), shuffle)
        self.proj = nn.Linear(heads * dv, c)
        self.attention_biases = nn.Parameter(torch.zeros(heads, n))
        pos = torch.arange(n)
        self.register_buffer("idxs", (pos[:, None] - pos[None, :]).abs())

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.h, -1).split([self.d, self.d, self.dv], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = (q @ k) * self.d**-0.5 + self.attention_biases[:, self.idxs]
        a = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.h * self.dv)
        return self.proj(F.hardswish(a))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_levit_attention_heads_move_the_batch_norm_and_the_bias_table(dtype):
    model, spec = traced(Net(LevitAttention()), torch.randn(2, 5, 4, generator=_gen()), dtype)
    (heads,) = [s for s in spec.sites if s.kind == "attention_heads"]
    names = {a.name for a in heads.actions}
    bn = "attn.qkv.bn."
    assert {bn + "weight", bn + "bias", bn + "running_mean", bn + "running_var"} <= names
    assert {"attn.qkv.linear.weight", "attn.proj.weight", "attn.attention_biases"} <= names
    # within a head: a per-channel BatchNorm on q, k, v and hardswish on the output leave
    # permutations (with the norm's vectors moved), not GL(head_dim)
    inner = [s for s in spec.sites if s.kind in ("attention_qk", "attention_vo")]
    assert len(inner) == 4 and all(s.group.family.name == "permutation" for s in inner)
    assert spec.dropped == []


def test_levit_attention_with_the_norm_off_its_rows_is_refused():
    """Fool: the BatchNorm's channel c normalises another projection row than row c."""
    model, spec = traced(Net(LevitAttention(shuffle=True)), torch.randn(2, 5, 4, generator=_gen()))
    assert not any(s.kind.startswith("attention") for s in spec.sites)
    assert spec.dropped == []


# -- CaiT's talking heads: Linear maps over the heads of the scores and the probabilities --------
class TalkingHeads(nn.Module):
    """``proj_l`` mixes the heads of the scores, ``proj_w`` those of the probabilities. ``fool``:
    "mask" adds a per-head table to the scores before the mix (EfficientFormerV2's attention
    biases: a head permutation then moves the table's rows and conjugates the mix, so it is
    kept), "positions" mixes along the key positions instead of the heads."""

    def __init__(self, c: int = 8, heads: int = 2, n: int = 5, fool: str | None = None):
        super().__init__()
        self.h, self.fool = heads, fool
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.proj_l, self.proj_w = nn.Linear(heads, heads), nn.Linear(heads, heads)
        self.mix_n = nn.Linear(n, n)
        self.table = nn.Parameter(torch.zeros(heads, 1, 1))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        attn = (q * 0.5) @ k.transpose(-2, -1)
        if self.fool == "mask":
            attn = attn + self.table
        if self.fool == "positions":
            attn = self.mix_n(attn)
        else:
            attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.proj_w(attn.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_talking_heads_move_their_mixing_maps_with_the_heads(dtype):
    model, spec = traced(Net(TalkingHeads()), torch.randn(2, 5, 4, generator=_gen()), dtype)
    (heads,) = [s for s in spec.sites if s.kind == "attention_heads"]
    acts = {(a.name, a.axis, a.kind) for a in heads.actions}
    for w in ("attn.proj_l", "attn.proj_w"):  # W <- P W P^-1, b <- P b
        assert {(w + ".weight", 0, "A"), (w + ".weight", 1, "A^-T"), (w + ".bias", 0, "A")} <= acts
    # within a head: q_h^T k_h and A_h v_h are kept, so GL(head_dim) on q/k and on v/o stays
    kinds = [s.kind for s in spec.sites]
    assert kinds.count("attention_qk") == 2 and kinds.count("attention_vo") == 2
    assert spec.dropped == []


@pytest.mark.parametrize("fool", ["positions"])
def test_talking_heads_fooled_keep_their_heads_in_place(fool):
    model, spec = traced(Net(TalkingHeads(fool=fool)), torch.randn(2, 5, 4, generator=_gen()))
    assert not any(s.kind == "attention_heads" for s in spec.sites)
    assert spec.dropped == []


def test_a_per_head_table_below_talking_heads_moves_with_the_heads():
    model, spec = traced(Net(TalkingHeads(fool="mask")), torch.randn(2, 5, 4, generator=_gen()))
    (heads,) = [s for s in spec.sites if s.kind == "attention_heads"]
    assert any(a.name.endswith("table") for a in heads.actions)
    assert spec.dropped == []


# -- the same patterns in timm's code (extra [zoo]) ------------------------------------------------
_VIT_ZOO = {  # name -> (kwargs, input size, floor of the interior tensor coverage, heads)
    "test_vit": ({}, 32, 1.0, 6),  # dynamic_img_size: pos_embed resampled from 14 x 14 to 2 x 2
    "eva02_tiny_patch14_224": ({"depth": 2, "img_size": 28}, 28, 0.99, 2),  # cat bias, rope
    "cait_xxs24_224": ({"depth": 2, "depth_token_only": 1, "img_size": 32}, 32, 0.99, 3),
}


@needs_timm
@pytest.mark.parametrize("name", list(_VIT_ZOO))
def test_timm_vit_family(name):
    kwargs, size, floor, heads = _VIT_ZOO[name]
    _check_model(_timm(name, **kwargs), size, floor, heads)
