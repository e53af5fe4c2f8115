"""compare: layer x layer matrices from one pass, agreeing with the one-shot metrics."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from intertwiner.features import capture
from intertwiner.metrics import cka, compare, group_cka, procrustes_similarity


def tiny_cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    )


class CountingLoader:
    """An iterable of (x, y) batches that counts how often it is iterated."""

    def __init__(self, x):
        self.x, self.passes = x, 0

    def __iter__(self):
        self.passes += 1
        for i in range(0, len(self.x), 16):
            yield self.x[i : i + 16], torch.zeros(len(self.x[i : i + 16]))


def test_compare_matches_one_shot_metrics_in_one_pass(tmp_path):
    a, b = tiny_cnn(0), tiny_cnn(1)
    data = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = CountingLoader(data)
    metrics = ["cka", "cka_debiased", "procrustes_similarity:positive_monomial", "group_cka"]
    res = compare(a, b, loader, ["1", "3"], ["1", "3"], metrics, progress=False)
    assert loader.passes == 1
    assert res.n_samples == 40
    fa, fb = capture(a, data, ["1", "3"]), capture(b, data, ["1", "3"])
    for i, la in enumerate(["1", "3"]):
        for j, lb in enumerate(["1", "3"]):
            assert res.matrices["cka"][i, j] == pytest.approx(cka(fa[la], fb[lb]), abs=1e-8)
            assert res.matrices["cka_debiased"][i, j] == pytest.approx(
                cka(fa[la], fb[lb], debiased=True), abs=1e-8
            )
            assert res.matrices["group_cka[positive_monomial]"][i, j] == pytest.approx(
                group_cka(fa[la], fb[lb]), abs=1e-8
            )
    proc = res.matrices["procrustes_similarity[positive_monomial]"]
    assert proc[0, 0] == pytest.approx(
        procrustes_similarity(fa["1"], fb["1"], group="positive_monomial"), abs=1e-8
    )
    # different spatial sizes without upsample=True: NaN with a note, not a made-up number
    assert np.isnan(proc[0, 1]) and np.isnan(proc[1, 0])
    assert any("upsample=True" in n for n in res.notes)
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["metrics"]["procrustes_similarity[positive_monomial]"]["values"][0][1] is None
    assert "monomial" in d["metrics"]["group_cka[positive_monomial]"]["invariant_to"]
    res.plot(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res.save_json(tmp_path / "cmp.json")
    assert json.loads((tmp_path / "cmp.json").read_text())["layers_a"] == ["1", "3"]


def test_compare_with_upsampling_and_same_model():
    a = tiny_cnn(0)
    data = torch.randn(20, 3, 8, 8)
    res = compare(
        a,
        a,
        data,
        ["1", "3"],
        ["1", "3"],
        "procrustes_similarity:positive_monomial",
        upsample=True,
        progress=False,
        batch_size=7,
    )
    m = res.matrices["procrustes_similarity[positive_monomial]"]
    assert np.isfinite(m).all()
    assert np.diag(m) == pytest.approx([1.0, 1.0], abs=1e-7)


def test_compare_is_invariant_to_a_relu_symmetry_of_model_b():
    """Model b = model a with its hidden ReLU channels permuted and positively rescaled."""
    from intertwiner.groups import for_activation

    a = tiny_cnn(0)
    b = tiny_cnn(0)
    e = for_activation("relu").sample(4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b[0].weight.copy_(e.apply(a[0].weight, 0))
        b[0].bias.copy_(e.apply(a[0].bias, 0))
        b[2].weight.copy_(e.inverse().transpose().apply(a[2].weight, 1))
    data = torch.randn(24, 3, 8, 8)
    assert torch.allclose(a(data), b(data), atol=1e-5)
    res = compare(
        a, b, data, "1", "1", ["procrustes_distance:positive_monomial", "cka"], progress=False
    )
    assert res.matrices["procrustes_distance[positive_monomial,angular]"][0, 0] == pytest.approx(
        0.0, abs=1e-3
    )
    assert res.matrices["cka"][0, 0] < 0.999  # plain CKA sees the rescaling


# --- memory: the two forms of linear CKA, blocks, the up-front estimate (issue 19) ---


@pytest.mark.parametrize("form", ["feature", "gram"])
def test_linear_cka_forms_agree_with_one_shot(form):
    a, b = tiny_cnn(0), tiny_cnn(1)
    data = torch.randn(70, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    layers = ["1", "3", "5"]
    # a small limit forces the Gram form into several blocks (several passes over the data)
    limit = 200_000 if form == "gram" else None
    res = compare(
        a, b, data, layers, layers, ["cka", "cka_debiased"], progress=False,
        batch_size=8, form=form, memory_limit=limit,
    )  # fmt: skip
    assert res.plan["form"] == form
    if form == "gram":
        assert res.plan["passes"] > 1
    fa, fb = capture(a, data, layers), capture(b, data, layers)
    for i, x in enumerate(layers):
        for j, y in enumerate(layers):
            assert res.matrices["cka"][i, j] == pytest.approx(cka(fa[x], fb[y]), abs=1e-9)
            assert res.matrices["cka_debiased"][i, j] == pytest.approx(
                cka(fa[x], fb[y], debiased=True), abs=1e-9
            )


def test_same_model_shares_layer_statistics_and_gives_ones_on_the_diagonal():
    a = tiny_cnn(0)
    data = torch.randn(30, 3, 8, 8)
    res = compare(a, a, data, ["1", "3"], ["1", "3"], "cka", progress=False, form="gram")
    assert np.allclose(np.diag(res.matrices["cka"]), 1.0)
    assert res.matrices["cka"][0, 1] == pytest.approx(res.matrices["cka"][1, 0], abs=1e-12)


def test_memory_is_estimated_up_front_and_a_plan_that_does_not_fit_is_refused(capsys):
    from intertwiner.errors import MemoryBudgetError

    a, b = tiny_cnn(0), tiny_cnn(1)
    loader = CountingLoader(torch.randn(32, 3, 8, 8))
    with pytest.raises(MemoryBudgetError, match="estimated working memory"):
        compare(a, b, loader, ["1"], ["1"], "cka", progress=False, memory_limit="10kB")
    assert loader.passes == 1  # refused after the probe batch, before the work
    res = compare(a, b, torch.randn(32, 3, 8, 8), ["1"], ["1"], "cka", memory_limit="1 GiB")
    err = capsys.readouterr().err
    assert "estimated working memory" in err and "limit 1.07 GB" in err
    assert 0 < res.plan["estimated_bytes"] <= 2**30


def test_wide_layers_choose_the_gram_form_and_narrow_ones_the_feature_form():
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())  # 64*16*16 = 16384 wide
    x = torch.randn(20, 3, 16, 16)
    assert compare(wide, wide, x, ["1"], ["1"], "cka", progress=False).plan["form"] == "gram"
    narrow = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
    x = torch.randn(300, 5)
    assert compare(narrow, narrow, x, ["1"], ["1"], "cka", progress=False).plan["form"] == (
        "feature"
    )


def test_gram_form_refuses_data_that_changes_between_passes():
    from intertwiner.errors import InvalidInputError, MemoryBudgetError

    a = tiny_cnn(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.zeros(64))
    shuffled = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
    kw = dict(progress=False, batch_size=8, form="gram", memory_limit=100_000)
    with pytest.raises(InvalidInputError, match="different batches"):
        compare(a, a, shuffled, ["1"], ["3"], "cka", **kw)
    one_shot = iter(torch.randn(64, 3, 8, 8).split(8))
    with pytest.raises(MemoryBudgetError, match="one-shot"):
        compare(a, a, one_shot, ["1"], ["3"], "cka", max_samples=64, **kw)
