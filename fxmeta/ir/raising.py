"""Raising: the IR's tables back to parameters (differentiably) and to a new module."""
from __future__ import annotations

import copy
from typing import Iterator

import torch.fx as fx
from torch import Tensor, nn

from ..keys import IR
from .graph import IRError, Slot, WeightGraph


def _tensor_from_slot(graph: WeightGraph, slot: Slot) -> Tensor:
    layer = graph.layers[slot.layer]
    if slot.layout == "column":
        return layer.node[:, slot.col]
    edge = layer.edge
    if slot.layout == "reshape":
        return edge.reshape(slot.shape)
    if slot.layout == "transposed":
        # (out, in/g, k) -> (g, out/g, in/g, k) -> (g, in/g, out/g, k) -> (in, out/g, *kernel)
        g = slot.groups
        out, per_group, k = edge.shape
        blocks = edge.reshape(g, out // g, per_group, k).transpose(1, 2)
        return blocks.reshape(slot.shape)
    raise IRError(f"unknown slot layout {slot.layout!r}")


def iter_raised(graph: WeightGraph) -> Iterator[tuple[str, Tensor]]:
    for name, slot in graph.slots.items():
        # Contiguous, as the original tensors are: kernels may round differently on
        # strided inputs, and the functional result must equal the model's bit for bit.
        value = _tensor_from_slot(graph, slot).contiguous()
        yield name, value.detach() if slot.buffer else value
    yield from graph.passthrough.items()


def raise_params(graph: WeightGraph) -> dict[str, Tensor]:
    """Every parameter and buffer, by its original name, built from the IR's tables.

    The result is differentiable with respect to the feature tensors and can be used
    with ``torch.func.functional_call(graph.module, params, x)``.
    """
    params = dict(iter_raised(graph))
    for alias, name in graph.aliases.items():
        params[alias] = params[name]
    return params


def raise_graph(graph: WeightGraph) -> fx.GraphModule:
    """A new fx.GraphModule with the IR's features as its parameters and buffers.

    The new module owns its tensors (nothing is shared with the lowered model).
    """
    gm = graph.module
    raised = raise_params(graph)
    memo: dict[int, object] = {}
    for name, value in gm.state_dict(keep_vars=True).items():
        if id(value) in memo:
            continue
        new = raised[name].detach().clone()
        if isinstance(value, nn.Parameter):
            new = nn.Parameter(new, requires_grad=value.requires_grad)
        memo[id(value)] = new
    # Deep-copying with a pre-filled memo swaps every tensor without copying the old ones;
    # the IR itself (kept in meta by LowerPass) must not be copied along.
    memo[id(gm.meta)] = {k: v for k, v in gm.meta.items() if k != IR}
    out = copy.deepcopy(gm, memo)
    for name in raised.keys() - out.state_dict(keep_vars=True).keys():
        # GraphModule keeps only what its graph uses; put back the rest (unused state).
        _set_tensor(out, name, memo[id(gm.state_dict(keep_vars=True)[name])])
    return out


def _set_tensor(root: nn.Module, name: str, value: Tensor) -> None:
    *path, leaf = name.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(value, nn.Parameter):
        module.register_parameter(leaf, value)
    else:
        module.register_buffer(leaf, value)
