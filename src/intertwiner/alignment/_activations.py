"""Activation matching: one streamed pass over the data accumulates, per site, the paired
moments of both models' features (``intertwiner._paired.PairedMoments``) and fits each site's
element in the features themselves (see ``_align``'s docstring)."""

from __future__ import annotations

import torch
from torch import nn

from intertwiner._paired import PairedMoments
from intertwiner._types import DataLike
from intertwiner.alignment._views import feature_rows
from intertwiner.alignment._weights import _fit, _Problem
from intertwiner.errors import NonFiniteError, TooFewSamplesError
from intertwiner.groups import FitTerm
from intertwiner.symmetry import Site
from intertwiner.symmetry.apply import transform_site


def _activation_sites(
    prob: _Problem,
    model_a: nn.Module,
    model_b: nn.Module,
    sites: list[Site],
    data: DataLike,
    *,
    batch_size: int,
    max_samples: int | None,
    progress: bool,
) -> list[Site]:
    """Fit every site with captured activations from one streamed pass; returns those sites."""
    from intertwiner.features import Capturer, LayerNotFoundError, limited_batches

    def capturable(name: str) -> bool:
        """A module, the k-th call of one (``relu#2``) or a functional call torch.fx can find."""
        try:
            Capturer(model_a, [name]), Capturer(model_b, [name])
        except LayerNotFoundError:
            return False
        return bool(name)

    plan: dict[str, list[str]] = {}
    for s in sites:
        acts = [n for n in s.activations if capturable(n)]
        if acts:
            plan[s.name] = acts
    if not plan:
        return []
    by_name = {s.name: s for s in sites}
    dense = {n: not prob.extent.family_at(by_name[n]).monomial for n in plan}
    layers = sorted({a for acts in plan.values() for a in acts})
    # Per (site, activation): x'y, B's second moments (full for dense sites, else the diagonal)
    # and A's squared norms, in float64 products (the fit compares small residuals).
    stats: dict[tuple[str, str], PairedMoments] = {}
    seen = 0
    with Capturer(model_a, layers) as cap_a, Capturer(model_b, layers) as cap_b:
        for x in limited_batches(data, batch_size, max_samples, progress, desc="activations"):
            fa, fb = cap_a.run(x), cap_b.run(x)
            seen += x.shape[0]
            for sname, acts in plan.items():
                site = by_name[sname]
                for act in acts:
                    ax = site.activation_axes[act]
                    xa, xb = feature_rows(fa[act], ax), feature_rows(fb[act], ax)
                    key = (sname, act)
                    if key not in stats:
                        stats[key] = PairedMoments(
                            xa.shape[1], xb.shape[1], xa.device, full_x=False,
                            full_y=dense[sname], exact=True,
                        )  # fmt: skip
                    try:
                        stats[key].update(xa, xb)
                    except NonFiniteError as e:
                        raise NonFiniteError(f"non-finite features at site {sname!r}") from e
    if seen == 0:
        raise TooFewSamplesError("no data: the data source yielded no batches")
    done = []
    for sname, acts in plan.items():
        site = by_name[sname]
        terms = []
        for act in acts:
            sq_a, gram_b, cross = stats[(sname, act)].raw()
            if not torch.isfinite(cross).all():  # finite features whose products overflowed
                raise NonFiniteError(f"non-finite feature products at site {sname!r}")
            terms.append(FitTerm(site.activation_axes[act].kind, cross, gram_b, sq_a))
        delta, _ = _fit(site, prob.extent, terms, scale="norm")
        transform_site(prob.b, site, delta)
        prob.elements[sname] = delta @ prob.elements[sname]
        done.append(site)
    return done
