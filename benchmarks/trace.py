"""Time of ``symmetry.trace`` (rules + numerical verification) on full-size models (not a test).

Models (random weights; nothing downloaded):
- torchvision's ResNet-50 (extra ``[zoo]``; 25.6M parameters), one 224 x 224 image (without
  torchvision: the library's copy written the way torchvision writes it, same parameters);
- GPT-2 small from ``transformers`` (``GPT2Config()`` defaults: 124M parameters, 12 layers, 12
  heads), 16 tokens;
- LLaMA-style (GQA, rotary, RMSNorm, gated MLP) at 8 layers x 512 wide, 16 tokens.

For each: the time of the rules alone (``verify=False``), of trace with verification (the
default), the number of sites, how many joint checks verification took, the final joint error
and tolerance (with the round-off that scaled it, where a check needed it), and the target of
issue 24 (one thread: ResNet-50 10 s, GPT-2 small 20 s) with the ratio. Times are wall clock and
CPU time of this process (``time.process_time``): on a machine shared with other jobs the CPU
time is the one that says what a quiet machine would take, so the ratio uses it.

Run: ``python benchmarks/trace.py [--threads 1] [--only resnet50 gpt2 llama]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from intertwiner.models.reference import ResNet50
from intertwiner.symmetry import _verify, trace


def _resnet50():
    try:
        from intertwiner.testing import import_torchvision

        model = import_torchvision().models.resnet50(weights=None)
    except ImportError:
        print("torchvision not installed: ResNet-50 is the library's torchvision-style copy")
        model = ResNet50()
    return model.eval(), torch.randn(1, 3, 224, 224)


def _gpt2():
    _torchvision_shim()
    import transformers as T

    return T.GPT2LMHeadModel(T.GPT2Config()).eval(), torch.randint(0, 50257, (1, 16))


def _llama():
    _torchvision_shim()
    import transformers as T

    cfg = T.LlamaConfig(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32000,
        max_position_embeddings=256,
    )
    return T.LlamaForCausalLM(cfg).eval(), torch.randint(0, 32000, (1, 16))


def _torchvision_shim():
    """transformers imports torchvision where installed; on a CPU torch that needs the shim."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        from intertwiner.testing import import_torchvision

        import_torchvision()


MODELS = {"resnet50": _resnet50, "gpt2": _gpt2, "llama": _llama}
#: Issue 24's targets for trace + verification on one thread of the 2-core machine (seconds).
TARGETS = {"resnet50": 10.0, "gpt2": 20.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    calls = {"n": 0}
    original = _verify._Probe.error

    def counted(self, sites):
        calls["n"] += 1
        return original(self, sites)

    _verify._Probe.error = counted
    rows = []
    for name in args.only:
        model, x = MODELS[name]()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        w0, c0 = time.perf_counter(), time.process_time()
        trace(model, x, verify=False)
        rules = (time.perf_counter() - w0, time.process_time() - c0)
        calls["n"] = 0
        w0, c0 = time.perf_counter(), time.process_time()
        spec = trace(model, x)
        total = (time.perf_counter() - w0, time.process_time() - c0)
        rows.append(
            (name, params, len(spec.sites), len(spec.dropped), rules, total, calls["n"], spec)
        )
        print(f"{name}: done in {total[0]:.1f} s wall, {total[1]:.1f} s CPU", flush=True)
    print()
    head = (
        "model       params(M)  sites  dropped  rules wall/cpu(s)  trace+verify wall/cpu(s)  "
        "target(s)  ratio(cpu)  checks  joint error (tolerance; round-off)"
    )
    print(head)
    print("-" * len(head))
    for name, params, n, dropped, rules, total, checks, spec in rows:
        target = TARGETS.get(name)
        goal = (
            "        -           -"
            if target is None
            else f"{target:9.0f}  {total[1] / target:10.2f}"
        )
        roundoff = getattr(spec, "verified_roundoff", None)  # (also runs against older trees)
        ro = "-" if roundoff is None else f"{roundoff:.1e}"
        print(
            f"{name:<11} {params:9.1f}  {n:5d}  {dropped:7d}  {rules[0]:8.1f} / {rules[1]:6.1f}  "
            f"{total[0]:14.1f} / {total[1]:7.1f}  {goal}  {checks:6d}  "
            f"{spec.verified_error:.1e} ({spec.verified_tolerance:.0e}; {ro})"
        )
    print(
        f"\ntorch threads: {args.threads}; ratio = CPU time / target (under 1 meets it); load "
        f"average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
