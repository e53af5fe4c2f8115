"""Linear CKA for many layer pairs at once, per-layer statistics shared across pairs.

``compare`` of L_a x L_b layers needs, for linear CKA, one set of statistics per *layer* (its own
Gram or covariance terms) and one cross term per *pair*. Two exact forms:

- ``FeatureBank`` (feature space, one pass): per layer the p x p matrix X'X and a few vectors, per
  pair the p x q matrix X'Y. Memory O(sum p^2 + sum pq), independent of N: good for narrow layers.
- ``GramBank`` (sample space, blocked): per layer the row sums and diagonal of the N x N Gram
  matrix K, per pair the scalar sum(K * L). The Gram matrices are never held whole: the samples
  are cut into blocks of B inputs; pass k over the data keeps block k's features and multiplies
  them with every later batch (K is symmetric, so each off-diagonal block is computed once).
  Memory O(B * sum p + N), independent of p^2: good for wide conv layers (C*H*W in the tens of
  thousands), at the price of ceil(N / B) passes over the data.

Both give the HSIC terms of ``cka.LinearCKAStats`` (biased and debiased), so the values equal the
one-shot ``cka`` up to round-off. Rows are scaled by a power of two and shifted by the first batch's
mean, fixed per layer (CKA is invariant to both), as ``LinearCKAStats`` does.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from intertwiner import _products as products
from intertwiner.layouts import to_flat
from intertwiner.metrics._prep import f64, scale_exponent, times_power_of_two, validate
from intertwiner.metrics.cka import (
    LinearCKAStats,
    check_samples,
    cka_from_hsic,
    hsic1_from_terms,
    is_constant,
)

F64 = 8  # bytes


class _Rows:
    """Per-layer scale and shift, fixed by the first batch; ``__call__`` gives float64 rows."""

    def __init__(self) -> None:
        self.exp: dict[Hashable, torch.Tensor] = {}
        self.shift: dict[Hashable, torch.Tensor] = {}

    def __call__(self, key: Hashable, feats: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(shifted rows (b, p) float64, raw sum of squares of the scaled rows)."""
        x = f64(to_flat(validate(feats, str(key))))
        if key not in self.exp:
            self.exp[key] = scale_exponent(x)
        x = times_power_of_two(x, self.exp[key])
        raw = float(x.square().sum())
        if key not in self.shift:
            self.shift[key] = x.mean(0)
        return x - self.shift[key], raw


class FeatureBank:
    """Feature-space statistics for layers ``keys_a`` x ``keys_b`` (keys may repeat across sides:
    a layer's own statistics are kept once)."""

    def __init__(self, keys_a: Sequence[Hashable], keys_b: Sequence[Hashable]) -> None:
        self.keys_a, self.keys_b = list(keys_a), list(keys_b)
        self.rows = _Rows()
        self.layer: dict[Hashable, dict] = {}
        self.pair: dict[tuple[Hashable, Hashable], dict] = {}
        self.n = 0

    @staticmethod
    def bytes_needed(widths: dict[Hashable, int], pairs: Sequence[tuple], batch: int) -> int:
        """Statistics, one batch's float64 rows of every layer, and the captured float32
        features with as much again for the model's own activations."""
        per_layer = sum(p * p + 5 * p for p in widths.values())
        per_pair = sum(widths[a] * widths[b] + widths[a] + widths[b] for a, b in pairs)
        total_p = sum(widths.values())
        return F64 * (per_layer + per_pair + batch * total_p) + 4 * 2 * batch * total_p

    def update(self, feats: dict[Hashable, torch.Tensor]) -> None:
        """Add one batch: ``feats[key]`` for every key of both sides (same inputs)."""
        cur: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in dict.fromkeys(self.keys_a + self.keys_b):
            x, raw = self.rows(key, feats[key])
            a = (x * x).sum(1)
            st = self.layer.get(key)
            if st is None:
                p = x.shape[1]
                st = self.layer[key] = {
                    "g": torch.zeros(p, p, dtype=torch.float64),
                    "s": torch.zeros(p, dtype=torch.float64),
                    "xa": torch.zeros(p, dtype=torch.float64),
                    "a": 0.0,
                    "aa": 0.0,
                    "raw": 0.0,
                }
            products.add_cov_(st["g"], x)
            st["s"] += x.sum(0)
            st["xa"] += a @ x
            st["a"] += float(a.sum())
            st["aa"] += float(a @ a)
            st["raw"] += raw
            cur[key] = (x, a)
        for ka in self.keys_a:
            for kb in self.keys_b:
                (x, a), (y, b) = cur[ka], cur[kb]
                pr = self.pair.get((ka, kb))
                if pr is None:
                    pr = self.pair[(ka, kb)] = {
                        "g": torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64),
                        "xb": torch.zeros(x.shape[1], dtype=torch.float64),
                        "ya": torch.zeros(y.shape[1], dtype=torch.float64),
                        "ab": 0.0,
                    }
                products.add_matmul_(pr["g"], x.T, y)
                pr["xb"] += b @ x
                pr["ya"] += a @ y
                pr["ab"] += float(a @ b)
        self.n += next(iter(cur.values()))[0].shape[0]

    def cka(self, ka: Hashable, kb: Hashable, debiased: bool) -> float:
        """CKA of layer ``ka`` (side a) with ``kb`` (side b), through ``LinearCKAStats``."""
        lx, ly, pr = self.layer[ka], self.layer[kb], self.pair[(ka, kb)]
        st = LinearCKAStats(n=self.n, gxy=pr["g"], gxx=lx["g"], gyy=ly["g"], sx=lx["s"])
        st.sy = ly["s"]
        st.scal = {
            "a": lx["a"],
            "b": ly["a"],
            "aa": lx["aa"],
            "bb": ly["aa"],
            "ab": pr["ab"],
            "raw_x": lx["raw"],
            "raw_y": ly["raw"],
        }
        st.vec = {"xa": lx["xa"], "xb": pr["xb"], "ya": pr["ya"], "yb": ly["xa"]}
        return st.cka(debiased)


class GramBank:
    """Blocked sample-space statistics for layers ``keys_a`` x ``keys_b``; see the module doc.

    Drive it with ``begin_pass(k)`` then ``update(batch_index, feats)`` for every batch from block
    k on, for k in ``range(n_blocks)``; batches are ``batch`` inputs each (the last may be short).
    """

    def __init__(
        self, keys_a: Sequence[Hashable], keys_b: Sequence[Hashable], block_batches: int
    ) -> None:
        self.keys_a, self.keys_b = list(keys_a), list(keys_b)
        self.keys = list(dict.fromkeys(self.keys_a + self.keys_b))
        self.block_batches = int(block_batches)
        self.rows = _Rows()
        self.diag: dict[Hashable, dict[int, torch.Tensor]] = {k: {} for k in self.keys}
        self.rsum: dict[Hashable, dict[int, torch.Tensor]] = {k: {} for k in self.keys}
        self.raw: dict[Hashable, float] = dict.fromkeys(self.keys, 0.0)
        pairs = [(a, b) for a in self.keys_a for b in self.keys_b] + [(k, k) for k in self.keys]
        self.cross: dict[tuple[Hashable, Hashable], float] = dict.fromkeys(pairs, 0.0)
        self.n = 0
        self._block = -1
        self._held: dict[Hashable, torch.Tensor] = {}
        self._filled = 0
        self._held_index: list[int] = []

    @staticmethod
    def bytes_needed(widths: dict[Hashable, int], block: int, batch: int, n: int) -> int:
        """Held block rows, the Gram blocks of one batch, per-sample vectors, and one batch's
        transients: the captured float32 features, as much again for the model's own activations,
        and one layer's float64 rows (two copies while converting)."""
        total_p = sum(widths.values())
        k = len(widths)
        held = F64 * (block * total_p + 2 * k * block * batch + 3 * k * n)
        return held + batch * (4 * 2 * total_p + F64 * 2 * max(widths.values()))

    def block_of(self, batch_index: int) -> int:
        return batch_index // self.block_batches

    def begin_pass(self, block: int) -> None:
        self._block = block
        self._held = {}
        self._filled = 0
        self._held_index = []

    def update(self, batch_index: int, feats: dict[Hashable, torch.Tensor]) -> None:
        first_pass = self._block == 0
        inside = self.block_of(batch_index) == self._block
        grams: dict[Hashable, list[tuple[torch.Tensor, float]]] = {}
        b = 0
        for key in self.keys:  # one layer's float64 rows at a time: they are the big transient
            x, raw = self.rows(key, feats[key])
            b = x.shape[0]
            if first_pass:
                self.raw[key] += raw
                self.rsum[key][batch_index] = torch.zeros(b, dtype=torch.float64)
            parts = []
            if self._filled:
                h = self._held[key][: self._filled]
                # (held rows, batch rows): an off-diagonal block, counted twice
                g = products.matmul(h, x.T)
                parts.append((g, 2.0))
                self._add_row_sums(key, g)
                self.rsum[key][batch_index] += g.sum(0)  # K is symmetric: the batch's rows
            if inside:
                g = products.gram(x)
                parts.append((g, 1.0))
                self.diag[key][batch_index] = g.diagonal().clone()
                self.rsum[key][batch_index] += g.sum(1)
                buf = self._held.get(key)
                if buf is None:  # preallocated: no copy of the block per batch
                    buf = torch.empty(self.block_batches * b, x.shape[1], dtype=torch.float64)
                elif buf.shape[0] < self._filled + b:
                    buf = torch.cat([buf, torch.empty(b, buf.shape[1], dtype=torch.float64)])
                buf[self._filled : self._filled + b] = x
                self._held[key] = buf
            grams[key] = parts
            del x
        for ka, kb in self.cross:
            for (ga, w), (gb, _) in zip(grams[ka], grams[kb], strict=True):
                self.cross[(ka, kb)] += w * float((ga * gb).sum())
        if inside:
            self._filled += b
            self._held_index.append(batch_index)
        if first_pass:
            self.n += b

    def _add_row_sums(self, key: Hashable, g: torch.Tensor) -> None:
        start = 0
        for bi in self._held_index:
            r = self.rsum[key][bi]
            r += g[start : start + r.shape[0]].sum(1)
            start += r.shape[0]

    def _vectors(self, key: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        idx = sorted(self.diag[key])
        return torch.cat([self.diag[key][i] for i in idx]), torch.cat(
            [self.rsum[key][i] for i in idx]
        )

    def cka(self, ka: Hashable, kb: Hashable, debiased: bool) -> float:
        n = self.n
        check_samples(n, debiased)
        dk, rk = self._vectors(ka)
        dl, rl = self._vectors(kb)
        sk, sl = float(rk.sum()), float(rl.sum())
        const = any(
            is_constant(float(d.sum()) - float(r.sum()) / n, self.raw[k])
            for k, d, r in ((ka, dk, rk), (kb, dl, rl))
        )

        def hsic(x: Hashable, y: Hashable, dx, rx, sx, dy, ry, sy) -> float:
            kl = self.cross[(x, y)]
            if not debiased:
                return kl - 2.0 / n * float(rx @ ry) + sx * sy / n**2
            return hsic1_from_terms(
                kl - float(dx @ dy),
                sx - float(dx.sum()),
                sy - float(dy.sum()),
                float((rx - dx) @ (ry - dy)),
                n,
            )

        return cka_from_hsic(
            hsic(ka, kb, dk, rk, sk, dl, rl, sl),
            hsic(ka, ka, dk, rk, sk, dk, rk, sk),
            hsic(kb, kb, dl, rl, sl, dl, rl, sl),
            const,
            0.0 if not debiased else -1.0,
        )
