"""Hugging Face ``transformers`` models, built from small configs with random weights (nothing is
downloaded), traced through the torch.export front end: sites in every block (MLP hidden units,
attention heads and per-head maps, the residual stream), each verified, and the whole spec
preserving the function at float64 round-off."""

from __future__ import annotations

import pytest
import torch

from intertwiner.groups import LARGER, family
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.check import _run

T = pytest.importorskip("transformers")

F64 = torch.float64


def _tokens(vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))


def _image(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=F64)


def _gpt2():
    cfg = T.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=32)
    return T.GPT2LMHeadModel(cfg), _tokens()


def _bert():
    cfg = T.BertConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=32,
    )
    return T.BertForSequenceClassification(cfg), _tokens()


def _llama():
    cfg = T.LlamaConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=32,
    )
    model = T.LlamaForCausalLM(cfg)
    with torch.no_grad():  # RMSNorm weights start at 1: make them generic so folding is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model, _tokens()


def _vit():
    cfg = T.ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
        num_channels=3,
    )
    return T.ViTForImageClassification(cfg), _image(16)


def _resnet():
    cfg = T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"
    )
    return T.ResNetForImageClassification(cfg), _image()


def _convnext():
    cfg = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    return T.ConvNextForImageClassification(cfg), _image()


MODELS = {
    "gpt2": _gpt2,
    "bert": _bert,
    "llama": _llama,
    "vit": _vit,
    "resnet": _resnet,
    "convnext": _convnext,
}

# Per model: substrings of site names that must appear once per block (2 blocks each).
PER_BLOCK = {
    "gpt2": ["mlp.act", "attn.heads", "attn.vo0", "attn.qk1"],
    "bert": ["intermediate_act_fn", "attention.self.heads", "attention.self.vo1"],
    "llama": ["mlp.act_fn", "self_attn.heads", "self_attn.vo0"],
    "vit": ["mlp.activation_fn", "attention.heads", "attention.qk0"],
    "resnet": ["layer.0.activation", "layer.1.activation"],
    "convnext": ["layers.0.act"],
}
STREAM = {"gpt2": 1, "bert": 1, "llama": 1, "vit": 1, "resnet": 2, "convnext": 2}


@pytest.fixture(scope="module")
def traced():
    out = {}
    for name, build in MODELS.items():
        torch.manual_seed(0)
        model, x = build()
        model = model.double().eval()
        out[name] = (model, x, trace(model, x))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_sites_in_every_block(traced, name):
    _, _, spec = traced[name]
    assert not spec.dropped, spec.dropped
    for key in PER_BLOCK[name]:
        assert sum(key in s for s in spec.names) == 2, (key, spec.names)
    assert sum(s.kind == "stream" for s in spec.sites) == STREAM[name], spec.names


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_preserves_the_function(traced, name):
    model, x, spec = traced[name]
    ref = _run(model, x)
    # LLaMA's RMSNorm computes in float32 whatever the model dtype: its round-off bounds the check.
    tol = 1e-9 if name != "llama" else spec.verified_tolerance
    assert spec.verified_error <= tol
    for seed in range(2):
        g = random_elements(spec, generator=torch.Generator().manual_seed(seed))
        new = apply(model, spec, g)
        err = float((_run(new, x) - ref).abs().max() / ref.abs().max())
        assert err <= tol, (name, seed, err)


def test_llama_casts_set_the_tolerance(traced):
    spec = traced["llama"][2]
    assert 1e-9 < spec.verified_tolerance <= 1e-5
    assert spec.verified_error < spec.verified_tolerance


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "resnet"])
def test_next_larger_group_breaks_the_function(traced, name):
    """Each activation site's group is maximal: an element of the next larger family changes the
    output (so the tracer does not under-report either)."""
    model, x, spec = traced[name]
    ref = _run(model, x)
    gen = torch.Generator().manual_seed(3)
    checked = 0
    for site in spec.sites:
        if site.kind != "activation":
            continue
        for fam in LARGER[site.group.family.name]:
            if "P" in {a.kind for a in site.actions} and not family(fam).monomial:
                continue  # a dense element has no permutation part to move BN statistics
            g = family(fam).sample(site.width, generator=gen)
            while site.group.contains(g):  # e.g. a monomial element whose signs all came out +
                g = family(fam).sample(site.width, generator=gen)
            new = apply(model, spec, {site.name: g}, validate=False)
            err = float((_run(new, x) - ref).abs().max() / ref.abs().max())
            assert err > 1e-6, (site.name, fam, err)
            checked += 1
    assert checked >= 2


def test_gated_mlp_admits_any_nonzero_scaling_of_up_proj(traced):
    model, x, spec = traced["llama"]
    site = spec.site("model.layers.0.mlp.act_fn")
    assert site.group.family.name == "monomial"
    kinds = {(a.name, a.kind) for a in site.actions}
    assert ("model.layers.0.mlp.gate_proj.weight", "P") in kinds
    assert ("model.layers.0.mlp.up_proj.weight", "A") in kinds
    assert ("model.layers.0.mlp.down_proj.weight", "A^-T") in kinds


def test_gpt2_conv1d_mlp_and_tied_head(traced):
    _, _, spec = traced["gpt2"]
    mlp = spec.site("transformer.h.0.mlp.act")
    assert {(a.name, a.axis) for a in mlp.actions} >= {
        ("transformer.h.0.mlp.c_fc.weight", 1),
        ("transformer.h.0.mlp.c_proj.weight", 0),
    }
    stream = next(s for s in spec.sites if s.kind == "stream")
    table = [a for a in stream.actions if a.name in ("transformer.wte.weight", "lm_head.weight")]
    assert len(table) == 1  # the tied table is moved once, serving the lookup and the head


def test_raw_hf_model_needs_no_wrapper(traced):
    """The KV cache is switched off on the traced copy; the user's model keeps its config."""
    model, _, _ = traced["gpt2"]
    assert model.config.use_cache


def test_rmsnorm_stream_admits_orthogonal_maps_once_the_norm_weights_are_folded(traced):
    """LLaMA's residual stream is read only through RMSNorms: with each norm's weight folded into
    the layers that read it, any orthogonal map of the stream preserves the function; a general
    invertible map does not."""
    model, x, spec = traced["llama"]
    stream = next(s for s in spec.sites if s.kind == "stream")
    assert stream.group.family.name == "orthogonal"
    scales = {f.scale for f in stream.folds}
    assert (
        "model.norm.weight" in scales and "model.layers.1.post_attention_layernorm.weight" in scales
    )
    into = {name for f in stream.folds for name, _ in f.into}
    assert {"lm_head.weight", "model.layers.0.mlp.up_proj.weight"} <= into
    ref = _run(model, x)
    g = stream.group.sample(stream.width, generator=torch.Generator().manual_seed(4))
    new = apply(model, spec, {stream.name: g})
    assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < spec.verified_tolerance
    assert torch.allclose(new.model.norm.weight, torch.ones_like(new.model.norm.weight))
    assert not torch.allclose(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    dense = family("general_linear").sample(
        stream.width, generator=torch.Generator().manual_seed(5)
    )
    broken = apply(model, spec, {stream.name: dense}, validate=False)
    assert float((_run(broken, x) - ref).abs().max() / ref.abs().max()) > 1e-3


def test_t5_relative_position_bias_keeps_heads_in_place():
    """T5 adds a learned bias per head to the attention scores: permuting heads would need the
    bias permuted too, so no heads site is offered; per-head qk and vo maps remain."""
    cfg = T.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, vocab_size=50)
    torch.manual_seed(0)
    model = T.T5EncoderModel(cfg).double().eval()
    x = _tokens()
    spec = trace(model, x)
    kinds = [s.kind for s in spec.sites]
    assert "attention_heads" not in kinds
    assert kinds.count("attention_qk") == 4 and kinds.count("attention_vo") == 4
    assert not spec.dropped
    ref = _run(model, x)
    new = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(0)))
    assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < 1e-9


def test_gemma_rmsnorm_scales_by_one_plus_weight_and_still_folds():
    """Gemma's RMSNorm multiplies by ``1 + weight``: the fold divides that factor out (and sets
    the weight to 0), so the stream admits orthogonal maps (untied head; a head tied to the
    embedding cannot absorb the final norm: signed permutations); Falcon's ``x @ W.T``
    projections read the stream like Linear layers."""
    cfg = T.GemmaConfig(
        tie_word_embeddings=False,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=50,
    )
    torch.manual_seed(0)
    model = T.GemmaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
    x = _tokens()
    spec = trace(model, x)
    stream = next(s for s in spec.sites if s.kind == "stream")
    assert stream.group.family.name == "orthogonal" and not spec.dropped
    assert {(f.slope, f.offset) for f in stream.folds} == {(1.0, 1.0)}
    ref = _run(model, x)
    new = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(0)))
    assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < spec.verified_tolerance
    assert float(new.model.norm.weight.detach().abs().max()) == 0.0
    cfg.tie_word_embeddings = True
    tied = T.GemmaForCausalLM(cfg).double().eval()
    tied_stream = next(s for s in trace(tied, x).sites if s.kind == "stream")
    assert tied_stream.group.family.name == "signed_permutation"

    falcon = T.FalconForCausalLM(
        T.FalconConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, vocab_size=50)
    )
    fspec = trace(falcon.double().eval(), x)
    assert sum(s.kind == "activation" for s in fspec.sites) == 2
    assert any(s.kind == "stream" for s in fspec.sites)


def test_gpt_neox_packs_qkv_per_head():
    """GPT-NeoX (Pythia) packs q|k|v per head: one Linear's output viewed as (heads, 3 x head_dim)
    and split on the last dim. Heads are permuted with their three slots; vo maps per head."""
    cfg = T.GPTNeoXConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        vocab_size=50,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.GPTNeoXForCausalLM(cfg).double().eval()
    x = _tokens()
    spec = trace(model, x)
    heads = spec.site("gpt_neox.layers.0.attention.heads")
    qkv = [a for a in heads.actions if a.name.endswith("query_key_value.weight")]
    assert sorted(a.channels for a in qkv) == [(0, 3), (1, 4), (2, 5)]  # slot s of head h: 3h + s
    assert sum(s.kind == "attention_vo" for s in spec.sites) == 4 and not spec.dropped
    ref = _run(model, x)
    new = apply(model, spec, random_elements(spec, generator=torch.Generator().manual_seed(0)))
    assert float((_run(new, x) - ref).abs().max() / ref.abs().max()) < spec.verified_tolerance
