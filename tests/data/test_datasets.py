"""Datasets: disjoint seeded splits, fixed test sets, normalisation, augmentation, CIFAR safety."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from intertwiner.data import DataSplits, UnknownDatasetError, from_arrays, load, stratified_split
from intertwiner.data.cifar10 import URL
from intertwiner.data.transforms import augment_batch
from intertwiner.errors import DataNotFoundError, NonFiniteError, ShapeError


def ids(dataset) -> set[int]:
    """Identities of items built by ``tagged``: pixel (0, 0, 0) holds the example index."""
    x, _ = dataset.get_batch(torch.arange(len(dataset)))
    return {int(v) for v in x[:, 0, 0, 0]}


def tagged(n: int = 200, k: int = 4, seed: int = 0, **kw) -> DataSplits:
    X = torch.rand(n, 1, 4, 4)
    X[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    y = torch.arange(n) % k
    return from_arrays(X, y, seed=seed, normalize=False, **kw)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_splits_are_disjoint_and_cover(seed):
    d = tagged(seed=seed)
    tr, va, te = ids(d.train), ids(d.val), ids(d.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(200))
    assert len(te) == 40 and len(va) == 16  # 20% test, then 10% of the remaining 160
    # stratified: every class is in every split in proportion
    for ds in (d.train, d.val, d.test):
        counts = torch.bincount(ds.labels, minlength=4)
        assert counts.max() - counts.min() <= 1


def test_split_seed_changes_validation_only_through_seed():
    a, b, c = tagged(seed=0), tagged(seed=0), tagged(seed=1)
    assert ids(a.val) == ids(b.val)
    assert ids(a.val) != ids(c.val)


def test_stratified_split_properties():
    labels = np.repeat(np.arange(5), [3, 10, 7, 2, 50])
    keep, held = stratified_split(labels, 0.25, seed=3)
    assert len(np.intersect1d(keep, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    for c in range(5):  # at least one example of every class on each side
        assert (labels[held] == c).any() and (labels[keep] == c).any()


def test_mnist_fixed_balanced_split():
    a, b = load("mnist", seed=0), load("mnist", seed=5)
    assert (len(a.train), len(a.val), len(a.test)) == (3600, 400, 1000)
    assert torch.equal(torch.bincount(a.test.labels), torch.full((10,), 100))
    assert torch.equal(torch.bincount(a.val.labels), torch.full((10,), 40))
    # the test set is the same whatever the validation seed
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.val.images, b.val.images)
    hashes = [
        {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in ds.images}
        for ds in (a.train, a.val, a.test)
    ]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2])
    assert not (hashes[1] & hashes[2])
    x, y = a.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert a.meta["in_channels"] == 1 and a.meta["input_size"] == 28
    assert a.meta["num_classes"] == 10 and a.meta["split_seed"] == 0


def test_normalisation_uses_train_statistics():
    d = load("digits")
    x, _ = d.train.get_batch(torch.arange(len(d.train)))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2
    assert d.meta["input_size"] == 8
    up = load("digits", input_size=28)
    assert up.train[0][0].shape == (1, 28, 28)


def test_augmentation_only_on_train_and_seeded():
    d = load("synthetic", n_train=64, n_test=16, input_size=8, augment=True)
    idx = torch.arange(10)
    a = d.train.get_batch(idx, torch.Generator().manual_seed(0))[0]
    b = d.train.get_batch(idx, torch.Generator().manual_seed(0))[0]
    c = d.train.get_batch(idx, torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d.val[0][0], d.val[0][0]) and torch.equal(d.test[3][0], d.test[3][0])
    assert not d.val.augment and not d.test.augment


def test_translation_is_a_shifted_crop():
    x = torch.randn(6, 2, 5, 5)
    out = augment_batch(x, flip=False, pad=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crops = [padded[i, :, dy : dy + 5, dx : dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) for c in crops)
    flipped = augment_batch(x, flip=True, pad=0, generator=torch.Generator().manual_seed(0))
    for i in range(6):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_synthetic_seeded():
    a = load("synthetic", n_train=50, n_test=10, data_seed=1)
    b = load("synthetic", n_train=50, n_test=10, data_seed=1)
    c = load("synthetic", n_train=50, n_test=10, data_seed=2)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)


def test_bad_inputs():
    with pytest.raises(UnknownDatasetError, match="choose one of"):
        load("imagenet")
    rng = np.random.default_rng(0)
    X = rng.random((40, 16))
    X[3, 2] = np.nan
    with pytest.raises(NonFiniteError):
        from_arrays(X, np.arange(40) % 2)
    with pytest.raises(ShapeError):
        from_arrays(rng.random((40, 15)), np.arange(40) % 2, tabular=False)  # 15 is not square
    with pytest.raises(ShapeError, match="tabular"):
        from_arrays(rng.random((40, 4, 4)), np.arange(40) % 2, tabular=True)
    with pytest.raises(ShapeError):
        from_arrays(rng.random((40, 16)), np.arange(39) % 2)


def test_concepts_dispatch(monkeypatch):
    fake = types.ModuleType("intertwiner.data.concepts")
    fake.load_concepts = lambda **kw: ("concepts", kw)
    monkeypatch.setitem(sys.modules, "intertwiner.data.concepts", fake)
    assert load("concepts", size=5) == ("concepts", {"size": 5})


# ---- CIFAR-10 from a fake cifar-10-batches-py folder -----------------------------------------
def write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"fake",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def fake_cifar(tmp_path, n=20):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", n, i)
    write_batch(folder / "test_batch", n, 99)
    return folder


def test_cifar_loads_official_layout(tmp_path):
    folder = fake_cifar(tmp_path)
    for root in (tmp_path, folder):
        d = load("cifar10", root=root, val_fraction=0.2)
        assert len(d.train) + len(d.val) == 100 and len(d.test) == 20
        x, _ = d.train[0]
        assert x.shape == (3, 32, 32)
        assert d.meta["in_channels"] == 3 and d.meta["input_size"] == 32
    raw = pickle.loads((folder / "test_batch").read_bytes())
    expected = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(load("cifar10", root=folder).test.images, expected)


def test_cifar_missing_folder_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz") as e:
        load("cifar10", root=tmp_path)
    assert URL in str(e.value)
    with pytest.raises(DataNotFoundError):
        load("cifar10")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_refuses_code_in_pickles(tmp_path):
    folder = fake_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataNotFoundError, match="refusing to unpickle"):
        load("cifar10", root=tmp_path)


def test_cifar_malformed_batch(tmp_path):
    folder = fake_cifar(tmp_path)
    bad = {b"labels": [0, 1], b"data": np.zeros((2, 100), dtype=np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataNotFoundError, match="expected data"):
        load("cifar10", root=tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataNotFoundError):
        load("cifar10", root=tmp_path)


def test_from_arrays_accepts_tabular_rows_and_trains_an_mlp_on_them():
    from intertwiner import models, training

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 7)) * np.arange(1, 8) + 5.0  # 7 features: not an image
    y = (X[:, 0] > 5.0).astype(int)
    s = from_arrays(X, y, seed=0)
    assert s.meta["layout"] == "tabular" and s.meta["in_features"] == 7
    x0, y0 = s.train[0]
    assert x0.shape == (7,) and x0.dtype == torch.float32
    rows = torch.stack([s.train[i][0] for i in range(len(s.train))])
    assert torch.allclose(rows.mean(0), torch.zeros(7), atol=1e-5)  # per-feature normalisation
    assert s.model_config() == {"in_features": 7, "num_classes": 2}
    model = models.build("mlp", widths=[8], seed=0, **s.model_config())
    training.train(model, s, config=training.TrainConfig(epochs=1, progress=False))
    assert 0.0 <= training.evaluate(model, s.test)["accuracy"] <= 1.0
    # a square D may still be tabular when asked
    assert from_arrays(rng.random((40, 16)), np.arange(40) % 2, tabular=True).meta["layout"] == (
        "tabular"
    )
    assert from_arrays(rng.random((40, 16)), np.arange(40) % 2).meta["layout"] == "image"
    with pytest.raises(ShapeError, match="augment"):
        from_arrays(X, y, augment=True)
