"""Rules for recurrent layers: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` as the single ATen ops
``lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` that ``torch.export`` records.

The hidden units of each layer and direction are a site: permuting them permutes the rows of
every gate block of ``weight_ih`` / ``weight_hh`` / the biases together (the four LSTM gates i, f,
g, o or the three GRU gates r, z, n, stacked along dim 0, viewed as ``(gates, H)``) and the
columns of ``weight_hh``; the gates are sigmoids and tanhs of these rows and the cell and hidden
states are their elementwise products, so a permutation passes through, and nothing more is
claimed (a scaling would change what a sigmoid sees). The input is read by ``weight_ih``'s
columns like a Linear layer reads it. The initial states must be zeros (the default); the final
states ``h_n`` / ``c_n`` are moved with the output for one layer and direction, else they are
only allowed when nothing reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx

from intertwiner.groups import PERMUTATION, ActionKind, Mode
from intertwiner.symmetry._regions import op_name
from intertwiner.symmetry._registry import Frozen, rule
from intertwiner.symmetry._spaces import Info, ParamRef

if TYPE_CHECKING:
    from intertwiner.symmetry._aten import AtenRunner

#: Gate blocks stacked in the weights of each op.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_ZEROS = ("zeros", "new_zeros", "zeros_like")


def _zero_state(a: Any) -> bool:
    return isinstance(a, fx.Node) and a.op == "call_function" and op_name(a) in _ZEROS


@rule("lstm", "gru", "rnn_tanh", "rnn_relu", always=True)
def recurrent(r: AtenRunner, n: fx.Node, value: Any) -> tuple:
    name = op_name(n)
    if len(n.args) < 9 or not isinstance(n.args[2], (list, tuple)):
        raise Frozen(f"{name} with packed sequences or another signature")
    x_node, hx, params = n.args[0], n.args[1], list(n.args[2])
    has_biases, layers, bidirectional = bool(n.args[3]), int(n.args[4]), bool(n.args[7])
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    if not all(_zero_state(s) for s in states):
        raise Frozen(f"{name} with an initial state that is not zeros (it would have to move)")
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != layers * dirs * per:
        raise Frozen(f"{name} with projections (proj_size) or an unexpected parameter list")
    names = []
    for p in params:
        ref = r.info(p)
        if not isinstance(ref, ParamRef) or not ref.plain:
            raise Frozen(f"{name} with a weight that is computed, not a parameter")
        names.append(ref.name)
    x = r.info(x_node)
    if isinstance(x, Info) and (x.dim != -1 or x.outer != 1 or x.inner != 1):
        raise Frozen(f"{name} reads a tensor whose feature axis is not its last dim")
    single = layers * dirs == 1  # then h_n / c_n (1, B, H) move with the output
    if not single and any(u.args[1] != 0 and u.users for u in n.users):
        raise Frozen(
            f"{name} whose final states of several layers or directions are read: they stack "
            "spaces of different sites along one dim"
        )
    gates = GATES[name]
    hidden = r.an.shape_of(names[1])[1]  # weight_hh: (gates * H, H)
    where = r.module_path(n) or n.name
    out = x if isinstance(x, Info) else None
    for layer in range(layers):
        parts = []
        for d in range(dirs):
            k = (layer * dirs + d) * per
            w_ih, w_hh = names[k], names[k + 1]
            suffix = "_reverse" if d else ""
            sid = r.an.new_site(hidden, name=f"{where}.hidden_l{layer}{suffix}")
            r.an.sites[sid].family = PERMUTATION
            for p in (w_ih, w_hh, *(names[k + 2 : k + 4] if has_biases else ())):
                r.an.act_raw(sid, p, 0, ActionKind.A, hidden, outer=gates)
            r.an.act_raw(sid, w_hh, 1, ActionKind.A_INV_T, hidden)
            if out is not None:
                r.an.act(out, w_ih, 1, "in")
            parts.append((sid, Mode.A, tuple(range(d * hidden, (d + 1) * hidden)) if d else None))
        if dirs == 2:
            parts[0] = (parts[0][0], Mode.A, tuple(range(hidden)))
        out = Info(tuple(parts), hidden * dirs, -1)
    return (out, *[out if single else None for _ in range(len(value) - 1)])
