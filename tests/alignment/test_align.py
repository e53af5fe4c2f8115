"""align(): recovery of randomly transformed copies, function preservation, monotone descent."""

from __future__ import annotations

import copy

import pytest
import torch
from tests._support.factories import ZOO, build_zoo

from intertwiner import models
from intertwiner.alignment import align, weight_distance
from intertwiner.alignment._views import feature_rows
from intertwiner.errors import ShapeError
from intertwiner.features import capture
from intertwiner.symmetry import apply, random_elements, trace

ACTIVATIONS = ["relu", "tanh", "gelu"]
ARCHS = [k for k in ZOO if k != "resnet18"] + ["resnet18"]


def _max_rel_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """max over parameters and buffers of max|a - b| / max|a|."""
    sa, sb = a.state_dict(), b.state_dict()
    worst = 0.0
    for k, t in sa.items():
        if not torch.is_floating_point(t):
            continue
        scale = max(float(t.abs().max()), 1e-12)
        worst = max(worst, float((t.double() - sb[k].double()).abs().max()) / scale)
    return worst


def _copy(model, x, seed=3):
    spec = trace(model, x)
    g = random_elements(spec, torch.Generator().manual_seed(seed))
    return apply(model, spec, g), spec


def _inputs(x: torch.Tensor, n: int = 512) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, *x.shape[1:], generator=gen, dtype=x.dtype)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_weight_matching_recovers_transformed_copy(arch, act):
    a, x = build_zoo(arch, act)
    b, spec = _copy(a, x)
    assert _max_rel_diff(a, b) > 1e-2  # the copy really moved
    res = align(a, b, example_input=x)
    assert _max_rel_diff(a, res.model) < 1e-6
    assert res.history[-1] <= 1e-12 * res.history[0]


def _no_dead_units(model, spec, data) -> bool:
    names = [n for s in spec.sites for n in s.activations]
    feats = capture(model, data, names)
    for s in spec.sites:
        for n in s.activations:
            rows = feature_rows(feats[n], s.activation_axes[n])
            if bool(((rows.double() ** 2).sum(0) == 0).any()):
                return False
    return True


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("arch", ["mlp", "myrtle_cnn", "resnet20", "vit"])
def test_activation_matching_recovers_transformed_copy(arch, act):
    a, x = build_zoo(arch, act, seed=1)
    b, spec = _copy(a, x)
    data = _inputs(x)
    # A unit that never fires carries no information about its scale or place.
    assert _no_dead_units(a, spec, data)
    res = align(a, b, data=data, method="activations", spec=spec)
    assert _max_rel_diff(a, res.model) < 1e-6


@pytest.mark.parametrize("arch", ["mlp", "myrtle_cnn", "resnet20"])
def test_permutation_only_fails_on_rescaled_copy(arch):
    """ReLU copies with changed scales are out of reach of permutations: the scaling part works."""
    a, x = build_zoo(arch, "relu")
    b, _ = _copy(a, x)
    perm = align(a, b, example_input=x, group="permutation")
    full = align(a, b, example_input=x, group="full")
    assert _max_rel_diff(a, perm.model) > 1e-2
    assert _max_rel_diff(a, full.model) < 1e-6


def test_permutation_only_recovers_gelu_copy():
    a, x = build_zoo("resnet20", "gelu")
    b, _ = _copy(a, x)
    assert _max_rel_diff(a, align(a, b, example_input=x, group="permutation").model) < 1e-6


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("group", ["full", "permutation", "none"])
@pytest.mark.parametrize("arch", ["myrtle_cnn", "resnet20", "vit"])
def test_aligned_b_computes_b_and_b_untouched(arch, group, method):
    a, x = build_zoo(arch, "relu", seed=0)
    b, _ = build_zoo(arch, "relu", seed=7)  # an independent model
    before = copy.deepcopy(b.state_dict())
    res = align(a, b, data=_inputs(x, 64), method=method, group=group)
    aligned, elements = res  # unpacks
    with torch.no_grad():
        out_b, out_al = b(x), aligned(x)
    assert float((out_b - out_al).abs().max()) <= 1e-10 * max(1.0, float(out_b.abs().max()))
    for k, t in b.state_dict().items():
        assert torch.equal(t, before[k])
    assert set(elements) == set(res.spec.names)
    if group == "none":
        assert _max_rel_diff(b, aligned) == 0.0
    elif method == "weights":
        assert weight_distance(a, aligned) < weight_distance(a, b)


def _trained_pair(seed_a=0, seed_b=1):
    from intertwiner.data import load
    from intertwiner.training import TrainConfig, train

    data = load("digits")
    out = []
    for seed in (seed_a, seed_b):
        m = models.build(
            "mlp", activation="relu", seed=seed, widths=(24, 16), in_channels=1, input_size=8
        )
        train(m, data, TrainConfig(epochs=2, batch_size=64, seed=seed, progress=False))
        out.append(m)
    return out, data


@pytest.fixture(scope="module")
def trained_pair():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _trained_pair()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("group", ["full", "permutation"])
def test_weight_matching_never_increases_distance(trained_pair, group):
    (a, b), _ = trained_pair
    # The distance rule descends D itself (the representatives' rules descend it between the
    # representatives: test_representative_history_is_their_distance).
    res = align(a, b, group=group, seed=1, scales="distance")
    h = res.history
    assert len(h) >= 2
    assert all(h[i + 1] <= h[i] * (1 + 1e-12) for i in range(len(h) - 1))
    assert h[-1] < h[0]
    assert weight_distance(a, res.model, relative=False) == pytest.approx(h[-1], rel=1e-6)


def test_full_group_at_least_as_close_as_permutations_on_trained_pair(trained_pair):
    (a, b), _ = trained_pair
    # Start the full-group descent from the permutation solution: it can only go lower.
    p = align(a, b, group="permutation")
    f = align(a, p.model, group="full", scales="distance")
    assert weight_distance(a, f.model) <= weight_distance(a, p.model) + 1e-12


def test_same_seed_same_result(trained_pair):
    (a, b), _ = trained_pair
    r1, r2 = align(a, b, seed=3), align(a, b, seed=3)
    for k in r1.elements:
        assert torch.equal(r1.elements[k].matrix(), r2.elements[k].matrix())


def test_activation_statistics_stream(trained_pair):
    """Batch size changes nothing: the statistics are sums over samples."""
    (a, b), data = trained_pair
    # Permutations only: the elements come from the streamed statistics alone (full groups
    # refine ReLU scales by weights afterwards).
    kw = dict(method="activations", group="permutation", max_samples=300)
    r1 = align(a, b, data=data.train, batch_size=37, **kw)
    r2 = align(a, b, data=data.train, batch_size=300, **kw)
    # Units that never fire tie (any place is as good); compare the objective, not the elements.
    x = torch.stack([data.train[i][0] for i in range(300)])
    fa = capture(a, x, ["act1", "act2"])
    for name in ("act1", "act2"):
        d1 = ((capture(r1.model, x, name)[name] - fa[name]) ** 2).sum()
        d2 = ((capture(r2.model, x, name)[name] - fa[name]) ** 2).sum()
        assert float(d1) == pytest.approx(float(d2), rel=1e-6)


def test_bad_inputs():
    a, x = build_zoo("mlp", "relu")
    other = models.build("mlp", widths=(7, 5), in_channels=1, input_size=4).double()
    with pytest.raises(ShapeError):
        align(a, other, example_input=x)
    with pytest.raises(ValueError, match="data"):
        align(a, a, method="activations")
    with pytest.raises(ValueError, match="group"):
        align(a, a, group="orthogonal")
    with pytest.raises(ValueError, match="method"):
        align(a, a, method="gradients")
    with pytest.raises(ValueError, match="scales"):
        align(a, a, scales="smallest")


def test_table_lists_every_site():
    a, x = build_zoo("resnet20", "relu")
    b, spec = _copy(a, x)
    res = align(a, b, spec=spec)
    text = res.table()
    for s in spec.sites:
        assert s.name in text
    assert all(r.after <= r.before + 1e-12 for r in res.sites)


def _hf_models():
    tr = pytest.importorskip("transformers")
    gpt2 = tr.GPT2LMHeadModel(
        tr.GPT2Config(
            n_embd=8,
            n_layer=2,
            n_head=2,
            vocab_size=11,
            n_positions=8,
            use_cache=False,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    bert = tr.BertModel(
        tr.BertConfig(
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            vocab_size=11,
            max_position_embeddings=8,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    llama = tr.LlamaForCausalLM(
        tr.LlamaConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=11, max_position_embeddings=16, use_cache=False,
        )
    )  # fmt: skip
    return {"gpt2": gpt2, "bert": bert, "llama": llama}


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_hugging_face_recovery(name, method):
    """GPT-2 (GELU), BERT, LLaMA (gated SiLU MLP: monomial sites whose activation output moves by
    the permutation only; RMSNorm stream: orthogonal, its norm weights folded)."""
    torch.manual_seed(0)
    a = _hf_models()[name].double().eval()
    x = torch.randint(0, 11, (2, 6))
    b, spec = _copy(a, x)
    assert spec.sites
    data = torch.randint(0, 11, (64, 6), generator=torch.Generator().manual_seed(0))
    res = align(a, b, spec=spec, method=method, data=data)
    assert _max_rel_diff(a, res.model) < 1e-6


class _CountingBatches:
    """An iterable of input batches that counts how often it is iterated."""

    def __init__(self, x: torch.Tensor, batch: int):
        self.x, self.batch, self.passes = x, batch, 0

    def __iter__(self):
        self.passes += 1
        for i in range(0, self.x.shape[0], self.batch):
            yield self.x[i : i + self.batch]


def test_activation_matching_is_one_pass():
    a, x = build_zoo("resnet20", "relu", seed=0)
    b, _ = build_zoo("resnet20", "relu", seed=1)
    data = _CountingBatches(_inputs(x, 96), 32)
    align(a, b, data=data, method="activations", example_input=x)
    assert data.passes == 1


# -- the scale rules ---------------------------------------------------------------------------
def _plain(kind: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A plain nn.Sequential (no zoo config) in float64, with its input."""
    from torch import nn

    torch.manual_seed(4)
    if kind == "mlp":
        m = nn.Sequential(
            nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
        )
        return m.double(), _inputs(torch.zeros(1, 5, dtype=torch.float64), 256)
    m = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 2.0)
    return m.eval(), _inputs(torch.zeros(1, 1, 6, 6, dtype=torch.float64), 128)


@pytest.mark.parametrize("scales", ["balanced", "unit_norm"])
@pytest.mark.parametrize("kind", ["mlp", "bn_cnn"])
def test_full_group_recovers_permuted_and_rescaled_copy_with_no_barrier(kind, scales):
    """B = A with its units permuted and positively rescaled: the full group gives back A exactly
    (barrier 0); permutations alone cannot undo the scales (a positive barrier)."""
    from intertwiner.alignment import interpolate

    a, x = _plain(kind)
    b, spec = _copy(a, x, seed=6)
    y = a(x).argmax(1).detach()
    data = torch.utils.data.TensorDataset(x, y)
    full = align(a, b, spec=spec, scales=scales)
    perm = align(a, b, spec=spec, group="permutation")
    assert _max_rel_diff(a, full.model) < 1e-6
    assert _max_rel_diff(a, perm.model) > 1e-2
    flat = interpolate(a, full.model, 5, data, reset_bn=False)
    bent = interpolate(a, perm.model, 5, data, reset_bn=False)
    assert flat.barrier == pytest.approx(0.0, abs=1e-9)
    assert flat.losses == pytest.approx([flat.losses[0]] * 5, abs=1e-9)
    # Random weights give a flat-ish loss either way; the midpoint's function tells them apart.
    from intertwiner.alignment import lerp

    with torch.no_grad():
        ref = float(a(x).abs().max())
        assert float((lerp(a, full.model, 0.5)(x) - a(x)).abs().max()) < 1e-9 * ref
        assert float((lerp(a, perm.model, 0.5)(x) - a(x)).abs().max()) > 1e-2 * ref
    assert bent.losses != pytest.approx(flat.losses, abs=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "bn_cnn"])
def test_full_group_no_worse_than_permutations_on_noisy_rescaled_copy(kind):
    """B = A with its units permuted and randomly rescaled, then every weight perturbed by 5%
    noise (no element recovers A exactly): along the line from A to aligned B, the full group's
    network stays closer to A's function than the permutations' (which cannot undo the scales).
    (Untrained weights: the loss barrier is flat-ish either way, so outputs are compared.)"""
    from intertwiner.alignment import lerp

    a, x = _plain(kind)
    b, spec = _copy(a, x, seed=8)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    full = align(a, b, spec=spec)
    perm = align(a, b, spec=spec, group="permutation")
    with torch.no_grad():
        ref = a(x)
        for alpha in (0.25, 0.5, 0.75):
            err = [float((lerp(a, r.model, alpha)(x) - ref).abs().max()) for r in (full, perm)]
            assert err[0] < err[1]


def test_balanced_representative_is_least_norm_and_balanced():
    """Every ReLU unit of the balanced model has equal incoming and outgoing energy, the norm did
    not grow, and the function is unchanged."""
    from intertwiner.alignment._scales import balance

    a, x = _plain("mlp")
    b, spec = _copy(a, x, seed=2)
    rep, _ = balance(b, spec)
    with torch.no_grad():
        assert torch.allclose(rep(x), b(x), atol=1e-10)
    w = [rep[i] for i in (0, 2, 4)]
    for inc, out in zip(w[:-1], w[1:], strict=False):
        e_in = (inc.weight**2).sum(1) + inc.bias**2
        e_out = (out.weight**2).sum(0)
        assert torch.allclose(e_in, e_out, rtol=1e-9)
    norm = sum(float((p.detach() ** 2).sum()) for p in rep.parameters())
    assert norm <= sum(float((p.detach() ** 2).sum()) for p in b.parameters()) + 1e-9


def test_representative_history_is_their_distance(trained_pair):
    from intertwiner.alignment._scales import balance

    (a, b), _ = trained_pair
    res = align(a, b)
    ra, _ = balance(a, res.spec)
    rb, _ = balance(res.model, res.spec)
    # B aligned, balanced, is the representative B matched to A's: the recorded distance.
    assert weight_distance(ra, rb, relative=False) == pytest.approx(res.history[-1], rel=1e-6)
    assert all(h1 <= h0 * (1 + 1e-12) for h0, h1 in zip(res.history, res.history[1:]))


def test_batched_head_costs_equal_per_pair_fits(monkeypatch):
    """The costs of all head pairs from one product per action and one batched fit (GPT-2's
    per-head qk/vo maps) equal the per-pair fits, and so do the per-head maps."""
    from intertwiner.alignment import Extent, _heads, _weights

    tr = pytest.importorskip("transformers")
    cfg = tr.GPT2Config(
        n_embd=16, n_layer=1, n_head=4, vocab_size=11, n_positions=8, use_cache=False,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    a, b = tr.GPT2LMHeadModel(cfg).double().eval(), tr.GPT2LMHeadModel(cfg).double().eval()
    spec = trace(b, torch.randint(0, 11, (1, 6)))
    prob = _weights._Problem(a, b, spec, Extent.SITE_GROUP)
    (block,), _ = _heads._heads_blocks(spec)
    assert prob._batched_slots(block)
    cost, fits = prob._head_costs(block), prob._head_fits(block)
    monkeypatch.setattr(_weights._Problem, "_batched_slots", lambda self, blk: False)
    loop_cost, loop_fits = prob._head_costs(block), prob._head_fits(block)
    # The loop polishes every pair's GL fit; the batched ranking uses the closed-form candidates.
    assert (cost >= loop_cost - 1e-9).all()
    assert torch.equal(_weights.best_assignment(-cost), _weights.best_assignment(-loop_cost))
    for name, g in fits.items():
        assert torch.allclose(g.matrix(), loop_fits[name].matrix(), atol=1e-9)


@pytest.mark.parametrize("arch", ["mlp", "resnet20"])
def test_large_model_path_recovers_and_undoes_exactly(arch, monkeypatch):
    """The path of models above LARGE (float32 working copy, rejected steps undone with the
    inverse element instead of a saved copy), forced on small models: a transformed copy is
    still recovered, and a rejected step leaves B where it was."""
    from intertwiner.alignment import Extent, _weights

    monkeypatch.setattr(_weights, "LARGE", 0)
    monkeypatch.setattr(_weights, "_SAVE_BYTES", 0)
    a, x = build_zoo(arch, "relu")
    a = a.float()
    x = x.float()
    b, spec = _copy(a, x)
    res = align(a, b, example_input=x)
    assert _max_rel_diff(a, res.model) < 1e-5
    with torch.no_grad():
        assert _rel_out(res.model(x), b(x)) < 1e-5  # B's function, exactly (float32)
    prob = _weights._Problem(a, copy.deepcopy(a), spec, Extent.SITE_GROUP)
    assert prob.dtype == torch.float32
    site = next(s for s in spec.sites if not s.folds)
    delta = random_elements(spec, torch.Generator().manual_seed(7))[site.name]
    assert not prob._guarded([site], {site.name: delta}, lambda: None)  # moves B off A: rejected
    assert _max_rel_diff(a, prob.b) < 1e-5


def _rel_out(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
