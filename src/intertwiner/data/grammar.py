"""A synthetic language for next-token prediction: sentences of a small agreement grammar.

Each sentence is ``NP VP .``: a noun phrase (determiner, up to two adjectives, noun, sometimes a
relative clause ``that VP``) whose number (singular or plural) the determiner, the noun and the
verb of its verb phrase must agree on, and a verb phrase (a transitive verb and an object noun
phrase, or an intransitive verb). Agreement reaches across adjectives and relative clauses, so
predicting the verb needs attention to a token several positions back; the choices of words are
uniform, so the loss has a floor well above zero.

Sentences are drawn with a seeded ``numpy`` generator into one stream, which is cut into sequences
of ``seq_len + 1`` tokens: an item is ``(tokens[:-1], tokens[1:])``, two int64 tensors of shape
``(seq_len,)`` (a language model's input and its next-token targets). The test sequences come from
a stream of their own, drawn with another seed; the validation sequences are held out of the
training ones.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from intertwiner.data.splits import DataSplits
from intertwiner.errors import InvalidOptionError

_NOUNS = (
    ("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("fox", "foxes"), ("horse", "horses"),
    ("mouse", "mice"), ("child", "children"), ("teacher", "teachers"), ("farmer", "farmers"),
    ("king", "kings"),
)  # fmt: skip
_TRANSITIVE = (
    ("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"),
    ("helps", "help"), ("finds", "find"),
)  # fmt: skip
_INTRANSITIVE = (("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"), ("waits", "wait"))
_DETERMINERS = (("a", "the", "this", "every"), ("the", "these", "some", "many"))
_ADJECTIVES = ("big", "small", "red", "old", "quiet", "happy", "brave", "lazy")

#: Every token, in id order.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        [".", "that", *_ADJECTIVES, *(d for ds in _DETERMINERS for d in ds)]
        + [w for pair in _NOUNS + _TRANSITIVE + _INTRANSITIVE for w in pair]
    )
)
_ID = {w: i for i, w in enumerate(VOCABULARY)}


def _noun_phrase(rng: np.random.Generator, plural: int, depth: int, out: list[str]) -> None:
    out.append(_DETERMINERS[plural][rng.integers(4)])
    out += [
        _ADJECTIVES[i]
        for i in rng.integers(len(_ADJECTIVES), size=rng.choice(3, p=(0.5, 0.3, 0.2)))
    ]
    out.append(_NOUNS[rng.integers(len(_NOUNS))][plural])
    if depth < 2 and rng.random() < 0.3:
        out.append("that")
        _verb_phrase(rng, plural, depth + 1, out)


def _verb_phrase(rng: np.random.Generator, plural: int, depth: int, out: list[str]) -> None:
    if rng.random() < 0.6:
        out.append(_TRANSITIVE[rng.integers(len(_TRANSITIVE))][plural])
        _noun_phrase(rng, int(rng.integers(2)), depth + 1, out)
    else:
        out.append(_INTRANSITIVE[rng.integers(len(_INTRANSITIVE))][plural])


def sentences(n_tokens: int, seed: int) -> list[str]:
    """At least ``n_tokens`` tokens of whole sentences drawn with ``seed`` (words and ``"."``)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n_tokens:
        plural = int(rng.integers(2))
        _noun_phrase(rng, plural, 0, out)
        _verb_phrase(rng, plural, 0, out)
        out.append(".")
    return out


def encode(words: list[str]) -> torch.Tensor:
    """Token ids (int64) of ``words``; a word outside ``VOCABULARY`` raises
    ``InvalidOptionError``."""
    unknown = sorted({w for w in words if w not in _ID})
    if unknown:
        raise InvalidOptionError(f"words {unknown[:5]} are not in grammar.VOCABULARY")
    return torch.tensor([_ID[w] for w in words], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """The words of token ids, joined by spaces."""
    return " ".join(VOCABULARY[int(i)] for i in ids.reshape(-1))


def _sequences(n: int, seq_len: int, seed: int) -> TensorDataset:
    ids = encode(sentences(n * (seq_len + 1), seed))[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    return TensorDataset(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())


def load_grammar(
    *,
    n_train: int = 4000,
    n_test: int = 1000,
    seq_len: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Splits of ``(tokens (seq_len,), next tokens (seq_len,))``: ``n_train`` sequences (of which
    ``val_fraction`` are held out as validation, chosen with ``seed``) and ``n_test`` test ones.

    The language itself is fixed: the training stream is drawn with seed 0, the test stream with
    seed 1, whatever ``seed`` (which only picks the validation sequences), so every split seed
    sees the same sentences. ``meta``: ``layout="tokens"``, ``vocab_size``, ``seq_len``,
    ``num_classes`` (= ``vocab_size``: the next token is the class).
    """
    pool = _sequences(n_train, seq_len, seed=0)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n_train))
    if val_fraction > 0 and not 1 <= n_val < n_train:
        raise InvalidOptionError(
            f"val_fraction {val_fraction} of {n_train} sequences leaves a split empty; pass more "
            "sequences or another fraction"
        )
    x, y = pool.tensors
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    meta = {
        "name": "grammar",
        "layout": "tokens",
        "vocab_size": len(VOCABULARY),
        "num_classes": len(VOCABULARY),
        "seq_len": seq_len,
        "split_seed": seed,
        "val_fraction": val_fraction,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": n_test,
        "generator": {"n_train": n_train, "n_test": n_test},
    }
    return DataSplits(
        train=TensorDataset(x[train_idx], y[train_idx]),
        val=TensorDataset(x[val_idx], y[val_idx]),
        test=_sequences(n_test, seq_len, seed=1),
        meta=meta,
    )
