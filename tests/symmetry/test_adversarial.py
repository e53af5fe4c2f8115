"""Models written to fool the tracer's rules: concatenation, stacking, shared and tied
parameters, functionals with arguments, plain tensor attributes, keyword additions. Every spec that
``trace`` returns must verify at float64 round-off, and what it refuses must say why."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intertwiner.errors import UnsupportedModuleError, UnverifiedSymmetryError
from intertwiner.groups import IntertwinerGroup
from intertwiner.symmetry import apply, random_elements, trace
from intertwiner.symmetry.check import _run

trace_module = importlib.import_module("intertwiner.symmetry._rules_elementwise")

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel_change(model, spec, x, seed: int = 1) -> float:
    new = apply(model, spec, random_elements(spec, generator=_gen(seed)))
    ref = _run(model, x)
    return float((_run(new, x) - ref).abs().max() / ref.abs().max())


class DenseBlock(nn.Module):
    """DenseNet-style: every layer reads the concatenation of all earlier feature maps."""

    def __init__(self, c=3, growth=4, layers=2):
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(c + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.head = nn.Linear(c + layers * growth, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        for conv in self.convs:
            h = torch.cat([h, F.relu(conv(h))], dim=1)
        return self.head(h.mean(dim=(2, 3)))


class ClsViT(nn.Module):
    """A CLS token concatenated along the token axis, a sliced position table, a GELU MLP."""

    def __init__(self, d=6, t_max=10):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, t_max, d))
        self.fc1, self.fc2 = nn.Linear(d, 12), nn.Linear(12, d)
        self.act = nn.GELU()
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.embed(x)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        h = h + self.pos[:, : h.shape[1]]
        h = h + self.fc2(self.act(self.fc1(h)))
        return self.head(h[:, 0])


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.stack([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        return self.out(h.sum(dim=1))


class SharedWeight(nn.Module):
    """One Parameter in two Linear layers that write different spaces."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


class TiedLM(nn.Module):
    """Token and position embeddings, a LayerNorm'd residual MLP, an LM head tied to the table."""

    def __init__(self, vocab=11, d=6, t_max=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(t_max, d)
        self.ln, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 10), nn.Linear(10, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        positions = torch.arange(idx.shape[1])
        h = self.tok(idx) + self.pos(positions)
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.head(self.ln_f(h))


class Relu6Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(F.hardtanh(self.a(x), 0.0, 6.0))


class PlainAttribute(nn.Module):
    """A tensor attribute that is neither parameter nor buffer is added to a hidden feature."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.offset = torch.randn(4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + self.offset)


class KeywordAdd(nn.Module):
    def __init__(self, with_input: bool):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.with_input = with_input

    def forward(self, x):
        h = torch.relu(self.a(x))
        other = x if self.with_input else torch.relu(self.b(x))
        return self.c(torch.add(h, other=other))


class GLU(nn.Module):
    """``a * sigmoid(b)`` with ``a, b`` the two halves of one Linear's output (chunked)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 12), nn.Linear(6, 2)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)
        return self.out(a * torch.sigmoid(b))


class SplitHeads(nn.Module):
    """One Linear's output split into unequal blocks that go different ways."""

    def __init__(self):
        super().__init__()
        self.fc, self.o1, self.o2 = nn.Linear(4, 10), nn.Linear(6, 2), nn.Linear(4, 2)

    def forward(self, x):
        a, b = torch.split(self.fc(x), [6, 4], dim=-1)
        return self.o1(torch.relu(a)) + self.o2(torch.tanh(b))


def _float64(model):
    torch.manual_seed(0)
    return model.double().eval()


CASES = {
    "densenet": (DenseBlock, lambda: torch.randn(3, 2, 5, 5, dtype=F64)),
    "cls_vit": (ClsViT, lambda: torch.randn(3, 5, 4, dtype=F64)),
    "stacked": (Stacked, lambda: torch.randn(4, 4, dtype=F64)),
    "shared": (SharedWeight, lambda: torch.randn(4, 5, dtype=F64)),
    "tied_lm": (TiedLM, lambda: torch.randint(0, 11, (3, 8))),
    "relu6": (Relu6Functional, lambda: torch.randn(5, 3, dtype=F64)),
    "plain_attribute": (PlainAttribute, lambda: torch.randn(5, 3, dtype=F64)),
    "kwadd_hidden": (lambda: KeywordAdd(False), lambda: torch.randn(5, 3, dtype=F64)),
    "kwadd_input": (lambda: KeywordAdd(True), lambda: torch.randn(5, 3, dtype=F64)),
    "glu": (GLU, lambda: torch.randn(5, 4, dtype=F64)),
    "split": (SplitHeads, lambda: torch.randn(5, 4, dtype=F64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_returned_spec_preserves_the_function(case):
    build, make_x = CASES[case]
    torch.manual_seed(0)
    model = _float64(build())
    x = make_x()
    spec = trace(model, x)
    for seed in range(3):
        assert _rel_change(model, spec, x, seed) < 1e-9, (case, spec)


def test_concatenated_channels_get_block_structured_sites():
    model = _float64(DenseBlock())
    spec = trace(model, torch.randn(2, 2, 5, 5, dtype=F64))
    assert not spec.dropped
    # the stem and each layer's new channels are sites of their own; the head reads all of them
    assert [s.width for s in spec.sites] == [3, 4, 4]
    head_cols = sorted(
        a.channels or tuple(range(a.n_total))
        for s in spec.sites
        for a in s.actions
        if a.name == "head.weight"
    )
    assert head_cols == [(0, 1, 2), (3, 4, 5, 6), (7, 8, 9, 10)]


def test_cls_token_and_sliced_positions_keep_the_stream():
    model = _float64(ClsViT())
    spec = trace(model, torch.randn(2, 5, 4, dtype=F64))
    stream = spec.site("stream:embed")
    acted = {a.name for a in stream.actions}
    assert {"cls", "pos", "embed.weight", "fc2.weight", "head.weight"} <= acted
    assert stream.group.family.name == "general_linear"
    assert spec.site("act").group.name == "G_GELU"


def test_stacked_branches_share_one_element():
    spec = trace(_float64(Stacked()), torch.randn(3, 4, dtype=F64))
    (site,) = spec.sites
    assert site.group.family.name == "permutation"  # ReLU branch and tanh branch intersect
    assert {a.name for a in site.actions} >= {"a.weight", "b.weight", "out.weight"}


def test_shared_weight_between_two_layers_is_dropped_with_the_reason():
    spec = trace(_float64(SharedWeight()), torch.randn(3, 5, dtype=F64))
    reasons = dict(spec.dropped)
    assert reasons and all("shared by a.weight, b.weight" in r for r in reasons.values())
    with pytest.raises(UnverifiedSymmetryError, match="shared"):
        trace(_float64(SharedWeight()), torch.randn(3, 5, dtype=F64), strict=True)


def test_tied_lm_head_keeps_a_permutation_stream():
    model = _float64(TiedLM())
    x = torch.randint(0, 11, (3, 8))
    spec = trace(model, x)
    stream = spec.site("stream:tok")
    assert stream.group.family.name == "permutation"
    on_table = [a for a in stream.actions if a.name in ("tok.weight", "head.weight")]
    assert len(on_table) == 1  # one action serves the lookup and the tied head
    assert not spec.dropped


def test_hardtanh_bounds_are_read():
    spec = trace(_float64(Relu6Functional()), torch.randn(4, 3, dtype=F64))
    (site,) = spec.sites
    assert site.group.family.name == "permutation"  # [0, 6]: a sign flip is not a symmetry
    assert "hardtanh" in site.group.name and "6.0" in site.group.name


def test_plain_tensor_attribute_freezes_the_space_it_touches():
    spec = trace(_float64(PlainAttribute()), torch.randn(4, 3, dtype=F64))
    assert spec.sites == []
    assert any("plain tensor attribute" in r for _, r in spec.frozen)


def test_keyword_addition_ties_hidden_spaces_and_freezes_input():
    hidden = trace(_float64(KeywordAdd(False)), torch.randn(4, 3, dtype=F64))
    assert len(hidden.sites) == 1 and len(hidden.sites[0].writers) == 2
    frozen = trace(_float64(KeywordAdd(True)), torch.randn(4, 3, dtype=F64))
    assert frozen.sites == []


def test_verification_drops_a_rule_that_lies(monkeypatch):
    """If a rule claims too large a group, the numerical check drops the site (and strict
    refuses): soundness does not rest on the rules alone."""
    real = trace_module.activation_group

    def lying(target, *args, **kwargs):
        group = real(target, *args, **kwargs)
        if group is not None and group.name == "G_ReLU":
            return IntertwinerGroup("monomial", "identity", "G_ReLU_lie")  # sign flips: wrong
        return group

    monkeypatch.setattr(trace_module, "activation_group", lying)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Linear(4, 2)).double()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body[3](torch.relu(self.body[2](self.body[1](self.body[0](x)))))

    x = torch.randn(6, 3, dtype=F64)
    spec = trace(M(), x)
    assert spec.names == ["body.1"]  # the tanh site verifies
    ((name, reason),) = spec.dropped
    assert name == "relu" and "verification failed" in reason and "G_ReLU_lie" in reason
    assert spec.verified_error is not None and spec.verified_error < 1e-12
    with pytest.raises(UnverifiedSymmetryError, match="relu"):
        trace(M(), x, strict=True)


def test_integer_output_cannot_be_verified():
    class Labels(nn.Module):
        def forward(self, x):
            return (x > 0).long()

    with pytest.raises(UnverifiedSymmetryError, match="no floating-point"):
        trace(Labels(), torch.randn(3, 3))


def test_split_feature_axis_gives_one_site_per_block():
    spec = trace(_float64(SplitHeads()), torch.randn(4, 4, dtype=F64))
    assert [(s.width, s.group.family.name) for s in spec.sites] == [
        (6, "positive_monomial"),
        (4, "signed_permutation"),
    ]
    rows = {a.channels for s in spec.sites for a in s.actions if a.name == "fc.weight"}
    assert rows == {tuple(range(6)), tuple(range(6, 10))}


def test_glu_halves_share_a_permutation_and_the_value_half_any_scale():
    spec = trace(_float64(GLU()), torch.randn(4, 4, dtype=F64))
    (site,) = spec.sites
    assert site.group.family.name == "monomial"
    kinds = {(a.channels, a.kind) for a in site.actions if a.name == "fc.weight"}
    assert kinds == {(tuple(range(6)), "A"), (tuple(range(6, 12)), "P")}


def test_parametrized_weight_is_frozen_not_crashed():
    """weight_norm computes the weight from two tensors: no element may move it as a parameter."""
    model = nn.Sequential(
        nn.Linear(3, 5),
        nn.ReLU(),
        nn.utils.parametrizations.weight_norm(nn.Linear(5, 4)),
        nn.Tanh(),
        nn.Linear(4, 2),
    ).double()
    x = torch.randn(6, 3, dtype=F64)
    spec = trace(model, x)
    assert spec.sites == []
    assert any("weight is computed" in r for _, r in spec.frozen)
    with pytest.raises(UnsupportedModuleError, match="parametrized"):
        trace(model, x, frontend="fx")
