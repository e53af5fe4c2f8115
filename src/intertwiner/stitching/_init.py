"""Initialising stitch layers: the statistics pass over A's and B's front features, and the
closed-form, identity or random start of each layer."""

from __future__ import annotations

import time

import torch
from torch import nn

from intertwiner.stitching import _solvers as solvers
from intertwiner.stitching._config import AUTO_INIT_MIN, INITS, StitchConfig, needs_stats
from intertwiner.stitching._layers import MONOMIAL_KINDS, StitchLayer


class InitStatistics:
    """Float64 moments of (A's, B's) front features per stitched stream, fed batch by batch.

    Called as ``stats(x, feats_a)`` from A's feature pass, it runs B's front on ``x`` and updates
    every stream's ``FeatureStats``, until ``cfg.init_samples`` inputs have been seen; with
    ``init_samples="auto"`` (matching only) it stops once the assignment has converged: after
    ``AUTO_INIT_MIN`` inputs and then at every doubling, the assignment of half the samples must
    still be optimal to ``cfg.auto_tol`` on all of them.
    """

    def __init__(
        self,
        stitches: nn.ModuleDict,
        names: list[str],
        index: dict[str, int],
        front_b: nn.Module,
        kind: str,
        cfg: StitchConfig,
        device: torch.device,
    ):
        self.front_b, self.kind, self.cfg, self.index = front_b, kind, cfg, index
        self.stitches = stitches
        self.of: dict[str, solvers.FeatureStats] = {}
        if needs_stats(kind, cfg):
            for name in names:
                layer: StitchLayer = stitches[name]
                self.of[name] = solvers.FeatureStats(
                    layer.c_in, layer.c_out, device=device, cross_x=layer.needs_cross_moments
                )
        self.seen, self.seconds = 0, 0.0
        self.auto = cfg.init_samples == "auto" and kind in MONOMIAL_KINDS and cfg.init in INITS[:2]
        self.limit = cfg.init_samples if isinstance(cfg.init_samples, int) else None
        self._next_check, self._perms, self._done = AUTO_INIT_MIN, None, False

    def __bool__(self) -> bool:
        return bool(self.of)

    def __call__(self, x: torch.Tensor, feats_a: tuple) -> None:
        if self._done or (self.limit is not None and self.seen >= self.limit):
            return
        self.seen += len(x)
        t = time.perf_counter()
        feats_b = self.front_b(x)
        for name, st in self.of.items():
            cdim = self.stitches[name].channel_dim
            i = self.index[name]
            st.update(
                solvers.channels_last(feats_a[i], cdim), solvers.channels_last(feats_b[i], cdim)
            )
        if self.auto and self.seen >= self._next_check:
            self._check_convergence()
        self.seconds += time.perf_counter() - t

    def _check_convergence(self) -> None:
        self._next_check *= 2
        cfg, perms, ok = self.cfg, {}, self._perms is not None
        for name, st in self.of.items():
            if self._perms is None:
                perms[name], _ = solvers.assignment(
                    st, self.kind, bias=cfg.bias, score=cfg.match_score
                )
                continue
            conv, perms[name] = solvers.assignment_converged(
                st, self.kind, self._perms[name], bias=cfg.bias, score=cfg.match_score,
                tol=cfg.auto_tol,
            )  # fmt: skip
            ok = ok and conv
        self._perms, self._done = perms, ok

    def feature_errors(self, stitches: nn.ModuleDict) -> dict[str, float]:
        """Relative squared error ``E||S a - b||^2 / E||b||^2`` of each stream's fitted stitch."""
        return {
            name: float(st.residual(stitches[name].matrix(), stitches[name].bias_vector()))
            for name, st in self.of.items()
        }


def initialise(
    stitches: nn.ModuleDict,
    names: list[str],
    stats: InitStatistics,
    cfg: StitchConfig,
    generator: torch.Generator,
) -> None:
    """Start every stitched layer as ``cfg.init`` says: the identity, random, or the closed-form
    fit on ``stats`` (layers without statistics, the birkhoff relaxation, keep their own start)."""
    for name in names:
        layer: StitchLayer = stitches[name]
        if cfg.init == "identity":
            layer.init_identity_()
        elif cfg.init == "random":
            layer.init_random_(generator)
        elif name in stats.of:
            layer.fit_(stats.of[name], bias=cfg.bias, ridge=cfg.ridge, score=cfg.match_score)
