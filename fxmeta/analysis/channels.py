"""Channel spaces and dependency groups: union-find over the entries of tensor dimensions.

Every entry of every channel-carrying tensor dimension (and of every parameter
dimension) carries an integer id. Ops relate ids through the rule table in
``fxmeta.analysis.rules``: an elementwise op unites the ids of its operands entry by entry, a
conv's output channels get the ids of its weight's dim 0, ``cat`` concatenates id
vectors, a reshape moves them between dims, and so on. After the whole graph has been
visited, each connected set of ids is one *unit*: the channel entries (in activations
and in parameters) that must be removed together. Id 0 is the frozen id: a unit that
touches it (model inputs and outputs, ops nobody understands, ``ignore=`` layers) is
never removed. ``None`` in place of an id vector means "no channel ids here" (batch or
spatial dims) and behaves like a vector of frozen ids.

Units that own the same parameter slices (the same parameters and dims, the same
number of entries in each) form a dependency *group*; e.g. the 64 channels of a ResNet
stage. A group lists, for every unit, the exact slices of every parameter it owns, so
pruning and group-sparsity regularisers work from the same data.

Ops without a rule are never guessed at: a probe runs the op on marked inputs and reads
which output entries depend on which input entries; the index map it finds is then
verified by running the op on a slimmed input. Only a verified map is used, anything
else freezes the touching spaces.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..capture import trace
from ..errors import UnsupportedModelError
from ..keys import AUTO_LEAVES, CAPTURE, TENSOR_META, TRACED, UNMAPPED_OPS
from ..tracing import eval_mode, keep_unused_state, normalize_call_args, propagate_shapes
from .context import Context
from .groups import Group, build_groups
from .probe import probe
from .rules.table import RULES, RuleTable, resolve_rules
from .spaces import FROZEN, Dims, FlopTerm, UnionFind, Value, flat_labels, frozen_value, matches, resolve_attr

__all__ = ["FROZEN", "ChannelAnalysis", "Dims", "Group", "UnionFind", "analyze", "flat_labels", "frozen_value"]


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyze`: the analysed graph, its units, groups and FLOPs model."""

    gm: fx.GraphModule
    example_input: Any
    uf: UnionFind
    values: dict[str, Value]
    param_dims: dict[tuple[str, int], Tensor]
    flop_terms: list[FlopTerm]
    slim_hooks: list[tuple[str, Callable]]
    groups: list[Group]
    frozen_reasons: dict[str, str]
    probed: dict[str, str]
    ignore: tuple[str, ...] = ()
    root_of: Tensor | None = None  # root of every id, fixed once the analysis is done
    references: dict[str, Callable] = field(default_factory=dict)  # node -> statistics over kept entries

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    def roots(self, labels: Tensor) -> Tensor:
        """Unit id of every entry of an id vector."""
        if self.root_of is None:
            self.root_of = self.uf.roots()
        return self.root_of[labels]



# --------------------------------------------------------------------------- analysis


def _lookup_rule(gm: fx.GraphModule, node: fx.Node, rules: Mapping) -> Callable | None:
    if node.op == "call_module":
        return rules.get(type(gm.get_submodule(node.target)))
    if node.op in ("call_function", "call_method"):
        try:
            return rules.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def _analysis_graph(model: nn.Module, example_input: Any, ignore: Sequence[str] = (),
                    rules: RuleTable = RULES, capture: str = "auto") -> fx.GraphModule:
    """A traced copy of the model's graph (parameters shared) that analysis may rewrite."""
    traced = trace(model, example_input, capture=capture)
    gm = fx.GraphModule(traced, copy.deepcopy(traced.graph), class_name=type(traced).__name__)
    keep_unused_state(traced, gm)
    for key in (TRACED, AUTO_LEAVES, CAPTURE, UNMAPPED_OPS):  # other meta (IR, plans) describes the old model
        if key in traced.meta:
            gm.meta[key] = copy.copy(traced.meta[key])
    gm.training = traced.training  # the submodules are the user's: their flags stay as they are
    changed = normalize_call_args(gm)
    for rewrite in rules.rewrites:
        changed |= bool(rewrite(gm, tuple(ignore)))
    if changed:
        gm.graph.lint()
        gm.recompile()
        propagate_shapes(gm, example_input)
        _check_rewrite(traced, gm, example_input)
    return gm


def _check_rewrite(before: fx.GraphModule, after: fx.GraphModule, example_input: Any) -> None:
    """A graph rewrite (e.g. attention decomposition) must not change what the model computes."""
    args = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device)
                 if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
    with torch.no_grad(), eval_mode(before, after):
        want, got = before(*args), after(*args)
    want, got = fx.node.map_aggregate(want, lambda v: v), fx.node.map_aggregate(got, lambda v: v)
    flat_w = [t for t in torch.utils._pytree.tree_leaves(want) if isinstance(t, Tensor)]
    flat_g = [t for t in torch.utils._pytree.tree_leaves(got) if isinstance(t, Tensor)]
    ok = len(flat_w) == len(flat_g) and all(
        w.shape == g.shape and float((w - g).abs().max()) <= 1e-4 * float(w.abs().max()) + 1e-5
        for w, g in zip(flat_w, flat_g))
    if not ok:
        raise UnsupportedModelError(
            "rewriting nn.MultiheadAttention into plain ops changed the model's output; "
            "pass the attention modules in ignore= to keep them whole")


def analyze(
    model: nn.Module,
    example_input: Any,
    ignore: Sequence[str] = (),
    rules: Mapping[Any, Callable] | None = None,
    capture: str = "auto",
) -> ChannelAnalysis:
    """Channel spaces and dependency groups of ``model`` on ``example_input``.

    ``ignore`` names modules (qualified names, e.g. ``"fc"`` or ``"layer4.1"``) whose
    parameters must not change at all (their input and output widths included).
    Returns a :class:`ChannelAnalysis` whose ``groups`` are the removable groups.
    ``group.slices`` is a list of ``(param_name, dim, index)`` with ``index`` of shape
    ``(group.units, m)``; per-unit group norms of any parameter dict ``params`` (the
    model's own, or generated and differentiable ones) are::

        sq = sum(params[n].movedim(d, 0)[i].pow(2).flatten(1).sum(1) for n, d, i in group.slices)
        norms = sq.sqrt()  # shape (group.units,)

    ``group.prunable`` tells whether removing its units lowers FLOPs. ``rules`` are extra
    rules ({op: rule}) layered over the default table, or a complete ``RuleTable``
    (``fxmeta.analysis.rules.table``). ``model`` may be a torch.export ``ExportedProgram``;
    ``capture`` says how a module becomes a graph (``fxmeta.capture.trace``).
    """
    rules = resolve_rules(rules)
    gm = _analysis_graph(model, example_input, ignore, rules, capture)
    uf = UnionFind()
    ctx = Context(gm, uf)
    auto_leaves = gm.meta.get(AUTO_LEAVES, {})
    for node in gm.graph.nodes:
        ctx.node = node
        meta = node.meta.get(TENSOR_META)
        if node.op == "placeholder":
            value = frozen_value(meta)
        elif node.op == "get_attr":
            value = ctx.param(node.target) if isinstance(resolve_attr(gm, node.target), Tensor) else None
        elif node.op == "output":
            # every tensor leaf of the output, however nested (dicts, tuples, lists, dataclass-like
            # objects the tracer turned into nodes) is an output: its channels stay
            for leaf in output_nodes(node.args[0]):
                value = ctx.value(leaf)
                if value is None:  # a node that holds no tracked tensor: what went into it is output
                    value = tuple(ctx.value(a) for a in leaf.all_input_nodes)
                ctx.freeze_value(value, reason="model output")
            continue
        elif node.op == "call_module" and node.target in auto_leaves:
            ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason="automatic leaf module")
            value = frozen_value(meta)
        else:
            rule = _lookup_rule(gm, node, rules)
            if rule is None:
                value, note = probe(ctx, node)
                if note != "no channel inputs":
                    ctx.probed[node.name] = note
            else:
                value = _apply_rule(ctx, rule, node)
        if not matches(value, meta):
            # A rule that cannot describe its output must not be trusted: freeze around it.
            ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason="rule result inconsistent")
            ctx.freeze_value(value)
            value = frozen_value(meta)
        ctx.values[node.name] = value
    ctx.node = None
    ignore = tuple(ignore)
    _freeze_ignored(ctx, ignore)
    groups = build_groups(ctx)
    return ChannelAnalysis(
        gm=gm,
        example_input=example_input,
        uf=uf,
        values=ctx.values,
        param_dims=ctx.param_dims,
        flop_terms=ctx.flop_terms,
        slim_hooks=ctx.slim_hooks,
        groups=groups,
        frozen_reasons=ctx.frozen_reasons,
        probed=ctx.probed,
        ignore=ignore,
        root_of=uf.roots(),
        references=ctx.references,
    )


def output_nodes(arg: Any) -> list[fx.Node]:
    """The nodes inside an output argument, through any nesting of tuples, lists, dicts and slices,
    and through objects with ``__dict__`` or ``__dataclass_fields__`` (e.g. ModelOutput-like results)."""
    found: list[fx.Node] = []
    seen: set[int] = set()

    def walk(v: Any) -> None:
        if id(v) in seen:
            return
        seen.add(id(v))
        if isinstance(v, fx.Node):
            found.append(v)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (tuple, list)):
            for item in v:
                walk(item)
        elif isinstance(v, slice):
            for item in (v.start, v.stop, v.step):
                walk(item)
        elif hasattr(v, "__dataclass_fields__") or hasattr(v, "__dict__") and not isinstance(v, (type, Tensor)):
            for item in vars(v).values():
                walk(item)

    walk(arg)
    return found


def _apply_rule(ctx: Context, rule: Callable, node: fx.Node) -> Value:
    """Run a rule; a call form the rule does not expect freezes the node instead of failing."""
    n_terms, n_hooks = len(ctx.flop_terms), len(ctx.slim_hooks)
    try:
        return rule(ctx, node)
    except Exception as exc:  # noqa: BLE001 - unions made so far only couple more: still safe
        del ctx.flop_terms[n_terms:], ctx.slim_hooks[n_hooks:]
        ctx.references.pop(node.name, None)
        ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes),
                         reason=f"rule failed: {type(exc).__name__}: {exc}"[:200])
        return frozen_value(node.meta.get(TENSOR_META))


def _freeze_ignored(ctx: Context, ignore: tuple[str, ...]) -> None:
    known = {name for name, _ in ctx.gm.named_modules()}
    for name in ignore:
        if name not in known:
            raise UnsupportedModelError(f"ignore names no module: {name!r}; use names from model.named_modules()")
    for (pname, _dim), labels in ctx.param_dims.items():
        if any(pname == n or pname.startswith(n + ".") for n in ignore):
            ctx.freeze(labels)


