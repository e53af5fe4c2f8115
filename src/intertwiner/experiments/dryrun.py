"""``reproduce --dry-run``: every job of a preset with its settings, beside the paper's protocol.

Nothing is trained, loaded or written: the plan is built without reading the data, so a user can
check the paper preset against paper.md before renting GPUs. Per stage: the paper's protocol (from
paper.md), our settings (every config key with its distinct values), then one line per job with
the settings that vary between its jobs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from intertwiner.experiments import presets
from intertwiner.experiments.base import Stage, stored_config
from intertwiner.experiments.presets import build_plan
from intertwiner.experiments.settings import override

__all__ = ["PAPER_PROTOCOL", "describe_plan"]

# paper.md sections 3-7, one entry per stage.
PAPER_PROTOCOL: dict[str, str] = {
    "groups": "Table 1: groups of ReLU, LeakyReLU, GELU, sigmoid, tanh, RBF and x^d with phi "
    "(no training).",
    "zoo": "100 seeds each of mCNN (width 64, BN), ResNet-20, ResNet-18 (and cwCNN, metrics only) "
    "on CIFAR-10; Adam lr 1e-3, weight decay 1e-4 on weights, StepLR(12, 0.5), 50 epochs, batch "
    "32, flip + translate augmentation; best epoch chosen on TEST accuracy (we: on a validation "
    "split). mCNN_k (no BN, ReLU and sigmoid) for the sanity test.",
    "metrics": "Section 5: every ReLU output on all 10,000 CIFAR-10 test images; 32 pairs "
    "(Procrustes), 16 pairs (CKA); G_ReLU / orthogonal Procrustes (similarity 1 - d), G_ReLU-CKA "
    "and linear CKA (debiased HSIC), layer x layer.",
    "stitching": "Section 4: 32 pairs (mCNN), 16 (ResNets); 1x1 stitch after the ReLU at every "
    "ReLU layer (mCNN 3/6/10/14, ResNet-20: 19, ResNet-18: 17); full and low rank 1/2/4: SGD lr "
    "1e-3, no momentum, wd 1e-4, 20 epochs, constant LR; G_ReLU: Birkhoff relaxation, 10 + 10 "
    "epochs; penalty = mean clean accuracy - best stitched TEST accuracy over epochs.",
    "sanity": "Section 3.3: mCNN_k (no BN), ReLU and sigmoid, 50 epochs Adam 1e-3; fixed 1x1 map "
    "before the activation at the first three convs (0/2/5); G_ReLU = permutation x log-normal "
    "mean-1 scales, orthogonal = torch orthogonal_; 10 repeats per (group, conv); retrain every "
    "later layer 50 epochs Adam 1e-3 StepLR; penalty = base - mean retrained best test accuracy.",
    "absorb": "Not in the paper: the claim's sharpest form. Same maps and sites as the sanity "
    "test; only the next layer refit in closed form (least squares); no training.",
    "dissection": "Section 6: NetDissect-Lite on three ImageNet models (Broden concepts); models, "
    "layers and counts not retrieved. Ours: the procedural concept scenes.",
    "alignment": "Not in the paper (beyond it): weight / activation alignment modulo the traced "
    "groups, loss barrier along the line.",
    "grounding_zoo": "Not in the paper: Kornblith et al. 2019, Table 2: ten architecturally "
    "identical 10-layer CNNs on CIFAR-10 from different seeds (ours: plain CNNs on MNIST, plus "
    "models on permuted labels for the specificity test).",
    "grounding": "Not in the paper: layer identification (Kornblith et al. 2019: linear CKA 99.3%, "
    "RBF CKA 99.1%, linear regression 45.4%, PWCCA 11.1%, SVCCA 9.9-15.1%, CCA 1.4-10.6%), "
    "specificity, monotonicity and prediction tests (ReSi, Klabunde et al. 2024), every measure.",
}


def _flat(config: dict) -> dict[str, str]:
    """One level of nesting flattened (``model.width``), values as compact JSON."""
    out: dict[str, str] = {}
    for k, v in stored_config(config).items():
        if k in ("model_a", "model_b") and isinstance(v, dict):
            v = {"arch": v.get("arch"), "seed": v.get("seed")}
        if isinstance(v, dict) and k not in ("data",):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = json.dumps(vv, sort_keys=True)
        else:
            out[k] = json.dumps(v, sort_keys=True)
    return out


def _values(flat: list[dict[str, str]]) -> dict[str, list[str]]:
    """key -> its distinct values over the jobs, in order (``-`` where a job lacks the key)."""
    keys = list(dict.fromkeys(k for f in flat for k in f))
    seen: dict[str, list[str]] = {}
    for k in keys:
        seen[k] = list(dict.fromkeys(f.get(k, "-") for f in flat))
    return seen


def _short(values: list[str], limit: int = 12) -> str:
    if len(values) <= limit:
        return ", ".join(values)
    return f"{', '.join(values[:3])}, ..., {values[-1]} ({len(values)} values)"


def describe_stage(stage: Stage, max_jobs: int | None = None) -> list[str]:
    """The lines of one stage: header, paper protocol, our settings, one line per job."""
    flat = [_flat(c) for c in stage.configs]
    values = _values(flat)
    fixed = {k: v[0] for k, v in values.items() if len(v) == 1 and k != "stage"}
    varying = [k for k, v in values.items() if len(v) > 1]
    lines = [
        f"== {stage.name}: {len(stage.configs)} jobs. {stage.description}",
        f"   paper: {PAPER_PROTOCOL.get(stage.name, 'not described in paper.md')}",
        "   ours (every job): " + (", ".join(f"{k}={v}" for k, v in fixed.items()) or "-"),
    ]
    if varying:
        lines.append("   ours (varies): " + "; ".join(f"{k} in {{{_short(values[k])}}}"
                                                     for k in varying))  # fmt: skip
    lines += [f"   note: {n}" for n in stage.notes]
    shown = flat if max_jobs is None else flat[:max_jobs]
    for i, f in enumerate(shown, 1):
        lines.append(f"   job {i}: " + " ".join(f"{k}={f[k]}" for k in varying if k in f))
    if len(shown) < len(flat):
        lines.append(f"   ... {len(flat) - len(shown)} more jobs")
    return lines


def describe_plan(
    preset: str, data: str | None = None, data_dir: str | None = None,
    max_jobs: int | None = None, overrides: Sequence[str] | None = None,
) -> str:  # fmt: skip
    """The dry-run text of ``preset`` (no data read, nothing written), with ``overrides``
    (``settings.override``) applied."""
    settings = presets.get(preset)
    if overrides:
        settings = override(settings, overrides)
    stages = build_plan(settings, data=data, data_dir=data_dir, check_data=False)
    total = sum(len(s.configs) for s in stages)
    lines = [f"preset {preset}: {len(stages)} stages, {total} jobs (dry run: nothing is run)"]
    for st in stages:
        lines += describe_stage(st, max_jobs)
    return "\n".join(lines)
