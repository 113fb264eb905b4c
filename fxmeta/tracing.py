"""Symbolic tracing with a leaf policy, automatic leaves, and shape propagation.

torch.nn modules are leaves (Conv, Linear, norms, attention ...); user modules are
traced through. A user module whose forward cannot be traced symbolically (data
dependent control flow, calls fx cannot follow) becomes a leaf automatically and is
reported in ``gm.meta["fxmeta.auto_leaves"]``: later stages treat its channels as
frozen instead of failing the whole model.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.graph_module import _copy_attr
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .errors import InputShapeError, UnsupportedModelError

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_torch_leaf(module: nn.Module) -> bool:
    """True for modules that come with torch.nn itself (containers excepted)."""
    if isinstance(module, _CONTAINERS):
        return False
    return type(module).__module__.startswith("torch.nn")


class LeafTracer(fx.Tracer):
    """fx.Tracer that turns untraceable user modules into leaves instead of failing."""

    def __init__(self, extra_leaves: Sequence[type] = ()) -> None:
        super().__init__()
        self.extra_leaves = tuple(extra_leaves)
        self.auto_leaves: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.auto_leaves:
            return True
        if self.extra_leaves and isinstance(m, self.extra_leaves):
            return True
        return is_torch_leaf(m)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        before = list(self.graph.nodes)
        stack = copy.copy(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure makes it a leaf
            # Roll the graph back to where this module started, then call it whole.
            known = set(before)
            for node in reversed(list(self.graph.nodes)):
                if node not in known:
                    self.graph.erase_node(node)
            self.module_stack = stack
            self.auto_leaves[qualname] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            return self.create_proxy("call_module", qualname, args, kwargs)


def _as_tuple(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def trace(model: nn.Module, example_input: Any = None, *, extra_leaves: Sequence[type] = ()) -> fx.GraphModule:
    """Trace ``model`` into an ``fx.GraphModule`` and record shapes in ``node.meta``.

    The returned module shares parameters with ``model`` and keeps every parameter and
    buffer of it under the same names, used by the graph or not.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected a torch.nn.Module, got {type(model).__name__}; pass the model object itself"
        )
    if isinstance(model, fx.GraphModule) and example_input is not None and "fxmeta.traced" in model.meta:
        gm = model
    else:
        tracer = LeafTracer(extra_leaves)
        try:
            graph = tracer.trace(model)
        except Exception as exc:
            raise UnsupportedModelError(
                f"torch.fx cannot trace {type(model).__name__}.forward: {type(exc).__name__}: {exc}. "
                "Make the top-level forward free of data-dependent control flow."
            ) from exc
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
        _keep_unused_state(model, gm)
        gm.train(model.training)
        gm.meta["fxmeta.auto_leaves"] = dict(tracer.auto_leaves)
        gm.meta["fxmeta.traced"] = True
    if example_input is not None:
        propagate_shapes(gm, example_input)
    return gm


def _keep_unused_state(root: nn.Module, gm: fx.GraphModule) -> None:
    """GraphModule copies only what the graph uses; keep the rest so state_dicts match."""
    have = set(gm.state_dict(keep_vars=True))
    for name, _ in root.state_dict(keep_vars=True).items():
        if name not in have:
            _copy_attr(root, gm, name)


class _ShapeRecorder(fx.Interpreter):
    """Like torch's ShapeProp (same ``tensor_meta``), but quiet and naming the failing node."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _NodeFailed(f"at {n.op} {n.target}: {type(exc).__name__}: {first}") from exc
        found = False

        def record(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, record)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


class _NodeFailed(RuntimeError):
    pass


def propagate_shapes(gm: fx.GraphModule, example_input: Any) -> None:
    """Run ``gm`` once in eval mode (no grad, no state change) and store shapes in node.meta."""
    args = _as_tuple(example_input)
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(*args)
    except _NodeFailed as exc:
        shapes = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
        raise InputShapeError(
            f"the model does not run on an input of shape {shapes} ({str(exc).splitlines()[0]}); "
            "pass a fitting --input-shape"
        ) from exc
    finally:
        gm.train(was_training)


def example_from_shape(shape: Sequence[int], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A reproducible random example input of the given shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def tensor_meta(node: fx.Node):
    """The TensorMetadata ShapeProp stored on ``node``, or None for non-tensors."""
    meta = node.meta.get("tensor_meta")
    return meta if hasattr(meta, "shape") else None
