"""The synthetic agreement grammar: token sequences for language models."""

from __future__ import annotations

import pytest
import torch

from intertwiner import data
from intertwiner.data import grammar
from intertwiner.errors import InvalidOptionError

_SINGULAR_DET = {"a", "this", "every"}
_PLURAL_DET = {"these", "some", "many"}
_NOUN_NUMBER = {w: k for pair in grammar._NOUNS for k, w in enumerate(pair)}
_VERB_NUMBER = {
    w: k for pair in grammar._TRANSITIVE + grammar._INTRANSITIVE for k, w in enumerate(pair)
}


def test_splits_shapes_targets_and_disjointness():
    s = data.load("grammar", n_train=300, n_test=50, seq_len=16, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (270, 30, 50)
    assert s.model_config() == {"vocab_size": len(grammar.VOCABULARY), "seq_len": 16}
    x, y = s.train.tensors
    assert x.shape == y.shape == (270, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert 0 <= int(x.min()) and int(x.max()) < len(grammar.VOCABULARY)
    rows = {tuple(r.tolist()) for r in x}
    assert not rows & {tuple(r.tolist()) for r in s.val.tensors[0]}
    assert not rows & {tuple(r.tolist()) for r in s.test.tensors[0]}  # another stream
    # Same language, another validation choice; same seed, same splits.
    other = data.load("grammar", n_train=300, n_test=50, seq_len=16, seed=4)
    assert not torch.equal(other.val.tensors[0], s.val.tensors[0])
    again = data.load("grammar", n_train=300, n_test=50, seq_len=16, seed=3)
    assert torch.equal(again.train.tensors[0], x)
    assert data.options_from_meta(s.meta) == {
        "n_train": 300, "n_test": 50, "seq_len": 16, "val_fraction": 0.1, "seed": 3
    }  # fmt: skip


def test_sentences_agree_in_number():
    words = grammar.sentences(5000, seed=0)
    assert words[-1] == "." and torch.equal(grammar.encode(words[:5]), grammar.encode(words[:5]))
    checked_det = checked_that = 0
    for i, w in enumerate(words):
        if w in _SINGULAR_DET | _PLURAL_DET:  # determiner ... noun: same number
            j = i + 1
            while words[j] in grammar._ADJECTIVES:
                j += 1
            assert _NOUN_NUMBER[words[j]] == (w in _PLURAL_DET), words[i : j + 1]
            checked_det += 1
        if w == "that":  # noun that verb: the relative clause's verb agrees with the noun
            assert _VERB_NUMBER[words[i + 1]] == _NOUN_NUMBER[words[i - 1]], words[i - 1 : i + 2]
            checked_that += 1
    assert checked_det > 500 and checked_that > 50
    assert grammar.decode(grammar.encode(["the", "cat", "sleeps", "."])) == "the cat sleeps ."
    with pytest.raises(InvalidOptionError, match="VOCABULARY"):
        grammar.encode(["the", "unicorn"])


def test_bad_options_are_refused():
    with pytest.raises(InvalidOptionError, match="seq_len"):
        data.load("grammar", seq_len=0)
    with pytest.raises(InvalidOptionError, match="leaves a split empty"):
        data.load("grammar", n_train=1, n_test=1)
