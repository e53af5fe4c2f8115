"""Numerical verification of traced sites: ``trace`` returns only sites that preserve the function.

Each check samples one element per site under test, applies them in place to a float64 copy of the
model, compares the outputs on the example input and on a perturbed one with the untransformed
outputs, and restores the parameters bit-exactly. Sites are tested as a group and bisected only
where the group fails, so a model whose sites all verify costs a handful of forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from intertwiner.errors import NonFiniteError, UnverifiedSymmetryError
from intertwiner.symmetry._forward import perturbed, run_flat
from intertwiner.symmetry.apply import restore, transform_site
from intertwiner.symmetry.spec import Site, SymmetrySpec

#: Default tolerance on ``max |f(x) - f_g(x)| / max |f(x)|`` in float64.
RTOL = 1e-9


class _Probe:
    """The float64 model, its probe inputs and their reference outputs."""

    def __init__(self, model: nn.Module, inputs: tuple, generator: torch.Generator):
        self.model = model
        self.generator = generator
        self.inputs = [inputs]
        self.refs = [run_flat(model, inputs)]
        for size in (
            0.1,
            0.01,
            0.001,
        ):  # fast-growing activations (x^d) may overflow on larger noise
            near = perturbed(inputs, generator, size)
            ref = run_flat(model, near)
            if bool(torch.isfinite(ref).all()):
                self.inputs.append(near)
                self.refs.append(ref)
                break
        if not self.refs[0].numel():
            raise UnverifiedSymmetryError(
                f"{type(model).__name__} returns no floating-point tensor, so its symmetries cannot "
                "be verified; trace a wrapper that returns the logits or hidden states"
            )
        for ref in self.refs:
            if not bool(torch.isfinite(ref).all()):
                raise NonFiniteError(
                    f"{type(model).__name__} gives non-finite outputs in float64 on the example "
                    "input (or a perturbed copy), so no symmetry can be verified; pass a smaller "
                    "or better-scaled example input"
                )
        self.scales = [float(r.abs().max()) if r.numel() else 0.0 for r in self.refs]

    def sample(self, site: Site):
        """A random element that moves something: a permutation part equal to the identity (one
        draw in two for two heads) would test only the scales, so it is drawn again."""
        g = site.group.sample(site.width, generator=self.generator, dtype=torch.float64)
        for _ in range(8):
            perm = getattr(g, "perm", None)
            if perm is None or site.width < 2 or not torch.equal(perm, torch.arange(site.width)):
                break
            g = site.group.sample(site.width, generator=self.generator, dtype=torch.float64)
        return g

    def error(self, sites: list[Site]) -> float:
        """Relative output change with a fresh random element at each of ``sites``."""
        saved: dict = {}
        try:
            with _one_thread():  # many small factorisations: threads only add overhead
                for s in sites:
                    transform_site(self.model, s, self.sample(s), saved)
            errs = []
            for inp, ref, scale in zip(self.inputs, self.refs, self.scales, strict=True):
                got = run_flat(self.model, inp)
                diff = float((got - ref).abs().max()) if ref.numel() else 0.0
                errs.append(diff / (scale or 1.0))
            return max(errs)
        finally:
            with _one_thread():
                restore(saved)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small matrix work on one intra-op thread: 64 x 64 QRs took 75 ms with two threads on a
    busy 2-core machine and 0.16 ms with one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _bisect(probe: _Probe, sites: list[Site], rtol: float, bad: dict[str, str]) -> None:
    if not sites:
        return
    err = probe.error(sites)
    if not err > rtol:  # NaN fails too
        return
    if len(sites) == 1:
        s = sites[0]
        bad[s.name] = (
            f"verification failed: a sampled element of {s.group.name} "
            f"({s.group.family.description}) changed the output by {err:.2e} (relative); the "
            "tracer's rules do not describe this part of the model"
        )
        return
    mid = len(sites) // 2
    before = len(bad)
    _bisect(probe, sites[:mid], rtol, bad)
    _bisect(probe, sites[mid:], rtol, bad)
    if len(bad) == before:  # each half verifies alone, not together: refuse the second half
        for s in sites[mid:]:
            bad[s.name] = (
                f"verification failed: changes the output ({err:.2e} relative) only together "
                "with other sites"
            )


def verify_spec(
    model64: nn.Module,
    spec: SymmetrySpec,
    inputs64: tuple,
    *,
    rtol: float = RTOL,
    strict: bool = False,
    generator: torch.Generator | None = None,
) -> SymmetrySpec:
    """Drop (or, ``strict``, refuse) every site of ``spec`` whose sampled elements change the output
    of ``model64`` (a float64 copy in eval mode); record the reasons on ``spec.dropped`` and the
    final joint error on ``spec.verified_error``. ``model64`` is restored exactly afterwards."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    probe = _Probe(model64, inputs64, gen)
    bad: dict[str, str] = {}
    _bisect(probe, list(spec.sites), rtol, bad)
    kept = [s for s in spec.sites if s.name not in bad]
    # Two more joint samples guard against an unlucky element in the search above; a failure
    # there starts the search again on what is left (each round drops at least one site).
    err = max(probe.error(kept), probe.error(kept)) if kept else 0.0
    while kept and err > rtol:
        before = len(bad)
        _bisect(probe, kept, rtol, bad)
        if len(bad) == before:  # the search passed again by luck: drop the last site, say why
            bad[kept[-1].name] = f"verification failed in a joint check ({err:.2e} relative)"
        kept = [s for s in kept if s.name not in bad]
        err = max(probe.error(kept), probe.error(kept)) if kept else 0.0
    if bad and strict:
        lines = "\n".join(f"  {n}: {r}" for n, r in bad.items())
        raise UnverifiedSymmetryError(
            f"{spec.model_name}: {len(bad)} site(s) did not verify:\n{lines}\n"
            "Call trace(..., strict=False) to get the verified sites only (the rest are listed on "
            "spec.dropped)."
        )
    spec.sites = kept
    spec.dropped = spec.dropped + list(bad.items())
    spec.verified_error = err
    return spec
