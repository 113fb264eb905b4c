"""Remove channels: importance, FLOPs-targeted selection, physical slimming, self-check.

``prune(model, example_input, speedup=2.0)`` analyses the channel groups
(``fxmeta.channels``), ranks their units globally by importance, removes the weakest
until the analytic FLOPs model says the target is met, builds a new, smaller
``fx.GraphModule`` (new modules, sliced parameters, rewritten graph constants) and
checks it: its output must equal the original model's output with the removed channels
masked out, else a ``PruningError`` names the group. The removal is returned as a
plain-data plan that ``apply_plan`` replays on a fresh copy of the architecture.
"""
from __future__ import annotations

import copy
import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..analysis.channels import ChannelAnalysis, Dims, Group, analyze, flat_labels
from ..errors import PruningError
from .flops import FlopModel, count_flops, count_params
from ..analysis.rules.table import refresh_attributes

PLAN_FORMAT = "fxmeta.plan/1"
Importance = Callable[[Group, dict[str, Tensor]], Tensor]


@dataclass
class PruneResult:
    """A pruned model and what it cost.

    ``speedup`` is the measured FLOPs ratio original / pruned; ``params_ratio`` is the
    fraction of parameters kept (pruned / original); ``plan`` is plain data that
    ``apply_plan`` replays (saveable with ``torch.save``, loadable with weights_only=True).
    """

    module: fx.GraphModule
    speedup: float
    params_ratio: float
    plan: dict
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


# --------------------------------------------------------------------------- importance


def _group_reduce(group: Group, params: dict[str, Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    total = torch.zeros(group.units, dtype=torch.float64)
    for name, dim, index in group.slices:
        p = params[name].detach()
        total += fn(p.movedim(dim, 0)[index.to(p.device)].flatten(1).double()).sum(1).cpu()
    return total / max(1, len(group.slices))


def l2_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    """Group L2 norm: root of the mean over the group's slices of each unit's squared norm."""
    return _group_reduce(group, params, lambda t: t.pow(2)).sqrt()


def l1_importance(group: Group, params: dict[str, Tensor]) -> Tensor:
    return _group_reduce(group, params, lambda t: t.abs())


def random_importance(seed: int = 0) -> Importance:
    gen = torch.Generator().manual_seed(seed)
    return lambda group, params: torch.rand(group.units, generator=gen, dtype=torch.float64)


def _importance_fn(importance: str | Importance, seed: int) -> Importance:
    if callable(importance):
        return importance
    table = {"l2": l2_importance, "l1": l1_importance, "random": random_importance(seed)}
    if importance not in table:
        raise PruningError(f"unknown importance {importance!r}; use 'l2', 'l1', 'random' or a callable")
    return table[importance]


# --------------------------------------------------------------------------- selection


@dataclass
class _Candidates:
    groups: list[Group]
    roots: Tensor  # (U,) unit ids
    group_of: Tensor  # (U,)
    rank: Tensor  # (U,) rank of the unit within its group, weakest first
    order: Tensor  # (U,) global order, weakest first
    sizes: Tensor  # (G,)
    caps: Tensor  # (G,) most units a group may lose
    steps: Tensor  # (G,) kept counts are multiples of this


def _candidates(analysis: ChannelAnalysis, importance: Importance, round_to: int | None,
                min_keep: float) -> _Candidates:
    groups = [g for g in analysis.groups if g.prunable]
    params = dict(analysis.gm.named_parameters(remove_duplicate=False))
    roots, group_of, scores, ranks = [], [], [], []
    sizes, caps, steps = [], [], []
    for gi, g in enumerate(groups):
        s = torch.as_tensor(importance(g, params), dtype=torch.float64).flatten()
        if s.shape != (g.units,):
            raise PruningError(f"importance returned shape {tuple(s.shape)} for {g.describe()}; expected ({g.units},)")
        top = s.abs().max()
        s = s / top if top > 0 else s  # normalised per group so groups compare globally
        roots.append(g.roots)
        group_of.append(torch.full((g.units,), gi))
        scores.append(s)
        r = torch.empty(g.units, dtype=torch.long)
        r[torch.argsort(s, stable=True)] = torch.arange(g.units)
        ranks.append(r)
        sizes.append(g.units)
        keep = max(1, math.ceil(min_keep * g.units))
        caps.append(g.units - keep)
        m = g.slices[0][2].shape[1] if g.slices else 1
        steps.append(1 if not round_to else round_to // math.gcd(round_to, m))
    if not groups:
        empty = torch.zeros(0, dtype=torch.long)
        return _Candidates([], empty, empty, empty, empty, empty, empty, empty)
    score = torch.cat(scores)
    group_t = torch.cat(group_of)
    # global order: weakest first; ties broken by group, then by unit
    order = torch.argsort(score, stable=True)
    return _Candidates(groups, torch.cat(roots), group_t, torch.cat(ranks), order, torch.tensor(sizes),
                       torch.tensor(caps), torch.tensor(steps))


def _removed_counts(c: _Candidates, k: int) -> Tensor:
    counts = torch.bincount(c.group_of[c.order[:k]], minlength=len(c.groups))
    counts = torch.minimum(counts, c.caps)
    kept = c.sizes - counts
    kept = torch.minimum(c.sizes, (kept + c.steps - 1) // c.steps * c.steps)
    return c.sizes - kept


def _removed_mask(c: _Candidates, counts: Tensor, n_ids: int) -> Tensor:
    mask = torch.zeros(n_ids, dtype=torch.bool)
    if len(c.roots):
        mask[c.roots[c.rank < counts[c.group_of]]] = True
    return mask


def _flop_model(analysis: ChannelAnalysis, constant: float = 0.0) -> FlopModel:
    terms = [(t.coef, [analysis.roots(f) for f in t.factors]) for t in analysis.flop_terms]
    return FlopModel(terms, constant)


def _select(analysis: ChannelAnalysis, c: _Candidates, model: FlopModel, base: float, target: float,
            min_keep: float, round_to: int | None) -> Tensor:
    n_ids = analysis.uf.size
    total = len(c.roots)
    best = base / max(model.evaluate(_removed_mask(c, _removed_counts(c, total), n_ids)), 1.0)
    if best < target:
        raise PruningError(
            f"speed-up {target:.3g}x is unreachable: at most {best:.3g}x with min_keep={min_keep}"
            f"{f', round_to={round_to}' if round_to else ''}; lower the target or min_keep"
        )
    lo, hi = 0, total  # smallest k whose removal reaches the target
    while lo < hi:
        mid = (lo + hi) // 2
        if base / model.evaluate(_removed_mask(c, _removed_counts(c, mid), n_ids)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return _removed_counts(c, lo)


# --------------------------------------------------------------------------- slimming


class SlimContext:
    """What slimming hooks see: old / new sizes and the new graph's modules."""

    def __init__(self, analysis: ChannelAnalysis, gm: fx.GraphModule, removed: Tensor) -> None:
        self.analysis = analysis
        self.gm = gm
        self.removed = removed
        self.old_nodes = {n.name: n for n in analysis.gm.graph.nodes}
        self._ints: dict[str, Any] = {}

    def keep_mask(self, labels: Tensor) -> Tensor:
        return ~self.removed[self.analysis.roots(labels)]

    def new_count(self, labels: Tensor | None, default: int = 0) -> int:
        if labels is None:
            return default
        return int(self.keep_mask(labels).sum())

    def keep_index(self, labels: Tensor | None) -> Tensor | None:
        """Entries to keep, or None when all stay."""
        if labels is None:
            return None
        keep = self.keep_mask(labels)
        return None if bool(keep.all()) else keep.nonzero().flatten()

    def _name(self, node: Any) -> str:
        return node if isinstance(node, str) else node.name

    def old_shape(self, node: Any) -> torch.Size:
        return self.old_nodes[self._name(node)].meta["tensor_meta"].shape

    def new_shape(self, node: Any) -> torch.Size:
        name = self._name(node)
        return _new_shape(self, self.old_nodes[name].meta["tensor_meta"], self.analysis.values[name])

    def module(self, target: str) -> nn.Module:
        return self.gm.get_submodule(target)

    def new_int(self, node: Any) -> Any:
        """Value of a size computation of the new graph (None when it is not a plain size)."""
        if not isinstance(node, fx.Node):
            return node
        if node.name not in self._ints:
            self._ints[node.name] = self._eval_int(node)
        return self._ints[node.name]

    def _eval_int(self, node: fx.Node) -> Any:
        try:
            if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
                return tuple(self.new_shape(node.args[0]))
            if node.op == "call_method" and node.target == "size":
                shape = tuple(self.new_shape(node.args[0]))
                d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                return shape if d is None else shape[d]
            if node.op == "call_method" and node.target == "dim":
                return len(self.new_shape(node.args[0]))
            ops = {operator.getitem: operator.getitem, operator.add: operator.add, operator.sub: operator.sub,
                   operator.mul: operator.mul, operator.floordiv: operator.floordiv,
                   operator.truediv: operator.truediv, operator.mod: operator.mod, operator.neg: operator.neg}
            if node.op == "call_function" and node.target in ops:
                args = [self.new_int(a) for a in node.args]
                if any(a is None for a in args):
                    return None
                return ops[node.target](*args)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return None


def _new_shape(s: SlimContext, meta: Any, value: Any) -> torch.Size:
    if not hasattr(meta, "shape") or not isinstance(value, Dims):
        raise TypeError("not a single tensor")
    return torch.Size(n if l is None else s.new_count(l) for n, l in zip(meta.shape, value))


def _expected_shapes(s: SlimContext, meta: Any, value: Any) -> Any:
    if hasattr(meta, "shape"):
        return _new_shape(s, meta, value) if isinstance(value, Dims) else meta.shape
    if isinstance(meta, (tuple, list)) and isinstance(value, tuple):
        return tuple(_expected_shapes(s, m, v) for m, v in zip(meta, value))
    return None


def _set_tensor(root: nn.Module, qualname: str, tensor: Tensor) -> None:
    owner_name, _, attr = qualname.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    old = getattr(owner, attr)
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        setattr(owner, attr, tensor)


def slim(analysis: ChannelAnalysis, removed: Tensor) -> fx.GraphModule:
    """A new GraphModule without the units flagged in ``removed`` (bool over unit ids)."""
    gm = copy.deepcopy(analysis.gm)
    s = SlimContext(analysis, gm, removed)
    by_param: dict[str, list[tuple[int, Tensor]]] = {}
    for (name, dim), labels in analysis.param_dims.items():
        keep = s.keep_index(labels)
        if keep is not None:
            by_param.setdefault(name, []).append((dim, keep))
    for name, cuts in by_param.items():
        owner_name, _, attr = name.rpartition(".")
        t = getattr(gm.get_submodule(owner_name) if owner_name else gm, attr).detach()
        for dim, keep in cuts:
            t = t.index_select(dim, keep.to(t.device))
        _set_tensor(gm, name, t.contiguous())
    owners = {name.rpartition(".")[0] for name in by_param}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for owner in sorted(owners - called):  # modules read only through get_attr
        refresh_attributes(gm.get_submodule(owner))
    for owner in sorted({o.rpartition(".")[0] for o in owners} - called):
        refresh_attributes(gm.get_submodule(owner))  # e.g. the attention module around out_proj
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, hook in analysis.slim_hooks:
        hook(s, nodes[name])
    gm.graph.lint()
    gm.recompile()
    return gm


# --------------------------------------------------------------------------- self-check


class _MaskedInterpreter(fx.Interpreter):
    """Runs the original graph and zeroes removed entries of every value as it is made."""

    def __init__(self, gm: fx.GraphModule, masks: dict[str, list[tuple[tuple, int, Tensor]]],
                 record: dict | None = None) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.masks = masks
        self.record = record

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        for path, dim, keep in self.masks.get(n.name, ()):
            out = _apply_at(out, path, lambda t: torch.where(_bcast(keep.to(t.device), t, dim), t,
                                                             torch.zeros((), dtype=t.dtype, device=t.device)))
        if self.record is not None:
            self.record[n.name] = out
        return out


def _bcast(keep: Tensor, t: Tensor, dim: int) -> Tensor:
    shape = [1] * t.dim()
    shape[dim] = -1
    return keep.view(shape)


def _apply_at(value: Any, path: tuple, fn: Callable) -> Any:
    if not path:
        return fn(value)
    items = list(value)
    items[path[0]] = _apply_at(items[path[0]], path[1:], fn)
    return type(value)(items) if not isinstance(value, tuple) or type(value) is tuple else type(value)(*items)


def _masks(analysis: ChannelAnalysis, removed: Tensor) -> dict[str, list[tuple[tuple, int, Tensor]]]:
    masks: dict[str, list] = {}

    def walk(name: str, value: Any, path: tuple) -> None:
        if isinstance(value, Dims):
            for d, labels in enumerate(value):
                if labels is not None:
                    keep = ~removed[analysis.roots(labels)]
                    if not bool(keep.all()):
                        masks.setdefault(name, []).append((path, d, keep))
        elif isinstance(value, tuple):
            for i, v in enumerate(value):
                walk(name, v, path + (i,))

    for name, value in analysis.values.items():
        walk(name, value, ())
    return masks


def _random_like(example_input: Any, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    args = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    return tuple(torch.randn(a.shape, generator=gen, dtype=a.dtype).to(a.device)
                 if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _leaves(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _leaves(v)]
    return []


def _close(a: Tensor, b: Tensor, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    scale = b.abs().max().item() if b.numel() else 0.0
    return bool((a - b).abs().max().item() <= rtol * scale + 1e-6) if a.numel() else True


class _eval_mode:
    """Eval mode for every module of a model (shared modules included), restored on exit."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models

    def __enter__(self):
        self.saved = [(m, m.training) for model in self.models for m in model.modules()]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc):
        for m, flag in self.saved:
            m.training = flag


class _ShapeChecker(fx.Interpreter):
    """Runs the slim graph and compares every value's shape with the analysis' prediction."""

    def __init__(self, s: SlimContext, groups_of: dict[int, str]) -> None:
        super().__init__(s.gm)
        self.extra_traceback = False
        self.s = s
        self.groups_of = groups_of

    def run_node(self, n: fx.Node) -> Any:
        analysis = self.s.analysis
        try:
            out = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - any failure of the slim graph is a pruning bug
            raise PruningError(
                f"self-check failed: the pruned model fails at node {n.name!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; involved: "
                f"{_involved(analysis, n.name, self.s.removed, self.groups_of)}"
            ) from exc
        meta = _extract_meta(out)
        if meta is not None:
            n.meta["tensor_meta"] = meta
        old = self.s.old_nodes.get(n.name)
        if old is not None and n.op != "output":
            want = _expected_shapes(self.s, old.meta.get("tensor_meta"), analysis.values.get(n.name))
            got = _shapes_of_value(out)
            if want is not None and got != want:
                raise PruningError(
                    f"self-check failed at node {n.name!r}: shape {got} instead of {want}; "
                    f"involved: {_involved(analysis, n.name, self.s.removed, self.groups_of)}"
                )
        return out


def _extract_meta(value: Any) -> Any:
    if isinstance(value, Tensor):
        return _extract_tensor_metadata(value)
    if isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value):
        return tuple(_extract_meta(v) for v in value)
    return None


def _shapes_of_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.shape
    if isinstance(value, (tuple, list)):
        return tuple(_shapes_of_value(v) for v in value)
    return None


def check_shapes(analysis: ChannelAnalysis, pruned: fx.GraphModule, removed: Tensor) -> None:
    """Run the slim model once; raise PruningError at the first node that fails or has a wrong shape."""
    s = SlimContext(analysis, pruned, removed)
    args = analysis.example_input if isinstance(analysis.example_input, (tuple, list)) else (analysis.example_input,)
    with torch.no_grad(), _eval_mode(pruned):
        _ShapeChecker(s, _root_groups(analysis)).run(*args)


def self_check(analysis: ChannelAnalysis, pruned: fx.GraphModule, removed: Tensor, rtol: float = 1e-3,
               seed: int = 0, shapes_checked: bool = False) -> None:
    """Raise PruningError unless ``pruned`` equals the original with the removed units masked."""
    if not shapes_checked:
        check_shapes(analysis, pruned, removed)
    masks = _masks(analysis, removed)
    x = _random_like(analysis.example_input, seed)
    with torch.no_grad(), _eval_mode(analysis.gm, pruned):
        ref = _leaves(_MaskedInterpreter(analysis.gm, masks).run(*x))
        got = _leaves(pruned(*x))
    if len(ref) == len(got) and all(_close(a, b, rtol) for a, b in zip(got, ref)):
        return
    raise PruningError(_locate_mismatch(analysis, pruned, removed, masks, x, rtol, _root_groups(analysis)))


def _root_groups(analysis: ChannelAnalysis) -> dict[int, str]:
    out = {}
    for g in analysis.groups:
        for r in g.roots.tolist():
            out[r] = g.key
    return out


def _involved(analysis: ChannelAnalysis, name: str, removed: Tensor, groups_of: dict[int, str]) -> str:
    node = next((n for n in analysis.gm.graph.nodes if n.name == name), None)
    if node is None:
        return "unknown"
    keys = set()
    for n in [node] + list(node.all_input_nodes):
        for labels in flat_labels(analysis.values.get(n.name)):
            r = analysis.roots(labels)
            for root in torch.unique(r[removed[r]]).tolist():
                keys.add(groups_of.get(root, f"unit {root}"))
    return ", ".join(sorted(keys)) or "no removed channels at this node"


def _locate_mismatch(analysis, pruned, removed, masks, x, rtol, groups_of) -> str:
    """Compare node by node to name the first value that goes wrong."""
    record: dict[str, Any] = {}
    with torch.no_grad(), _eval_mode(analysis.gm, pruned):
        _MaskedInterpreter(analysis.gm, masks, record).run(*x)
        got: dict[str, Any] = {}
        _MaskedInterpreter(pruned, {}, got).run(*x)
    s = SlimContext(analysis, pruned, removed)
    for node in analysis.gm.graph.nodes:
        if node.name not in got or node.op == "output":
            continue
        value = analysis.values.get(node.name)
        if not isinstance(value, Dims) or not isinstance(record.get(node.name), Tensor):
            continue
        ref = record[node.name]
        for d, labels in enumerate(value):
            keep = s.keep_index(labels)
            if keep is not None:
                ref = ref.index_select(d, keep.to(ref.device))
        if not isinstance(got[node.name], Tensor) or not _close(got[node.name], ref, rtol):
            return (f"self-check failed: pruned model differs from the masked original at node {node.name!r} "
                    f"({node.op} {getattr(node.target, '__name__', node.target)}); "
                    f"involved: {_involved(analysis, node.name, removed, groups_of)}")
    return "self-check failed: pruned model output differs from the masked original (no single node found)"


# --------------------------------------------------------------------------- API


class _Clock:
    """Accumulates wall time per stage name."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - self.last
        self.last = now


def _check_speedup(speedup: float) -> None:
    if not isinstance(speedup, (int, float)) or not math.isfinite(speedup) or speedup < 1.0:
        raise PruningError(f"speedup must be a number >= 1 (FLOPs original / pruned), got {speedup!r}")


def _plan(analysis: ChannelAnalysis, c: _Candidates, counts: Tensor, meta: dict) -> dict:
    entries = []
    for gi, g in enumerate(c.groups):
        k = int(counts[gi])
        if k == 0:
            continue
        sel = c.group_of == gi
        removed_units = torch.nonzero(c.rank[sel] < k).flatten().tolist()
        entries.append({"key": g.key, "units": g.units, "removed": removed_units})
    return {"format": PLAN_FORMAT, "ignore": list(analysis.ignore), "groups": entries, **meta}


def _removed_from_plan(analysis: ChannelAnalysis, plan: dict) -> Tensor:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise PruningError(f"not a pruning plan (expected format {PLAN_FORMAT!r})")
    removed = torch.zeros(analysis.uf.size, dtype=torch.bool)
    for entry in plan["groups"]:
        try:
            g = analysis.group(entry["key"])
        except KeyError:
            raise PruningError(f"plan group {entry['key']!r} does not exist in this model; "
                               "rebuild the plan on the same architecture and input shape") from None
        if g.units != entry["units"]:
            raise PruningError(f"plan group {entry['key']!r} has {entry['units']} units, the model {g.units}")
        idx = torch.tensor(entry["removed"], dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= g.units or len(idx) >= g.units):
            raise PruningError(f"plan group {entry['key']!r} removes invalid units")
        removed[g.roots[idx]] = True
    return removed


def prune(
    model: nn.Module,
    example_input: Any,
    speedup: float = 2.0,
    importance: str | Importance = "l2",
    round_to: int | None = None,
    ignore: Sequence[str] = (),
    min_keep: float = 0.1,
    check: bool = True,
    seed: int = 0,
) -> PruneResult:
    """Remove channels until FLOPs(original) / FLOPs(pruned) >= ``speedup``.

    ``importance``: "l2" (group L2 norm, normalised per group), "l1", "random", or a
    callable ``(group, params) -> scores of shape (group.units,)``; units are ranked
    globally, weakest removed first. ``round_to`` keeps channel counts multiples of N;
    ``min_keep`` is the least fraction of every group that stays; ``ignore`` names
    modules that must not change. ``check`` compares the result with the original model
    with the removed channels masked (on a random input) and raises PruningError, naming
    the group, on any difference. The model itself is left unchanged.
    """
    _check_speedup(speedup)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer, got {round_to!r}")
    if not 0.0 <= min_keep <= 1.0:
        raise PruningError(f"min_keep must be within [0, 1], got {min_keep!r}")
    clock = _Clock()
    analysis = analyze(model, example_input, ignore=ignore)
    clock("analysis")
    c = _candidates(analysis, _importance_fn(importance, seed), round_to, min_keep)
    clock("importance")
    if not c.groups:
        raise PruningError(
            f"{type(model).__name__} has no prunable channel groups (every channel is frozen: model inputs/outputs, "
            "ignored layers, or ops without a rule); nothing to remove"
        )
    flops_before = count_flops(analysis.gm, example_input)
    params_before = count_params(analysis.gm)
    clock("flops")
    model_flops = _flop_model(analysis)
    model_flops.constant = flops_before - model_flops.evaluate()  # FLOPs no term describes (frozen ops)
    target = float(speedup)
    for _attempt in range(4):
        counts = _select(analysis, c, model_flops, flops_before, target, min_keep, round_to)
        removed = _removed_mask(c, counts, analysis.uf.size)
        clock("selection")
        pruned = slim(analysis, removed)
        clock("slimming")
        check_shapes(analysis, pruned, removed)
        clock("check")
        flops_after = count_flops(pruned, example_input)
        clock("flops")
        measured = flops_before / max(flops_after, 1)
        if measured >= speedup * (1 - 1e-9):
            break
        target *= speedup / measured * 1.001  # the analytic model missed something: aim higher
    else:
        raise PruningError(f"reached only {measured:.3g}x of the {speedup:.3g}x FLOPs target")
    if check:
        self_check(analysis, pruned, removed, shapes_checked=True)
        clock("check")
    plan = _plan(analysis, c, counts, {"speedup_target": float(speedup),
                                        "importance": importance if isinstance(importance, str) else "custom"})
    pruned.meta["fxmeta.plan"] = plan
    params_after = count_params(pruned)
    return PruneResult(pruned, measured, params_after / max(params_before, 1), plan, flops_before, flops_after,
                       params_before, params_after, clock.totals)


def apply_plan(model: nn.Module, plan: dict, example_input: Any, check: bool = True) -> fx.GraphModule:
    """Replay a plan from :func:`prune` on a (fresh) model of the same architecture."""
    analysis = analyze(model, example_input, ignore=tuple(plan.get("ignore", ())) if isinstance(plan, dict) else ())
    removed = _removed_from_plan(analysis, plan)
    pruned = slim(analysis, removed)
    if check:
        self_check(analysis, pruned, removed)
    else:
        check_shapes(analysis, pruned, removed)
    pruned.meta["fxmeta.plan"] = plan
    return pruned
