"""Numerical verification of traced sites: ``trace`` returns only sites that preserve the function.

Each check samples one element per site under test, applies them to a float64 copy of the model
(in place, or as new storage where no two tensors share storage: ``transform_site(swap=True)``),
compares the outputs on the example input and on a perturbed one with the untransformed outputs,
and restores the parameters bit-exactly. Sites are tested as a group and bisected only
where the group fails, so a model whose sites all verify costs a handful of forward passes.

Tolerance. A check passes when the relative change is at most ``rtol`` (``RTOL = 1e-9``). Some
models amplify float64 round-off far beyond that (timm's efficientnetv2_rw_t with random weights:
relative noise of 4 ulps on its parameters moves the output by 3.8e-7 to 2.8e-4 depending on the
draw of its weights), so an element that only reorders sums fails the fixed tolerance although it
is a true symmetry. For such models each
check's tolerance is scaled by the round-off of the part of the model its elements write to: the
check's ``roundoff`` is the largest relative output change when every tensor the sampled elements
touched (and only those) is multiplied by ``1 + e`` with ``e ~ N(0, (ROUNDOFF_ULPS * eps)^2)``
(``ROUNDOFF_DRAWS`` draws, each on every probe input; cached per set of tensors), and its
tolerance becomes ``clamp(SAFETY * roundoff, rtol, max(RTOL_CEILING, rtol))``. So a badly
conditioned block loosens only the checks of the sites that act on it; a site elsewhere is still
held to ``rtol``. Round-off is measured only when a check lands between ``rtol`` and the ceiling
(a check under ``rtol`` passes and one over the ceiling fails whatever the round-off), so a model
whose sites verify at ``rtol`` pays no extra forward pass, and the outcome is the same as
measuring first: the noise has its own generator. A wrong site still fails: where the model is
well conditioned its tolerance stays ``rtol``; anywhere it stays under the ceiling (1e-5) and
within ``SAFETY`` times what ulp-sized noise on the very tensors it moves does to the output.
``spec.verified_roundoff`` and ``spec.verified_tolerance`` report the largest of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from intertwiner.errors import NonFiniteError, UnverifiedSymmetryError
from intertwiner.symmetry._forward import perturbed, run_flat
from intertwiner.symmetry.apply import restore, shares_no_storage, transform_site
from intertwiner.symmetry.spec import Site, SymmetrySpec

#: Default tolerance on ``max |f(x) - f_g(x)| / max |f(x)|`` in float64 (the floor of the scaled
#: tolerance).
RTOL = 1e-9
#: Hard ceiling of the tolerance scaled by measured round-off (a ``rtol`` above it is kept as is):
#: as loose as a float32 cast inside the model already makes it (64 float32 ulps = 7.6e-6), four
#: orders of magnitude under the change a wrong rule typically makes on random weights (1e-2 to 1).
RTOL_CEILING = 1e-5
#: Tolerance = ``SAFETY`` x the output change under ulp-sized parameter noise. A sampled element
#: rounds every weight it scales and reorders sums it permutes: on timm's efficientnetv2_rw_t
#: (random weights, round-off 1e-5 relative) single sites moved the output by up to 4.4 times and
#: all sites together by up to 3.1 times what the noise did (146 single-site and 4 joint samples).
SAFETY = 16.0
#: Size of the parameter noise, in units of the dtype's machine epsilon, and how many draws.
ROUNDOFF_ULPS = 4
ROUNDOFF_DRAWS = 1


class _Probe:
    """The float64 model, its probe inputs and their reference outputs."""

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple,
        generator: torch.Generator,
        rtol: float = RTOL,
        reference: torch.Tensor | None = None,
    ):
        self.model = model
        self.generator = generator
        self.rtol = rtol
        self.ceiling = max(RTOL_CEILING, rtol)
        #: Largest round-off measured for a check (None until one needed it): the relative
        #: output change under ulp-sized noise on the tensors that check's elements touched.
        self.roundoff: float | None = None
        #: The tensors the last ``error`` call's elements wrote (what its round-off perturbs).
        self.touched: tuple[torch.Tensor, ...] = ()
        self._measured: dict[frozenset[int], float] = {}
        #: The tolerance the last ``passes`` call held its check to (for messages).
        self.last_tolerance = rtol
        #: Elements may give tensors new storage instead of copying them (``transform_site``).
        self.swap = shares_no_storage(model)
        self.inputs = [inputs]
        self.refs = [run_flat(model, inputs) if reference is None else reference]
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

    def tolerance_for(self, roundoff: float | None) -> float:
        """``rtol``, or ``SAFETY * roundoff`` clamped between ``rtol`` and the ceiling."""
        if roundoff is None:
            return self.rtol
        return min(max(SAFETY * roundoff, self.rtol), self.ceiling)

    @property
    def tolerance(self) -> float:
        """The loosest tolerance a check was held to (``rtol`` when none needed round-off)."""
        return self.tolerance_for(self.roundoff)

    def passes(self, err: float, touched: tuple[torch.Tensor, ...] | None = None) -> bool:
        """Whether a check with relative change ``err`` passes (NaN fails). Between ``rtol`` and
        the ceiling the round-off of the tensors the check ``touched`` (default: every floating
        tensor) is measured: a badly conditioned part of the model loosens only the checks whose
        elements write to it. Outside that range the answer does not depend on round-off."""
        self.last_tolerance = self.rtol
        if not err > self.rtol:
            return err == err
        if not err <= self.ceiling:
            self.last_tolerance = self.ceiling
            return False
        roundoff = self.measure_roundoff(touched)
        self.roundoff = max(self.roundoff or 0.0, roundoff)
        self.last_tolerance = self.tolerance_for(roundoff)
        return err <= self.last_tolerance

    def measure_roundoff(self, tensors: tuple[torch.Tensor, ...] | None = None) -> float:
        """Largest relative output change when each of ``tensors`` (default: every floating
        parameter and buffer) is multiplied by ``1 + e``, ``e ~ N(0, (ROUNDOFF_ULPS * eps)^2)``;
        restored bit-exactly. Cached per set of tensors."""
        tensors = tuple(_floating_state(self.model)) if tensors is None else tuple(tensors)
        key = frozenset(id(t) for t in tensors)
        if key not in self._measured:
            self._measured[key] = self._noisy_change(tensors)
        return self._measured[key]

    def _noisy_change(self, tensors: tuple[torch.Tensor, ...]) -> float:
        gen = torch.Generator().manual_seed(0)  # its own stream: the elements drawn stay the same
        worst = 0.0
        with torch.no_grad():
            for _ in range(ROUNDOFF_DRAWS):
                saved = [t.data if self.swap else t.detach().clone() for t in tensors]
                try:
                    for t in tensors:
                        size = ROUNDOFF_ULPS * torch.finfo(t.dtype).eps
                        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
                        noisy = t.data * (1 + (size * noise).to(t.dtype))
                        if self.swap:
                            t.data = noisy
                        else:
                            t.copy_(noisy)
                    worst = max(worst, self._change())
                finally:
                    for t, orig in zip(tensors, saved, strict=True):
                        if self.swap:
                            t.data = orig
                        else:
                            t.copy_(orig)
        return worst

    def _change(self) -> float:
        """Relative change of the current model's outputs against the references, worst input."""
        errs = []
        for inp, ref, scale in zip(self.inputs, self.refs, self.scales, strict=True):
            got = run_flat(self.model, inp)
            diff = float((got - ref).abs().max()) if ref.numel() else 0.0
            errs.append(diff / (scale or 1.0))
        return max(errs)

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
                    transform_site(self.model, s, self.sample(s), saved, swap=self.swap)
            self.touched = tuple(t for t, _, _ in saved.values())
            return self._change()
        finally:
            with _one_thread():
                restore(saved)


def _floating_state(model: nn.Module) -> list[torch.Tensor]:
    """Every floating parameter and buffer of ``model``, each once (tied weights are one)."""
    seen: dict[int, torch.Tensor] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and id(t) not in seen:
            seen[id(t)] = t
    return list(seen.values())


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


def _bisect(probe: _Probe, sites: list[Site], bad: dict[str, str]) -> None:
    """Drop the sites of ``sites`` that do not verify. A group passes at once only under
    ``rtol``: a change that round-off might explain is looked at site by site, each held to the
    round-off of what its own elements touch (a group's would let an ill-conditioned site excuse
    a wrong one)."""
    if not sites:
        return
    err = probe.error(sites)
    touched = probe.touched
    if len(sites) == 1:
        if probe.passes(err, touched):
            return
        s = sites[0]
        bad[s.name] = (
            f"verification failed: a sampled element of {s.group.name} "
            f"({s.group.family.description}) changed the output by {err:.2e} (relative, "
            f"tolerance {probe.last_tolerance:.1e}); the tracer's rules do not describe this "
            "part of the model"
        )
        return
    if err <= probe.rtol:
        return
    before = len(bad)
    if err <= probe.ceiling:
        # round-off may explain it: every site on its own, against its own round-off (most
        # pass here, so halving would only add group checks on the way down)
        for s in sites:
            _bisect(probe, [s], bad)
    else:  # a real change somewhere: halve to find it
        mid = len(sites) // 2
        _bisect(probe, sites[:mid], bad)
        _bisect(probe, sites[mid:], bad)
    if len(bad) == before and not probe.passes(err, touched):
        # each part verifies alone, not together: refuse the second half
        for s in sites[len(sites) // 2 :]:
            bad[s.name] = (
                f"verification failed: changes the output ({err:.2e} relative) only together "
                "with other sites"
            )


def _joint_error(probe: _Probe, sites: list[Site]) -> float:
    """The larger change of two joint samples (``probe.touched``: the tensors of both)."""
    if not sites:
        probe.touched = ()
        return 0.0
    first = probe.error(sites)
    touched = probe.touched
    second = probe.error(sites)
    probe.touched = tuple({id(t): t for t in (*touched, *probe.touched)}.values())
    return max(first, second)


def verify_spec(
    model64: nn.Module,
    spec: SymmetrySpec,
    inputs64: tuple,
    *,
    rtol: float = RTOL,
    strict: bool = False,
    generator: torch.Generator | None = None,
    reference: torch.Tensor | None = None,
) -> SymmetrySpec:
    """Drop (or, ``strict``, refuse) every site of ``spec`` whose sampled elements change the output
    of ``model64`` (a float64 copy in eval mode) by more than the tolerance (``rtol``, scaled by
    the model's measured round-off where a check needs it: module docstring); record the reasons
    on ``spec.dropped``, the final joint error on ``spec.verified_error``, the tolerance on
    ``spec.verified_tolerance`` and the round-off (None when no check needed it) on
    ``spec.verified_roundoff``. ``model64`` is restored exactly afterwards. ``reference``:
    ``run_flat(model64, inputs64)`` where the caller has it already (one forward pass less)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    probe = _Probe(model64, inputs64, gen, rtol, reference)
    bad: dict[str, str] = {}
    _bisect(probe, list(spec.sites), bad)
    kept = [s for s in spec.sites if s.name not in bad]
    # Two more joint samples guard against an unlucky element in the search above; a failure
    # there starts the search again on what is left (each round drops at least one site).
    err = _joint_error(probe, kept)
    while kept and not probe.passes(err, probe.touched):
        before = len(bad)
        _bisect(probe, kept, bad)
        if len(bad) == before:  # the search passed again by luck: drop the last site, say why
            bad[kept[-1].name] = (
                f"verification failed in a joint check ({err:.2e} relative, tolerance "
                f"{probe.last_tolerance:.1e})"
            )
        kept = [s for s in kept if s.name not in bad]
        err = _joint_error(probe, kept)
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
    spec.verified_tolerance = probe.tolerance
    spec.verified_roundoff = probe.roundoff
    return spec
