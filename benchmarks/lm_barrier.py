"""Loss barrier between independently trained GPT-2-style language models (issue 23).

Hugging Face ``GPT2LMHeadModel``s (tied LM head, ``Conv1D`` projections, GELU MLPs, pre-LN
residual stream; width ``--dim``, ``--layers`` blocks, ``--heads`` heads) trained from scratch on
``intertwiner.data``'s synthetic agreement grammar (``data.load("grammar")``: 3,600 training
sequences of 32 tokens, 1,000 test sequences from another stream), ``--seeds`` seeds, every pair.
B is aligned to A

- ``naive``: not at all,
- ``perm/weights``, ``perm/activations``: permutations only (MLP units, heads as blocks, the
  residual stream),
- ``full/weights``, ``full/activations``: each site's full group (the stream by an orthogonal map,
  a GL map per head pair for q/k and for v/o) with the barrier-aware selection on the fitting
  sequences (``select="midpoint"``), and ``... (no select)``: the full search alone,

and the line from A to aligned B is evaluated at ``--alphas`` points on the test sequences (mean
next-token cross-entropy and accuracy over all positions), once as it is and once with REPAIR
(``repair=True``, statistics on ``--fit-samples`` training sequences). Every aligned copy is
checked to compute B's function. One thread.

    python benchmarks/lm_barrier.py                         # 2 layers, width 64, 30 epochs
    python benchmarks/lm_barrier.py --json rows.json        # write the rows
    python benchmarks/lm_barrier.py --report rows.json      # the table of a saved run
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from intertwiner import data
from intertwiner.alignment import align, interpolate
from intertwiner.data import random_subset
from intertwiner.testing import import_torchvision
from intertwiner.training import TrainConfig, evaluate, train

#: (label, method, group, select)
METHODS = (
    ("naive", None, None, None),
    ("perm/weights", "weights", "permutation", None),
    ("perm/activations", "activations", "permutation", None),
    ("full/weights", "weights", "full", "midpoint"),
    ("full/activations", "activations", "full", "midpoint"),
    ("full/weights (no select)", "weights", "full", None),
    ("full/activations (no select)", "activations", "full", None),
)


class CausalLM(nn.Module):
    """A ``transformers`` causal LM that maps token ids (N, T) to next-token logits (N, T, V)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


def build(args, vocab_size: int, seq_len: int, seed: int) -> CausalLM:
    import_torchvision()  # transformers imports torchvision, whose ops the CPU torch lacks
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=seq_len, n_embd=args.dim, n_layer=args.layers,
        n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return CausalLM(GPT2LMHeadModel(config))


def trained(args, splits, seed: int) -> CausalLM:
    """Train (or load from ``--cache``) the model of ``seed``."""
    cfg = splits.model_config()
    model = build(args, cfg["vocab_size"], cfg["seq_len"], seed)
    path = (
        Path(args.cache) / f"gpt2-d{args.dim}-l{args.layers}-e{args.epochs}-seed{seed}.safetensors"
    )
    if path.exists():
        model.load_state_dict(load_file(str(path)), strict=False)  # the tied head is one tensor
        return model.eval()
    config = TrainConfig(epochs=args.epochs, lr=args.lr, schedule="cosine", num_threads=1,
                         progress=False, seed=seed)  # fmt: skip
    t0 = time.perf_counter()
    model = train(model, splits, config).model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm.lm_head.weight"}
    save_file(state, str(path))
    print(f"trained seed {seed} in {time.perf_counter() - t0:.0f}s", flush=True)
    return model


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    splits = data.load("grammar")
    fit = random_subset(splits.train, args.fit_samples)
    test = splits.test
    example = torch.stack([fit[i][0] for i in range(4)])
    models = [trained(args, splits, s) for s in range(args.seeds)]
    for s, m in enumerate(models):
        r = evaluate(m, test)
        print(
            f"seed {s}: test loss {r['loss']:.4f}, next-token accuracy {100 * r['accuracy']:.1f}%"
        )
    rows = []
    methods = [m for m in METHODS if args.methods is None or m[0] in args.methods.split(",")]
    for ia, ib in itertools.combinations(range(len(models)), 2):
        a, b = models[ia], models[ib]
        for label, method, group, select in methods:
            t0 = time.perf_counter()
            if method is None:
                aligned = b
            else:
                res = align(a, b, data=fit, method=method, group=group, select=select,
                            example_input=example)  # fmt: skip
                aligned = res.model
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                ref = b(example)
                change = float((aligned(example) - ref).abs().max() / ref.abs().max())
            row = {"pair": [ia, ib], "method": label, "seconds": seconds,
                   "function_change": change}  # fmt: skip
            if method is not None and res.selection is not None:
                row["selection"] = {"chosen": res.selection.chosen, "losses": res.selection.losses}
            for key, repair in (("plain", False), ("repair", True)):
                curve = interpolate(a, aligned, args.alphas, test, repair=repair, bn_data=fit)
                row[key] = {"barrier": curve.barrier, "mid_accuracy": curve.midpoint["accuracy"],
                            "mid_loss": curve.midpoint["loss"], "losses": curve.losses,
                            "ends": [curve.accuracies[0], curve.accuracies[-1]]}  # fmt: skip
            rows.append(row)
            if args.json:  # after every row: an interrupted run keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=1))
            p, q = row["plain"], row["repair"]
            print(f"{ia}-{ib} {label:30s} barrier {p['barrier']:.4f} "
                  f"mid {100 * p['mid_accuracy']:5.1f}% "
                  f"| repair {q['barrier']:.4f} mid {100 * q['mid_accuracy']:5.1f}% | "
                  f"{seconds:.1f}s, f change {change:.1e}", flush=True)  # fmt: skip
    return rows


def report(rows: list[dict]) -> str:
    out = [
        "| alignment | loss barrier | next-token acc. at ½ (%) | barrier, REPAIR | acc. at ½, "
        "REPAIR (%) | align (s) | aligned B's output change |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]

        def m(key, field, scale=1.0, sel=sel):
            return statistics.mean(scale * r[key][field] for r in sel)

        out.append(
            f"| {method} | {m('plain', 'barrier'):.4f} | {m('plain', 'mid_accuracy', 100):.1f} | "
            f"{m('repair', 'barrier'):.4f} | {m('repair', 'mid_accuracy', 100):.1f} | "
            f"{statistics.mean(r['seconds'] for r in sel):.1f} | "
            f"{max(r['function_change'] for r in sel):.1e} |"
        )
    ends = [100 * e for r in rows for e in r["plain"]["ends"]]
    out.append(f"\nendpoints' mean next-token accuracy {statistics.mean(ends):.1f}%; "
               f"{len({tuple(r['pair']) for r in rows})} pairs")  # fmt: skip
    for method in ("weights", "activations"):
        by = {(r["method"], tuple(r["pair"])): r for r in rows}
        ok = [by[(f"full/{method}", p)]["plain"]["barrier"]
              <= by[(f"perm/{method}", p)]["plain"]["barrier"] + 1e-9
              for (m, p) in by if m == f"full/{method}" and (f"perm/{method}", p) in by]  # fmt: skip
        if ok:
            out.append(f"full/{method} barrier <= perm/{method} on {sum(ok)} of {len(ok)} pairs")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--alphas", type=int, default=11)
    p.add_argument("--fit-samples", type=int, default=500)
    p.add_argument("--methods", default=None, help="comma-separated labels (default all)")
    p.add_argument("--cache", default=".cache/lm_barrier")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--report", default=None, help="print the table of a saved --json run")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    rows = run(args)
    print(report(rows))


if __name__ == "__main__":
    main()
