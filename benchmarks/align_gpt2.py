"""Time and peak memory of weight-matching alignment of two GPT-2-small-size models (124M each).

Two randomly initialised ``transformers`` GPT-2 models (``GPT2Config()``: 12 layers, width 768,
12 heads; no download) are traced once and B is aligned to A by weight matching (full groups:
the orthogonal residual stream, attention heads with their per-head maps, GELU permutations).
Prints the seconds of the trace and of the alignment, and the peak resident memory of the process
above what it held with the two models loaded, as a multiple of the two models' parameter bytes.
Goal (issue 23): under 60 s, peak under 3x the two models. Single thread by default.

    python benchmarks/align_gpt2.py                 # --layers 12 --sweeps 1
    python benchmarks/align_gpt2.py --layers 2      # a quick look
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--sweeps", type=int, default=1, help="max_sweeps of weight matching")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    from intertwiner.alignment import align
    from intertwiner.symmetry import trace

    cfg = GPT2Config(n_layer=args.layers)
    torch.manual_seed(0)
    a = GPT2LMHeadModel(cfg).eval()
    torch.manual_seed(1)
    b = GPT2LMHeadModel(cfg).eval()
    n_params = sum(t.numel() for t in a.parameters())
    two_models_mb = 2 * sum(t.numel() * t.element_size() for t in a.parameters()) / 2**20
    base = _rss_mb()
    x = torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    spec = trace(b, x)
    t_trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = align(a, b, spec=spec, max_sweeps=args.sweeps, progress=True)
    t_align = time.perf_counter() - t0
    peak = _rss_mb() - base
    print(f"GPT-2, {args.layers} layers: {n_params / 1e6:.1f}M parameters per model, "
          f"{len(spec.sites)} sites, {args.threads} thread(s)")  # fmt: skip
    print(f"trace {t_trace:.1f} s, align {t_align:.1f} s ({res.sweeps} sweeps), "
          f"total {t_trace + t_align:.1f} s")  # fmt: skip
    print(f"peak memory above the loaded models: {peak:.0f} MB = {peak / two_models_mb:.2f}x the "
          f"two models ({two_models_mb:.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
