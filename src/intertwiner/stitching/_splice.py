"""Splicing by site name: the front of model A, stitch layers, the back of model B.

``stitch`` splices on the graph ``symmetry.trace`` and ``features.capture`` read: both models are
exported by ``export_trace`` (``symmetry._graph.SiteGraph``, torch.export's ATen graph with the
batch dimension left free), so any model trace handles can be stitched, those torch.fx cannot
follow included (Hugging Face models, Python control flow), and a site is named as trace names
it (a module, ``name#k``, a functional node ``relu_1``). The k-th call of a module is the one node
of that call's ops that is read after it. ``trace(model, at)`` (no example input) still gives
the torch.fx graph of the former splice: without an input there is nothing to export. In B's
graph, the *front* is every data-dependent node that the site depends on (the site included); the
*back* is everything else. The **cut** is the set of front nodes that the back still reads, in graph
order. For a plain feed-forward site the cut is just the site. For a site inside a residual branch
(ResNet ``layerX.Y.act1``, a transformer MLP activation) the cut also holds the residual stream the
block read before the branch, because B's skip path reads it after the site.

Residual policy (``residual=``): ``"stitch"`` (default) puts a stitch layer on *every* tensor of the
cut, so the skip path receives A's stream mapped into B's basis, never A's raw features (the
reference code fed them straight through, the paper's ResNet-18 layer-70 failure). ``"error"``
refuses such sites with ``ResidualSiteError``. Graph inputs that the back reads again are passed
through untouched (they are the same images for both models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from intertwiner._types import SiteName
from intertwiner.errors import IntertwinerError, UnsupportedModuleError
from intertwiner.groups import activation_name
from intertwiner.symmetry._graph import SiteGraph
from intertwiner.symmetry._regions import op_name

SITES = "_intertwiner_sites"  # attribute of an exported graph: {site name: node name or None}
OWNERS = "_intertwiner_owners"  # {node name: innermost module whose output it is}
MODEL = "_intertwiner_model"  # the model's class name, for messages


class UnknownSiteError(IntertwinerError, KeyError):
    """A site name that is not a module of the model (or never called in its forward)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResidualSiteError(IntertwinerError, ValueError):
    """A site inside a residual branch, refused because ``residual="error"`` was asked for."""


def _is_activation(module: nn.Module) -> bool:
    if list(module.children()):
        return False
    try:
        activation_name(module)
    except Exception:  # noqa: BLE001 (not an activation)
        return False
    return True


class _SiteTracer(fx.Tracer):
    """Keeps ``leaves`` (by qualified name) and every activation module opaque."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or _is_activation(m) or super().is_leaf_module(m, qualname)


def _module_of(at: str) -> str:
    """The module behind a site name: ``relu#2`` (the second call of ``relu``) -> ``relu``."""
    return SiteName.parse(at).base


def trace(model: nn.Module, at: str, example: torch.Tensor | None = None) -> fx.GraphModule:
    """``model``'s graph for a splice at ``at``; raises ``UnknownSiteError``.

    With ``example`` (inputs of the shape the model takes; any batch size later) the exported
    ATen graph ``stitch`` uses (``export_trace``). Without it (no input to export with) the
    torch.fx graph, ``at`` kept as a leaf module: ``at`` is then a module name, ``name#k`` (the
    k-th call of a module used several times) or the name of a functional call in that fx graph.
    """
    if example is not None:
        return export_trace(model, at, example)
    names = dict(model.named_modules())
    module = _module_of(at)
    tracer = _SiteTracer({module} if module in names else set())
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 (fx raises many kinds)
        raise UnsupportedModuleError(
            f"cannot trace {type(model).__name__} with torch.fx ({e}); stitching needs an "
            "fx-traceable model"
        ) from e
    gm = fx.GraphModule(tracer.root, graph)
    if module not in names and not any(n.name == at for n in gm.graph.nodes):
        acts = [n for n, m in model.named_modules() if n and _is_activation(m)]
        raise UnknownSiteError(
            f"site {at!r} is not a module of {type(model).__name__} (nor the k-th call of one, "
            f"'name#2', nor a functional call in its graph); activation sites are "
            f"{acts[:20]}{' ...' if len(acts) > 20 else ''}"
        )
    return gm


def export_trace(model: nn.Module, at: str, example: torch.Tensor) -> fx.GraphModule:
    """``model``'s ATen graph on inputs shaped like ``example`` (any batch size), the site map
    attached; raises ``UnknownSiteError`` when ``at`` names no module call or graph node."""
    sg = SiteGraph(model, (example,), dynamic_batch=True)
    gm = sg.gm
    for n in list(gm.graph.nodes):  # input-shape guards: the halves get other inputs
        if n.op == "call_module" and str(n.target).startswith("_guards") and not n.users:
            gm.graph.erase_node(n)
    # export flattens the outputs (a model's one tensor comes back as a 1-tuple) and codegens a
    # pytree wrapper; the halves are plain graphs that return the model's own structure
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = (pytree.tree_unflatten(list(out.args[0]), info.out_spec),)
    gm.graph._codegen = fx.graph.CodeGen()
    gm.recompile()
    sites: dict[str, str | None] = dict(sg.names)
    sites.update(sg.modules)  # a module's name first, as hooks and capture read it
    owners: dict[str, str] = {}
    for name, node in sg.modules.items():
        if node is not None and SiteName.parse(name).call is None:
            if len(name) >= len(owners.get(node, "")):
                owners[node] = name
    setattr(gm, SITES, sites)
    setattr(gm, OWNERS, owners)
    setattr(gm, MODEL, type(model).__name__)
    _site_node(gm, at)  # refuse an unknown site now, naming the model
    return gm


def _exported_site(gm: fx.GraphModule, at: str) -> fx.Node:
    sites: dict[str, str | None] = getattr(gm, SITES)
    name = SiteName.parse(at)
    if not name.base:
        raise UnknownSiteError(
            "site '' is the whole model, which leaves no back to stitch into; name a module "
            "or graph node inside it"
        )
    if name.call is None and str(SiteName(name.base, 2)) in sites:
        calls = sum(1 for s in sites if SiteName.parse(s).base == name.base)
        raise UnsupportedModuleError(
            f"module {at!r} is called {calls} times in the forward pass; a stitch site must "
            f"be used once, or name the call: {at}#1 ... {at}#{calls}"
        )
    key = str(name)
    if key not in sites:
        if name.call is not None and name.base in sites:
            raise UnknownSiteError(f"module {name.base!r} is never called {name.call} times")
        model = getattr(gm, MODEL, "the model")
        raise UnknownSiteError(
            f"site {at!r} is not a module of {model} (nor the k-th call of one, 'name#2', nor a "
            "node of its exported graph: the names symmetry.trace gives)"
        )
    node = sites[key]
    if node is None:
        raise UnsupportedModuleError(
            f"module {at!r} leaves several tensors (it returns a tuple); stitch at the graph "
            "node of the tensor meant (a name symmetry.trace gives)"
        )
    return next(n for n in gm.graph.nodes if n.name == node)


def _site_node(gm: fx.GraphModule, at: str) -> fx.Node:
    if hasattr(gm, SITES):
        return _exported_site(gm, at)
    module = _module_of(at)
    found = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == module]
    if not found:
        by_name = [n for n in gm.graph.nodes if n.name == at and n.op == "call_function"]
        if by_name:
            return by_name[0]
        raise UnknownSiteError(f"module {at!r} is never called in the forward pass")
    k = SiteName.parse(at).call
    if k is not None:  # name#k
        if k > len(found):
            raise UnknownSiteError(f"module {module!r} is called {len(found)} times, not {k}")
        return found[k - 1]
    if len(found) > 1:
        raise UnsupportedModuleError(
            f"module {at!r} is called {len(found)} times in the forward pass; a stitch site must "
            f"be used once, or name the call: {at}#1 ... {at}#{len(found)}"
        )
    return found[0]


@dataclass
class Cut:
    """The tensors B's back reads: ``names`` (fx node names, the site first), ``site`` (its node),
    ``passthrough`` (graph inputs, passed unchanged), ``targets`` (module name or None per node)."""

    names: list[str]
    targets: list[str | None]
    passthrough: list[bool]

    @property
    def residual(self) -> bool:
        """True when the back reads more than the site (a residual stream or similar)."""
        return sum(not p for p in self.passthrough) > 1


def _front_nodes(gm: fx.GraphModule, site: fx.Node) -> set[fx.Node]:
    data: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in data for a in n.all_input_nodes):
            data.add(n)
    anc: set[fx.Node] = set()
    stack = [site]
    while stack:
        n = stack.pop()
        if n not in anc:
            anc.add(n)
            stack.extend(n.all_input_nodes)
    # Parameter reads and constants are not data: the back recomputes them from B.
    return anc & data


def find_cut(gm_b: fx.GraphModule, at: str) -> Cut:
    """The cut of B's graph at site ``at`` (see the module docstring)."""
    site = _site_node(gm_b, at)
    front = _front_nodes(gm_b, site)
    cut = [n for n in gm_b.graph.nodes if n in front and any(u not in front for u in n.users)]
    cut.remove(site)
    cut.insert(0, site)
    owners = getattr(gm_b, OWNERS, {})
    shape_only = _shape_only(gm_b) if hasattr(gm_b, SITES) else set()
    return Cut(
        names=[n.name for n in cut],
        targets=[n.target if n.op == "call_module" else owners.get(n.name) for n in cut],
        passthrough=[n.op == "placeholder" or n in shape_only for n in cut],
    )


def _shape_only(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes of an exported graph that read the inputs only through their sizes (a causal mask
    built from the sequence length): the same for A and B on the same inputs, so passed through
    unchanged like the inputs themselves, never stitched."""
    values: set[fx.Node] = set()
    out = set()
    for n in gm.graph.nodes:
        reads = n.all_input_nodes
        if n.op == "placeholder" or (
            op_name(n) not in _SIZE_OPS and any(a in values for a in reads)
        ):
            values.add(n)
        elif reads and n.op == "call_function":
            out.add(n)
    return out


_SIZE_OPS = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "dim"}


def build_back(gm_b: fx.GraphModule, at: str, cut: Cut) -> fx.GraphModule:
    """B from the cut on: a GraphModule taking the cut tensors (in ``cut.names`` order)."""
    site = _site_node(gm_b, at)
    front = _front_nodes(gm_b, site)
    by_name = {n.name: n for n in gm_b.graph.nodes}
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for name in cut.names:
        env[by_name[name]] = g.placeholder(f"cut_{name}")
    for n in gm_b.graph.nodes:
        if n not in front:
            env[n] = g.node_copy(n, lambda a: env[a])
    back = fx.GraphModule(gm_b, g)
    back.graph.lint()
    return _frozen(back)


def _frozen(gm: fx.GraphModule) -> fx.GraphModule:
    """B's (and A's) parameters never train: only the stitch layers do."""
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


def _match_node(gm_a: fx.GraphModule, name: str, target: str | None) -> fx.Node:
    """A's node for B's cut node: the call of the same module (by graph name when the module is
    called several times), or the graph value of the same name (exported graphs of the same
    architecture name their nodes alike)."""
    if hasattr(gm_a, SITES):
        found = [n for n in gm_a.graph.nodes if n.name == name]
        if found:
            return found[0]
        target = None
    calls = [n for n in gm_a.graph.nodes if n.op == "call_module" and n.target == target]
    if target is not None and len(calls) == 1:
        return calls[0]
    for n in calls if target is not None else gm_a.graph.nodes:
        if n.name == name:
            return n
    what = f"module {target!r}" if target else f"graph value {name!r}"
    raise UnsupportedModuleError(
        f"model B's remainder reads {what} at this site, but model A has no such value; "
        "stitch models of the same architecture, or pick a site outside residual branches"
    )


def build_front(gm_a: fx.GraphModule, cut: Cut) -> fx.GraphModule:
    """A up to the cut: a GraphModule returning the tuple of A's tensors matching ``cut``."""
    outs = [_match_node(gm_a, nm, tg) for nm, tg in zip(cut.names, cut.targets)]
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm_a.graph.nodes:
        if n.op == "output":
            break
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[n] for n in outs))
    front = fx.GraphModule(gm_a, g)
    front.graph.eliminate_dead_code()
    front = fx.GraphModule(gm_a, front.graph)  # again, so unused submodules are not kept
    front.graph.lint()
    return _frozen(front)


class StitchedModel(nn.Module):
    """``back_B(S_1(a_1), ..., S_k(a_k))`` with ``(a_1..a_k) = front_A(x)``; ``S_1`` is the site's.

    ``stitches`` is a ModuleDict keyed by the cut's node names (passthrough inputs are Identity).
    ``train()`` only switches the stitch layers: front and back always stay in eval mode, so their
    BatchNorm statistics are used, never updated.
    """

    def __init__(
        self, front: nn.Module, stitches: nn.ModuleDict, back: nn.Module, order: list[str]
    ):
        super().__init__()
        self.front, self.stitches, self.back = front, stitches, back
        self.order = list(order)
        self.train(False)

    def stitch_features(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [self.stitches[k](f) for k, f in zip(self.order, feats)]

    def forward_from_front(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The stitched output from cached front-of-A features."""
        return self.back(*self.stitch_features(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.front(x)
        return self.forward_from_front(feats)

    def train(self, mode: bool = True) -> StitchedModel:
        self.training = mode
        self.stitches.train(mode)
        self.front.eval()
        self.back.eval()
        return self
