"""The self-check: the pruned model must equal the original with the removed channels masked.

Masked means zeroed, and, where a norm or mean runs over a pruned channel dim, left out of
its statistics (``fxmeta.analysis.rules.statistics``): the pruned norm normalises over the
channels that stay, and the reference does the same, so the check stays exact.

A mismatch is a ``PruningError`` that names the node and the groups involved.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..analysis.channels import ChannelAnalysis, Dims, flat_labels
from ..errors import PruningError
from ..keys import TENSOR_META
from ..tracing import eval_mode
from .slimming import SlimContext, expected_shapes

# --------------------------------------------------------------------------- self-check


class _MaskedInterpreter(fx.Interpreter):
    """Runs the original graph and zeroes removed entries of every value as it is made.

    Nodes with a reference (norms and means over a channel dim) are computed by it: their
    statistics run over the kept entries only, as in the pruned model."""

    def __init__(self, gm: fx.GraphModule, masks: dict[str, list[tuple[tuple, int, Tensor]]],
                 record: dict | None = None, references: dict[str, Callable] | None = None,
                 keep: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.masks = masks
        self.record = record
        self.references = references or {}
        self.keep = keep

    def run_node(self, n: fx.Node) -> Any:
        if self.keep is not None and n.name in self.references:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = self.references[n.name](self.keep, args, kwargs)
        else:
            out = super().run_node(n)
        for path, dim, keep in self.masks.get(n.name, ()):
            out = _apply_at(out, path, lambda t, keep=keep, dim=dim: torch.where(
                _bcast(keep.to(t.device), t, dim), t, torch.zeros((), dtype=t.dtype, device=t.device)))
        if self.record is not None:
            self.record[n.name] = out
        return out


def masked_original(analysis: ChannelAnalysis, masks: dict, removed: Tensor,
                     record: dict | None = None) -> _MaskedInterpreter:
    """The original with the removed units zeroed and left out of norm statistics: the reference."""
    return _MaskedInterpreter(analysis.gm, masks, record, analysis.references,
                              lambda labels: ~removed[analysis.roots(labels)])


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


def removed_masks(analysis: ChannelAnalysis, removed: Tensor) -> dict[str, list[tuple[tuple, int, Tensor]]]:
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
                f"{_involved(analysis, n.name, self.s.removed, self.groups_of)}{_suggest(analysis, n.name)}"
            ) from exc
        meta = _extract_meta(out)
        if meta is not None:
            n.meta[TENSOR_META] = meta
        old = self.s.old_nodes.get(n.name)
        if old is not None and n.op != "output":
            want = expected_shapes(self.s, old.meta.get(TENSOR_META), analysis.values.get(n.name))
            got = _shapes_of_value(out)
            if want is not None and got != want:
                raise PruningError(
                    f"self-check failed at node {n.name!r}: shape {got} instead of {want}; "
                    f"involved: {_involved(analysis, n.name, self.s.removed, self.groups_of)}"
                    f"{_suggest(analysis, n.name)}"
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
    with torch.no_grad(), eval_mode(pruned):
        _ShapeChecker(s, _root_groups(analysis)).run(*args)


def self_check(analysis: ChannelAnalysis, pruned: fx.GraphModule, removed: Tensor, rtol: float = 1e-3,
               seed: int = 0, shapes_checked: bool = False) -> None:
    """Raise PruningError unless ``pruned`` equals the original with the removed units masked."""
    if not shapes_checked:
        check_shapes(analysis, pruned, removed)
    masks = removed_masks(analysis, removed)
    x = _random_like(analysis.example_input, seed)
    with torch.no_grad(), eval_mode(analysis.gm, pruned):
        ref = _leaves(masked_original(analysis, masks, removed).run(*x))
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


def _suggest(analysis: ChannelAnalysis, name: str) -> str:
    """The module around a failing node, and how to keep it out of pruning."""
    nodes = {n.name: n for n in analysis.gm.graph.nodes}
    todo, seen = [nodes.get(name)], set()
    while todo:  # the node itself, else the nearest module that feeds it
        node = todo.pop(0)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        module = None
        if node.op == "call_module":
            module = node.target
        else:
            stack = node.meta.get("nn_module_stack") or {}
            names = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
            module = next((m for m in reversed(names) if m), None)
        if module:
            return (f"; the failing op is in or after module {module!r}: keep it whole with --ignore {module} "
                    f"(ignore=[{module!r}]), or skip the check with --no-check at your own risk")
        todo.extend(node.all_input_nodes)
    return "; keep the layers around it whole with --ignore MODULE (ignore=[...])"


def _locate_mismatch(analysis, pruned, removed, masks, x, rtol, groups_of) -> str:
    """Compare node by node to name the first value that goes wrong."""
    record: dict[str, Any] = {}
    with torch.no_grad(), eval_mode(analysis.gm, pruned):
        masked_original(analysis, masks, removed, record).run(*x)
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
                    f"involved: {_involved(analysis, node.name, removed, groups_of)}{_suggest(analysis, node.name)}")
    return "self-check failed: pruned model output differs from the masked original (no single node found)"
