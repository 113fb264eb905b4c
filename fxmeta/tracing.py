"""Symbolic tracing with a leaf policy, automatic leaves, and shape propagation.

torch.nn modules are leaves (Conv, Linear, norms, attention ...); user modules are
traced through. A user module whose forward cannot be traced symbolically (data
dependent control flow, calls fx cannot follow) becomes a leaf automatically and is
reported in ``gm.meta["fxmeta.auto_leaves"]``: later stages treat its channels as
frozen instead of failing the whole model.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.graph_module import _copy_attr
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .errors import InputShapeError, UnsupportedModelError
from .keys import AUTO_LEAVES, TENSOR_META, TRACED

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


def as_tuple(example_input: Any) -> tuple:
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
    if isinstance(model, fx.GraphModule) and example_input is not None and TRACED in model.meta:
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
        keep_unused_state(model, gm)
        # Only the new top-level flag: the submodules are the model's own, and a frozen
        # (eval) BatchNorm inside a training model must stay as the user left it.
        gm.training = model.training
        gm.meta[AUTO_LEAVES] = dict(tracer.auto_leaves)
        gm.meta[TRACED] = True
    if example_input is not None:
        propagate_shapes(gm, example_input)
    return gm


def keep_unused_state(root: nn.Module, gm: fx.GraphModule) -> None:
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
            n.meta[TENSOR_META] = meta
        n.meta["type"] = type(result)
        return result


class _NodeFailed(RuntimeError):
    pass


def propagate_shapes(gm: fx.GraphModule, example_input: Any) -> None:
    """Run ``gm`` once in eval mode (no grad, no state change) and store shapes in node.meta."""
    args = as_tuple(example_input)
    try:
        with torch.no_grad(), eval_mode(gm):
            _ShapeRecorder(gm).run(*args)
    except _NodeFailed as exc:
        shapes = ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
        raise InputShapeError(
            f"the model does not run on an input of shape {shapes} ({str(exc).splitlines()[0]}); "
            "pass a fitting --input-shape"
        ) from exc


@contextlib.contextmanager
def preserved_modes(*models: nn.Module) -> Iterator[None]:
    """Restore the train/eval flag of every submodule of ``models`` on exit.

    ``model.train(flag)`` would set one flag on all of them; a user's model may mix modes
    (a frozen BatchNorm in eval inside a model in training), and every module that runs or
    traces a user's model must give it back exactly as it was.
    """
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """Every module of ``models`` in eval mode inside the block, each one's flag restored after.

    Objects without ``eval`` (plain callables) and torch.export modules, whose mode is fixed
    when they are exported, are left as they are.
    """
    modules = [m for m in models if isinstance(m, nn.Module)]
    with preserved_modes(*modules):
        for m in modules:
            set_eval(m)
        yield


def set_eval(model: nn.Module) -> None:
    """``model.eval()``, tolerating torch.export modules, which refuse to change mode."""
    try:
        model.eval()
    except NotImplementedError:
        pass


def call_args(node: fx.Node) -> tuple:
    """A call's positional arguments, with ``input=`` given by keyword moved to the front.

    torch functions name their first tensor ``input``; ``torch.flatten(input=h)`` is the same
    call as ``torch.flatten(h)`` and rules that read the first argument must see it.
    """
    if not node.args and "input" in node.kwargs:
        return (node.kwargs["input"],)
    return tuple(node.args)


def normalize_call_args(gm: fx.GraphModule) -> bool:
    """Rewrite calls that pass their first tensor as ``input=`` into positional form, in place."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and not node.args and "input" in node.kwargs:
            kwargs = dict(node.kwargs)
            node.args = (kwargs.pop("input"),)
            node.kwargs = kwargs
            changed = True
    return changed


def example_from_shape(shape: Sequence[int], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A reproducible random example input of the given shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def tensor_meta(node: fx.Node):
    """The TensorMetadata ShapeProp stored on ``node``, or None for non-tensors."""
    meta = node.meta.get(TENSOR_META)
    return meta if hasattr(meta, "shape") else None
