"""Rules that follow the feature axis through views and joins, shared by both front ends.

A front end (``_fx._Runner``, ``_aten.AtenRunner``) mixes in ``ShapeRules`` and provides ``an``
(the ``Rules``), ``info(node)``, ``val(node)``, ``where(node)`` and ``refuse(what)``: the exception
an unsupported case raises (the fx front end refuses the model, the export front end freezes the
spaces the op reads).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from intertwiner.symmetry._spaces import Info, ParamRef


def nested_infos(infos: dict[fx.Node, Any], n: fx.Node) -> list[Info]:
    """Every tracked Info among ``n``'s arguments, looking inside lists, tuples, dicts and the
    tuple infos of multi-output nodes."""
    found: list[Info] = []

    def walk(a: Any) -> None:
        if isinstance(a, fx.Node):
            i = infos.get(a)
            for j in i if isinstance(i, tuple) else (i,):
                if isinstance(j, Info):
                    found.append(j)
        elif isinstance(a, (list, tuple)):
            for b in a:
                walk(b)
        elif isinstance(a, dict):
            for b in a.values():
                walk(b)

    walk(n.args)
    walk(n.kwargs)
    return found


class ShapeRules:
    """reshape / transpose / permute / cat / stack on a tracked feature axis."""

    an: Any

    def info(self, a: Any) -> Any:  # pragma: no cover (provided by the front end)
        raise NotImplementedError

    def val(self, a: Any) -> Any:  # pragma: no cover (provided by the front end)
        raise NotImplementedError

    def where(self, n: fx.Node) -> str:  # pragma: no cover (provided by the front end)
        raise NotImplementedError

    def refuse(self, what: str) -> Exception:  # pragma: no cover (provided by the front end)
        raise NotImplementedError

    def reshape(self, x: Info, s_in, s_out, where: str) -> Info:
        """The feature axis after a view: the output dim whose block of elements holds it whole
        (``inner``: the positions merged behind it, ``outer``: those merged in front)."""
        s_in, s_out = list(s_in), list(s_out)
        pos = x.dim + len(s_in)
        after = 1
        for v in s_in[pos + 1 :]:
            after *= v
        st = x.inner * after
        span = x.n * st
        cands = []
        for d in range(len(s_out)):
            p = 1
            for v in s_out[d + 1 :]:
                p *= v
            big = p * s_out[d]
            if st % p == 0 and big % span == 0:
                cands.append((s_out[d] == 1, d, p, big))
        if not cands:
            raise self.refuse(
                f"a reshape in {where!r} that splits the feature axis over several dims "
                "(e.g. into heads)"
            )
        _, d, p, big = min(cands)
        return x.moved(dim=d - len(s_out), inner=st // p, outer=big // span)

    def transpose(self, x: Info, ndim: int, a: int, b: int) -> Info:
        pos = x.dim + ndim
        a, b = a % ndim, b % ndim
        new = b if pos == a else a if pos == b else pos
        return x.moved(dim=new - ndim)

    def permute(self, x: Info, ndim: int, dims) -> Info:
        pos = x.dim + ndim
        dims = [d % ndim for d in dims]
        return x.moved(dim=dims.index(pos) - ndim)

    def concatenate(self, n: fx.Node, value: torch.Tensor, stack: bool) -> Info | None:
        """``cat`` / ``stack``: along the feature axis the output's channels are the inputs'
        channels side by side (block-structured elements; untracked inputs' channels stay fixed);
        along any other axis every input must be moved by the same matrix."""
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        infos = [self.info(a) for a in tensors]
        vals = [self.val(a) for a in tensors]
        if not any(isinstance(i, Info) for i in infos):
            return None
        where = self.where(n)
        ndim = vals[0].dim()
        first = next(i for i in infos if isinstance(i, Info))
        pos = first.dim + ndim
        d = dim % (ndim + 1 if stack else ndim)
        if stack or d != pos:
            reason = f"{'stacking' if stack else 'concatenating'} tensors in {where!r}"
            for info in infos:
                if isinstance(info, Info):
                    if info.dim != first.dim:
                        raise self.refuse(f"{reason} whose feature axes do not line up")
                    self.an.unify(first, info, reason)
                elif isinstance(info, ParamRef) and info.plain:
                    self.an.add_param(first, info, reason)
                else:
                    self.an.unify(first, None, f"{reason}: joined with a tensor from the input")
            new_pos = pos + (1 if stack and d <= pos else 0)
            return first.moved(dim=new_pos - value.dim())
        parts, offset = [], 0
        for info, v in zip(infos, vals, strict=True):
            if isinstance(info, Info):
                if info.dim != first.dim or info.outer != 1 or info.inner != 1:
                    raise self.refuse(f"concatenating flattened feature axes in {where!r}")
                for sid, mode, ch in info.parts:
                    chans = range(info.n) if ch is None else ch
                    parts.append((sid, mode, tuple(offset + c for c in chans)))
            offset += v.shape[d]
        return Info(tuple(parts), offset, first.dim)
