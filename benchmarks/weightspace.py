"""Time of ``canonicalize`` and ``fingerprint`` against one ``trace`` (not a test).

Models (random weights; nothing downloaded): ResNet-50 as torchvision writes it (the library's
torchvision-free copy, 25.6M parameters, one 224 x 224 image), ResNet-18 of the zoo (CIFAR, width
64), GPT-2 small from ``transformers`` (124M parameters, 16 tokens) and a tiny GPT-2 (2 layers,
64 wide). For each: the time of one trace (rules + verification), of ``canonicalize`` given the
spec (float64 work, function check on the example input included), of the fingerprint's hashing
given the canonical model, the number of sites not canonicalised, and the largest relative
difference between the canonical weights of the model and of a copy moved by a random element of
its group (float64 copies, so the orbit check is at float64 round-off).

Run: ``python benchmarks/weightspace.py [--threads 2] [--only resnet50 gpt2 ...]``. Timings
depend on the machine; on a shared CPU they are noisy (say so next to any number).
"""

from __future__ import annotations

import argparse
import time

import torch

from intertwiner import models
from intertwiner.models.reference import ResNet50
from intertwiner.symmetry import apply, canonicalize, fingerprint, random_elements, trace


def _resnet50():
    return ResNet50().eval(), torch.randn(1, 3, 224, 224)


def _resnet18():
    return models.build("resnet18", seed=0).eval(), torch.randn(2, 3, 32, 32)


def _gpt2(**cfg):
    import transformers as T

    config = T.GPT2Config(**cfg)
    return T.GPT2LMHeadModel(config).eval(), torch.randint(0, config.vocab_size, (1, 16))


MODELS = {
    "resnet50": _resnet50,
    "resnet18": _resnet18,
    "gpt2": _gpt2,
    "gpt2-tiny": lambda: _gpt2(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=64),
}


def _rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        float((sa[k] - sb[k]).abs().max()) / max(float(sa[k].abs().max()), 1e-300)
        for k in sa
        if sa[k].is_floating_point()
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=list(MODELS))
    ap.add_argument("--no-orbit", action="store_true", help="Skip the float64 orbit check.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.only:
        model, x = MODELS[name]()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        t0 = time.perf_counter()
        spec = trace(model, x)
        t_trace = time.perf_counter() - t0
        t0 = time.perf_counter()
        canon = canonicalize(model, spec, x)
        t_canon = time.perf_counter() - t0
        t0 = time.perf_counter()
        fingerprint(model, canonical=canon)
        t_hash = time.perf_counter() - t0
        orbit = float("nan")
        if not args.no_orbit:
            m64 = model.double()
            g = random_elements(spec, generator=torch.Generator().manual_seed(1))
            a = canonicalize(m64, spec, x if not x.is_floating_point() else x.double())
            b = canonicalize(
                apply(m64, spec, g), spec, x if not x.is_floating_point() else x.double()
            )
            orbit = _rel(a.model, b.model)
        rows.append((name, params, len(spec.sites), len(canon.not_canonical), t_trace, t_canon,
                     t_hash, orbit))  # fmt: skip
        print(f"{name}: trace {t_trace:.1f} s, canonicalize {t_canon:.1f} s", flush=True)
    print()
    head = (
        "model      params(M)  sites  not canonical  trace(s)  canonicalize(s)  fingerprint hash(s)"
        "  orbit rel. diff (f64)"
    )
    print(head)
    print("-" * len(head))
    for name, params, n, bad, tt, tc, th, orbit in rows:
        print(f"{name:<10} {params:9.1f}  {n:5d}  {bad:13d}  {tt:8.1f}  {tc:15.1f}  {th:19.2f}  "
              f"{orbit:.1e}")  # fmt: skip
    print(f"\ntorch threads: {args.threads}; target: canonicalize + fingerprint < one trace")


if __name__ == "__main__":
    main()
