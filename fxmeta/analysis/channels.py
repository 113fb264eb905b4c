"""Channel spaces and dependency groups: union-find over the entries of tensor dimensions.

Every entry of every channel-carrying tensor dimension (and of every parameter
dimension) carries an integer id. Ops relate ids through the rule table in
``fxmeta.rules``: an elementwise op unites the ids of its operands entry by entry, a
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
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..tracing import _keep_unused_state, propagate_shapes, trace

FROZEN = 0


class UnionFind:
    """Vectorised union-find over integer ids. Id 0 (FROZEN) is always the root of its set."""

    def __init__(self) -> None:
        self.parent = torch.zeros(1024, dtype=torch.long)
        self.size = 1

    def fresh(self, n: int) -> Tensor:
        """``n`` new ids, each in its own set."""
        if self.size + n > len(self.parent):
            extra = max(len(self.parent), n)
            self.parent = torch.cat([self.parent, torch.zeros(extra, dtype=torch.long)])
        ids = torch.arange(self.size, self.size + n)
        self.parent[ids] = ids
        self.size += n
        return ids

    def find(self, ids: Tensor) -> Tensor:
        parent = self.parent
        root = parent[ids]
        for _ in range(4):
            up = parent[root]
            if torch.equal(up, root):
                parent[ids] = root  # path compression for the ids asked about
                return root
            root = up
        self.compress()
        return self.parent[ids]

    def compress(self) -> None:
        """Point every id straight at its root (pointer jumping over the whole table)."""
        p = self.parent[: self.size]
        while True:
            up = p[p]
            if torch.equal(up, p):
                break
            p = up
        self.parent[: self.size] = p

    def union(self, a: Tensor, b: Tensor) -> None:
        """Unite ``a[i]`` with ``b[i]`` for every i (the smaller root wins, so 0 stays root)."""
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not bool(differ.any()):
                return
            ra, rb = ra[differ], rb[differ]
            lo, hi = torch.minimum(ra, rb), torch.maximum(ra, rb)
            # Several pairs may share a root; amin keeps one link per root, the loop adds the rest.
            self.parent.scatter_reduce_(0, hi, lo, reduce="amin")
            a, b = lo, hi

    def roots(self) -> Tensor:
        """Root of every id handed out so far."""
        self.compress()
        return self.parent[: self.size].clone()


class Dims(list):
    """Labels of one tensor: per dimension an id vector, or None for a dim without channels."""


Value = Any  # Dims for a tensor, tuple of Values for a tuple, None for anything else


@dataclass
class FlopTerm:
    """FLOPs of one op: ``coef`` times the product of the live entry counts of ``factors``."""

    coef: float
    factors: list[Tensor]
    node: str


@dataclass
class Group:
    """Units that own the same parameter slices; removing a unit removes all of its slices.

    ``slices`` lists, for every parameter the group touches, ``(name, dim, index)`` with
    ``index`` of shape ``(units, m)``: unit ``u`` owns entries ``index[u]`` of
    ``params[name]`` along ``dim``. Per-unit group norms of any dict of parameter tensors
    (e.g. generated, differentiable ones) are then::

        sq = sum(p[name].movedim(dim, 0)[index].pow(2).flatten(1).sum(1) for name, dim, index in slices)

    ``buffer_slices`` is the same for buffers (BatchNorm statistics ...).
    """

    key: str
    units: int
    slices: list[tuple[str, int, Tensor]]
    buffer_slices: list[tuple[str, int, Tensor]]
    roots: Tensor  # (units,) internal set ids, in unit order
    touches_flops: bool = False
    nodes: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        """True when removing units of this group lowers FLOPs (and at least one unit can stay)."""
        return self.touches_flops and self.units >= 2

    def describe(self) -> str:
        names = sorted({name for name, _, _ in self.slices})
        head = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        return f"group {self.key} ({self.units} units: {head})"


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


# --------------------------------------------------------------------------- context


class Context:
    """What a rule sees: labels and shapes of node arguments, and ways to relate them."""

    def __init__(self, gm: fx.GraphModule, uf: UnionFind) -> None:
        self.gm = gm
        self.uf = uf
        self.values: dict[str, Value] = {}
        self.param_dims: dict[tuple[str, int], Tensor] = {}
        self.param_values: dict[str, Dims] = {}
        self.flop_terms: list[FlopTerm] = []
        self.slim_hooks: list[tuple[str, Callable]] = []
        self.frozen_reasons: dict[str, str] = {}
        self.probed: dict[str, str] = {}
        self.constants: dict[str, str] = {}
        self.node: fx.Node | None = None

    # -- reading
    def value(self, arg: Any) -> Value:
        if isinstance(arg, fx.Node):
            return self.values.get(arg.name)
        if isinstance(arg, (tuple, list)):
            return tuple(self.value(a) for a in arg)
        return None

    def dims(self, arg: Any) -> Dims:
        """Labels of a tensor argument (a Node holding one tensor)."""
        v = self.value(arg)
        if not isinstance(v, Dims):
            raise TypeError(f"{arg} does not hold a single tensor")
        return v

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(self.value(arg), Dims)

    def shape(self, arg: Any) -> torch.Size:
        meta = arg.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            raise TypeError(f"{arg} has no tensor shape")
        return meta.shape

    def meta(self, arg: fx.Node) -> Any:
        return arg.meta.get("tensor_meta")

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def arg(self, node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        """Positional-or-keyword argument of a call."""
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    # -- writing
    def fresh(self, n: int) -> Tensor:
        return self.uf.fresh(n)

    def union(self, *labels: Tensor | None) -> None:
        """Unite id vectors entry by entry; a None among them freezes the others."""
        present = [l for l in labels if l is not None]
        if len(present) < len(labels):
            self.freeze(*present)
            return
        for other in present[1:]:
            if other.shape != present[0].shape:
                raise ValueError(f"cannot unite id vectors of lengths {len(present[0])} and {len(other)}")
            self.uf.union(present[0], other)

    def freeze(self, *labels: Tensor | None, reason: str | None = None) -> None:
        for l in labels:
            if l is not None and len(l):
                self.uf.union(l, torch.zeros_like(l))
        if reason and self.node is not None and any(l is not None for l in labels):
            self.frozen_reasons.setdefault(self.node.name, reason)

    def freeze_value(self, value: Value, reason: str | None = None) -> None:
        for l in flat_labels(value):
            self.freeze(l, reason=reason)

    def is_frozen(self, labels: Tensor | None) -> bool:
        return labels is None or bool((self.uf.find(labels) == FROZEN).all())

    def param(self, name: str) -> Dims:
        """Labels of a parameter or buffer by qualified name (fresh ids the first time)."""
        if name not in self.param_values:
            tensor = _get_attr(self.gm, name)
            dims = Dims()
            for d, n in enumerate(tensor.shape):
                if n > 1 and tensor.is_floating_point():
                    ids = self.fresh(n)
                    self.param_dims[(name, d)] = ids
                    dims.append(ids)
                else:
                    dims.append(None)
            self.param_values[name] = dims
        return self.param_values[name]

    def module_param(self, node: fx.Node, attr: str) -> Dims | None:
        """Labels of ``module.attr`` of a call_module node, None when it is absent."""
        module = self.module(node)
        if getattr(module, attr, None) is None:
            return None
        return self.param(f"{node.target}.{attr}")

    def flops(self, coef: float, *factors: Tensor | None) -> None:
        """Record FLOPs ``coef * prod(live entries of each factor)``; None factors count 1."""
        live = [f for f in factors if f is not None]
        self.flop_terms.append(FlopTerm(float(coef), live, self.node.name if self.node else ""))

    def on_slim(self, fn: Callable) -> None:
        """Run ``fn(slim_context, node)`` on this node when the graph is slimmed."""
        self.slim_hooks.append((self.node.name, fn))

    def note_constant(self, text: str) -> None:
        """Record a forward-code constant of this node that slimming rewrites."""
        self.constants[self.node.name] = text

    def frozen_like(self, node: fx.Node) -> Value:
        return frozen_value(node.meta.get("tensor_meta"))


def _get_attr(root: nn.Module, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def flat_labels(value: Value) -> list[Tensor]:
    if isinstance(value, Dims):
        return [l for l in value if l is not None]
    if isinstance(value, (tuple, list)):
        return [l for v in value for l in flat_labels(v)]
    if isinstance(value, dict):
        return [l for v in value.values() for l in flat_labels(v)]
    return []


def frozen_value(meta: Any) -> Value:
    """Labels for a value without channel ids (None in every dim), shaped like ``meta``."""
    if hasattr(meta, "shape"):
        return Dims([None] * len(meta.shape))
    if isinstance(meta, (tuple, list)):
        return tuple(frozen_value(m) for m in meta)
    if isinstance(meta, dict):
        return tuple(frozen_value(m) for m in meta.values())
    return None


def _matches(value: Value, meta: Any) -> bool:
    """Does a rule's result have the structure and dim counts of the node's output?"""
    if hasattr(meta, "shape"):
        return isinstance(value, Dims) and len(value) == len(meta.shape) and all(
            l is None or len(l) == n for l, n in zip(value, meta.shape)
        )
    if isinstance(meta, (tuple, list)):
        return isinstance(value, tuple) and len(value) == len(meta) and all(map(_matches, value, meta))
    return value is None or frozen_value(meta) == value


# --------------------------------------------------------------------------- probe


def _call_of(gm: fx.GraphModule, node: fx.Node) -> Callable | None:
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return lambda self, *a, **k: getattr(self, node.target)(*a, **k)
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            return None  # parameters would have to be sliced too: no probing
        return module
    return None


def probe(ctx: Context, node: fx.Node, trials: int = 2) -> tuple[Value, str]:
    """Find and verify an index map from labelled input entries to output entries.

    Returns the output labels and a short note. Freezes what cannot be proven.
    """
    meta = node.meta.get("tensor_meta")
    fn = _call_of(ctx.gm, node)
    inputs = [a for a in node.all_input_nodes if ctx.is_tensor(a)]
    labelled = [(a, d) for a in inputs for d, l in enumerate(ctx.dims(a)) if not ctx.is_frozen(l)]
    if not labelled:
        return ctx.frozen_like(node), "no channel inputs"
    if fn is None or not hasattr(meta, "shape") or not meta.dtype.is_floating_point:
        ctx.freeze_value(tuple(ctx.value(a) for a in inputs), reason="unknown op, not probeable")
        return ctx.frozen_like(node), "frozen: not probeable"
    gen = torch.Generator().manual_seed(0)

    def example(a: fx.Node) -> Tensor:
        m = a.meta["tensor_meta"]
        if m.dtype.is_floating_point:
            return torch.randn(m.shape, generator=gen, dtype=m.dtype)
        return torch.zeros(m.shape, dtype=m.dtype)

    base = {a: example(a) for a in inputs}

    def run(vals: dict) -> Tensor:
        args = fx.node.map_arg(node.args, lambda a: vals.get(a, a))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: vals.get(a, a))
        with torch.no_grad():
            return fn(*args, **kwargs)

    try:
        out = run(base)
        if not isinstance(out, Tensor) or out.shape != meta.shape:
            raise ValueError("output differs from the traced shape")
        maps: list[tuple[fx.Node, int, int, Tensor]] = []  # (input, in dim, out dim, out entry -> in entry or -1)
        for a, d in labelled:
            found = _index_map(run, base, a, d, out)
            if found is None:
                ctx.freeze(ctx.dims(a)[d], reason="unknown op mixes channels")
            else:
                maps.append((a, d, *found))
        result = Dims([None] * out.dim())
        for a, d, od, idx in maps:
            src = torch.cat([ctx.dims(a)[d], torch.zeros(1, dtype=torch.long)])  # -1 -> frozen id
            mapped = src[idx]
            if result[od] is None:
                result[od] = mapped
            else:
                ctx.union(result[od], mapped)
        if not maps:
            return result, "frozen: no index map"
        if not _verify(ctx, run, base, result, trials):
            raise ValueError("slimmed run disagrees with the index map")
    except Exception as exc:  # noqa: BLE001 - any failure of the op on probes means: freeze
        ctx.freeze_value(tuple(ctx.value(a) for a in inputs), reason=f"unknown op, probe failed: {exc}"[:200])
        return ctx.frozen_like(node), "frozen: probe failed"
    return result, "index map proven by probe"


def _index_map(run, base, a, d, out) -> tuple[int, Tensor] | None:
    """Mark entries of input ``a`` along ``d`` with NaN by bit patterns; decode the map."""
    n = base[a].shape[d]
    bits = max(1, math.ceil(math.log2(n)))
    codes = torch.arange(n)
    hits, misses = [], []
    for b in range(bits):
        marked = ((codes >> b) & 1).bool()
        for sel, store in ((marked, hits), (~marked, misses)):
            x = base[a].clone()
            x.index_fill_(d, sel.nonzero().flatten(), float("nan"))
            store.append(torch.isnan(run({**base, a: x})))
    # The output dim the marks land on: NaN patterns must be whole slabs along it.
    for od in range(out.dim()):
        if out.shape[od] == 1 and n > 1:
            continue
        others = [i for i in range(out.dim()) if i != od]
        ok = True
        slabs = []
        for m in hits + misses:
            anyv = m.amax(dim=others) if others else m
            allv = m.amin(dim=others) if others else m
            if not torch.equal(anyv, allv):
                ok = False
                break
            slabs.append(anyv)
        if not ok:
            continue
        h = torch.stack(slabs[:bits])  # (bits, out_n)
        mi = torch.stack(slabs[bits:])
        dep = h | mi
        none = ~dep.any(0)
        if bool(((h & mi).any(0) | (dep.any(0) & ~dep.all(0))).any()):
            continue  # some output entry depends on several input entries
        idx = (h.long() * (1 << torch.arange(bits))[:, None]).sum(0)
        idx[none] = -1
        if bool((idx >= n).any()) or bool((idx < 0).all()):
            continue
        return od, idx
    return None


def _verify(ctx: Context, run, base, result: Dims, trials: int) -> bool:
    """Remove random units: the op on slimmed inputs must equal the masked full run, sliced."""
    ids = torch.cat([l for l in flat_labels(result)] + [ctx.dims(a)[d] for a in base for d in range(base[a].dim())
                                                        if ctx.dims(a)[d] is not None])
    roots = torch.unique(ctx.uf.find(ids))
    roots = roots[roots != FROZEN]
    if len(roots) < 2:
        return True
    gen = torch.Generator().manual_seed(1)
    for _ in range(trials):
        removed = roots[torch.randperm(len(roots), generator=gen)[: max(1, len(roots) // 2)]]

        def keep_of(labels: Tensor | None):
            if labels is None:
                return None
            return ~torch.isin(ctx.uf.find(labels), removed)

        masked, small = {}, {}
        for a, x in base.items():
            xm, xs = x, x
            for d, l in enumerate(ctx.dims(a)):
                k = keep_of(l)
                if k is None:
                    continue
                shape = [1] * x.dim()
                shape[d] = -1
                xm = torch.where(k.view(shape), xm, torch.zeros((), dtype=x.dtype))
                xs = xs.index_select(d, k.nonzero().flatten())
            masked[a], small[a] = xm, xs
        full = run(masked)
        got = run(small)
        for d, l in enumerate(result):
            k = keep_of(l)
            if k is not None:
                full = full.index_select(d, k.nonzero().flatten())
        if got.shape != full.shape or not torch.allclose(got, full, rtol=1e-5, atol=1e-6, equal_nan=True):
            return False
    return True


# --------------------------------------------------------------------------- analysis


def _lookup_rule(gm: fx.GraphModule, node: fx.Node, rules: dict) -> Callable | None:
    if node.op == "call_module":
        return rules.get(type(gm.get_submodule(node.target)))
    if node.op in ("call_function", "call_method"):
        try:
            return rules.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def _analysis_graph(model: nn.Module, example_input: Any, ignore: Sequence[str] = ()) -> fx.GraphModule:
    """A traced copy of the model's graph (parameters shared) that analysis may rewrite."""
    from .rules.table import GRAPH_REWRITES

    traced = trace(model, example_input)
    gm = fx.GraphModule(traced, copy.deepcopy(traced.graph), class_name=type(traced).__name__)
    _keep_unused_state(traced, gm)
    for key in ("fxmeta.traced", "fxmeta.auto_leaves"):  # other meta (IR, plans) describes the old model
        if key in traced.meta:
            gm.meta[key] = copy.copy(traced.meta[key])
    gm.train(traced.training)
    changed = False
    for rewrite in GRAPH_REWRITES:
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
    saved = [(m, m.training) for m in before.modules()]
    before.eval()
    after.eval()
    try:
        with torch.no_grad():
            want, got = before(*args), after(*args)
    finally:
        for m, flag in saved:
            m.training = flag
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
    rules: dict | None = None,
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

    ``group.prunable`` tells whether removing its units lowers FLOPs.
    """
    from .rules.table import RULES

    rules = RULES if rules is None else rules
    gm = _analysis_graph(model, example_input, ignore)
    uf = UnionFind()
    ctx = Context(gm, uf)
    auto_leaves = gm.meta.get("fxmeta.auto_leaves", {})
    for node in gm.graph.nodes:
        ctx.node = node
        meta = node.meta.get("tensor_meta")
        if node.op == "placeholder":
            value = frozen_value(meta)
        elif node.op == "get_attr":
            value = ctx.param(node.target) if isinstance(_get_attr(gm, node.target), Tensor) else None
        elif node.op == "output":
            ctx.freeze_value(ctx.value(node.args[0]), reason="model output")
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
        if not _matches(value, meta):
            # A rule that cannot describe its output must not be trusted: freeze around it.
            ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes), reason="rule result inconsistent")
            ctx.freeze_value(value)
            value = frozen_value(meta)
        ctx.values[node.name] = value
    ctx.node = None
    ignore = tuple(ignore)
    _freeze_ignored(ctx, ignore)
    groups = _build_groups(ctx)
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
    )


def _apply_rule(ctx: Context, rule: Callable, node: fx.Node) -> Value:
    """Run a rule; a call form the rule does not expect freezes the node instead of failing."""
    n_terms, n_hooks = len(ctx.flop_terms), len(ctx.slim_hooks)
    try:
        return rule(ctx, node)
    except Exception as exc:  # noqa: BLE001 - unions made so far only couple more: still safe
        del ctx.flop_terms[n_terms:], ctx.slim_hooks[n_hooks:]
        ctx.freeze_value(tuple(ctx.value(a) for a in node.all_input_nodes),
                         reason=f"rule failed: {type(exc).__name__}: {exc}"[:200])
        return frozen_value(node.meta.get("tensor_meta"))


def _freeze_ignored(ctx: Context, ignore: tuple[str, ...]) -> None:
    known = {name for name, _ in ctx.gm.named_modules()}
    for name in ignore:
        if name not in known:
            raise UnsupportedModelError(f"ignore names no module: {name!r}; use names from model.named_modules()")
    for (pname, _dim), labels in ctx.param_dims.items():
        if any(pname == n or pname.startswith(n + ".") for n in ignore):
            ctx.freeze(labels)


def _build_groups(ctx: Context) -> list[Group]:
    root_of = ctx.uf.roots()
    params = {name for name, _ in ctx.gm.named_parameters(remove_duplicate=False)}
    entries = sorted(ctx.param_dims.items())
    entry_roots = [root_of[labels] for _, labels in entries]
    live = [(i, r[r != FROZEN]) for i, r in enumerate(entry_roots)]
    live = [(i, r) for i, r in live if len(r)]
    if not live:
        return []
    n_entries = len(entries)
    # (root, entry) pairs with multiplicities, as one int64 key per pair.
    keys = torch.cat([r * n_entries + i for i, r in live])
    pairs, counts = torch.unique(keys, return_counts=True)  # sorted by root, then entry
    signature: dict[int, list] = {}
    for key, c in zip(pairs.tolist(), counts.tolist()):
        signature.setdefault(key // n_entries, []).append((key % n_entries, c))
    by_sig: dict[tuple, list[int]] = {}
    for root, sig in signature.items():
        by_sig.setdefault(tuple(sig), []).append(root)
    group_of = torch.full((ctx.uf.size,), -1, dtype=torch.long)
    sigs = list(by_sig.items())
    for gi, (_sig, members) in enumerate(sigs):
        group_of[torch.tensor(members)] = gi
    flop_ids = [f for t in ctx.flop_terms for f in t.factors]
    flop_groups = set(torch.unique(group_of[root_of[torch.cat(flop_ids)]]).tolist()) if flop_ids else set()
    node_groups = {}
    for name, value in ctx.values.items():
        labels = flat_labels(value)
        if labels:
            node_groups[name] = set(torch.unique(group_of[root_of[torch.cat(labels)]]).tolist())
    unit_pos = torch.full((ctx.uf.size,), -1, dtype=torch.long)
    groups = []
    for gi, (sig, members) in enumerate(sigs):
        # Units in order of first appearance in the group's first parameter dim: stable across runs.
        r0 = entry_roots[sig[0][0]]
        seen = r0[group_of[r0] == gi]
        uniq, inverse = torch.unique(seen, return_inverse=True)
        first = torch.full((len(uniq),), len(seen), dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(len(seen)), reduce="amin")
        unit_roots = uniq[torch.argsort(first)]
        unit_pos[unit_roots] = torch.arange(len(unit_roots))
        slices, buffer_slices = [], []
        for entry, m in sig:
            (name, dim), _ = entries[entry]
            r = entry_roots[entry]
            sel = torch.nonzero(group_of[r] == gi).flatten()
            order = torch.argsort(unit_pos[r[sel]], stable=True)
            index = sel[order].view(len(unit_roots), m)
            (slices if name in params else buffer_slices).append((name, dim, index))
        sig_text = ";".join(f"{entries[e][0][0]}:{entries[e][0][1]}*{m}" for e, m in sig)
        digest = hashlib.sha1(sig_text.encode()).hexdigest()[:8]
        lead = slices[0] if slices else buffer_slices[0]
        key = f"{lead[0]}:{lead[1]}#{digest}"
        nodes = [n for n, gs in node_groups.items() if gi in gs]
        constants = [f"{n}: {ctx.constants[n]}" for n in nodes if n in ctx.constants]
        groups.append(Group(key, len(unit_roots), slices, buffer_slices, unit_roots, gi in flop_groups, nodes,
                            constants))
    groups.sort(key=lambda g: g.key)
    return groups
