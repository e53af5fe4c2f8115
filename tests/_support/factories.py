"""Model and data factories shared by the test folders (imported as ``tests._support.factories``).

Digits splits and a second of training, tiny MLPs with hand-made G_ReLU copies (stitching,
alignment), and tiny zoo models with calibrated BatchNorm (symmetry, alignment).
"""

from __future__ import annotations

import copy

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from intertwiner import models


class Splits:
    def __init__(self, train, val, test):
        self.train, self.val, self.test = train, val, test


def digits_splits(dtype=torch.float32, n_train=900, n_val=300) -> Splits:
    """Digits as (N, 1, 8, 8) images in [0, 1], split disjointly train/val/test with a fixed seed."""
    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x = torch.as_tensor(x, dtype=dtype)[order].reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(y, dtype=torch.long)[order]
    a, b = n_train, n_train + n_val
    return Splits(
        TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b]), TensorDataset(x[b:], y[b:])
    )


def train_quick(model: nn.Module, data: Splits, steps: int = 150, seed: int = 0) -> nn.Module:
    """Full-batch Adam on the training split; a second on CPU (one thread: tiny tensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, data, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, data: Splits, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    x, y = data.train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


class TinyMLP(nn.Module):
    """flatten -> fc1 -> act1 -> fc2 -> act2 -> head; sites act1, act2."""

    def __init__(self, act=nn.ReLU, widths=(24, 16), seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, widths[0], dtype=dtype)
        self.act1 = act()
        self.fc2 = nn.Linear(widths[0], widths[1], dtype=dtype)
        self.act2 = act()
        self.head = nn.Linear(widths[1], 10, dtype=dtype)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.flatten(x))))))


class TinyResMLP(nn.Module):
    """A residual MLP: ``s = act0(fc0 x)``; block ``act2(fc2(act1(fc1 s)) + s)``; head.

    ``act1`` lies inside the residual branch: the skip path reads the stream ``act0``.
    """

    def __init__(self, width=16, hidden=20, seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.flatten = nn.Flatten()
        self.fc0 = nn.Linear(64, width, dtype=dtype)
        self.act0 = nn.ReLU()
        self.fc1 = nn.Linear(width, hidden, dtype=dtype)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, width, dtype=dtype)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, 10, dtype=dtype)

    def forward(self, x):
        s = self.act0(self.fc0(self.flatten(x)))
        return self.head(self.act2(self.fc2(self.act1(self.fc1(s))) + s))


def random_monomial(n, generator, log_std=0.5, dtype=torch.float64):
    perm = torch.randperm(n, generator=generator)
    scale = torch.exp(log_std * torch.randn(n, generator=generator, dtype=torch.float64)).to(dtype)
    return perm, scale


def monomial_matrix(perm, scale):
    m = torch.zeros(len(perm), len(perm), dtype=scale.dtype)
    m[torch.arange(len(perm)), perm] = scale
    return m


def transform_linear(layer_in: nn.Linear | None, layer_out: nn.Linear | None, a_in, a_out):
    """In place: ``layer_out`` now writes ``A_out y`` and reads ``A_in``-transformed input."""
    with torch.no_grad():
        if layer_out is not None:
            w = layer_out.weight.double()
            b = layer_out.bias.double()
            if a_in is not None:
                w = w @ torch.linalg.inv(a_in)
            if a_out is not None:
                w, b = a_out @ w, a_out @ b
            layer_out.weight.copy_(w)
            layer_out.bias.copy_(b)


def transformed_mlp(model: TinyMLP, generator):
    """A copy of ``model`` with G_ReLU elements A1, A2 at act1, act2 (same function)."""
    m = copy.deepcopy(model)
    p1, s1 = random_monomial(m.fc1.out_features, generator)
    p2, s2 = random_monomial(m.fc2.out_features, generator)
    a1, a2 = monomial_matrix(p1, s1), monomial_matrix(p2, s2)
    transform_linear(None, m.fc1, None, a1)
    transform_linear(None, m.fc2, a1, a2)
    transform_linear(None, m.head, a2, None)
    return m, {"act1": (p1, s1), "act2": (p2, s2)}


def transformed_resmlp(model: TinyResMLP, generator):
    """A copy with G_ReLU elements: A0 on the residual stream (act0 and act2 share it), A1 on act1."""
    m = copy.deepcopy(model)
    p0, s0 = random_monomial(m.fc0.out_features, generator)
    p1, s1 = random_monomial(m.fc1.out_features, generator)
    a0, a1 = monomial_matrix(p0, s0), monomial_matrix(p1, s1)
    transform_linear(None, m.fc0, None, a0)
    transform_linear(None, m.fc1, a0, a1)
    transform_linear(None, m.fc2, a1, a0)
    transform_linear(None, m.head, a0, None)
    return m, {"act0": (p0, s0), "act1": (p1, s1)}


# Tiny configs: every architecture's structure (BN, pooling, option-A/B shortcuts, attention) at
# widths that keep the whole file fast. resnet20 keeps 2 blocks per stage so that an identity
# shortcut follows each zero-padding shortcut.
ZOO = {
    "mlp": ("mlp", {"widths": (6, 5), "in_channels": 1, "input_size": 4}),
    "myrtle_cnn": ("myrtle_cnn", {"width": 2, "in_channels": 2, "input_size": 8}),
    "myrtle_cnn_nobn": (
        "myrtle_cnn",
        {"width": 2, "in_channels": 2, "input_size": 8, "batchnorm": False},
    ),
    "resnet20": (
        "resnet20",
        {"width": 2, "in_channels": 2, "input_size": 8, "blocks_per_stage": 2},
    ),
    "resnet18": ("resnet18", {"width": 2, "in_channels": 2, "input_size": 8}),
    "vit": (
        "vit",
        {"dim": 8, "depth": 2, "heads": 2, "in_channels": 2, "input_size": 8, "patch_size": 4},
    ),
}


def build_zoo(key: str, activation: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny zoo model with non-trivial BatchNorm parameters and statistics and an input batch,
    both float64, in eval mode.

    BN running statistics are calibrated on the batch (as after training), so pre-activations stay
    O(1) and x^2, x^3 networks stay finite. ResNet-20's option-A stream is never renormalised, so
    with power activations it gets one block per stage (x^3 composed 13 times overflows float64).
    """
    arch, cfg = ZOO[key]
    cfg = dict(cfg)
    if key == "resnet20" and activation.startswith("power"):
        cfg["blocks_per_stage"] = 1
    model = models.build(arch, activation=activation, seed=seed, **cfg).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(8, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=gen)
    x = x.double()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def calibrate(m, inputs):
        h = inputs[0]
        m.running_mean.copy_(h.mean(dim=(0, 2, 3)))
        var = h.var(dim=(0, 2, 3), unbiased=False)
        # A floor keeps near-constant channels from amplifying float32 round-off.
        m.running_var.copy_(var + 0.1 * var.mean())

    model.eval()
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
        # Each BN's statistics are set from its own eval-mode input in one pass, upstream first.
        hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
        model(x)
        for h in hooks:
            h.remove()
    return model, x


class GPT2Logits(nn.Module):
    """A tiny random GPT-2 (2 layers, width 16, vocab 50, float64, eval) returning the logits
    only, no key/value cache: torch.fx cannot trace it, torch.export can. Needs transformers."""

    def __init__(self, seed: int = 0):
        super().__init__()
        import transformers

        config = transformers.GPT2Config(
            vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        torch.manual_seed(seed)
        self.m = transformers.GPT2LMHeadModel(config).double().eval()

    def forward(self, ids):
        return self.m(ids, use_cache=False).logits
