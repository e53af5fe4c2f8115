"""Time and peak memory of weight-matching alignment of two GPT-2-small-size models (124M each).

Two randomly initialised ``transformers`` GPT-2 models (``GPT2Config()``: 12 layers, width 768,
12 heads; no download) are traced once and B is aligned to A by weight matching (full groups:
the orthogonal residual stream, attention heads with their per-head maps, GELU permutations).
Prints the seconds (wall clock and CPU time) of the trace and of the alignment, the output
change of the aligned copy (it must compute B's function), and the peak resident memory of the process
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
    from intertwiner.testing import import_torchvision

    import_torchvision()  # transformers imports torchvision, whose ops the CPU torch lacks
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
    t0, c0 = time.perf_counter(), time.process_time()
    spec = trace(b, x)
    t_trace, c_trace = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    res = align(a, b, spec=spec, max_sweeps=args.sweeps, progress=True)
    t_align, c_align = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():  # the aligned copy computes B's function
        change = (res.model(x).logits - b(x).logits).abs().max() / b(x).logits.abs().max()
    peak = _rss_mb() - base
    print(f"GPT-2, {args.layers} layers: {n_params / 1e6:.1f}M parameters per model, "
          f"{len(spec.sites)} sites, {args.threads} thread(s)")  # fmt: skip
    print(f"wall: trace {t_trace:.1f} s, align {t_align:.1f} s ({res.sweeps} sweeps), "
          f"total {t_trace + t_align:.1f} s")  # fmt: skip
    # On a shared machine the wall clock counts other jobs' time too; CPU time does not.
    print(f"CPU:  trace {c_trace:.1f} s, align {c_align:.1f} s, total {c_trace + c_align:.1f} s "
          f"(load {open('/proc/loadavg').read().split()[0]})")  # fmt: skip
    print(f"relative output change of the aligned copy: {float(change):.2e}; weight distance "
          f"{res.history[0]:.4g} -> {res.history[-1]:.4g}")  # fmt: skip
    print(f"peak memory above the loaded models: {peak:.0f} MB = {peak / two_models_mb:.2f}x the "
          f"two models ({two_models_mb:.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
